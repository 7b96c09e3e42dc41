# The backfill bundle: `make demo` runs the main job on the local emulators with sample data;
# `make test` sets up and runs every check CI runs. Both work on a fresh machine of this kind
# (Python 3.11, Java 17, the Google Cloud SDK with its Firestore emulator component).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STATE  := .local

.PHONY: setup up down status demo infra lint test unit bench openapi clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip==25.3
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed            ## the app's virtualenv, pinned

up: setup                            ## start the local stack; its environment: .local/stack.env
	$(PY) -m emulators.stack up --state-dir $(STATE)

down: setup                          ## stop exactly what `make up` started
	$(PY) -m emulators.stack down --state-dir $(STATE)

status: setup
	$(PY) -m emulators.stack status --state-dir $(STATE)

demo: up                             ## seed a sample, dry-run and replay it over HTTP
	set -a && . $(STATE)/stack.env && set +a && $(PY) -m emulators.demo

# checkov in a venv of its own: its dependencies would fight the bundle's pins.
CHECKOV := $(STATE)/checkov-venv

$(CHECKOV)/.installed: infra/requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV)
	$(CHECKOV)/bin/pip install --quiet -r infra/requirements-checkov.txt
	touch $@

infra: $(CHECKOV)/.installed         ## static checks of infra/ (Terraform cannot init here)
	$(CHECKOV)/bin/checkov -d infra --framework terraform --quiet --compact \
	  --config-file infra/.checkov.yaml
	if command -v terraform >/dev/null; then terraform fmt -check -recursive infra; fi

lint: setup infra
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

unit: setup                          ## the fast tests: no emulator
	$(VENV)/bin/pytest tests/unit

# The status page test drives Debian's Chromium (no browser download: the machine's network
# reaches package registries only).
CHROMIUM ?= /usr/bin/chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium

test: lint $(CHROMIUM)               ## lint, types, unit, function, browser and end-to-end tests
	BACKFILL_CHROMIUM=$(CHROMIUM) $(VENV)/bin/pytest

openapi: setup                       ## write docs/openapi.json from the code (a test compares them)
	$(PY) -m shared.api.openapi > docs/openapi.json

bench: setup                         ## every figure of the README's "Performance", in one run
	$(PY) -m benchmarks.bench

clean: down
	rm -rf $(STATE) $(VENV)
