# Two entry points a fresh machine needs: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test

$(BIN)/geoloc: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(BIN)/geoloc

install: $(BIN)/geoloc

demo: install
	$(BIN)/geoloc demo --out runs/demo

test: install
	$(BIN)/python -m pytest -q
