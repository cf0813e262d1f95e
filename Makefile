# The two commands of the README: `make demo` and `make test`. Both set up everything on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo train-demo serve test test-slow test-oldest test-parity install install-test bench-env ref-env benchmark device-kit \
	quality style

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
	$(PIP) install -q --no-deps torchao==0.18.0  # the `quantization` extra, for the int8 tests; never touches torch
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/hf-dalle demo --output-dir outputs/demo

# Rebuild the bundled demo model (src/hf_dalle/demo_model) from nothing: under 2 hours on a 2-core CPU.
train-demo: install
	PYTHON=$(PY) bash scripts/train_demo.sh

# The web demo (Gradio, the `web` extra) on http://127.0.0.1:7860; SERVE_ARGS="--model DIR_OR_HUB_ID --port N".
$(VENV)/.installed-web: $(VENV)/.installed
	$(PIP) install -q -e ".[web]"
	touch $@

serve: $(VENV)/.installed-web
	$(VENV)/bin/hf-dalle serve $(SERVE_ARGS)

# House style (pyproject.toml [tool.ruff], diffusers' rules): `quality` checks, `style` rewrites.
RUFF_VERSION = 0.17.6
$(VENV)/.installed-ruff: $(VENV)/bin/python
	$(PIP) install -q ruff==$(RUFF_VERSION)
	touch $@

quality: $(VENV)/.installed-ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

style: $(VENV)/.installed-ruff
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The parity tests (marker `parity`) need the original ruDALL-E / taming / ruCLIP / youtokentome / min-dalle code: they run in
# the reference venv (`make test-parity`), not here.
test: install-test
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow and not parity" $(PYTEST_ARGS)

test-slow: install-test
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "slow and not parity" $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]  # 5: no slow test collected

# The reference venv for the parity tests against the original ruDALL-E 1.1.3, taming-transformers 0.0.1, ruCLIP 0.0.2
# and youtokentome 1.0.6 code: their packages no longer install with their declared pins (no cp311 wheels,
# transformers~=4.10), so they go in --no-deps next to the few libraries their model code imports (einops, omegaconf,
# PyWavelets). torch first (the CPU wheel); youtokentome 1.0.6 builds from source and its setup.py imports Cython (< 3)
# without declaring it; min-dalle 0.4.11 (DALL·E Mini / Mega) with its light dependencies (numpy, pillow, requests,
# emoji), torch pinned on the same line so nothing replaces it; then our package with its test extra.
REF_VENV ?= .venv-ref
REF_PIP := $(REF_VENV)/bin/python -m pip

$(REF_VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_PIP) install -q --upgrade pip
	$(REF_PIP) install -q torch==2.13.0
	$(REF_PIP) install -q "Cython<3" setuptools
	$(REF_PIP) install -q --no-build-isolation youtokentome==1.0.6
	$(REF_PIP) install -q --no-deps rudalle==1.1.3 taming-transformers==0.0.1 ruclip==0.0.2
	$(REF_PIP) install -q einops==0.3.2 omegaconf PyWavelets
	$(REF_PIP) install -q min-dalle==0.4.11 torch==2.13.0
	$(REF_PIP) install -q -e ".[test]"
	touch $@

ref-env: $(REF_VENV)/.installed

# With CI=true a parity test whose reference is missing fails instead of skipping (tests/reference_models.py).
test-parity: ref-env
	HF_HUB_OFFLINE=1 $(REF_VENV)/bin/python -m pytest -m parity $(PYTEST_ARGS)

# The same suite on the oldest supported releases (.ci/constraints-oldest.txt, setup.cfg's lower bounds), in a second
# venv; `make test` runs on the newest ones a fresh `make install-test` finds.
OLDEST_VENV ?= .venv-oldest
OLDEST_PIP := $(OLDEST_VENV)/bin/python -m pip

$(OLDEST_VENV)/.installed-test: setup.cfg pyproject.toml .ci/constraints-oldest.txt
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_PIP) install -q --upgrade pip
	$(OLDEST_PIP) install -q torch==2.13.0
	$(OLDEST_PIP) install -q -c .ci/constraints-oldest.txt -e ".[test]"
	$(OLDEST_PIP) install -q --no-deps DALL-E==0.1 attrs torchao==0.18.0
	touch $@

test-oldest: $(OLDEST_VENV)/.installed-test
	HF_HUB_OFFLINE=1 $(OLDEST_VENV)/bin/python -m pytest -m "not slow and not parity" $(PYTEST_ARGS)

# Benchmarks (scripts/benchmark_*.py) compare against reference implementations that are not package dependencies:
# they go into their own venv. torch first (the CPU wheel), then DALLE-pytorch 1.6.6: youtokentome needs Cython and
# no build isolation; torch is pinned on the same line so nothing replaces it; pytorch-lightning 1.9.5 and torchmetrics
# 1.3.2 are the last its taming import works with; torchvision 0.15.2 --no-deps for its Python parts only (its compiled
# ops are unused); setuptools < 81 because pkg_resources is still imported. Then OpenAI's dall_e (--no-deps: its
# declared dependencies pull a CUDA torch; attrs is its undeclared one), then our package, editable.
BENCH_VENV ?= .venv-bench
BENCH_PIP := $(BENCH_VENV)/bin/python -m pip

$(BENCH_VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PIP) install -q --upgrade pip
	$(BENCH_PIP) install -q torch==2.13.0
	$(BENCH_PIP) install -q cython
	$(BENCH_PIP) install -q --no-build-isolation youtokentome
	$(BENCH_PIP) install -q dalle-pytorch==1.6.6 pytorch-lightning==1.9.5 torchmetrics==1.3.2 torch==2.13.0
	$(BENCH_PIP) install -q --no-deps torchvision==0.15.2
	$(BENCH_PIP) install -q "setuptools<81"
	$(BENCH_PIP) install -q --no-deps DALL-E==0.1 attrs
	$(BENCH_PIP) install -q -e .
	touch $@

bench-env: $(BENCH_VENV)/.installed

# The GPU tables, on a lent GPU machine (torch there, no network): its Python 3.12 lacks these packages, holds
# versions that break the references (pytorch-lightning 2 for DALLE-pytorch's taming import, setuptools without
# pkg_resources) or an older transformers (5.17) than the one the tests run on, so their wheels go into .whl/
# (about 24 MB), carried beside the repo to scripts/device_benchmarks.sh.
DEVICE_WHEELS = transformers==5.23.0 diffusers==0.42.1 importlib_metadata==10.2.0 \
	dalle-pytorch==1.6.6 axial_positional_embedding==0.3.12 rotary-embedding-torch==0.9.1 \
	taming-transformers-rom1504==0.0.6 omegaconf==2.4.0 ftfy==6.3.1 wcwidth==0.9.4 webdataset==1.0.2 \
	braceexpand==0.1.7 pytorch-lightning==1.9.5 torchmetrics==1.3.2 "setuptools<81" DALL-E==0.1
device-kit:
	rm -rf .whl.tmp && $(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl.tmp $(DEVICE_WHEELS)
	rm -rf .whl && mv .whl.tmp .whl

# The benchmarks on this machine's CPU; results in benchmarks/*.md and *.json (see README "Performance"). The VQGAN and
# ruDALL-E ones time taming-transformers and ruDALL-E's own generation loop, and the DALL·E Mega one min-dalle's, which
# live in the reference venv.
benchmark: bench-env ref-env
	$(BENCH_VENV)/bin/python scripts/benchmark_generation.py $(BENCH_ARGS)
	$(BENCH_VENV)/bin/python scripts/benchmark_training.py $(BENCH_ARGS)
	$(REF_VENV)/bin/python scripts/benchmark_vqgan.py $(VQGAN_BENCH_ARGS)
	$(REF_VENV)/bin/python scripts/benchmark_rudalle_generation.py $(RUDALLE_BENCH_ARGS)
	$(REF_VENV)/bin/python scripts/benchmark_dalle_mega_generation.py $(DALLE_MEGA_BENCH_ARGS)
