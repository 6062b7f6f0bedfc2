# podnet: `make demo` and `make test` work as root on a stock Debian 12 with python3, make and git.
# Python packages live in a project virtual environment ($(VENV)); run podnet as $(VENV)/bin/podnet,
# or `make install` to link it into /usr/local/bin.
PYTHON3 ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PYTEST := $(PYTHON) -m pytest
BINDIR ?= /usr/local/bin
DEPS = PYTHON3=$(PYTHON3) VENV=$(VENV) ./scripts/install-deps.sh
# The CNI plugin that needs no interpreter on the host: static, with musl (install-cni prefers it).
PLUGIN := podnet/cni/podnet-cni
MUSL_CC ?= musl-gcc
# Tests and benchmarks make network namespaces: they need / to be a mount point (see the script).
ROOTMOUNT := ./scripts/with-root-mount

.PHONY: all demo test unit integration bench deps deps-demo plugin install clean-lab

all: deps-demo

deps:
	PODNET_DEPS=all $(DEPS)
	$(MAKE) --no-print-directory plugin

deps-demo:
	PODNET_DEPS=demo $(DEPS)
	$(MAKE) --no-print-directory plugin

plugin: $(PLUGIN)

$(PLUGIN): cni-plugin/podnet-cni.c
	$(MUSL_CC) -static -Os -s -Wall -Wextra -Werror -o $@.tmp $<
	mv $@.tmp $@

demo: deps-demo
	$(PYTHON) -m podnet.lab.demo

# pytest exits 5 when it collected no test (a filtered run): that is not a failure of the suite.
define pytest
	$(ROOTMOUNT) $(PYTEST) -q -p no:cacheprovider $(1); rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc
endef

test: deps
	$(call pytest,tests)

unit: deps
	$(call pytest,tests/unit)

integration: deps
	$(call pytest,tests/integration)

bench: deps
	$(ROOTMOUNT) $(PYTHON) -m bench

install: deps-demo
	ln -sfn "$(abspath $(VENV))/bin/podnet" "$(BINDIR)/podnet"
	@echo "podnet is $(BINDIR)/podnet"

clean-lab:
	-$(PYTHON) -m podnet.cli.main lab down --all
