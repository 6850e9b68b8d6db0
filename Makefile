# kprobe: the two commands that do all the set-up are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup host-packages venv bpf console test unit vmtest demo bench lint clean checkov chart image docs

## setup: idempotent; apt packages (as root), the virtualenv, the BPF objects, the console
setup: host-packages venv bpf console checkov

host-packages:
	@bash infra/scripts/install-host-packages.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

## checkov: the infra scanner (tests/infra) in a virtualenv of its own: it pins boto3 and
## packaging to versions the project's own dependencies exclude
CHECKOV_VENV ?= .venv-checkov
CHECKOV_VERSION := 3.3.30
checkov: $(CHECKOV_VENV)/.installed

$(CHECKOV_VENV)/.installed: Makefile
	@test -x $(CHECKOV_VENV)/bin/python || python3 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	@touch $@

bpf:
	@if [ -f capture_agent/bpf/Makefile ]; then $(MAKE) --no-print-directory -C capture_agent/bpf; fi

## console: the web console (console/dist, served by kprobe serve at /), from the committed
## package-lock.json; rebuilt when its sources change
CONSOLE_SOURCES := $(shell find console/src console/index.html console/vite.config.ts \
	console/tsconfig.json -type f 2>/dev/null)
console: console/dist/index.html

console/node_modules/.installed: console/package-lock.json
	@command -v npm >/dev/null || { echo "setup: npm (Node.js 20.19+) is missing: it builds the console" >&2; exit 1; }
	cd console && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

console/dist/index.html: console/node_modules/.installed $(CONSOLE_SOURCES)
	cd console && npm run --silent build
	@touch $@

## test: the whole suite (root needed for the kernel tests), then `make lint`; any pytest
## failure, including exit 5 (no tests collected), or a lint finding fails the target (lint
## runs after the tests either way). In CI (CI=true, or KPROBE_CI=1 as .ci/run sets) the
## image is built first for tests/infra/test_image.py; elsewhere `make image` builds it when
## wanted (it takes minutes).
test: setup $(if $(or $(CI),$(KPROBE_CI)),image)
	@status=0; $(PY) -m pytest $(PYTEST_ARGS) || status=$$?; \
	{ $(VENV)/bin/ruff check . && $(VENV)/bin/mypy; } || [ $$status -ne 0 ] || status=1; \
	exit $$status

## vmtest: the kernel matrix: Debian's 6.1 and 6.12 cloud kernels in QEMU guests that see this
## machine's root read-only, and the host's own kernel natively (root; tests/vmtest/)
vmtest: setup
	$(PY) -m tests.vmtest

## chart: the committed rendering of the chart's default values (no helm binary here:
## infra/helm/render.py renders the chart; tests/infra/test_chart.py fails when it is stale)
chart: venv
	$(PY) infra/helm/render.py infra/helm/kprobe > infra/helm/rendered/kprobe-default.yaml

## image: the OCI image of every workload (infra/image/build.sh: mmdebstrap + podman, root),
## rebuilt only when what goes into it changes; build/image/kprobe-VERSION.oci.tar
IMAGE_INPUTS := pyproject.toml setup.py infra/image/build.sh infra/image/oci.py console/dist/index.html \
	$(shell git ls-files capture_agent compute kprobe lake query_api replay_sandbox 2>/dev/null)
image: build/image/.built

build/image/.built: $(IMAGE_INPUTS) | setup
	bash infra/image/build.sh
	@touch $@

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

## demo: the main job
demo: setup
	$(VENV)/bin/kprobe demo

## bench: every bench to its end, by module; exits non-zero if any could not run
bench: setup
	@failed=""; for b in tests/bench/bench_*.py; do m=tests.bench.$$(basename $$b .py); \
	echo "== $$m"; $(PY) -m $$m || failed="$$failed $$m"; done; \
	if [ -n "$$failed" ]; then echo "bench failed:$$failed" >&2; exit 1; fi

## docs: the documentation site (mkdocs-material, a dev extra) into build/site, --strict: the
## CLI, API and settings references are generated from the code first (docs/_gen/generate.py)
docs: venv
	$(PY) docs/_gen/generate.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) build *.egg-info console/dist console/node_modules
	@if [ -f capture_agent/bpf/Makefile ]; then $(MAKE) -C capture_agent/bpf clean; fi
