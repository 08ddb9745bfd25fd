"""SIRA's daily reports: one stored document (JSON and Markdown) per running experiment per day."""
from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core import db
from core.errors import NotFound
from models import Experiment, Report

from .inputs import chunks, load_inputs, running_experiment_ids
from .insights import build_insights
from .results import build_results, d7_retention_counts, load_states
from .revenue import money_results

log = logging.getLogger(__name__)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def _leader(results: dict[str, Any]) -> dict[str, Any] | None:
    if not results["variants"]:
        return None
    leader = max(results["variants"], key=lambda v: v["prob_best"])
    metric = leader["metrics"][results["primary_metric"]]
    return {
        "variant_id": leader["variant_id"],
        "name": leader["name"],
        "rate": metric["rate"],
        "interval": metric["interval"],
        "prob_best": leader["prob_best"],
    }


def build_report(session: Session, client: redis.Redis | None, experiment_id: uuid.UUID, report_date: date, now: datetime) -> dict[str, Any]:
    experiment = load_inputs(session, [experiment_id])[0]
    results = build_results(
        experiment,
        load_states(session, experiment.id),
        d7_retention_counts(session, client, experiment, now),
        now,
        money_results(session, experiment),
    )
    insights = build_insights(session, experiment, now)
    return {
        "experiment": {
            "id": str(experiment.id),
            "name": experiment.name,
            "status": experiment.status,
            "mode": experiment.mode,
            "primary_metric": experiment.primary_metric,
            "started_at": experiment.started_at.isoformat() if experiment.started_at else None,
        },
        "report_date": report_date.isoformat(),
        "generated_at": now.isoformat(),
        "leader": _leader(results),
        "results": results,
        "srm": results["srm"],
        "insights": insights["insights"],
        "fail_fast": insights["fail_fast"],
        "guardrails": insights["guardrails"],
        "recommendation": insights["recommendation"],
        "suggestions": insights["suggestions"],
    }


def render_markdown(content: dict[str, Any]) -> str:
    """The report as Markdown, written top to bottom in the order it reads (one function:
    split up, the layout of the page would be scattered over helpers)."""
    experiment = content["experiment"]
    results = content["results"]
    metric = experiment["primary_metric"]
    lines = [
        f"# SIRA report — {experiment['name']} — {content['report_date']}",
        "",
        f"Experiment `{experiment['id']}` · status **{experiment['status']}** · mode **{experiment['mode']}** · "
        f"primary metric **{metric}**",
        "",
        f"**Recommendation:** {content['recommendation']}",
        "",
        f"## Results ({metric})",
        "",
        "| Variant | Assigned | Weight | Rate | 95% interval | Uplift vs control | P(beat control) | P(best) | α | β |",
        "|---|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for variant in results["variants"]:
        m = variant["metrics"][metric]
        interval = m["interval"]
        uplift = m["uplift"]
        uplift_text = "control" if variant["is_control"] else (
            "–" if not uplift or uplift["estimate"] is None
            else f"{uplift['estimate']:+.1%} [{uplift['lower']:+.1%}, {uplift['upper']:+.1%}]"
        )
        name = variant["name"] + (" (paused)" if variant["paused"] else "")
        lines.append(
            f"| {name} | {variant['assigned_users']} | {variant['weight']:.1%} | {_percent(m['rate'])} | "
            f"[{_percent(interval['lower'])}, {_percent(interval['upper'])}] | {uplift_text} | "
            f"{_percent(m['prob_beat_control'])} | {variant['prob_best']:.1%} | {variant['alpha']:g} | {variant['beta']:g} |"
        )
    lines += _revenue_lines(results)
    srm = content["srm"]
    lines += ["", "## Sample ratio", ""]
    if srm["p_value"] is None:
        lines.append(srm["message"])
    else:
        verdict = "**mismatch flagged**" if srm["flagged"] else "no mismatch"
        lines.append(f"χ² = {srm['chi2']:.3f}, p = {srm['p_value']:.4g}: {verdict}. {srm['message']}".rstrip())
    for title, section in (("Fail-fast", content["fail_fast"]), ("Guardrails", content["guardrails"])):
        lines += ["", f"## {title}", ""]
        if title == "Fail-fast":
            lines.append(f"Rule `{section['rule']}`, min samples {section['min_samples']}, action `{section['action']}`.")
        else:
            lines.append(f"Event types {', '.join(section['event_types']) or 'none'}, action `{section['action']}`.")
        lines.append("")
        if not (section["flags"] or section["recommendations"]):
            lines.append("No arm flagged.")
        for item in section["recommendations"]:
            lines.append(f"- {item['created_at'][:19]}Z — {item['message']} (action `{item['action']}`: {item['outcome']})")
        recorded = {r["variant_id"] for r in section["recommendations"]}
        for item in section["flags"]:
            if item["variant_id"] not in recorded:
                lines.append(f"- now — {item['message']}")
    lines += ["", "## Suggested next experiments", ""]
    if not content["suggestions"]:
        lines.append("None yet.")
    for suggestion in content["suggestions"]:
        lines.append(f"- **{suggestion['title']}** (`{suggestion['kind']}`): {suggestion['detail']}")
    lines.append("")
    return "\n".join(lines)


def _revenue_lines(results: dict[str, Any]) -> list[str]:
    """Revenue per variant in the reporting currency (conversion amounts), when there is any."""
    blocks = [(v, v["metrics"].get("conversion", {}).get("revenue")) for v in results["variants"]]
    if not any(block for _, block in blocks):
        return []
    currency = results.get("reporting_currency", "")
    lines = ["", f"## Revenue ({currency})", "",
             "| Variant | Total | Per user (capped) | Uplift | By currency (minor units) | Unconverted events |",
             "|---|---:|---:|---|---|---:|"]
    for variant, block in blocks:
        if not block:
            continue
        per_user = block["per_user"]["estimate"]
        per_user_text = "–" if per_user is None else f"{per_user:,.2f}"
        uplift = block["uplift"]
        uplift_text = "control" if uplift is None else (
            "–" if uplift["estimate"] is None else f"{uplift['estimate']:+.1%} [{uplift['lower']:+.1%}, {uplift['upper']:+.1%}]"
        )
        breakdown = ", ".join(f"{code} {b['total_minor']:,}" for code, b in block["by_currency"].items()) or "–"
        lines.append(
            f"| {variant['name']} | {block['total']:,.2f} | {per_user_text} | {uplift_text} | {breakdown} | "
            f"{block['unconverted_events']} |"
        )
    return lines


@dataclass
class ReportSummary:
    report_date: str
    experiments: int = 0
    created: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def daily_reports(client: redis.Redis | None, *, report_date: date | None = None, now: datetime | None = None) -> ReportSummary:
    """One report per running experiment for ``report_date`` (UTC today); existing ones are kept."""
    now = now or datetime.now(timezone.utc)
    report_date = report_date or now.date()
    summary = ReportSummary(report_date=report_date.isoformat())
    with db.session_scope() as session:
        ids = running_experiment_ids(session)
        done = set(
            session.execute(
                select(Report.experiment_id).where(Report.report_date == report_date)
            ).scalars()
        )
    summary.experiments = len(ids)
    for chunk in chunks([i for i in ids if i not in done], 50):
        for experiment_id in chunk:
            session = db.new_session()
            try:
                content = build_report(session, client, experiment_id, report_date, now)
                inserted = session.execute(
                    insert(Report)
                    .values(experiment_id=experiment_id, report_date=report_date, content=content, markdown=render_markdown(content))
                    .on_conflict_do_nothing(constraint="uq_sira_reports_experiment_id_report_date")
                    .returning(Report.id)
                ).scalar_one_or_none()
                session.commit()
                summary.created += inserted is not None
            except Exception as exc:  # one experiment must not stop the others
                session.rollback()
                log.exception("daily report failed for experiment %s", experiment_id)
                summary.errors.append(f"{experiment_id}: {exc}")
            finally:
                session.close()
    return summary


def _summary_row(report: Report, experiment_name: str) -> dict[str, Any]:
    return {
        "id": report.id,
        "experiment_id": report.experiment_id,
        "experiment_name": experiment_name,
        "report_date": report.report_date,
        "created_at": report.created_at,
        "recommendation": (report.content or {}).get("recommendation"),
    }


def list_reports(
    session: Session, *, experiment_id: uuid.UUID | None, offset: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """Summaries (not the documents) of stored reports, newest first."""
    query = select(
        Report.id,
        Report.experiment_id,
        Experiment.name.label("experiment_name"),
        Report.report_date,
        Report.created_at,
        Report.content["recommendation"].astext.label("recommendation"),
    ).join(Experiment, Experiment.id == Report.experiment_id)
    count = select(func.count()).select_from(Report)
    if experiment_id is not None:
        query = query.where(Report.experiment_id == experiment_id)
        count = count.where(Report.experiment_id == experiment_id)
    total = session.execute(count).scalar_one()
    rows = session.execute(
        query.order_by(Report.report_date.desc(), Report.created_at.desc(), Report.id).offset(offset).limit(limit)
    )
    return [dict(row._mapping) for row in rows], total


def get_report(session: Session, report_id: uuid.UUID) -> dict[str, Any]:
    row = session.execute(
        select(Report, Experiment.name).join(Experiment, Experiment.id == Report.experiment_id).where(Report.id == report_id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"report {report_id} not found")
    report, name = row
    document = _summary_row(report, name)
    document["content"] = report.content
    document["markdown"] = report.markdown
    return document
