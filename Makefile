# Two commands for a newcomer: `make book` and `make test` (each sets up .venv first).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# nbgrader calls alembic from PATH when it creates the gradebook
export PATH := $(abspath $(BIN)):$(PATH)
STAMP := $(VENV)/.installed
# The CPU build of torch, installed first where torch is missing so that the range in
# requirements.txt never pulls a multi-GB CUDA build onto a CPU-only machine.
TORCH_CPU ?= torch==2.13.0
CHAPTERS := $(notdir $(wildcard solutions/ch[0-9][0-9]))

.PHONY: help setup book test lab release autograde feedback benchmark site-deps sandbox-deps clean

help:
	@echo "make book       build the book with every notebook executed (_build/html)"
	@echo "make test       run the whole test suite"
	@echo "make lab        JupyterLab with nbgrader, for instructors"
	@echo "make release    regenerate exercises/ from solutions/ (nbgrader generate_assignment)"
	@echo "make autograde A=ch01   grade submitted/<student>/ch01/, each in a sandbox (J=2: at a time)"
	@echo "make feedback A=ch01    write feedback/ for graded submissions (hidden tests not shown)"
	@echo "make benchmark  n-gram scoring against nltk.lm, BPE against tokenizers, GPT against transformers"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_CPU)"
	$(PY) -m pip install -q -r requirements-dev.txt -e .
	@touch $(STAMP)

setup: $(STAMP)

# A page keeps every line a progress bar writes: one a minute (tqdm's TQDM_* settings) keeps
# a long training run's bar to a few lines there.
book: setup
	COURSE_FAST=0 TQDM_MININTERVAL=60 TQDM_MAXINTERVAL=120 $(BIN)/jupyter-book build . -W -n --keep-going

# Headless Chromium for the check of the built site; skipped with a message where it
# cannot be installed (not root, or no apt-get).
site-deps:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium for the site check"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "WARNING: could not install chromium; the site check will be skipped"; \
	else echo "WARNING: chromium is missing and cannot be installed here; the site check will be skipped"; fi

# bubblewrap, the sandbox that grading runs students' code in (course_lib.grading.sandbox). Where
# it cannot be installed, grading refuses to run students' code and its tests fail,
# saying why.
sandbox-deps:
	@if command -v bwrap >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing bubblewrap, the sandbox for grading"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
	  || echo "WARNING: could not install bubblewrap; grading and its tests will refuse to run students' code"; \
	else echo "WARNING: bubblewrap (bwrap) is missing and cannot be installed here; grading and its tests will refuse to run students' code (install the package bubblewrap)"; fi

# Two processes, a test file each at a time (module fixtures such as the book build run once):
# the grading tests wait on subprocesses much of the time, and the book build overlaps them.
test: setup site-deps sandbox-deps
	$(PY) -m pytest -q -n 2 --dist loadfile

lab: setup
	$(BIN)/jupyter lab

# An instructor's private tests and solutions (COURSE_PRIVATE=/path/to/private; see the
# instructors page) replace the public ones at release and when grading.
PRIVATE_SOURCE := $(if $(wildcard $(COURSE_PRIVATE)/solutions),--CourseDirectory.source_directory=$(abspath $(COURSE_PRIVATE)/solutions))

release: setup
	@for a in $(CHAPTERS); do $(BIN)/nbgrader generate_assignment $$a --force $(PRIVATE_SOURCE) || exit 1; done

# Every submission runs in a sandbox, J of them at a time (default: one per core);
# UNSANDBOXED=1 runs them without one where bubblewrap is missing (with your rights).
autograde: setup sandbox-deps
	@test -n "$(A)" || (echo "usage: make autograde A=ch01 [J=2] [UNSANDBOXED=1]" && exit 2)
	$(PY) -m course_lib.grading.autograde $(A) $(if $(J),--jobs $(J)) $(if $(UNSANDBOXED),--unsandboxed)

# nbgrader_config.py keeps the source of hidden tests out of the pages.
feedback: setup
	@test -n "$(A)" || (echo "usage: make feedback A=ch01" && exit 2)
	$(BIN)/nbgrader generate_feedback $(A) --force

benchmark: setup
	$(PY) benchmarks/bench_ngram.py
	$(PY) benchmarks/bench_bpe.py
	$(PY) benchmarks/bench_gpt.py

clean:
	rm -rf _build
