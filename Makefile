# Everything installs into .venv in the repository; each target is idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint fixtures bench bench-watch clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: it is the CPU wheel on disk; an open range would pull a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/attndbg inspect fixtures/*.safetensors --fail-on never

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check attndbg tests scripts
	$(BIN)/ruff format --check attndbg tests scripts

# One run: attndbg's inspection vs one SDPA forward at N = 1,024 / 4,096 / 16,384 (a few minutes).
bench: install
	$(BIN)/python scripts/bench.py --sizes 1024,4096,16384

# One run: a small GPT's training step with attndbg.watch(every=10) and (every=1) against none.
bench-watch: install
	$(BIN)/python scripts/bench_watch.py --runs 5 --steps 40

fixtures: install
	$(BIN)/python scripts/make_fixtures.py fixtures

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
