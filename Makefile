# Entry points: `make test` (the whole suite), `make demo` (the pipeline on the embedded phantom data), `make study`
# (the paper's tables over folds and seeds), `make bench` (performance table), `make mutants` (does the suite
# notice broken code?), `make lint`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
QUICK ?= 0
# Idle OpenMP threads sleep instead of spinning: on a machine whose other cores are busy, spinning threads slowed a
# GeCA-T training run from 8.8 to 0.08 steps/s (docs/USAGE.md, "Performance options"). A value set by the user wins.
OMP_WAIT_POLICY ?= PASSIVE
export OMP_WAIT_POLICY

.PHONY: setup test lint demo study bench gpu-check mutants clean

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

# The paper's two tables over OCT folds x classifier seeds and the fundus phantoms (docs/STUDY.md); FOLDS=K (1-5),
# SEEDS=S, EXPAND=5 for the paper's 5x augmentation sets, QUICK=1 and THREADS=N as for the demo. Re-running continues.
study: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m demo --study --out study_out $(if $(filter 1,$(QUICK)),--quick,) \
		$(if $(THREADS),--threads $(THREADS),) $(if $(FOLDS),--folds $(FOLDS),) $(if $(SEEDS),--seeds $(SEEDS),) \
		$(if $(EXPAND),--expand-ratio $(EXPAND),)

bench: $(STAMP)
	$(PY) -m bench

# One CUDA GPU, under 10 minutes: every GPU figure in gpu_check/REPORT.md (docs/PERFORMANCE.md, "GPU check"); without a
# GPU, one line and exit 0. GPU_PY=python3: that interpreter as it is, no venv (a GPU machine whose python has torch
# but no network to install into the venv). GPU_CHECK_ARGS: more flags, e.g. --dry (the CPU dry run) or --resume.
gpu-check: $(if $(GPU_PY),,$(STAMP))
	@HF_HUB_OFFLINE=1 $(or $(GPU_PY),$(PY)) -m bench.gpu_check $(GPU_CHECK_ARGS)

# Method-breaking edits, one at a time in a temporary copy: the suite must notice each (README, "Mutation testing").
mutants: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 $(PY) -m mutants

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
