# The two commands of the README:
#   make book   data for the profile, every chapter executed (papermill), HTML (Jupyter Book 1)
#   make test   the pytest suite, every chapter included (mini profile)
# Both create and fill their own virtual environment in .venv on first use.

PROFILE ?= mini
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch, installed before anything else so that no dependency pulls a
# multi-GB CUDA build on a machine without a GPU. Override on a GPU machine, e.g.
#   make book PROFILE=gpu TORCH_SPEC="torch==2.13.0" TORCH_PIP_ARGS="--index-url ..."
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1
# One torch/OpenMP thread per process unless you say otherwise: on a 2-core machine that
# is doing anything else, two threads per process spin-wait on each other and run up to
# 10-20x slower (measured here). `make test` uses both cores through two pytest workers.
export OMP_NUM_THREADS ?= 1

.PHONY: book test data venv clean clean-data assignments

venv: $(STAMP)

$(STAMP): pyproject.toml
	@echo "== setting up $(VENV) (first run only) =="
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	@$(PY) -m pip install -q -e ".[book,test,course]"
	@touch $(STAMP)

# Steps that do not depend on each other run side by side, one per core (each is one
# thread): the analytic prior needs no trained head model, and the two avatars need only
# the prior. `both A B` runs A in the background and B here, prints A's output after B's,
# and fails if either failed.
both = $(1) > $(VENV)/.bg.log 2>&1 & bg=$$!; $(2); rc=$$?; wait $$bg; rb=$$?; \
	cat $(VENV)/.bg.log; [ $$rc -eq 0 ] && [ $$rb -eq 0 ]

data: $(STAMP)
	$(PY) data_scripts/make_synthetic.py --profile $(PROFILE)
	$(call both,$(PY) data_scripts/distill_prior.py --profile $(PROFILE) --head analytic --quiet,\
		$(PY) data_scripts/train_head_model.py --profile $(PROFILE))
	$(PY) data_scripts/distill_prior.py --profile $(PROFILE)
	$(call both,$(PY) data_scripts/train_avatar.py --profile $(PROFILE) --only vanilla,\
		$(PY) data_scripts/train_avatar.py --profile $(PROFILE) --only features)

book: data
	$(PY) -m npga.book.runner --profile $(PROFILE)

test: $(STAMP)
	@$(MAKE) --no-print-directory data PROFILE=mini
	$(PY) -m pytest -n 2 --dist loadgroup --durations=15 tests
	@# the HTML of the chapters the tests just executed (cached: nothing runs twice), then
	@# every page opened in headless Chromium (npga.book.check_html; skipped without one
	@# locally, an error under CI)
	$(PY) -m npga.book.runner --profile mini
	$(PY) -m npga.book.check_html

# Course assignments (README, "For instructors"): student and autograder editions of every
# master in assignments/, in _build/assignments/{student,autograder}/NAME/.
assignments: $(STAMP)
	$(PY) -m npga.book.assignments build

clean:
	rm -rf _build

clean-data:
	rm -rf data
