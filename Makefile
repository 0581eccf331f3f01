# effnet-convert: set-up, tests, conversions.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
OUT ?= converted
VARIANT ?= b0
FLAVOR ?=
PYTEST_ARGS ?=

.PHONY: install install-test test convert parity notf-env libs-env

install:            ## convert-effnet ready (runtime dependencies + the package, editable)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .

install-test: install
	$(PIP) install -q -r requirements-test.txt

# A second environment without TensorFlow: conversion must work there (tests/test_without_tensorflow.py)
NOTF_VENV ?= .venv-notf
notf-env:
	test -x $(NOTF_VENV)/bin/python || $(PYTHON) -m venv $(NOTF_VENV)
	$(NOTF_VENV)/bin/python -m pip install -q -r requirements-core.txt $$(grep -E '^pytest==' requirements-test.txt)
	$(NOTF_VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .

# A third environment with the libraries whose layouts --layout writes (timm, mmpretrain): the
# tests load converted files with them there (tests/test_layouts.py). torch/torchvision/timm from
# requirements-libs.txt, then mmpretrain/mmengine/mmcv-lite and their import-time needs without
# their declared dependencies. Rebuilt only when a requirements file changes.
LIBS_VENV ?= .venv-libs
libs-env: $(LIBS_VENV)/.built
$(LIBS_VENV)/.built: requirements-libs.txt requirements-libs-nodeps.txt
	test -x $(LIBS_VENV)/bin/python || $(PYTHON) -m venv $(LIBS_VENV)
	$(LIBS_VENV)/bin/python -m pip install -q -r requirements-libs.txt
	$(LIBS_VENV)/bin/python -m pip install -q --no-deps -r requirements-libs-nodeps.txt
	$(LIBS_VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	$(LIBS_VENV)/bin/python -c "import timm, mmpretrain, mmengine.runner"
	touch $@

test: install-test notf-env libs-env  ## the test suite CI runs (no network, no GPU needed)
	EFFNET_NOTF_PYTHON=$(abspath $(NOTF_VENV))/bin/python EFFNET_LIBS_PYTHON=$(abspath $(LIBS_VENV))/bin/python $(PYTHON) -m pytest -q -m "not slow" $(PYTEST_ARGS)

convert:            ## make convert VARIANT=b4 FLAVOR=advprop [OUT=converted]
	convert-effnet --variant $(VARIANT) $(if $(FLAVOR),--flavor $(FLAVOR)) --output-dir $(OUT)

# Every zoo checkpoint (33), converted and verified into $(OUT); each target is its own file, so
# `make -j4 all` is safe (downloads and extractions lock their cache entries).
ZOO := $(shell $(PYTHON) -c 'from converter.zoo import CHECKPOINTS; print(" ".join(c.name for c in CHECKPOINTS if c.zoo_name))' 2>/dev/null)
ALL_OUTPUTS := $(patsubst %,$(OUT)/%.safetensors,$(ZOO))
# The rest of the family (11: Lite0-4, EdgeTPU S/M/L, CondConv), one checkpoint each
FAMILY := $(shell $(PYTHON) -c 'from converter.arch import get_arch; from converter.zoo import CHECKPOINTS; print(" ".join(c.name for c in CHECKPOINTS if get_arch(c.variant).family != "efficientnet"))' 2>/dev/null)
FAMILY_OUTPUTS := $(patsubst %,$(OUT)/%.safetensors,$(FAMILY))

.PHONY: all family parity
all: $(ALL_OUTPUTS)
family: $(FAMILY_OUTPUTS)  ## make family OUT=zoo -j4: convert + verify the 11 family checkpoints

# efficientnet-b4_advprop -> --variant b4 --flavor advprop; a file that fails verification ends as *.failed
$(OUT)/efficientnet-%.safetensors:
	convert-effnet --variant $(word 1,$(subst _, ,$*)) --flavor $(word 2,$(subst _, ,$*)) \
		--output-dir $(OUT) --verify --quiet $(VERIFY_ARGS)

parity:             ## parity checks of every architecture, full-size runs of the largest included
	$(PYTHON) -m pytest -q -s tests/test_parity.py $(PYTEST_ARGS)
