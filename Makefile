# Two commands on a fresh machine with Python >= 3.10 and make:
#   make demo   - create .venv, install torchinit, run `torchinit compare` (plot: build/compare.png, untracked)
#   make test   - create .venv, install with the dev extras, run the test suite
#   make lint   - ruff, the import-layer contracts, mypy and the complexity limit (CI runs it before make test)
#   make quick  - the inner loop: the tests that are neither slow nor distributed
#   make fuzz   - the fuzz and fault suites (initializers, configs, interrupts at every point) at their large profile
#   make trainability - the training experiments of docs/trainability.md (about 8 minutes on 2 cores)
#   make mup    - the learning-rate sweeps of docs/mup.md (about 11 minutes on 2 cores)
#   make wheel  - dist/: the sdist and a wheel for this platform, checked and tagged manylinux by auditwheel
#   make compat - the suite on the oldest supported torch, in its own venv (.venv-compat)
# torch is pinned for development by constraints.txt; the package itself accepts torch>=2.1.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --constraint constraints.txt
COMPAT := .venv-compat

.PHONY: demo test quick lint fuzz bench trainability mup wheel compat clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt setup.py src/torchinit/rng/_philox.c
	$(PIP) -e '.[plot]'
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml constraints.txt setup.py src/torchinit/rng/_philox.c
	$(PIP) -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	mkdir -p build
	$(BIN)/torchinit compare --out build/compare.png

# the suite on two workers (pytest-xdist; a module's tests stay on one worker: its fixtures run once), then the
# same bits without the compiled kernel: the golden digests once more, on the torch-operations stream
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n 2 --dist loadfile
	TORCHINIT_NO_KERNEL=1 $(BIN)/python -m pytest -q tests/golden -p no:cacheprovider

quick: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "not slow and not distributed"

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests tools benchmarks docs
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python tools/complexity.py

fuzz: $(VENV)/.installed-dev
	TORCHINIT_FUZZ=large $(BIN)/python -m pytest tests/schemes/test_fuzz.py tests/schemes/test_config_hostile.py tests/faults -p no:randomly

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/keyed.py
	$(BIN)/python benchmarks/model_init.py
	$(BIN)/python benchmarks/sharded.py --check

trainability: $(VENV)/.installed-dev
	$(BIN)/python docs/trainability.py

mup: $(VENV)/.installed-dev
	$(BIN)/python docs/mup_evidence.py

$(COMPAT)/.installed: pyproject.toml constraints-compat.txt setup.py src/torchinit/rng/_philox.c
	$(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install --quiet --constraint constraints-compat.txt -e '.[dev]'
	touch $@

# the whole suite on the floor; what needs a newer torch (FSDP2, DTensor) or a newer transformers skips with the reason
compat: $(COMPAT)/.installed
	$(COMPAT)/bin/python -m pytest -n 2 --dist loadfile -p no:cacheprovider -rs

wheel: $(VENV)/.installed-dev
	rm -rf dist
	$(BIN)/python -m build --outdir dist/built .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/auditwheel repair --wheel-dir dist dist/built/*.whl
	mv dist/built/*.tar.gz dist/ && rm -rf dist/built

clean:
	rm -rf $(VENV) $(COMPAT) build dist src/*.egg-info
