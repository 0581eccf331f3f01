# effnet-convert: set-up, tests, conversions.
# The Python everything installs into and runs in (scripts/pick_python.py): an active virtual
# environment; else $(VENV) when it exists, or when $(BASE_PYTHON) is externally managed (PEP 668:
# Debian's and Ubuntu's system Python; `make install` creates it); else $(BASE_PYTHON) itself
# (pyenv, conda: CI). PYTHON=... on the command line overrides the choice.
BASE_PYTHON ?= python3
VENV ?= .venv
PICK_ARGS ?=
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell $(BASE_PYTHON) scripts/pick_python.py $(VENV) $(PICK_ARGS) 2>/dev/null || echo $(BASE_PYTHON))
endif
PIP ?= $(PYTHON) -m pip
CONVERT ?= $(PYTHON) -m converter
# Optional extras of setup.cfg, installed editable with the package: make install EXTRAS=export
# (a plain `pip install '.[export]'` would replace the editable install by a copy)
EXTRAS ?=
# A CPU-only machine: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu takes torch's CPU
# build (no CUDA libraries, ~3 GB less); the version stays requirements-core.txt's pin
TORCH_INDEX ?=
TORCH_PIN := $(shell grep -E '^torch==' requirements-core.txt)
OUT ?= converted
VARIANT ?= b0
FLAVOR ?=
PYTEST_ARGS ?=

.PHONY: install install-test test test-fast convert parity notf-env libs-env

install:            ## convert-effnet ready (runtime dependencies + the package, editable)
	@$(if $(filter $(origin PYTHON),command line),true,$(BASE_PYTHON) scripts/pick_python.py $(VENV) --create $(PICK_ARGS) >/dev/null)
	$(if $(TORCH_INDEX),$(PIP) install -q "$(TORCH_PIN)" --index-url $(TORCH_INDEX))
	$(PIP) install -q -r requirements.txt "setuptools>=64" wheel
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(if $(EXTRAS),$(PIP) install -q --no-build-isolation -e ".[$(EXTRAS)]")
	@echo "installed for $(PYTHON); run: $(dir $(PYTHON))convert-effnet --help"

install-test: install
	$(PIP) install -q -r requirements-test.txt

# A second environment without TensorFlow: conversion must work there (tests/test_without_tensorflow.py)
NOTF_VENV ?= .venv-notf
notf-env:
	test -x $(NOTF_VENV)/bin/python || $(PYTHON) -m venv $(NOTF_VENV)
	$(NOTF_VENV)/bin/python -m pip install -q -r requirements-core.txt $$(grep -E '^pytest==' requirements-test.txt) "setuptools>=64" wheel
	$(NOTF_VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .

# A third environment with the libraries whose layouts --layout writes (timm, mmpretrain): the
# tests load converted files with them there (tests/test_layouts.py). torch/torchvision/timm from
# requirements-libs.txt, then mmpretrain/mmengine/mmcv-lite and their import-time needs without
# their declared dependencies. Rebuilt only when a requirements file changes.
LIBS_VENV ?= .venv-libs
libs-env: $(LIBS_VENV)/.built
$(LIBS_VENV)/.built: requirements-libs.txt requirements-libs-nodeps.txt
	test -x $(LIBS_VENV)/bin/python || $(PYTHON) -m venv $(LIBS_VENV)
	$(LIBS_VENV)/bin/python -m pip install -q -r requirements-libs.txt "setuptools>=64" wheel
	$(LIBS_VENV)/bin/python -m pip install -q --no-deps -r requirements-libs-nodeps.txt
	$(LIBS_VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	$(LIBS_VENV)/bin/python -c "import timm, mmpretrain, mmengine.runner, transformers"
	touch $@

# pytest-xdist workers (one checkpoint store shared by all: tests/conftest.py); 0 runs in one process
TEST_WORKERS ?= 2
TEST_ENV = EFFNET_NOTF_PYTHON=$(abspath $(NOTF_VENV))/bin/python EFFNET_LIBS_PYTHON=$(abspath $(LIBS_VENV))/bin/python

test: install-test notf-env libs-env  ## the test suite CI runs (no network, no GPU needed)
	$(TEST_ENV) $(PYTHON) -m pytest -q -m "not slow" -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-fast: install-test notf-env  ## unit tests and small conversions (tests/conftest.py HEAVY_*: left out), a few minutes
	$(TEST_ENV) $(PYTHON) -m pytest -q -m "not slow and not heavy" -n $(TEST_WORKERS) $(PYTEST_ARGS)

convert:            ## make convert VARIANT=b4 FLAVOR=advprop [OUT=converted]
	$(CONVERT) --variant $(VARIANT) $(if $(FLAVOR),--flavor $(FLAVOR)) --output-dir $(OUT)

# Every zoo checkpoint (33), converted and verified into $(OUT); each target is its own file, so
# `make -j4 all` is safe (downloads and extractions lock their cache entries).
ZOO := $(shell $(PYTHON) -c 'from converter.batch import select_checkpoints; print(" ".join(c.name for c in select_checkpoints()))' 2>/dev/null)
ALL_OUTPUTS := $(patsubst %,$(OUT)/%.safetensors,$(ZOO))
# The rest of that family (11: Lite0-4, EdgeTPU S/M/L, CondConv), one checkpoint each: its variants
# beyond its main line (Family.labels[0])
FAMILY := $(shell $(PYTHON) -c 'from converter.registry import families; print(" ".join(c.name for f in families() if f.batch_default for c in f.checkpoints() if c.family != f.labels[0]))' 2>/dev/null)
FAMILY_OUTPUTS := $(patsubst %,$(OUT)/%.safetensors,$(FAMILY))

.PHONY: all family parity
all: $(ALL_OUTPUTS)
family: $(FAMILY_OUTPUTS)  ## make family OUT=zoo -j4: convert + verify the 11 family checkpoints

# efficientnet-b4_advprop -> --variant b4 --flavor advprop; a file that fails verification ends as *.failed
$(OUT)/efficientnet-%.safetensors:
	$(CONVERT) --variant $(word 1,$(subst _, ,$*)) --flavor $(word 2,$(subst _, ,$*)) \
		--output-dir $(OUT) --verify --quiet $(VERIFY_ARGS)

# EfficientNetV2 (23: B0-B3, S, M, L 1k; B0-B3, S, M, L, XL 21k and 21k-ft1k), named as the official
# tarballs; each converted from its .tgz and verified against the TensorFlow reference
V2 := $(shell $(PYTHON) -c 'from converter.families.efficientnet_v2.checkpoints import CHECKPOINTS_V2; print(" ".join(c.name for c in CHECKPOINTS_V2))' 2>/dev/null)
V2_OUTPUTS := $(patsubst %,$(OUT)/%.safetensors,$(V2))

.PHONY: v2
v2: $(V2_OUTPUTS)  ## make v2 OUT=zoo -j4: convert + verify the 23 EfficientNetV2 checkpoints

$(OUT)/efficientnetv2-%.safetensors:
	$(CONVERT) --flavor efficientnetv2-$* --output-dir $(OUT) --verify --quiet $(VERIFY_ARGS)

# MnasNet (26: A1 at depth multipliers 1.4/1.0/0.75/0.5/0.35 at 224 px and 192/160/128/96 px, small)
# and MixNet S/M/L, named as the official files; each converted and verified against the TF reference
MNAS := $(shell $(PYTHON) -c 'from converter.families.mnasnet.checkpoints import CHECKPOINTS_MNAS; print(" ".join(c.name for c in CHECKPOINTS_MNAS))' 2>/dev/null)
MNAS_OUTPUTS := $(patsubst %,$(OUT)/%.safetensors,$(MNAS))

.PHONY: mnas
mnas: $(MNAS_OUTPUTS)  ## make mnas OUT=zoo -j4: convert + verify the 29 MnasNet / MixNet checkpoints

$(OUT)/mnasnet-%.safetensors:
	$(CONVERT) --flavor mnasnet-$* --output-dir $(OUT) --verify --quiet $(VERIFY_ARGS)

$(OUT)/mixnet-%.safetensors:
	$(CONVERT) --flavor mixnet-$* --output-dir $(OUT) --verify --quiet $(VERIFY_ARGS)

parity:             ## parity checks of every architecture, full-size runs of the largest included
	$(PYTHON) -m pytest -q -s tests/test_parity.py $(PYTEST_ARGS)
