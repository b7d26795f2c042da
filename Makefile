# margin_notes: everything a fresh clone needs goes through these targets.
#   make test   set up .venv, check notebooks and modules are in sync, run every chapter (smoke), the `#| gpu`
#               cells of chapters 05, 21 and 32- in smoke mode on stand-in data (make test-gpu-cells), and pytest
#   make run    set up .venv, run the book's main job on bundled real data (no download)
#   make docs      build the Quarto site into _docs/ (quarto from PATH, else QUARTO_INSTALLER); executes no chapter.
#                  MATHJAX=local points the pages at Debian's libjs-mathjax (offline reading); default: the CDN
#   make outputs   execute every chapter in the full configuration (slow/gpu cells skipped) and write the
#                  outputs into the notebooks, which are committed with them (CHAPTERS="13_mr2 15_marc" for some)
#   make check-site  make docs, then check every rendered page in headless Chromium
#   make gpu-check   on a CUDA machine: measure losses, engine, a CIFAR-10 (JPEG)-LT run and CLIP into results/gpu/ (chapter 36)
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip on these machines warns about configured local indexes that do not exist; hide only those lines
PIPQ := 2>&1 | { grep -v '^WARNING: Location' || true; }
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch pair is installed first and explicitly. On a CUDA machine override it, e.g.
#   make test TORCH_PACKAGES="torch==2.5.1 torchvision==0.20.1" TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu124"
TORCH_PACKAGES ?= torch==2.14.1 torchvision==0.29.1
TORCH_PIP_ARGS ?=
PRESET ?= digits-lt
STAMP := $(VENV)/.installed-stamp
NBDEV_WORKERS ?= 2
# Quarto: `quarto` on PATH, else this offline installer (it prints the directory of `quarto`) when it exists
QUARTO_INSTALLER ?= ../shared/tools/quarto/install.sh
MATHJAX ?= cdn
CHAPTERS ?=
# the data root of `make outputs` (the chapters' full configuration reads real data)
DATA ?= $(if $(MARGIN_NOTES_DATA),$(MARGIN_NOTES_DATA),../shared/data)

.PHONY: install test test-nbs test-gpu-cells test-py sync-check check-outputs run docs outputs check-site bench gpu-check clean
install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python settings.ini setup.py
	$(BIN)/python -m pip install -q $(TORCH_PACKAGES) $(TORCH_PIP_ARGS) $(PIPQ)
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

# one BLAS/OpenMP thread per notebook worker: NBDEV_WORKERS processes with a thread per core each oversubscribe the
# cores, and PyTorch's spinning threads then run many times slower than one thread (measured on 2 cores)
NB_THREADS := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
test-nbs: install
	$(NB_THREADS) MARGIN_NOTES_SMOKE=1 MPLBACKEND=Agg $(BIN)/nbdev_test --n_workers $(NBDEV_WORKERS) --timing

# the `#| gpu` cells (skipped by test-nbs) in smoke mode on the CPU: same code path, stand-in data, scratch folders
GPU_CELL_CHAPTERS ?= ^(05_data|21_engine|3[2-6]_.*)\.ipynb$$
# the long CPU runs of chapter 30 (`#| slow`), likewise in smoke mode on stand-ins
SLOW_CELL_CHAPTERS ?= ^30_cifar10lt_cpu\.ipynb$$
test-gpu-cells: install
	$(NB_THREADS) MARGIN_NOTES_SMOKE=1 MPLBACKEND=Agg $(BIN)/nbdev_test --n_workers $(NBDEV_WORKERS) --timing --flags gpu --file_re '$(GPU_CELL_CHAPTERS)'
	$(NB_THREADS) MARGIN_NOTES_SMOKE=1 MPLBACKEND=Agg $(BIN)/nbdev_test --n_workers $(NBDEV_WORKERS) --timing --flags slow --file_re '$(SLOW_CELL_CHAPTERS)'

test-py: install
	MARGIN_NOTES_SMOKE=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q tests

# committed outputs: no traceback, stderr, smoke-run marker or machine path (scripts/execute_book.py --check)
check-outputs: install
	$(BIN)/python scripts/execute_book.py --check

test: install
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory sync-check && \
	$(MAKE) --no-print-directory check-outputs && \
	$(MAKE) --no-print-directory test-nbs && \
	$(MAKE) --no-print-directory test-gpu-cells && \
	echo "make test: chapters (and their GPU cells in smoke mode) done in $$(( $$(date +%s) - start )) s" && \
	$(MAKE) --no-print-directory test-py

run: install
	MPLBACKEND=Agg $(BIN)/margin-notes run $(PRESET)

docs: install
	@bindir=""; \
	if ! command -v quarto >/dev/null 2>&1; then \
	  if [ -x "$(QUARTO_INSTALLER)" ]; then \
	    echo "quarto is not on PATH: installing it with $(QUARTO_INSTALLER)"; \
	    bindir="$$($(QUARTO_INSTALLER) --print-bin-dir)" || { echo "make docs: the Quarto install ($(QUARTO_INSTALLER)) failed"; exit 1; }; \
	  else \
	    echo "make docs: Quarto is not on PATH. Install Quarto >= 1.7 (https://quarto.org/docs/get-started/)," \
	         "or point QUARTO_INSTALLER at an installer that prints the directory of quarto."; exit 1; \
	  fi; \
	fi; \
	PATH="$${bindir:+$$bindir:}$$PATH" $(BIN)/python scripts/build_docs.py --mathjax $(MATHJAX)

outputs: install
	MARGIN_NOTES_DATA="$(DATA)" nice $(BIN)/python scripts/execute_book.py $(CHAPTERS)

check-site: docs
	$(BIN)/python scripts/check_site.py --no-build $(CHECK_SITE_ARGS)

bench: install
	$(BIN)/python benchmarks/losses.py
	$(BIN)/python benchmarks/pipeline.py

gpu-check: install
	MARGIN_NOTES_DATA="$(DATA)" $(BIN)/python scripts/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf _docs _proc _site .pytest_cache _render screenshots
