# The two commands of the README: `make demo` and `make test`. Both set up everything on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test test-slow install install-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first, pinned to the CPU wheel that lies on disk; an unpinned torch would pull a CUDA build.
$(VENV)/.installed: $(VENV)/bin/python setup.cfg pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .
	touch $@

# The test extra, plus OpenAI's `dall_e` for the parity tests: --no-deps, because its declared
# dependencies would replace torch with a CUDA build; attrs is its undeclared dependency.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps DALL-E==0.1 attrs
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/hf-dalle demo --output-dir outputs/demo

test: install-test
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install-test
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]  # 5: no slow test collected
