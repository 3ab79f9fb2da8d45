# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU wheel from local disk on this machine; a CUDA torch already in the venv is kept as it is.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_out
export MAX_JOBS ?= 2

.PHONY: install demo test bench clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(VENV)/bin/activate setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "setuptools>=64" wheel
	$(PIP) install -q --no-build-isolation -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m dtifast.demo --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15

bench: install
	$(PY) -m pytest -q benchmarks -p no:xdist --benchmark-only

clean:
	rm -rf build *.egg-info dtifast/_C*.so $(VENV)/.installed
