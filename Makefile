# landcover developer commands. Everything runs from .venv/ in the repo root, built with pip
# from pyproject.toml + constraints.txt (tested pins; torch installs offline from the local cache).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= demo-output

.PHONY: setup demo test lint typecheck format bench docs cli-docs strip-notebooks clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python docs/fetch_mermaid.py
	touch $(STAMP)

setup: $(STAMP)

## make demo: set up, then run the whole pipeline on embedded defaults (synthetic data, local Zarr, local Dask).
demo: setup
	$(BIN)/landcover demo --out $(OUT)

## make test: set up, then lint (ruff), type-check (mypy strict) and run the test suite, one pytest-xdist worker
## per core (at most 4), slow tests first (tests/conftest.py). TEST_WORKERS=0: in one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
test: setup lint typecheck
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'make test: pytest collected no tests (exit 5)' >&2; exit 1; fi; exit $$rc

lint: setup
	$(BIN)/ruff check landcover pipelines tests bench docs/*.py
	$(BIN)/ruff format --check landcover pipelines tests bench docs/*.py

typecheck: setup
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix landcover pipelines tests bench docs/*.py
	$(BIN)/ruff format landcover pipelines tests bench docs/*.py

## make bench: every benchmark at its default (full) size; figures land in bench-output/.
bench: setup
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

## make docs: API + CLI reference (mkdocs, strict) into build/site; fails if docs/cli.md is stale.
docs: setup
	$(BIN)/python docs/gen_cli.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

cli-docs: setup
	$(BIN)/python docs/gen_cli.py

strip-notebooks: setup
	$(BIN)/nbstripout notebooks/*.ipynb

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache .mypy_cache
