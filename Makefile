# Everything installs from scratch into .venv: `make test` works on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; GPU users install their own build (the package asks torch>=2.4).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test test-slow quickstart clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q

# The whole loop offline on CPU: skills suite → tiny model → evaluate → train → evaluate → report.
quickstart: install
	$(BIN)/instillm run configs/quickstart.yaml

test-slow: install
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
