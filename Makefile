# Entry points: `make test` (the whole suite), `make demo` (the study on the embedded phantom data),
# `make bench` (performance table), `make lint`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
QUICK ?= 0

.PHONY: setup test lint demo bench clean

setup: $(STAMP)

$(STAMP): req.txt req-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r req.txt
	$(PY) -m pip install --quiet --no-deps -r req-nodeps.txt
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 $(PY) -m pytest -q

# QUICK=1: the smallest sizes (minutes); THREADS=N: torch CPU threads of every stage. Re-running continues.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m demo --out demo_out $(if $(filter 1,$(QUICK)),--quick,) $(if $(THREADS),--threads $(THREADS),)

bench: $(STAMP)
	$(PY) -m bench

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
