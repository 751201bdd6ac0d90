# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create or refresh .venv first. torch is installed FIRST and pinned, so that no dependency
# pulls another (multi-GB CUDA) build. GPU users: see README "Installing on a GPU machine".
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv test test-fast demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $@

venv: $(VENV)/.installed

# The test command CI runs (.ci/run). GUI tests start their own Xvfb through pytest-xvfb.
test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -m "not slow and not gui" $(PYTEST_ARGS)

demo: venv
	$(BIN)/nemesis demo

# The benchmark against MONAI's ViT needs the bench extra (MONAI, einops, psutil).
bench: venv
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[bench]"
	$(BIN)/nemesis bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
