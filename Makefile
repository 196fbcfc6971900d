# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, then the package with its ranges (torch>=2.4 is then already met). Which build:
#   make install TORCH_INDEX=cpu     CPU-only wheels from PyTorch's index (~200 MB, not ~5 GB of CUDA)
#   make install TORCH_INDEX=cu126   a CUDA build (cu118, cu126, cu128, ...: see pytorch.org)
#   make install TORCH_INDEX=pypi    whatever pip's configured index gives (PyPI: CUDA on Linux x86-64)
#   make install                     auto: a torch wheel pip already finds without an index (a local
#                                    wheelhouse, `pip config list` shows its find-links), else cpu
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?= auto
TORCH_WHEELS ?= https://download.pytorch.org/whl

$(STAMP): $(BIN)/python pyproject.toml
	@index='$(TORCH_INDEX)'; \
	if [ "$$index" = auto ]; then \
		if $(BIN)/pip install --quiet --dry-run --no-deps --no-index torch==$(TORCH_VERSION) \
			>/dev/null 2>&1; then index=pypi; else index=cpu; fi; \
	fi; \
	if [ "$$index" = pypi ]; then set -x; $(BIN)/pip install --quiet torch==$(TORCH_VERSION); \
	else set -x; $(BIN)/pip install --quiet torch==$(TORCH_VERSION) --index-url $(TORCH_WHEELS)/$$index; fi
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

# Two workers for everything but the tests that measure a server under load, which then run
# alone (on 2 cores the suite takes about 6 minutes instead of 10).
test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not serial"
	$(BIN)/python -m pytest -m serial

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
