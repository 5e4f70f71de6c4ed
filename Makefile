# Two commands for a fresh machine:
#   make test   -- create .venv if needed, then run the test suite (Triton kernels under the
#                  CPU interpreter, TRITON_INTERPRET=1)
#   make demo   -- create .venv if needed, then run the main job (statetap demo: train or load the
#                  zoo's models, extract, measure instrumentation cost) into runs/demo, and
#                  check every op on this machine
# `make venv` alone (re)installs when setup.py, pyproject.toml, constraints.txt,
# scripts/bootstrap.sh or csrc/ sources changed; otherwise it returns at once. Extra pytest
# arguments: make test ARGS="-k wkv6".
# Versions are locked in constraints.txt (bootstrap installs with it). Not part of CI:
#   make upgrade-check  -- newest versions of every dependency (torch stays pinned, triton too
#                          takes its newest) in a throwaway venv, then the model and Triton tests;
#                          PINS="transformers==5.23.0" overrides
#   make upgrade-matrix -- the lock with the oldest, then the newest supported transformers in a
#                          throwaway venv, the model tests on each (scripts/upgrade_check.sh --matrix)
#   make lock           -- write constraints.txt from .venv (scripts/lock.sh)
#   make gpu-wheels     -- fetch into .whl/ the locked wheels the GPU suite needs beyond its image
#   make bench-cpu      -- the CPU benchmark suite (benchmarks/cpu/, pytest-benchmark): statetap's
#                          cpu and torch backends beside the peers; a table and a JSON under
#                          benchmarks/results/ (STATETAP_BENCH_THREADS, default 2)
#   make gpu-model      -- the compiled performance model (benchmarks/gpu_model.py): statetap's and
#                          the peers' Triton kernels compiled for sm_90 at the goal shapes, their
#                          predicted H100 floors; a table and a JSON under benchmarks/results/
#   make compile-check  -- every Triton launch at its run-time specialisation compiled for sm_80
#                          and sm_90 against the register budget (benchmarks/compile_check.py; in
#                          CI as tests/test_aot_kernels.py); PY=/path/to/python for another triton

PY := .venv/bin/python
ARGS ?=
PINS ?=

.PHONY: venv test demo upgrade-check upgrade-matrix lock gpu-wheels bench-cpu gpu-model compile-check

venv:
	@bash scripts/bootstrap.sh

# pytest exits 5 when it ran no test; make propagates that as a failure. PYTHONSAFEPATH keeps the
# repository root off sys.path, so ./kernels never passes for the top-level `kernels` package.
test: venv
	PYTHONSAFEPATH=1 TRITON_INTERPRET=1 $(PY) -m pytest -n 2 tests $(ARGS)

demo: venv
	PYTHONSAFEPATH=1 .venv/bin/statetap demo --out runs/demo
	PYTHONSAFEPATH=1 .venv/bin/statetap check

upgrade-check:
	bash scripts/upgrade_check.sh $(PINS)

upgrade-matrix:
	bash scripts/upgrade_check.sh --matrix

lock:
	bash scripts/lock.sh

gpu-wheels:
	bash scripts/gpu_wheels.sh

bench-cpu: venv
	PYTHONSAFEPATH=1 $(PY) -m pytest -p no:xdist -p no:cacheprovider -q benchmarks/cpu \
		--benchmark-columns=median,rounds --benchmark-sort=name $(ARGS)

gpu-model: venv
	PYTHONSAFEPATH=1 $(PY) benchmarks/gpu_model.py $(ARGS)

compile-check: venv
	PYTHONSAFEPATH=1 $(PY) benchmarks/compile_check.py $(ARGS)
