# The two commands a user needs: `make demo` and `make test`. Both build .venv from nothing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= bst-runs/demo

.PHONY: venv demo test test-system test-cluster lint docs bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .[dev]
	$(BIN)/pip install -q --no-deps laion-clap==1.1.7  # its numpy<2 pin and training deps: README, Extraction
	touch $@

venv: $(BIN)/.installed

test: venv docs
	$(BIN)/ruff check bst_search tests benchmarks launch
	$(BIN)/python -m pytest -q tests -m "not cluster and not system"

# The package and the driver as an operator meets them: a wheel installed outside the source
# tree, the Docker image's pip lines, SIGTERM and SIGHUP mid-sweep, a stalled driver's lease.
test-system: venv
	$(BIN)/python -m pytest -q tests -m system --durations=0

# the documentation site (docs/, mkdocs.yml): a broken link or a page missing from the nav fails
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir bst-runs/site

# A three-node Ray cluster with S3 (moto), PostgreSQL and an MLflow server, node/head/MLflow
# loss mid-sweep, and ray up -> ray submit -> ray down over ssh (needs openssh-server).
test-cluster: venv
	$(BIN)/python -m pytest -q tests -m cluster --durations=0

demo: venv
	$(BIN)/bst-search demo --workdir $(DEMO_DIR)

lint: venv
	$(BIN)/ruff check bst_search tests benchmarks launch

bench: venv
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_data.py --skip-difficulty
	$(BIN)/python benchmarks/bench_trial.py
	$(BIN)/python benchmarks/bench_ensemble.py
	$(BIN)/python benchmarks/bench_search.py
	$(BIN)/python benchmarks/bench_extract.py

# what the Makefile built (.venv, the docs site) and the demo's folder; a sweep of one's own
# under bst-runs/ is never touched (bst-runs/ goes only when nothing else is left in it)
clean:
	rm -rf $(VENV) bst-runs/site $(DEMO_DIR)
	rmdir bst-runs 2>/dev/null || true
