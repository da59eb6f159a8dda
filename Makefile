# `make venv` creates .venv with the project and its dev extras (torch comes from pip's local wheels here).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
INSTALLED := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: venv repro test
venv: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[dev]'
	touch $(INSTALLED)

repro: venv
	$(VENV)/bin/dvc repro

test: venv
	$(VENV)/bin/pytest
