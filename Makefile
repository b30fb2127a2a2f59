# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: run test lint bench bench-noise load fixtures clean tools demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# `run` needs only the package; test, lint and the rest need the dev extras too
# (a superset, so installing them also satisfies `run`).
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP) $(RUN_STAMP)

# Test audio is real speech made with espeak-ng + sox, the call store's tests need
# PostgreSQL's server binaries, the browser tests chromium, the scale-out proof HAProxy;
# install them when missing.
tools:
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null || { \
	  echo "installing espeak-ng and sox (test speech)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq espeak-ng sox >/dev/null; }
	@# The call store's tests run a real PostgreSQL server of their own (tests/pg.py): the
	@# package must not create and start a system cluster of its own on port 5432.
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing postgresql (call store tests)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  [ -e /etc/postgresql-common/createcluster.conf ] || { \
	    $$SUDO mkdir -p /etc/postgresql-common && \
	    echo "create_main_cluster = false" | $$SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null; }; \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
	    postgresql >/dev/null; }
	@# The call viewer's browser tests (tests/browser.py) drive Debian's chromium through
	@# Playwright, which never downloads a browser of its own.
	@# The rolling-restart proof (tests/test_e2e_rolling.py) runs a real HAProxy in front of
	@# three app processes; the deploy files' test (tests/test_deploy.py) checks the compose
	@# file with docker-compose (v1, from Debian: `config` needs no Docker engine).
	@{ command -v haproxy || test -x /usr/sbin/haproxy; } >/dev/null && command -v docker-compose >/dev/null || { \
	  echo "installing haproxy and docker-compose (scale-out proof, deploy files)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy docker-compose >/dev/null; }
	@command -v chromium >/dev/null || { \
	  echo "installing chromium (browser tests)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The server on HOST:PORT from the environment or .env (default 0.0.0.0:8000; app/__main__.py):
# `make run PORT=9000` works too, as make passes command-line variables to the recipe's
# environment: `make run AGENTS_FILE=examples/agents.toml` serves the example agents.
run: $(RUN_STAMP)
	$(BIN)/python -m app

# The call viewer with the fixture library's calls in it (app/demo.py): a fresh operator
# key printed here, a temporary SQLite store, http://127.0.0.1:PORT/ui/ (8000) until Ctrl-C.
demo: $(RUN_STAMP)
	$(BIN)/python -m app.demo

lint: $(STAMP)
	$(BIN)/ruff check app tests bench examples
	$(BIN)/ruff format --check app tests bench examples
	$(BIN)/mypy

test: $(STAMP) tools lint
	$(BIN)/pytest

# What a call costs: the server beside a floor relay under N concurrent calls (server on
# CPU 0, simulated callers + fake Realtime on CPU 1; about 3 minutes with the defaults),
# then the fixture replay speed, then the noise benchmark (bench-noise).
# Options: make bench BENCH_ARGS="--calls 50,100 --runs 3".
BENCH_ARGS ?= --calls 100,200,400 --seconds 15 --runs 1
bench: $(STAMP) tools
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.replay_speed
	$(BIN)/python -m bench.frame_cost
	$(BIN)/python -m bench.noise.run $(NOISE_ARGS)

# How the turn-taking modes (INTERRUPT_MODE...) cope with a noisy line: one call per clip
# (noises, backchannels, echoes, interruptions) per mode, in real time, about a minute and
# a half; the table and per-clip JSON land in bench/results/. Options: NOISE_ARGS="--quick"
# (one clip of each kind), "--configs cancel,resume", "--clips noise:fan,...".
NOISE_ARGS ?=
bench-noise: $(STAMP) tools
	$(BIN)/python -m bench.noise.run $(NOISE_ARGS)

# The old name of `make bench`.
load: bench

# Re-record the call-fixture library (real app + fakes, real time; about two minutes).
fixtures: $(STAMP) tools
	$(BIN)/python -m tests.fixtures.record_library

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache tests/.cache
