PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements-installed

.PHONY: run migrate demo start stop logs test lint fuzz flower bench-compare bench-assign bench-ingest bench-sira bench-bandit bench-sim bench-validity bench-sdk chaos vectors clean

# docker compose v2, or the older docker-compose
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	touch $(STAMP)

## Run the whole platform: API on :3010, Celery worker and beat (embedded PostgreSQL/Redis if no URLs).
## Reads .env (cp .env.example .env); variables already exported win.
run: $(STAMP)
	$(BIN)/python scripts/run.py

## Apply the database migrations to DATABASE_URL (from .env or the environment).
migrate: $(STAMP)
	$(BIN)/alembic upgrade head

## Simulated users through the running API (start `make run` first): DEMO_MINUTES=5 make demo
demo: $(STAMP)
	$(BIN)/flask --app api seed-demo --minutes $${DEMO_MINUTES:-5}

## The docker-compose stack (API on 127.0.0.1:3010, Grafana on 127.0.0.1:3000); secrets from .env.
start:
	$(COMPOSE) up -d --build --wait

stop:
	$(COMPOSE) down

logs:
	$(COMPOSE) logs -f --tail=200

## Run the full test suite against real PostgreSQL and Redis.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Static checks: ruff (pyflakes, bugbear, import order, pyupgrade) and mypy (strict on sira/).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

## Flower on :5555 against the configured broker.
flower: $(STAMP)
	$(BIN)/celery -A tasks.celery_app flower --port=5555

## Side by side, interleaved rounds: assign and track vs Sixpack 2.7.0 and a bare Flask+Redis ceiling (shipped defaults).
## BENCH_REDIS_URL picks the Redis server (databases 8-13 are flushed); BENCH_COMPARE_ARGS e.g. "--rounds 1 --duration 5".
bench-compare: $(STAMP)
	bash bench/compare/setup.sh
	$(BIN)/python bench/compare/side_by_side.py $(BENCH_COMPARE_ARGS)

## Assignment benchmark (needs wrk): cached and new-user assign vs a bare Flask+Redis baseline.
bench-assign: $(STAMP)
	$(BIN)/python bench/bench_assign.py

## Ingestion benchmark (needs wrk): track vs baseline, 500,000 batched events end to end, 60 s backlog soak.
bench-ingest: $(STAMP)
	$(BIN)/python bench/bench_ingest.py

## SIRA: one recompute + fail-fast cycle over 1,000 running experiments x 5 arms (scratch database).
bench-sira: $(STAMP)
	$(BIN)/python bench/bench_sira_cycle.py

## The bandit end to end through API, worker and beat (20,000 simulated users, 0.10 vs 0.12).
bench-bandit: $(STAMP)
	$(BIN)/python bench/bench_bandit_e2e.py

## Python SDK: local assign vs the server's assign per core, definitions download for 1,000 experiments (needs wrk).
bench-sdk: $(STAMP)
	$(BIN)/python bench/bench_sdk.py

## Faults under load (private embedded PostgreSQL and Redis, production mode): restart Redis, flush its caches,
## SIGKILL the worker, restart PostgreSQL, fill the backlog; per phase status codes, p99, sticky violations,
## lost/doubled events, recovery. CHAOS_ARGS e.g. "--phase 60 --rate 60". Not part of `make test`.
chaos: $(STAMP)
	$(BIN)/python bench/chaos.py $(CHAOS_ARGS)

## Regenerate the SDK's test vectors from the server's assignment code.
vectors: $(STAMP)
	$(BIN)/python scripts/generate_sdk_vectors.py

## Statistical simulations: fail-fast false-stop rates, bandit regret, money (CUPED, capping).
bench-sim: $(STAMP)
	$(BIN)/python bench/sim_failfast.py --seeds 10000 --tune
	$(BIN)/python bench/sim_regret.py --investigate
	$(BIN)/python bench/sim_money.py --reps 2000 --json bench/results/money.json

## Decisions under bandit allocation, drift, peeking and late outcomes: the 2,000-replication table.
bench-validity: $(STAMP)
	$(BIN)/python bench/sim_adaptive.py --seeds 2000 --pooled

## Fuzz the running platform (start `make run` first) from its OpenAPI spec: no request may get a 5xx.
## Every other JSON body carries a hostile value (tests/support/fuzz_hooks.py: NaN, NUL, surrogates, 1,000-deep
## nesting); generated strings include NUL everywhere. `make test` runs a bounded profile (tests/api/test_fuzz_hostile.py).
fuzz: $(STAMP)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-fuzz.txt
	SCHEMATHESIS_HOOKS=tests.support.fuzz_hooks PYTHONPATH=. $(BIN)/schemathesis run http://localhost:$${PORT:-3010}/openapi.json \
		-H "Authorization: Bearer $$($(BIN)/flask --app api dev-token --role ops_admin --role pay_module)" \
		-c not_a_server_error --max-examples $${FUZZ_EXAMPLES:-100} -w 2 --generation-allow-x00 true

clean:
	rm -rf var/test .pytest_cache
