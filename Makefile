# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8000

.PHONY: run test lint bench load fixtures clean tools

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Test audio is real speech made with espeak-ng + sox; install them when missing.
tools:
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null || { \
	  echo "installing espeak-ng and sox (test speech)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq espeak-ng sox >/dev/null; }

run: $(STAMP)
	$(BIN)/uvicorn app.main:app --host 0.0.0.0 --port $(PORT) --ws-per-message-deflate false \
	  $(if $(wildcard .env),--env-file .env,)

lint: $(STAMP)
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench

test: $(STAMP) tools lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m bench.hot_path
	$(BIN)/python -m bench.replay_speed

# N concurrent calls through the real server process against the fakes (about 75 s;
# not part of `bench` or `test`). Options: make load LOAD_ARGS="--calls 50 --seconds 20".
load: $(STAMP) tools
	$(BIN)/python -m bench.load $(LOAD_ARGS)

# Re-record the call-fixture library (real app + fakes, real time; about two minutes).
fixtures: $(STAMP) tools
	$(BIN)/python -m tests.fixtures.record_library

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache tests/.cache
