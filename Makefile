PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

# One stamp per purpose, so that each target installs only what it needs:
#   demo:  torch and detloss with its demo (matplotlib, Pillow, tqdm) and numba extras;
#   test:  the demo's set-up plus the dev extras and Triton (its interpreter runs the GPU
#          kernels' logic on the CPU; where no wheel exists, those tests are skipped);
#   bench: the demo's set-up plus the peers the benchmarks compare with (bench extra).
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: setup test demo lint bench clean

$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[demo,numba]"
	touch $@

$(TEST_STAMP): $(DEMO_STAMP)
	-$(PY) -m pip install --quiet "triton==3.6.0"
	$(PY) -m pip install --quiet -e ".[dev,demo,numba]"
	touch $@

$(BENCH_STAMP): $(DEMO_STAMP)
	$(PY) -m pip install --quiet -e ".[bench,demo,numba]"
	touch $@

setup: $(TEST_STAMP)

test: $(TEST_STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest tests

demo: $(DEMO_STAMP)
	$(VENV)/bin/detloss demo

bench: $(BENCH_STAMP)
	$(VENV)/bin/detloss bench

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info runs data/demo
