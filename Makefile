# Everything runs inside the locked environment (.venv, from uv.lock).
# uv is installed on first use when the machine lacks it.
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
export UV_PYTHON_DOWNLOADS := never

# The development instance: the demo records its runs there and the UI opens it.
DEV_HOME := $(CURDIR)/.dagster_home
# The UI's port: `make dev PORT=3001`.
PORT ?= 3000
# Idle sensors log every tick at info; runs, ticks and their logs are all in the UI.
LOG_LEVEL ?= warning

.PHONY: demo test test-fast dev lint bench image-test sync bootstrap

demo: sync  ## Seed sample calls into the embedded engine, publish 8 days, fail 1 on purpose.
	DAGSTER_HOME="$(DEV_HOME)" $(UV) run --frozen python -m agent_metrics_pipeline.demo

test: sync  ## The whole test suite, against the real engine and a local S3 server.
	$(UV) run --frozen pytest

test-fast: sync  ## Everything but the end-to-end runs (dagster dev, the browser, PostgreSQL, CLIs, demo), on 2 workers.
	$(UV) run --frozen pytest -m "not e2e" -n 2

dev: sync  ## Checks the settings, then the Dagster UI on http://127.0.0.1:$(PORT) (3000 unless PORT=...; LOG_LEVEL=info for the daemon's every tick) over the demo's instance (.dagster_home/).
	@set -a; [ ! -f "$(DEV_HOME)/demo.env" ] || . "$(DEV_HOME)/demo.env"; set +a; \
	$(UV) run --frozen python -m agent_metrics_pipeline.core.settings || exit 2; \
	echo "The Dagster UI opens on http://127.0.0.1:$(PORT) (Ctrl-C stops it)."; \
	DAGSTER_HOME="$(DEV_HOME)" $(UV) run --frozen dg dev -p "$(PORT)" --log-level "$(LOG_LEVEL)" --code-server-log-level "$(LOG_LEVEL)"

bench: sync  ## Every performance goal against baselines of the same run (about an hour and a quarter).
	$(UV) run --frozen python -m benchmarks.run --markdown benchmarks/results.md
	$(UV) run --frozen python -m benchmarks.run --only range-memory --markdown benchmarks/results-range-memory.md
	$(UV) run --frozen python -m benchmarks.run --only history --markdown benchmarks/results-history.md

image-test: sync  ## Build the image and run a day through it: code location, daemon and webserver in containers (root, podman; about 4 minutes, 2 the second time).
	$(UV) run --frozen python deploy/image_test.py

lint: sync
	$(UV) run --frozen ruff check . && $(UV) run --frozen ruff format --check .

# The demo, the UI and the tests run on the embedded engine, an extra that production leaves out.
sync: bootstrap
	$(UV) sync --frozen --extra embedded

bootstrap:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet --user "uv==$(UV_VERSION)" \
		|| python3 -m pip install --quiet --user --break-system-packages "uv==$(UV_VERSION)"
