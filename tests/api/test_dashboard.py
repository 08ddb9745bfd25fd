"""The Ops dashboard: the page and its assets are served, every API call the page
makes exists in the OpenAPI document, the RBAC matrix it mirrors is core.rbac's;
and the bandit history endpoint the chart reads."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from core import rbac
from core.db import session_scope
from models import BanditHistory, enums
from tests.support.api import new_id

STATIC = Path(__file__).resolve().parents[2] / "web" / "ops" / "static"

CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".svg": ("image/svg+xml",),
}

# The one module that talks to the API: request/json("METHOD", `/api/...`) or page(`/api/...`) (a GET).
METHOD_CALL = re.compile(r'\b(?:request|json)\(\s*"(GET|POST|PATCH|PUT|DELETE)",\s*`(/api/[^`]*)`')
PAGE_CALL = re.compile(r"\bpage\(\s*`(/api/[^`]*)`")
OWN_DOCUMENT = re.compile(r"`(/ops/[^`]*)`")
IMPORT = re.compile(r"""(?:^|\n)\s*import\s[^;]*?from\s+["'](\.{1,2}/[^"']+)["']""")


class _AssetCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.assets: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            value = values.get(name)
            if value and value.startswith("/ops/static/"):
                self.assets.append(value)
        if tag == "script" and not values.get("src"):
            self.inline_scripts += 1


def _page_assets(client) -> tuple[list[str], int]:
    response = client.get("/ops")
    collector = _AssetCollector()
    collector.feed(response.get_data(as_text=True))
    return collector.assets, collector.inline_scripts


def _module_graph(client, entry_points: list[str]) -> dict[str, str]:
    """Every asset reachable from the page, following ES module imports: {url: body}."""
    seen: dict[str, str] = {}
    queue = list(entry_points)
    while queue:
        url = queue.pop()
        if url in seen:
            continue
        response = client.get(url)
        assert response.status_code == 200, url
        body = response.get_data(as_text=True)
        seen[url] = body
        if url.endswith(".js"):
            base = url.rsplit("/", 1)[0]
            for relative in IMPORT.findall(body):
                parts = f"{base}/{relative}".split("/")
                resolved: list[str] = []
                for part in parts:
                    if part == "..":
                        resolved.pop()
                    elif part != ".":
                        resolved.append(part)
                queue.append("/".join(resolved))
    return seen


def _openapi_operations(client) -> set[tuple[str, str]]:
    spec = client.get("/openapi.json").get_json()
    return {
        (method.upper(), re.sub(r"\{[^}]+\}", "{}", path))
        for path, operations in spec["paths"].items()
        for method in operations
        if method in {"get", "post", "patch", "put", "delete"}
    }


def _normalise(template: str) -> str:
    return re.sub(r"\$\{[^}]+\}", "{}", template.split("?")[0])


# --- The page and its assets -------------------------------------------------------


def test_page_is_served_with_a_strict_content_security_policy(client):
    for path in ("/ops", "/ops/"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.mimetype == "text/html"
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assets, inline_scripts = _page_assets(client)
    assert inline_scripts == 0, "inline scripts would be blocked by the page's CSP"
    assert "/ops/static/app.js" in assets and "/ops/static/ops.css" in assets


def test_every_asset_the_page_references_is_served_with_its_content_type(client):
    assets, _ = _page_assets(client)
    served = _module_graph(client, assets)
    for url in served:
        response = client.get(url)
        suffix = Path(url).suffix
        assert response.mimetype in CONTENT_TYPES[suffix], (url, response.mimetype)
    # Every module on disk is reachable from the page (none is dead, none is untested here).
    on_disk = {f"/ops/static/{p.relative_to(STATIC).as_posix()}" for p in STATIC.rglob("*.js")}
    assert on_disk == {url for url in served if url.endswith(".js")}


def test_missing_asset_is_404(client):
    assert client.get("/ops/static/nope.js").status_code == 404


# --- Contract between the page and the API -----------------------------------------


def test_every_api_call_of_the_page_exists_in_the_openapi_document(client):
    operations = _openapi_operations(client)
    api_module = (STATIC / "api.js").read_text()
    calls = [(method, _normalise(path)) for method, path in METHOD_CALL.findall(api_module)]
    calls += [("GET", _normalise(path)) for path in PAGE_CALL.findall(api_module)]
    # Nothing escapes the two patterns: every /api/ literal in api.js is one of the calls.
    assert len(calls) == api_module.count("`/api/"), "an /api/ path in api.js is not written as request/json/page(`...`)"
    assert len(calls) >= 15
    missing = sorted({call for call in calls if call not in operations})
    assert not missing, f"the dashboard calls endpoints the API does not have: {missing}"
    # The views the page promises are all there.
    for expected in [
        ("GET", "/api/experiments"), ("POST", "/api/experiments"), ("GET", "/api/experiments/{}"),
        ("POST", "/api/experiments/{}/start"), ("POST", "/api/experiments/{}/stop"),
        ("POST", "/api/experiments/{}/archive"), ("DELETE", "/api/experiments/{}"),
        ("GET", "/api/experiments/{}/results"), ("GET", "/api/experiments/{}/insights"),
        ("POST", "/api/experiments/{}/variants/{}/pause"), ("POST", "/api/experiments/{}/variants/{}/resume"),
        ("GET", "/api/experiments/{}/bandit/history"), ("GET", "/api/reports"), ("GET", "/api/reports/{}"),
        ("GET", "/api/audit"), ("GET", "/api/audit/verify"),
    ]:
        assert expected in calls, expected


def test_only_the_api_module_talks_to_the_server(client):
    for path in STATIC.rglob("*.js"):
        if path.name == "api.js":
            continue
        source = path.read_text()
        assert "/api/" not in source and "fetch(" not in source and "XMLHttpRequest" not in source, path


def test_the_page_own_documents_exist(client):
    for path in OWN_DOCUMENT.findall((STATIC / "api.js").read_text()):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.mimetype == "application/json"


# --- What the page mirrors ----------------------------------------------------------


def test_rbac_json_is_core_rbac_matrix(client):
    document = client.get("/ops/rbac.json").get_json()
    assert document["actions"] == {action: sorted(roles) for action, roles in rbac.MATRIX.items()}
    assert document["service_role"] == {"placeholder": rbac.SERVICE, "suffix": "_module"}
    assert rbac.is_service_role(f"pay{document['service_role']['suffix']}")


def test_vocabulary_json_is_models_enums(client):
    document = client.get("/ops/vocabulary.json").get_json()
    assert document["statuses"] == list(enums.STATUSES)
    assert document["modes"] == list(enums.MODES)
    assert document["event_types"] == list(enums.EVENT_TYPES)
    assert document["fail_fast_rules"] == list(enums.FAIL_FAST_RULES)
    assert document["fail_fast_actions"] == list(enums.FAIL_FAST_ACTIONS)
    assert document["guardrail_actions"] == list(enums.GUARDRAIL_ACTIONS)
    assert document["default_guardrails"] == list(enums.DEFAULT_GUARDRAILS)
    assert document["targeting_list_keys"] == list(enums.TARGETING_LIST_KEYS)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_javascript_allowed_agrees_with_core_rbac_cell_by_cell(client):
    """auth.js's allowed() run by node against rbac.json, for every role set and action."""
    role_sets = [[r] for r in (*rbac.HUMAN_ROLES, "pay_module", "connect_module", "_module", "module", "guest")]
    role_sets += [["marketing", "data_science"], ["guest", "pay_module"]]
    script = (
        f"import {{ setMatrix, allowed }} from {json.dumps((STATIC / 'auth.js').as_uri())};\n"
        "const input = JSON.parse(await new Promise((ok) => { let d = ''; process.stdin.on('data', (c) => d += c); process.stdin.on('end', () => ok(d)); }));\n"
        "setMatrix(input.matrix);\n"
        "console.log(JSON.stringify(input.roleSets.map((roles) => input.actions.map((a) => allowed(a, roles)))));\n"
    )
    payload = {"matrix": client.get("/ops/rbac.json").get_json(), "roleSets": role_sets, "actions": list(rbac.MATRIX)}
    result = subprocess.run(
        ["node", "--input-type=module", "-e", script], input=json.dumps(payload), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    expected = [[rbac.allowed(action, roles) for action in rbac.MATRIX] for roles in role_sets]
    assert answers == expected


# --- Bandit history ----------------------------------------------------------------


def _history_rows(experiment: dict, times: list[datetime]) -> None:
    """One snapshot per time, arms written in reverse position order and times shuffled."""
    variants = experiment["variants"]
    with session_scope() as session:
        for step, at in enumerate(times):
            for index, variant in reversed(list(enumerate(variants))):
                weight = (0.5 + 0.05 * step) if index == 1 else (0.5 - 0.05 * step)
                session.add(
                    BanditHistory(
                        experiment_id=uuid.UUID(experiment["id"]),
                        variant_id=uuid.UUID(variant["id"]),
                        users=100 * (step + 1),
                        successes=10 * (step + 1) + index,
                        alpha=10.0 * (step + 1) + index + 1,
                        beta=90.0 * (step + 1) + 1,
                        prob_best=weight,
                        weight=weight,
                        computed_at=at,
                    )
                )


def test_bandit_history_snapshots_oldest_first_with_arms_in_variant_order(client, auth, create_experiment):
    experiment = create_experiment(start=True, mode="bandit")
    base = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
    times = [base + timedelta(seconds=30 * i) for i in range(5)]
    _history_rows(experiment, [times[3], times[0], times[4], times[1], times[2]])
    other = create_experiment(start=True, name="Other")
    _history_rows(other, [base])

    response = client.get(f"/api/experiments/{experiment['id']}/bandit/history", headers=auth("marketing"))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["experiment_id"] == experiment["id"]
    assert body["mode"] == "bandit"
    assert [v["variant_id"] for v in body["variants"]] == [v["id"] for v in experiment["variants"]]
    assert body["variants"][0]["is_control"] is True
    computed = [datetime.fromisoformat(s["computed_at"]) for s in body["snapshots"]]
    assert computed == times
    for snapshot in body["snapshots"]:
        # Arms come in the experiment's variant order, whatever the insertion order.
        assert [a["variant_id"] for a in snapshot["arms"]] == [v["id"] for v in experiment["variants"]]
    # Step k was written at times[order[k]]: each snapshot carries its own rows' values.
    order = [3, 0, 4, 1, 2]
    for step, position in enumerate(order):
        arms = body["snapshots"][position]["arms"]
        assert arms[0]["users"] == 100 * (step + 1)
        assert arms[1]["weight"] == pytest.approx(0.5 + 0.05 * step)
        assert arms[1]["successes"] == 10 * (step + 1) + 1


def test_bandit_history_limit_keeps_the_latest_snapshots_and_since_filters(client, auth, create_experiment):
    experiment = create_experiment(start=True, mode="bandit")
    base = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
    times = [base + timedelta(minutes=i) for i in range(6)]
    _history_rows(experiment, times)
    url = f"/api/experiments/{experiment['id']}/bandit/history"

    latest = client.get(f"{url}?limit=2", headers=auth("data_science")).get_json()
    assert [datetime.fromisoformat(s["computed_at"]) for s in latest["snapshots"]] == times[-2:]
    assert all(len(s["arms"]) == 2 for s in latest["snapshots"])

    since = client.get(url, query_string={"since": times[3].isoformat()}, headers=auth("ops_admin")).get_json()
    assert [datetime.fromisoformat(s["computed_at"]) for s in since["snapshots"]] == times[3:]

    naive = client.get(url, query_string={"since": "2025-03-01T12:04:00"}, headers=auth("ops_admin")).get_json()
    assert [datetime.fromisoformat(s["computed_at"]) for s in naive["snapshots"]] == times[4:], "naive times are UTC"

    for bad in ({"limit": 0}, {"limit": 5001}, {"limit": "many"}, {"since": "yesterday"}):
        response = client.get(url, query_string=bad, headers=auth("ops_admin"))
        assert response.status_code == 422, bad
        assert response.get_json()["errors"]["query"]


def test_bandit_history_of_a_new_experiment_is_empty(client, auth, create_experiment):
    experiment = create_experiment()
    body = client.get(f"/api/experiments/{experiment['id']}/bandit/history", headers=auth()).get_json()
    assert body["snapshots"] == []
    assert len(body["variants"]) == 2


def test_bandit_history_unknown_experiment_is_404(client, auth):
    response = client.get(f"/api/experiments/{new_id()}/bandit/history", headers=auth())
    assert response.status_code == 404
    assert response.get_json()["message"].endswith("not found")


@pytest.mark.parametrize(
    ("roles", "status"),
    [(None, 401), ("pay_module", 403), ("ops_admin", 200), ("marketing", 200), ("data_science", 200)],
)
def test_bandit_history_rbac_is_the_results_action(client, auth, create_experiment, roles, status):
    experiment = create_experiment()
    headers = auth(roles) if roles else {}
    response = client.get(f"/api/experiments/{experiment['id']}/bandit/history", headers=headers)
    assert response.status_code == status


def test_bandit_history_carries_the_cumulative_comparison_with_control(client, auth, create_experiment):
    """Each snapshot compares every arm with control exactly as results do (sira.compare)."""
    from scipy.stats import beta as beta_distribution

    from sira.compare import compare_rates
    from sira.failfast import FailFastConfig
    from sira.stats import ProportionStats
    from sira.strata import PeriodTable

    experiment = create_experiment(start=True)
    base = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
    _history_rows(experiment, [base, base + timedelta(minutes=1)])
    body = client.get(f"/api/experiments/{experiment['id']}/bandit/history", headers=auth("marketing")).get_json()
    assert body["primary_metric"] == "conversion" and body["lower_is_better"] is False
    for step, snapshot in enumerate(body["snapshots"]):
        control, variant = snapshot["arms"]
        assert control["uplift"] is None and control["difference"] is None
        n_c, s_c = 100 * (step + 1), 10 * (step + 1)
        n_v, s_v = n_c, s_c + 1
        assert (control["event_users"], variant["event_users"]) == (s_c, s_v)
        table = PeriodTable.single([ProportionStats(users=n_c, successes=s_c), ProportionStats(users=n_v, successes=s_v)])
        difference, uplift = compare_rates(table, 0, 1, 0.95, FailFastConfig().target_samples)
        for served, expected in ((variant["difference"], difference), (variant["uplift"], uplift)):
            for key in ("estimate", "lower", "upper", "always_valid_lower", "always_valid_upper"):
                assert served[key] == pytest.approx(getattr(expected, key)), key
        assert variant["uplift"]["estimate"] == pytest.approx((s_v / n_v) / (s_c / n_c) - 1)
        assert variant["difference"]["estimate"] == pytest.approx(s_v / n_v - s_c / n_c)
        for served in (variant["difference"], variant["uplift"]):
            # An always-valid bound may be open (None, with a message) early on.
            bounds = [served["always_valid_lower"], served["lower"], served["estimate"], served["upper"], served["always_valid_upper"]]
            present = [b for b in bounds if b is not None]
            assert present == sorted(present) and served["lower"] < served["estimate"] < served["upper"]
        for arm in (control, variant):
            assert arm["posterior_mean"] == pytest.approx(arm["alpha"] / (arm["alpha"] + arm["beta"]))
            low, high = beta_distribution.ppf([0.025, 0.975], arm["alpha"], arm["beta"])
            assert arm["credible_interval"] == {"lower": pytest.approx(low), "upper": pytest.approx(high)}


def test_bandit_history_comparison_of_a_lower_is_better_metric_reads_the_event_rate(client, auth, create_experiment):
    experiment = create_experiment(start=True, primary_metric="refund")
    _history_rows(experiment, [datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)])
    body = client.get(f"/api/experiments/{experiment['id']}/bandit/history", headers=auth()).get_json()
    assert body["lower_is_better"] is True
    control, variant = body["snapshots"][0]["arms"]
    # History counts users without a refund as successes (10 of 100 and 11 of 100 here).
    assert (control["event_users"], variant["event_users"]) == (90, 89)
    assert variant["uplift"]["estimate"] == pytest.approx(0.89 / 0.90 - 1)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_charts_posterior_density_and_ticks_agree_with_scipy():
    """The density the dashboard draws is scipy's Beta pdf; axis ticks cover the range in round steps."""
    from scipy.stats import beta as beta_distribution

    cases = [(1.0, 1.0), (31.0, 277.0), (520.0, 4480.0), (2.5, 0.8)]
    points = [0.001, 0.05, 0.1, 0.2, 0.5, 0.9]
    script = (
        f"import {{ betaDensity, niceTicks }} from {json.dumps((STATIC / 'charts.js').as_uri())};\n"
        f"const cases = {json.dumps(cases)}; const points = {json.dumps(points)};\n"
        "console.log(JSON.stringify({ pdf: cases.map(([a, b]) => points.map((x) => betaDensity(x, a, b))),"
        " ticks: [niceTicks(0, 1, 5), niceTicks(-0.37, 0.37, 6), niceTicks(0.0931, 0.1287, 5)] }));\n"
    )
    result = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    for (a, b), row in zip(cases, answer["pdf"]):
        assert row == pytest.approx([beta_distribution.pdf(x, a, b) for x in points], rel=1e-7, abs=1e-300)
    unit, centred, narrow = answer["ticks"]
    assert unit == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert 0 in centred and centred == sorted(centred) and centred[0] >= -0.37 and centred[-1] <= 0.37
    steps = {round(b - a, 10) for a, b in zip(narrow, narrow[1:])}
    assert len(steps) == 1 and len(narrow) >= 3
