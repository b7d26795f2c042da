# margin_notes: everything a fresh clone needs goes through these targets.
#   make test   set up .venv, check notebooks and modules are in sync, run every chapter (smoke) and pytest
#   make run    set up .venv, run the book's main job on bundled real data (no download)
#   make docs   build the Quarto site (needs quarto on PATH; otherwise the offline pre-processing check)
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip on these machines warns about configured local indexes that do not exist; hide only those lines
PIPQ := 2>&1 | { grep -v '^WARNING: Location' || true; }
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch pair is installed first and explicitly. On a CUDA machine override it, e.g.
#   make test TORCH_SPEC="torch==2.5.1 torchvision==0.20.1" TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TORCH_PIP_ARGS ?=
PRESET ?= digits-lt
STAMP := $(VENV)/.installed-stamp
NBDEV_WORKERS ?= 2

.PHONY: install test test-nbs test-py sync-check run docs check-site bench clean
install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python settings.ini setup.py
	$(BIN)/python -m pip install -q $(TORCH_SPEC) $(TORCH_PIP_ARGS) $(PIPQ)
	$(BIN)/python -m pip install -q -e ".[dev]" $(PIPQ)
	touch $(STAMP)

sync-check: install
	@before="$$(git status --porcelain)"; \
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean; \
	after="$$(git status --porcelain)"; \
	if [ "$$before" != "$$after" ]; then \
	  echo "nbdev_export/nbdev_clean changed the tree: notebooks and modules are out of sync or unclean:"; \
	  diff <(echo "$$before") <(echo "$$after"); exit 1; \
	else echo "sync-check: nbdev_export and nbdev_clean change nothing"; fi

test-nbs: install
	MARGIN_NOTES_SMOKE=1 MPLBACKEND=Agg $(BIN)/nbdev_test --n_workers $(NBDEV_WORKERS) --timing

test-py: install
	MARGIN_NOTES_SMOKE=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q tests

test: install
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory sync-check && \
	$(MAKE) --no-print-directory test-nbs && \
	echo "make test: chapters done in $$(( $$(date +%s) - start )) s" && \
	$(MAKE) --no-print-directory test-py

run: install
	MPLBACKEND=Agg $(BIN)/margin-notes run $(PRESET)

docs: install
	@# nbdev copies nbs/ into _proc/ by modification time and misses changes behind the nbs/_quarto.yml symlink: start clean
	rm -rf _proc
	@if command -v quarto >/dev/null 2>&1; then $(BIN)/nbdev_docs; \
	else echo "Quarto is missing (not on PATH): running the offline check (nbdev's docs processing into _proc/) instead"; \
	  $(BIN)/python scripts/proc_nbs_offline.py; fi

check-site: install
	MARGIN_NOTES_SMOKE=1 MPLBACKEND=Agg $(BIN)/python scripts/check_site.py $(CHECK_SITE_ARGS)

bench: install
	$(BIN)/python benchmarks/losses.py
	$(BIN)/python benchmarks/pipeline.py

clean:
	rm -rf _docs _proc _site .pytest_cache _render screenshots
