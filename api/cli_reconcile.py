"""``flask --app api sira reconcile [--experiment ID] [--dry-run]``: rollups vs raw events."""
from __future__ import annotations

import uuid

import click
from flask import Flask
from flask.cli import AppGroup
from tqdm import tqdm

from core import db
from services.ingestion import rollups


@click.command("reconcile")
@click.option("--experiment", "experiment_id", type=click.UUID, default=None, help="Only this experiment.")
@click.option("--dry-run", is_flag=True, help="Report drift without repairing it.")
def reconcile_command(experiment_id: uuid.UUID | None, dry_run: bool) -> None:
    """Recompute rollups from raw events, report drift and repair it."""
    if experiment_id is not None:
        experiment_ids = [experiment_id]
    else:
        session = db.new_session()
        try:
            experiment_ids = rollups.experiments_with_data(session)
        finally:
            session.close()
    drifted: list[rollups.ExperimentDrift] = []
    with tqdm(total=len(experiment_ids), unit="experiment", desc="reconcile", disable=None) as bar:

        def progress(drift: rollups.ExperimentDrift) -> None:
            if drift.total:
                drifted.append(drift)
            bar.set_postfix(drifted=len(drifted))
            bar.update(1)

        rollups.reconcile(db.new_session, experiment_ids, repair=not dry_run, on_progress=progress)
    for drift in drifted:
        verb = "repaired" if drift.repaired else "found"
        click.echo(
            f"experiment {drift.experiment_id}: {verb} drift - user rollups "
            f"{drift.users.missing} missing, {drift.users.extra} extra, {drift.users.differ} differ; "
            f"variant rollups {drift.variants.missing} missing, {drift.variants.extra} extra, "
            f"{drift.variants.differ} differ; "
            f"money rollups {drift.money.missing} missing, {drift.money.extra} extra, {drift.money.differ} differ"
        )
    summary = f"{len(experiment_ids)} experiment(s) checked, {len(drifted)} with drift"
    if drifted:
        summary += " (reported only: --dry-run)" if dry_run else " (repaired)"
    click.echo(summary)


def register(app: Flask) -> None:
    """Add ``reconcile`` to the ``sira`` command group, creating the group if nobody has yet."""
    group = app.cli.commands.get("sira")
    if not isinstance(group, click.Group):
        group = AppGroup("sira", help="SIRA and metrics maintenance commands.")
        app.cli.add_command(group)
    group.add_command(reconcile_command)
