# Two commands do all the set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LINT_PATHS := proxy drivers tests $(wildcard bench examples)

.PHONY: run test test-deploy test-long lint fmt bench bench-peers screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The example driver plugin is installed too: its entry point is what `keyrail plugins` lists.
EXAMPLE := examples/keyrail-driver-echo

$(STAMP): pyproject.toml $(EXAMPLE)/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]' -e $(EXAMPLE)
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/keyrail serve $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# The Dockerfile's commands without Docker (tests/test_deploy.py): pip install into a fresh
# venv from the registries, serve from it, pass its HEALTHCHECK. About a minute.
test-deploy: $(STAMP)
	KEYRAIL_TEST_DEPLOY=1 $(BIN)/python -m pytest -q tests/test_deploy.py

# The long tier of the fault battery (tests/battery): prints its figures at the end.
test-long: $(STAMP)
	$(BIN)/python -m pytest -q -m long tests/battery

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/mypy --strict $(EXAMPLE)/src

fmt: $(STAMP)
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)

# The benchmark (bench/README.md). BENCH_ARGS go to `python -m bench`, e.g. BENCH_ARGS="-s json-c32".
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Peers for the bench: nginx and strace from Debian, LiteLLM (pinned: a release from before the
# compromised ones) in its own venv under bench/.peers, then proof it stays on this machine.
PEERS   := bench/.peers
LITELLM ?= litellm[proxy]==1.81.13
bench-peers: $(STAMP)
	command -v nginx >/dev/null && command -v strace >/dev/null && command -v valgrind >/dev/null || \
	  { apt-get update && apt-get install -y --no-install-recommends nginx-light strace valgrind; }
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet '$(LITELLM)'
	$(BIN)/python -m bench verify-litellm

# The status page's screenshots in docs/status/, taken by its browser tests (needs chromium).
screenshots: $(STAMP)
	KEYRAIL_STATUS_SCREENSHOTS=docs/status $(BIN)/python -m pytest -q tests/test_status_page.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
