# The two commands of the README's quick start: `make demo` and `make test`.
# Both create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ctagrg-installed
# The CPU wheel of torch 2.13.0 is pinned here (dev/CI set-up only); the package itself asks for a range.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv demo demo-quick test test-fast lint bench clean ctrate-smoke ctrate-smoke-phantoms gpu-check

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev,dicom]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ctagrg demo --out demo_out

demo-quick: $(STAMP)
	$(VENV)/bin/ctagrg demo --out demo_out_quick --quick

test: $(STAMP)
	$(PY) -m pytest -q

# Paper-size timings on a CUDA GPU (benchmarks/GPU_CHECK.md): under 8 minutes on one H100; refuses without CUDA.
GPU_CHECK_OUT ?= gpu_check_out
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)

# ruff, then the layer order of docs/architecture.md ([tool.importlinter] in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/lint-imports --no-cache

# The whole CT-RATE recipe at the paper's shapes on a release-layout root: make ctrate-smoke DATA=CT-RATE/dataset
DATA ?=
SMOKE_WORK ?= runs/ctrate-smoke
ctrate-smoke: $(STAMP)
	@test -n "$(DATA)" || (echo "usage: make ctrate-smoke DATA=CT-RATE/dataset [SMOKE_WORK=DIR]" >&2; exit 2)
	$(PY) scripts/ctrate_smoke.py --data "$(DATA)" --work "$(SMOKE_WORK)"

# The same on 6 paper-size phantoms written in the release layout (what CI runs)
SMOKE_PHANTOMS ?= runs/ctrate-smoke-phantoms
ctrate-smoke-phantoms: $(STAMP)
	test -f $(SMOKE_PHANTOMS)/metadata/validation_metadata.csv || \
		$(VENV)/bin/ctagrg phantom --out $(SMOKE_PHANTOMS) --n 6 --size paper --split train=0.7,valid=0.3
	$(PY) scripts/ctrate_smoke.py --data $(SMOKE_PHANTOMS) --work $(SMOKE_WORK)

clean:
	rm -rf demo_out demo_out_quick .pytest_cache
