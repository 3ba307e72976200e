# nomad-driver-xen — developer entry points.
#
# Everything a target needs is installed by the project's own scripts; heavy artefacts
# (the Nomad agent, the Xen testbed images) are cached outside the repository under
# $(CACHE_DIR), keyed by what they are built from, so a second build is a no-op.

SHELL        := /bin/bash
PYTHON       ?= python3
VENV         ?= .venv
PY           := $(VENV)/bin/python
export NDX_CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/nomad-driver-xen
NOMAD_VERSION := $(shell cat tools/nomad/VERSION)

.PHONY: help deps proto nomad guests testbed testbed-smoke test lint unit conformance demo bench clean dist

help:
	@echo "make test           run the whole test suite (installs what it needs; lint first)"
	@echo "make lint           static checks: ruff (lint + format check) and mypy on xen_driver/ and tests/fakes/"
	@echo "make unit           the unit tests only (no Nomad agent, no Xen testbed)"
	@echo "make dist           dist/: the single-file plugin, wheel, sdist and .deb (tools/dist.py)"
	@echo "make demo           real Nomad + real Xen testbed running nomad-jobs/clickos.nomad"
	@echo "make recovery       plugin crash, agent restarts, Xen faults under a real Nomad agent (table + bench/results/recovery.json)"
	@echo "make nomad          build/cache the pinned Nomad agent ($(NOMAD_VERSION))"
	@echo "make testbed        build/cache the Xen-in-QEMU testbed images"
	@echo "make testbed-smoke  boot the testbed and smoke-test Xen with our unikernel"
	@echo "make conformance    Nomad's Go plugin client/loader/harness against our plugin (host + testbed)"
	@echo "make proto          regenerate the protobuf modules from proto/"

# Python environment (system packages + virtualenv); idempotent.
deps: $(VENV)/.deps-stamp
$(VENV)/.deps-stamp: pyproject.toml tools/install-deps.sh
	bash tools/install-deps.sh "$(VENV)"
	touch $@

proto: deps
	$(PY) -m xen_driver._gen

nomad:
	bash tools/nomad/build.sh

guests:
	$(MAKE) -C guests

testbed: guests
	bash testbed/build.sh

testbed-smoke: deps testbed
	$(PY) -m pytest -v tests/xen/test_smoke.py

unit: deps
	$(PY) -m pytest -q tests/unit

# Static checks (configured in pyproject.toml); `make test` runs them first and stops on a finding.
lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Nomad's own Go plugin client, loader and driver harness against our plugin (tests/conformance/):
# the host part, then the lifecycle part inside the Xen testbed. `make test` runs both too.
conformance: deps testbed
	$(PY) -m pytest -v tests/nomad/test_conformance_host.py tests/xen/test_conformance.py

# Release artifacts from this checkout and PyPI: dist/nomad-driver-xen (one file for plugin_dir),
# the wheel and sdist, a .deb. The testbed installs dist/nomad-driver-xen in dom0, so test needs it.
dist:
	$(PYTHON) tools/dist.py

# lint is the first prerequisite: a finding fails the build before the Nomad agent, the testbed
# images and dist/ are built.  The 40 slowest test steps are listed at the end, where the tail of
# a CI log shows them.
test: lint deps nomad testbed dist
	$(PY) -m pytest -v --durations=40 tests

demo: deps nomad testbed
	$(PY) tools/demo.py

# Recovery on the testbed with a real Nomad agent: the module prints its summary table and
# writes bench/results/recovery.json.
.PHONY: recovery
recovery: deps nomad testbed
	$(PY) -m pytest -v -rA tests/xen/test_recovery.py

# The Superfluidity instantiation experiment on the testbed: N ClickOS jobs per start path pushed
# through the HTTP API, broken down by phase (bench/results/instantiation.{json,png}). Not in `make test`.
.PHONY: instantiation
instantiation: deps nomad testbed guests
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check -e '.[plot]'
	$(PY) bench/instantiation.py -n $(or $(N),5) $(if $(PATHS),--paths $(PATHS))

bench: deps nomad testbed
	$(PY) bench/startup.py
	$(PY) bench/start_overhead.py

scale: deps ; $(PY) bench/scale.py

clean:
	rm -rf $(VENV) .pytest_cache .run guests/build
