# Two entry points: `make demo` (the main job) and `make test` (the suite).
# Each creates .venv on first use. torch is pinned to the CPU wheel on this machine;
# an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0

BENCH_VENV := .venv-bench
BENCH_PY   := $(BENCH_VENV)/bin/python

.PHONY: demo test test-fast bench bench-quick clean

$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[$*]'
	touch $@

demo: $(VENV)/.installed-dev
	$(VENV)/bin/tokrl train configs/smollm2_arithmetic.yaml --overwrite

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m "not slow"

# Benchmarks compare against TRL, which lives in its own venv (a benchmark-only extra).
$(BENCH_VENV)/.installed: pyproject.toml
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip
	$(BENCH_PY) -m pip install -q $(TORCH)
	$(BENCH_PY) -m pip install -q -e '.[dev,bench]'
	touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_PY) benchmarks/rollout.py
	$(BENCH_PY) benchmarks/step.py
	$(BENCH_PY) benchmarks/efficiency.py

bench-quick: $(BENCH_VENV)/.installed
	$(BENCH_PY) benchmarks/rollout.py --quick --models tiny
	$(BENCH_PY) benchmarks/efficiency.py --quick

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs .pytest_cache
