"""``flask --app api audit compare-checkpoints FILE``: checkpoints held outside vs the platform."""
from __future__ import annotations

import json

import click
from flask import Flask
from flask.cli import AppGroup

from core import db
from services.experiments import audit, audit_checks


@click.command("compare-checkpoints")
@click.argument("held_file", type=click.File("r"))
@click.option("--no-signatures", is_flag=True, help="Skip the signature check (for whoever does not hold the key).")
def compare_checkpoints_command(held_file, no_signatures: bool) -> None:
    """Compare checkpoints exported from GET /api/audit/checkpoints (a JSON list) with the chain now."""
    held = json.load(held_file)
    if not isinstance(held, list):
        raise click.UsageError("the file must hold the JSON list GET /api/audit/checkpoints returned")
    with db.session_scope() as session:
        problems = audit_checks.compare_held_checkpoints(session, None if no_signatures else audit.current_keys(), held)
    for problem in problems:
        click.echo(problem)
    if problems:
        raise click.ClickException(f"{len(problems)} problem(s) in {len(held)} held checkpoint(s)")
    click.echo(f"{len(held)} held checkpoint(s) match the platform")


def register(app: Flask) -> None:
    group = AppGroup("audit", help="Audit chain commands.")
    group.add_command(compare_checkpoints_command)
    app.cli.add_command(group)
