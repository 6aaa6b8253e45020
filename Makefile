PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	# Triton only for the tests: its interpreter runs the GPU kernels' logic on the CPU.
	# Where no wheel exists for the platform, those tests are skipped.
	-$(PY) -m pip install --quiet "triton==3.6.0"
	$(PY) -m pip install --quiet -e ".[dev,demo,numba]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest tests

demo: $(STAMP)
	$(VENV)/bin/detloss demo

bench: $(STAMP)
	$(VENV)/bin/detloss bench

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info runs data/demo
