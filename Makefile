# Two commands do all set-up: `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LINTED := triage tests $(wildcard benchmarks)

.PHONY: run demo test check lint format typecheck clean venv train validate

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# `make run` uses a local API token (var/.api-token, made once, mode 600) for scripts that read
# the worklist; a site sets its own (docs/security.md).
DEV_TOKEN = $(shell mkdir -p var && (test -s var/.api-token || (umask 077; \
	$(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(24))' > var/.api-token)) \
	&& cat var/.api-token)

# The token goes through the environment (exported for this target only): neither make's echo
# of the recipe nor the command line that `ps` shows carries it.
ENV_API_TOKEN := $(TRIAGE_API_TOKEN)
run: export TRIAGE_API_TOKEN = $(or $(ENV_API_TOKEN),$(DEV_TOKEN))
run: $(STAMP)
	@echo "$(BIN)/triage serve $(ARGS)   (API token: var/.api-token, or TRIAGE_API_TOKEN)"
	@$(BIN)/triage serve $(ARGS)

# A busy emergency shift in about a minute: its own engine (temporary data dir, ephemeral
# ports, the bundled Triton) and test RIS; nothing else needs to run (ARGS="--studies 20").
demo: $(STAMP)
	$(BIN)/triage demo $(ARGS)

check: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

# Two pytest workers by default (pytest-xdist): the suite waits on servers and peers about half
# of the time. TEST_WORKERS=0 runs it in one process (e.g. to read -s output in order).
TEST_WORKERS ?= 2
test: $(STAMP) check
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

# Models (synthetic phantoms; not for clinical use): retrain from fixed seeds, then validate
# on held-out seeds through the engine's own path and the real Triton, once per shipped model
# version (docs/models/ledger.md; a second run needs ARGS='--again "reason"'), then the frozen
# stress suite, then the independent look (another generator's studies through the engine);
# each rewrites docs/models/report.md.
train: $(STAMP)
	$(BIN)/pip install -q -e '.[train]'
	$(BIN)/triage models train $(ARGS)

validate: $(STAMP)
	$(BIN)/triage models validate --out docs/models $(ARGS)
	$(BIN)/triage models stress --out docs/models
	$(BIN)/triage models crosscheck --out docs/models

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
