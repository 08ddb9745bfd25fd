"""The deployment files agree with the code (Docker does not run here, so this is checked statically).

* docker-compose.yml: every command points at a real module or entry point, every
  environment variable of an application service is one the config reads, the
  required ones are set, and ports, healthchecks and Prometheus targets match.
* The Grafana dashboard and the Prometheus alerts query only metrics the code exports,
  with labels those metrics carry.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from core.config import PROCESS_VARIABLES, PROJECT_ROOT

COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = [name for name, service in SERVICES.items() if "build" in service]
PROMETHEUS = yaml.safe_load((PROJECT_ROOT / "deploy/prometheus/prometheus.yml").read_text())
ALERTS = yaml.safe_load((PROJECT_ROOT / "deploy/prometheus/alerts.yml").read_text())
DASHBOARD = json.loads((PROJECT_ROOT / "deploy/grafana/dashboards/molam-experiments.json").read_text())
#: Variables owned by a third-party program in the image, not by core.config.
THIRD_PARTY_VARIABLES = {"FLOWER_BASIC_AUTH"}

_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?([-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}``, ``${NAME:?error}`` and ``$$``."""

    def one(match: re.Match) -> str:
        name, kind, argument = match.groups()
        if name in env:
            return env[name]
        if kind == "?":
            raise KeyError(f"{name} is required: {argument}")
        return argument or ""

    return _VARIABLE.sub(one, value).replace("$$", "$")


def referenced_variables(value: str) -> set[str]:
    return {match.group(1) for match in _VARIABLE.finditer(value)}


def config_variables() -> set[str]:
    source = (PROJECT_ROOT / "core/config.py").read_text()
    return set(re.findall(r"_(?:str|int|float|flag|choice)\(\s*\"([A-Z0-9_]+)\"", source)) | set(PROCESS_VARIABLES)


def service_env(name: str, secrets: dict[str, str] | None = None) -> dict[str, str]:
    secrets = secrets or {}
    return {key: interpolate(str(value), secrets) for key, value in (SERVICES[name].get("environment") or {}).items()}


def dummy_secrets() -> dict[str, str]:
    names: set[str] = set()
    for service in SERVICES.values():
        for value in (service.get("environment") or {}).values():
            names |= {n for n in referenced_variables(str(value))}
        names |= referenced_variables(json.dumps(service.get("ports", [])))
    # Long enough for every length rule (AUDIT_HMAC_KEY needs 32 characters).
    return {name: f"dummy{name.lower()}" * 3 for name in names if f"${{{name}:?" in (PROJECT_ROOT / "docker-compose.yml").read_text()}


def healthcheck_url(name: str) -> str:
    test = SERVICES[name]["healthcheck"]["test"]
    return next(part for part in test if isinstance(part, str) and part.startswith("http"))


def port_of(url: str) -> int:
    return int(re.match(r"https?://[^/:]+:(\d+)", url).group(1))


def module_defines(module: str, attribute: str) -> bool:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"no module {module}"
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == attribute for t in targets):
            return True
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == attribute:
            return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == attribute for a in node.names):
            return True
    return False


# --------------------------------------------------------------------------- compose


def test_every_command_points_at_real_code():
    for name in APP_SERVICES:
        command = SERVICES[name]["command"]
        program = command[0]
        if program == "celery":
            app_module = command[command.index("-A") + 1]
            assert module_defines(app_module, "celery"), f"{name}: {app_module} has no Celery app named celery"
            assert command[command.index("-A") + 2] in {"worker", "beat", "flower"}, name
        elif program == "gunicorn":
            config = command[command.index("-c") + 1]
            assert (PROJECT_ROOT / config).is_file(), config
            module, attribute = command[-1].split(":")
            assert module_defines(module, attribute), f"{name}: {command[-1]} does not exist"
        elif program == "alembic":
            assert command[1:] == ["upgrade", "head"] and (PROJECT_ROOT / "alembic.ini").is_file()
        else:
            pytest.fail(f"{name}: unexpected program {program}")
        test = SERVICES[name].get("healthcheck", {}).get("test", [])
        if "-m" in test:
            assert importlib.util.find_spec(test[test.index("-m") + 1]) is not None, f"{name}: {test}"


def test_application_services_use_only_variables_the_config_reads():
    known = config_variables() | THIRD_PARTY_VARIABLES
    for name in APP_SERVICES:
        unknown = set(SERVICES[name].get("environment") or {}) - known
        assert not unknown, f"{name} sets variables no code reads: {sorted(unknown)}"


def test_required_settings_are_set_and_load(monkeypatch):
    from core.config import load_settings

    secrets = dummy_secrets()
    for name in APP_SERVICES:
        env = service_env(name, secrets)
        for required in ("APP_ENV", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "MOLAM_ID_PUBLIC_KEY"):
            assert env.get(required), f"{name} does not set {required}"
        assert env["APP_ENV"] == "production"
        for key in config_variables():
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = load_settings()  # raises ConfigError on anything a production process would refuse
        assert settings.is_production and settings.log_format == "json"
        assert settings.database_url.startswith("postgresql+psycopg://")
    # Without the secrets, compose refuses to start rather than run with blanks.
    with pytest.raises(KeyError):
        service_env("api", {})


def test_the_app_runs_as_a_least_privilege_role_and_migrations_as_owner():
    secrets = dummy_secrets()
    postgres = service_env("postgres", secrets)
    owner = postgres["POSTGRES_USER"]
    assert postgres["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256" and "scram-sha-256" in postgres["POSTGRES_INITDB_ARGS"]
    assert "trust" not in (PROJECT_ROOT / "docker-compose.yml").read_text()
    for name in APP_SERVICES:
        user = re.match(r"postgresql://([^:]+):", service_env(name, secrets)["DATABASE_URL"]).group(1)
        assert user == (owner if name == "migrate" else postgres["APP_DB_USER"]), name
    assert postgres["APP_DB_USER"] != owner
    mounted = [v for v in SERVICES["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v]
    script = PROJECT_ROOT / mounted[0].split(":")[0]
    assert script.is_file() and "ALTER DEFAULT PRIVILEGES" in script.read_text()


def test_redis_requires_a_password_and_persists():
    command = " ".join(SERVICES["redis"]["command"])
    assert "--requirepass" in command and "--appendonly yes" in command and "noeviction" in command
    for name in APP_SERVICES:
        env = service_env(name, dummy_secrets())
        for key in ("REDIS_URL", "CELERY_BROKER_URL"):
            assert re.match(r"redis://:[^@]+@redis:6379/\d$", env[key]), (name, key)


def test_only_the_api_and_grafana_are_published_on_localhost():
    published = {name: service["ports"] for name, service in SERVICES.items() if service.get("ports")}
    assert set(published) == {"api", "grafana"}
    for ports in published.values():
        for mapping in ports:
            host, _, container = interpolate(mapping, {}).rpartition(":")
            assert host.startswith("127.0.0.1:"), mapping
    assert "FLOWER_BASIC_AUTH" in SERVICES["flower"]["environment"]
    assert SERVICES["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_healthchecks_depends_on_and_volumes():
    for name, service in SERVICES.items():
        if name != "migrate":  # a one-shot: its dependents wait for it to complete
            assert "healthcheck" in service, f"{name} has no healthcheck"
        for dependency, rule in (service.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if dependency == "migrate" else "service_healthy"
            assert rule == {"condition": expected}, (name, dependency)
    declared = set(COMPOSE["volumes"])
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (PROJECT_ROOT / source).exists(), f"{name} mounts a missing {source}"
            else:
                assert source in declared, f"{name} uses an undeclared volume {source}"
    for name in ("postgres", "redis", "prometheus", "grafana"):
        assert any(v.split(":")[0] in declared for v in SERVICES[name]["volumes"]), f"{name} keeps no data"


def test_ports_healthchecks_and_scrape_targets_match():
    secrets = dummy_secrets()
    api = SERVICES["api"]
    bind_port = int(api["command"][api["command"].index("-b") + 1].rsplit(":", 1)[1])
    assert int(service_env("api", secrets)["PORT"]) == bind_port
    assert int(interpolate(api["ports"][0], {}).rsplit(":", 1)[1]) == bind_port
    assert healthcheck_url("api") == f"http://127.0.0.1:{bind_port}/readyz"
    exporters = {
        "api": bind_port,
        "worker": int(service_env("worker", secrets)["WORKER_METRICS_PORT"]),
        "beat": int(service_env("beat", secrets)["BEAT_METRICS_PORT"]),
        "flower": int(next(a for a in SERVICES["flower"]["command"] if a.startswith("--port=")).split("=")[1]),
    }
    for name in ("worker", "beat"):
        assert port_of(healthcheck_url(name)) == exporters[name]
    assert port_of(healthcheck_url("flower")) == exporters["flower"]
    targets = {}
    for job in PROMETHEUS["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for host in sd["names"]:
                targets[host] = sd["port"]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.split(":")
                targets[host] = int(port)
    assert targets == exporters
    prometheus_volume = next(v for v in SERVICES["prometheus"]["volumes"] if v.startswith("./"))
    assert prometheus_volume.split(":")[1] == "/etc/prometheus"
    assert PROMETHEUS["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_dockerfile_runs_as_non_root_with_a_healthcheck():
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*scripts\.healthcheck.*/readyz", dockerfile, re.M)
    ignored = set((PROJECT_ROOT / ".dockerignore").read_text().split())
    assert {".env", "var/", ".venv/", ".git/"} <= ignored


def test_env_example_names_only_known_variables():
    compose_text = (PROJECT_ROOT / "docker-compose.yml").read_text()
    compose_variables = referenced_variables(compose_text)
    known = config_variables() | compose_variables
    names = re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (PROJECT_ROOT / ".env.example").read_text(), re.M)
    unknown = set(names) - known
    assert not unknown, f".env.example documents variables nothing reads: {sorted(unknown)}"
    assert config_variables() - {"MOLAM_ENV_FILE", "PROMETHEUS_MULTIPROC_DIR"} <= set(names), (
        f"undocumented in .env.example: {sorted(config_variables() - set(names))}"
    )


# --------------------------------------------------------------------------- dashboards and alerts

_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan",
    "sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
}


def promql_metrics(expr: str) -> dict[str, set[str]]:
    """Metric names in a PromQL expression, each with the label names its selectors match on."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations
    found: dict[str, set[str]] = {}
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", expr):
        name, selector = match.groups()
        rest = expr[match.end():].lstrip()
        before = expr[: match.start()].rstrip()
        if name.lower() in _PROMQL_WORDS or rest.startswith("(") or before.endswith(("by (", "without (", "by(", "without(")):
            continue
        if re.match(r"^\d", name) or before.endswith("[") or (before.endswith(",") and _inside_grouping(expr, match.start())):
            continue
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*[=!]~?", selector)) if selector else set()
        found.setdefault(name, set()).update(labels)
    return found


def _inside_grouping(expr: str, position: int) -> bool:
    opened = expr.rfind("(", 0, position)
    return bool(re.search(r"\b(by|without)\s*$", expr[:opened]))


@pytest.fixture
def exported(app, client, create_experiment, settings) -> dict[str, set[str]]:
    """Every sample name the code exports, with its label names: API, worker and beat metrics."""
    from prometheus_client.metrics import MetricWrapperBase

    import core.metrics as declared
    from api.observability import DatabaseCollector
    from tasks.metrics import StreamCollector

    names: dict[str, set[str]] = {}
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}
    for metric in vars(declared).values():
        if isinstance(metric, MetricWrapperBase):
            labels = set(metric._labelnames)
            for family in metric.describe():
                for suffix in suffixes[family.type]:
                    names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    experiment = create_experiment(start=True)
    from services.analysis.jobs import recompute_posteriors

    recompute_posteriors(None)
    collected = list(DatabaseCollector().collect())
    assert {family.name for family in collected} == set(DatabaseCollector.FAMILIES)  # the declared list is the truth
    for family in collected:
        names[family.name] = set(family._labelnames)
    client.get("/api/experiments")  # one request, so the HTTP metrics have samples
    text = client.get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    for family in StreamCollector(settings.redis_url).collect():
        names[family.name] = set()
    assert any(s.labels.get("experiment_id") == experiment["id"] for f in text_string_to_metric_families(text) if f.name == "sira_arm_weight" for s in f.samples)
    names["up"] = {"job", "instance"}  # Prometheus' own, per scrape target
    return names


def _check(expr: str, exported: dict[str, set[str]], where: str) -> None:
    metrics = promql_metrics(expr)
    assert metrics, f"{where}: no metric in {expr!r}"
    for name, labels in metrics.items():
        assert name in exported, f"{where}: {name} is not exported by the code"
        assert labels <= exported[name] | {"job", "instance"}, f"{where}: {name} has no label {labels - exported[name]}"


def test_dashboard_queries_use_exported_metrics(exported):
    panels = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
    titles = " | ".join(p["title"] for p in panels).lower()
    for seed_panel in ("active experiments", "variant performance comparison", "conversion funnel by variant",
                       "bandit weights", "α", "β", "backlog", "lag", "dead letters", "latency"):
        assert seed_panel in titles, seed_panel
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            _check(target["expr"], exported, f"panel {panel['title']!r}")
    variable = DASHBOARD["templating"]["list"][0]
    _check(variable["definition"].replace("label_values(", "").split(",")[0], exported, "variable")


def test_alert_rules_use_exported_metrics(exported):
    rules = [rule for group in ALERTS["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert {"IngestBacklogGrowing", "IngestDrainErrors", "SrmFlagged", "WorkerDown"} <= names
    for rule in rules:
        _check(rule["expr"], exported, f"alert {rule['alert']}")
        assert rule["annotations"]["summary"]


def test_grafana_provisioning_points_at_the_dashboard_and_datasource():
    provisioning = PROJECT_ROOT / "deploy/grafana/provisioning"
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"][0]
    provider = yaml.safe_load((provisioning / "dashboards/molam.yml").read_text())["providers"][0]
    mounts = dict(v.split(":")[:2] for v in SERVICES["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert datasource["url"] == "http://prometheus:9090"
    uids = {t["datasource"]["uid"] for p in DASHBOARD["panels"] if p["type"] != "row" for t in p["targets"]}
    assert uids == {datasource["uid"]}
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/molam-experiments.json"


def test_promql_parser_finds_what_it_should():
    assert promql_metrics('sum by (le, job) (rate(a_b_bucket{job="x", le!="1"}[5m])) / b') == {"a_b_bucket": {"job", "le"}, "b": set()}
    assert promql_metrics('time() - max(c{task="ingest.drain_events"}) > 60') == {"c": {"task"}}
    assert promql_metrics("up == 0 or absent(up)") == {"up": set()}
