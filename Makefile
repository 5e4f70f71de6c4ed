# Two commands for a fresh machine:
#   make test   -- create .venv if needed, then run the test suite (Triton kernels under the
#                  CPU interpreter, TRITON_INTERPRET=1)
#   make demo   -- create .venv if needed, then run the main job (statetap demo: train or load the
#                  zoo's models, extract, measure instrumentation cost) into runs/demo, and
#                  check every op on this machine
# `make venv` alone (re)installs when setup.py, pyproject.toml, scripts/bootstrap.sh or csrc/
# sources changed; otherwise it returns at once. Extra pytest arguments: make test ARGS="-k wkv6".

PY := .venv/bin/python
ARGS ?=

.PHONY: venv test demo

venv:
	@bash scripts/bootstrap.sh

# pytest exits 5 when it ran no test; make propagates that as a failure. PYTHONSAFEPATH keeps the
# repository root off sys.path, so ./kernels never passes for the top-level `kernels` package.
test: venv
	PYTHONSAFEPATH=1 TRITON_INTERPRET=1 $(PY) -m pytest -n 2 tests $(ARGS)

demo: venv
	PYTHONSAFEPATH=1 .venv/bin/statetap demo --out runs/demo
	PYTHONSAFEPATH=1 .venv/bin/statetap check
