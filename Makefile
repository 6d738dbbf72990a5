# The README's commands:
#   make figures              set up the venv, then build figures/all on the embedded default model
#   make figure NAME=drift_over_rounds   rebuild one figure (PDF and PNG) of CONFIG's study from its
#                             cached tables, in figures/<study>/ (DIR=folder: of a study run in
#                             another working folder)
#   make figure-docs          rewrite report/figure.rst and the README's reviewer's map from the
#                             figure catalog (src/personadrift/figures/catalog.py)
#   make validate CONFIG=configs/paper.yaml   the workflow's own config check, without running anything
#                             (SHOW=1: print the merged, validated config as YAML)
#   make verify               compare results/embedded-default with the committed manifest
#                             (expected/embedded-default.manifest.json): "identical", or per setting
#                             the first departure and every claim whose verdict changed; exit 1 if
#                             it departs (EXPECTED=file-or-results-folder RESULTS=folder: any two runs)
#   make expected             rebuild the default study's outputs manifest and commit it as expected/
#   make robustness           rerun the study under robustness.seeds (results/<study>-seed<k>/, the
#                             config's own seed is the study itself) and tabulate each claim's share
#                             of seeds and estimate spread: results/<study>-robustness/claims.csv
#   make lint                 ruff and mypy on the package, snakemake --lint, snakefmt --check
#   make test                 set up both venvs (side by side: make setup-all), lint, then run the whole test suite
#   make lock                 regenerate requirements.lock (hash-checked) after editing requirements.txt
# No activation needed: every target calls the tools in .venv/bin.
# Everything is installed from requirements.lock (requirements.txt's pins and their dependencies,
# hash-checked) into .venv, and the vLLM backend's environment from requirements-vllm.txt into
# .venv-vllm; the model and MMLU are fetched by the workflow itself.

PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export TOKENIZERS_PARALLELISM := false
# Every process a recipe starts caches the bytecode it compiles (CPython's default), so what a job
# imports beyond personadrift.bytecode's list is compiled once, not by every job (the tests too).
unexport PYTHONDONTWRITEBYTECODE
CORES ?= 2

.PHONY: setup setup-vllm setup-all lock figures figure signals figure-docs validate verify expected robustness test lint report rulegraph clean-results

# uv installs the hash-checked lock (requirements.lock, from requirements.txt by `make lock`): pip
# took most of a minute more (docs/measurements.md, Timings). Then personadrift.bytecode caches the
# bytecode of what the workflow's jobs import (about a fifth of the venv; byte-compiling all of it
# was most of the setup's time): where PYTHONDONTWRITEBYTECODE is set, as on many CI runners, Python
# never caches what it compiles, and every workflow job would compile torch and transformers anew
# (about 14 s of CPU each). uv reads neither pip.conf nor PIP_* variables: UV_SOURCES hands it
# pip's find-links and index URLs (this machine's torch wheel is one of them).
UV_SOURCES = $(shell $(PYTHON) envs/pip_sources.py) --index-strategy unsafe-best-match
UV = $(BIN)/python -m uv

# the venv with the installer (uv, and pip for the tests that build a wheel)
$(BIN)/uv: requirements-setup.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-setup.txt

$(VENV)/.installed: requirements.lock pyproject.toml $(BIN)/uv
	$(UV) pip install --quiet --python $(BIN)/python --require-hashes $(UV_SOURCES) -r requirements.lock
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	$(BIN)/python -m personadrift.bytecode
	touch $@

# The vLLM backend's own environment (its torch and transformers pins differ from ours): every
# package pinned in requirements-vllm.txt, installed by uv without dependency resolution so that
# PyPI's CUDA-built torchvision/torchaudio/torchcodec never land beside the CPU torch, and
# byte-compiled whole (vLLM imports much of itself lazily, when its engine starts; uv took
# less than half pip's time here: docs/measurements.md, Setup); the package itself
# editable, without its dependencies (they are in the list).
# Rules of vLLM settings call its CLI (rules/common.smk: env_cli). Built by `make setup-vllm` (and
# `make test`).
VENV_VLLM ?= .venv-vllm
$(VENV_VLLM)/.installed: requirements-vllm.txt pyproject.toml $(BIN)/uv
	$(PYTHON) -m venv $(VENV_VLLM)
	$(UV) pip install --quiet --python $(VENV_VLLM)/bin/python --no-deps --compile-bytecode $(UV_SOURCES) -r requirements-vllm.txt
	$(UV) pip install --quiet --python $(VENV_VLLM)/bin/python --no-deps $(UV_SOURCES) -e .
	touch $@

# the hash-checked locks: requirements.txt's pins and everything they need; the installer's
lock: $(BIN)/uv
	$(UV) pip compile --quiet --generate-hashes --python-version 3.11 $(UV_SOURCES) -o requirements.lock requirements.txt
	$(UV) pip compile --quiet --generate-hashes --python-version 3.11 $(UV_SOURCES) -o requirements-setup.txt requirements-setup.in

setup: $(VENV)/.installed

# only vLLM studies and the tests need it (make figures on the default does not)
setup-vllm: $(VENV_VLLM)/.installed

# the study of config.yaml, its committed outputs manifest, and the run verify reads
STUDY ?= embedded-default
EXPECTED ?= expected/$(STUDY).manifest.json
RESULTS ?= results/$(STUDY)

# A run that departs from the committed manifest still leaves its figures: the comparison is
# printed (exit status 1 of verify is a finding, not a failure); a bad manifest still fails.
figures: setup
	snakemake figures/all --cores $(CORES)
	@if [ -f $(EXPECTED) ]; then personadrift verify --expected $(EXPECTED) --results $(RESULTS) || [ $$? -eq 1 ]; \
	else echo "verify: no $(EXPECTED) to compare with ('make expected' writes it)"; fi

verify: setup
	personadrift verify --expected $(EXPECTED) --results $(RESULTS)

expected: setup
	snakemake $(RESULTS)/manifest.json --cores $(CORES)
	mkdir -p $(dir $(EXPECTED))
	cp $(RESULTS)/manifest.json $(EXPECTED)

robustness: setup
	personadrift robustness --config $(CONFIG) --cores $(CORES)

NAME ?= drift_over_rounds
CONFIG ?= config.yaml
DIR ?=
# the study's figures are under figures/<study>/ (the study named by CONFIG)
figure: setup
	study=$$(python -c 'import sys; from personadrift.config import load_config; print(load_config(sys.argv[1])["study"])' $(CONFIG)) && \
	snakemake "figures/$$study/$(NAME).pdf" "figures/$$study/$(NAME).png" --cores $(CORES) $(if $(filter-out config.yaml,$(CONFIG)),--configfile $(abspath $(CONFIG))) $(if $(DIR),--snakefile $(abspath Snakefile) --directory $(DIR))

# drift without a judge (rules/signals.smk): every setting's signals, tables and the drift_signals figure
signals: setup
	snakemake signals_all --cores $(CORES) $(if $(filter-out config.yaml,$(CONFIG)),--configfile $(abspath $(CONFIG)))

validate: setup
	personadrift validate --config $(CONFIG) $(if $(SHOW),--show)

figure-docs: setup
	personadrift figure-docs

# the tests start with the linters: a finding fails `make test` before the suite runs
# The test command's two environments side by side: the main venv's bytecode pass runs on one core
# while uv byte-compiles vLLM's on the other cores.
setup-all:
	$(MAKE) --no-print-directory -j2 setup setup-vllm

test: setup-all lint
	pytest

# ruff and mypy: rule sets and options in pyproject.toml ([tool.ruff], [tool.mypy])
lint: setup
	ruff check src tests bench
	mypy
	snakemake --lint
	snakefmt --check Snakefile rules/

report: setup
	snakemake figures/all --cores $(CORES) --report report.zip

rulegraph: setup
	snakemake figures/all --configfile configs/smoke.yaml --rulegraph dot | dot -Tsvg > docs/rulegraph.svg
