# podnet: `make demo` and `make test` work as root on a fresh Debian 12 machine.
PYTHON ?= python3
PYTEST ?= $(PYTHON) -m pytest

.PHONY: demo test unit integration bench deps deps-demo clean-lab

deps:
	PYTHON=$(PYTHON) PODNET_DEPS=all ./scripts/install-deps.sh

deps-demo:
	PYTHON=$(PYTHON) PODNET_DEPS=demo ./scripts/install-deps.sh

demo: deps-demo
	$(PYTHON) -m podnet.lab.demo

test: deps
	$(PYTEST) -q -p no:cacheprovider tests

unit: deps
	$(PYTEST) -q -p no:cacheprovider tests/unit

integration: deps
	$(PYTEST) -q -p no:cacheprovider tests/integration

bench: deps
	$(PYTHON) -m bench

clean-lab:
	-$(PYTHON) -m podnet.cli.main lab down --all
