# The README's commands:
#   make figures              set up the venv, then build figures/all on the embedded default model
#   make figure NAME=drift_over_rounds   rebuild one figure (PDF and PNG) from its cached tables
#                             (DIR=folder: of a study run in another working folder)
#   make validate CONFIG=configs/paper.yaml   the workflow's own config check, without running anything
#   make test                 set up the venv, then run the whole test suite
# No activation needed: every target calls the tools in .venv/bin.
# Everything is installed from requirements.txt (pinned) into .venv; the model and MMLU are
# fetched by the workflow itself.

PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export TOKENIZERS_PARALLELISM := false
CORES ?= 2

.PHONY: setup figures figure validate test lint report rulegraph clean-results

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

figures: setup
	snakemake figures/all --cores $(CORES)

NAME ?= drift_over_rounds
CONFIG ?= config.yaml
DIR ?=
figure: setup
	snakemake figures/$(NAME).pdf figures/$(NAME).png --cores $(CORES) $(if $(filter-out config.yaml,$(CONFIG)),--configfile $(abspath $(CONFIG))) $(if $(DIR),--snakefile $(abspath Snakefile) --directory $(DIR))

validate: setup
	personadrift validate --config $(CONFIG)

test: setup
	pytest

lint: setup
	snakemake --lint
	snakefmt --check Snakefile rules/

report: setup
	snakemake figures/all --cores $(CORES) --report report.zip

rulegraph: setup
	snakemake figures/all --configfile configs/smoke.yaml --rulegraph dot | dot -Tsvg > docs/rulegraph.svg
