# The README's two set-up commands: `make run` (whole pipeline on the demo data) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CORES ?= all
# Rules call `orl <stage>`: the venv's bin must come first on PATH for Snakemake's shell jobs.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test install dry-run clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,peer,cpu]'
	touch $@

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

dry-run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) -n

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf results .snakemake report.html
