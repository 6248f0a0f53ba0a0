# Two entry points for a fresh machine: `make demo` (main job on built-in data) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU build first so that nothing later pulls a multi-GB CUDA wheel.
TORCH ?= torch==2.13.0

.PHONY: venv demo test test-all lint bench docs notebooks clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev,docs]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/pyrobayes compare --out pyrobayes-out

test: venv
	$(BIN)/python -m pytest -q

test-all: venv
	$(BIN)/python -m pytest -q -m ""

lint: venv
	$(BIN)/ruff check pyrobayes tests benchmarks
	$(BIN)/ruff format --check pyrobayes tests benchmarks

bench: venv
	$(BIN)/python benchmarks/bench_svi.py
	$(BIN)/python benchmarks/bench_pfn.py
	$(BIN)/python benchmarks/bench_classify.py
	$(BIN)/python benchmarks/bench_reference.py
	$(BIN)/python benchmarks/bench_tabular.py

# The documentation site, offline and strict (a broken reference or docstring warning fails).
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Run every notebook in its full setting and store the outputs in the files (commit them).
notebooks: venv
	MPLBACKEND=Agg $(BIN)/python notebooks/execute.py

clean:
	rm -rf $(VENV) pyrobayes-out build site *.egg-info
