# effnet-convert: set-up, tests, conversions.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
OUT ?= converted
VARIANT ?= b0
FLAVOR ?=
PYTEST_ARGS ?=

.PHONY: install install-test test convert parity

install:            ## convert-effnet ready (runtime dependencies + the package, editable)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .

install-test: install
	$(PIP) install -q -r requirements-test.txt

test: install-test  ## the test suite CI runs (no network, no GPU needed)
	$(PYTHON) -m pytest -q -m "not slow" $(PYTEST_ARGS)

convert:            ## make convert VARIANT=b4 FLAVOR=advprop [OUT=converted]
	convert-effnet --variant $(VARIANT) $(if $(FLAVOR),--flavor $(FLAVOR)) --output-dir $(OUT)
