# Two commands on a fresh machine: `make demo` and `make test` (README "Quick start").
# Every pip call passes -c constraints.txt so nothing replaces the CPU torch wheel with a CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
PIP_INSTALL := $(PIP) install -c constraints.txt

.PHONY: demo test lint typecheck unit install install-dev install-redis install-torchrec test-torchrec bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first (the CPU wheel), then the package: installing torch-dependent packages before torch pulls CUDA.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e '.[dev]'
	$(MAKE) install-redis
	touch $@ $(VENV)/.installed

# The serving tests start their own redis-server on a free loopback port; install Debian's package when it is missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
install-redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package) for the serving tests"; \
	  $(SUDO) apt-get install -y -q redis-server >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q redis-server >/dev/null; }; }
	@command -v redis-server >/dev/null 2>&1 || { echo "redis-server is missing and could not be installed" >&2; exit 1; }

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# TorchRec-sharded tables (optional, docs/scale_out.md). torchrec's wheel requires the CUDA package fbgemm-gpu, which
# would land over the CPU build: the extra installs fbgemm-gpu-cpu and torchrec's other dependencies, then torchrec goes
# in without its dependencies; the last line fails here, not in a test, if the pair does not load on this torch.
$(VENV)/.installed-torchrec: pyproject.toml constraints.txt $(VENV)/.installed-dev
	$(PIP_INSTALL) -e '.[dev,torchrec]'
	$(PIP_INSTALL) --no-deps torchrec==1.8.0
	$(BIN)/python -c "from longrec.models.torchrec_tables import require_torchrec; require_torchrec()"
	touch $@
install-torchrec: $(VENV)/.installed-torchrec

## make test-torchrec: the TorchRec parity tests (lookups, fused optimizer step, 2 ranks vs 1) in the venv with torchrec
test-torchrec: $(VENV)/.installed-torchrec
	$(BIN)/pytest -m torchrec -q -rs

## make demo: install and run the end-to-end demo (synthetic data -> prepare -> DIN vs mean pooling)
demo: $(VENV)/.installed
	$(BIN)/longrec demo --out demo_out

## make test: install with the dev extra; format check, lint, type check, then the test suite (incl. integration)
test: $(VENV)/.installed-dev lint typecheck unit

lint: $(VENV)/.installed-dev
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# pytest exits 5 when it collected no test: that is not a failure of the code, every other non-zero code is.
unit: $(VENV)/.installed-dev
	$(BIN)/pytest -m "not gpu and not slow" -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests ran"; exit 0; fi; exit $$rc

clean:
	rm -rf $(VENV) demo_out .pytest_cache .mypy_cache .ruff_cache
