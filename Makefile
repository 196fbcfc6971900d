# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned to the CPU wheel; then the package with its ranges.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ckptserve demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest

# HTTP benchmarks against the peers (docs/benchmarks.md); needs wrk. Under 10 minutes.
$(VENV)/.bench-installed: $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python benchmarks/run_all.py

# ckptserve side by side with Triton through the shared peer kit, where it is present (it is not
# part of this repository): writes benchmarks/results/peers.md. Without the kit it says so and
# exits 0. PEER_KIT=DIR names the kit's more-peers folder (default: ../shared/bench/more-peers);
# ARGS="--docs" also writes the figures into docs/benchmarks.md.
.PHONY: bench-peers
bench-peers: $(STAMP)
	$(BIN)/python benchmarks/bench_peers.py $(if $(PEER_KIT),--kit $(PEER_KIT)) $(ARGS)

soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
