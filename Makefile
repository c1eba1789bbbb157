# podium — the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Let Python cache bytecode: every podium subprocess in the tests would otherwise recompile
# torch, timm and smp (some shells export PYTHONDONTWRITEBYTECODE=1).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install demo test test-fast lint bench clean

# One virtual environment per clone. uv installs the pinned torch/torchvision pair in seconds.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade uv
	$(BIN)/uv pip install -q -p $(BIN)/python -e '.[dev]'
	# pytorch-toolbelt is only a test-time peer for the RLE cross-check; its own pins
	# (opencv-python) would clash with opencv-python-headless, so it comes without deps.
	$(BIN)/uv pip install -q -p $(BIN)/python --no-deps pytorch-toolbelt==0.8.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/podium demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check src tests bench competitions
	$(BIN)/ruff format --check src tests bench competitions

bench: $(STAMP)
	for b in bench/[!_]*.py; do $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) runs data outputs .pytest_cache
