# podium — the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Let Python cache bytecode: every podium subprocess in the tests would otherwise recompile
# torch, timm and smp (some shells export PYTHONDONTWRITEBYTECODE=1).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install lock wheel demo test test-fast lint bench clean

# One virtual environment per clone, holding exactly the versions of requirements.lock (uv
# installs the pinned torch/torchvision pair in seconds from its cache, with progress bars).
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade uv
	$(BIN)/uv pip install -p $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install -q -p $(BIN)/python --no-deps -e .
	# pytorch-toolbelt is only a test-time peer for the RLE cross-check; its own pins
	# (opencv-python) would clash with opencv-python-headless, so it comes without deps.
	$(BIN)/uv pip install -q -p $(BIN)/python --no-deps pytorch-toolbelt==0.8.0
	touch $(STAMP)
	@echo "podium is installed in $(VENV): run it as $(BIN)/podium, or put it on PATH with: source $(BIN)/activate"

install: $(STAMP)

# Refresh requirements.lock after changing pyproject.toml's dependencies.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev -o requirements.lock --python-version 3.11 \
	  --no-annotate --no-header -q
	sed -i '1i # Exact versions for CI and the demo (make install syncs them; pyproject.toml holds the ranges).\n# Refresh with: make lock   (uv keeps these versions unless pyproject.toml needs others)' requirements.lock

# podium as a wheel (dist/podium-*.whl): pip install it anywhere, then `podium init` a workspace.
wheel: $(STAMP)
	$(BIN)/uv build --wheel -o dist .

demo: $(STAMP)
	$(BIN)/podium demo

# Test files run side by side (pytest-xdist), whole files per worker so module fixtures are built
# once: most tests wait on podium subprocesses pinned to one thread, so 2 cores run 2 files.
PYTEST = $(BIN)/python -m pytest -q -n logical --maxprocesses=4 --dist loadfile

test: $(STAMP)
	$(PYTEST) tests

test-fast: $(STAMP)
	$(PYTEST) -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check src tests bench competitions
	$(BIN)/ruff format --check src tests bench competitions

bench: $(STAMP)
	for b in bench/[!_]*.py; do $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) runs data outputs .pytest_cache
