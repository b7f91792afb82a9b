# Two commands on a fresh machine: `make demo` and `make test`. Everything lives in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= 2
AIRFLOW_VERSION := 3.3.2
AIRFLOW_VENV    := .airflow-venv
AIRFLOW_STAMP   := $(AIRFLOW_VENV)/.installed-stamp

.PHONY: install airflow-venv demo test test-cluster lint bench clean

# PyTorch's CPU build first (the x-ray models; the plain `torch` requirement would pull
# the CUDA build and gigabytes of NVIDIA libraries), then copml with its extras.
TORCH_CPU ?= torch==2.13.0+cpu

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH_CPU)'
	$(BIN)/python -m pip install --quiet -e '.[test,vision,cluster]'
	touch $(STAMP)

install: $(STAMP)

# Apache Airflow in its own virtualenv (its pins clash with copml's), for tests/test_airflow.py.
# Refresh the constraints: pip freeze a clean `pip install apache-airflow==$(AIRFLOW_VERSION)`.
$(AIRFLOW_STAMP): ci/airflow-constraints.txt
	rm -rf $(AIRFLOW_VENV)
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet apache-airflow==$(AIRFLOW_VERSION) \
		--constraint ci/airflow-constraints.txt
	touch $(AIRFLOW_STAMP)

airflow-venv: $(AIRFLOW_STAMP)

demo: $(STAMP)
	rm -rf demo-churn
	$(BIN)/copml demo churn --months 12 --dir demo-churn

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint $(AIRFLOW_STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --durations=10 -m "not cluster and not slow"

# The tests that start real cluster processes (an MLflow server, several copml processes on
# one PostgreSQL, HAProxy, Spark, Ray) and the slow end-to-end runs (the x-ray demo);
# CI (.ci/run) runs them after `make test`, which stays under 20 minutes on 2 cores.
# pytest's exit 5 (no test collected) is not a failure.
test-cluster: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --durations=10 -m "cluster or slow" || [ $$? -eq 5 ]

bench: $(STAMP)
	$(BIN)/python benchmarks/cli_startup.py
	$(BIN)/python benchmarks/score.py
	$(BIN)/python benchmarks/monitor.py

clean:
	rm -rf $(VENV) demo-churn benchmarks/.work .pytest_cache .ruff_cache
