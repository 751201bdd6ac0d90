# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create or refresh .venv first. torch is installed FIRST and pinned, so that no dependency
# pulls another (multi-GB CUDA) build. GPU users: see README "Installing on a GPU machine".
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

# The lowest napari the plugin supports, tested by `make test-min`; pyproject.toml declares the same
# lower bound (tests/test_release.py checks that they agree). 0.9.2: the first whose reset_view takes
# layers= (viewer/_demo.py); see the comment at napari in pyproject.toml.
NAPARI_MIN ?= 0.9.2
MIN_VENV   ?= .venv-min
MIN_BIN    := $(MIN_VENV)/bin

.PHONY: venv venv-min test test-fast test-min demo bench clean

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

# A second venv with the lowest supported napari pinned (torch first and pinned, as above), then the
# GUI tests and the release checks (reader smoke test through napari's open path, the napari
# version actually installed) against it. The `*` .gitignore keeps git from listing the venv.
$(MIN_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(MIN_VENV)
	echo '*' > $(MIN_VENV)/.gitignore
	$(MIN_BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(MIN_BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]" "napari[pyqt6]==$(NAPARI_MIN)"
	touch $@

venv-min: $(MIN_VENV)/.installed

test-min: venv-min
	$(MIN_BIN)/python -m pytest -m gui $(PYTEST_ARGS)
	NEMESIS_EXPECT_NAPARI=$(NAPARI_MIN) $(MIN_BIN)/python -m pytest -m "not slow" tests/test_release.py $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -m "not slow and not gui" $(PYTEST_ARGS)

demo: venv
	$(BIN)/nemesis demo

# The benchmark against MONAI's ViT needs the bench extra (MONAI, einops, psutil).
bench: venv
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[bench]"
	$(BIN)/nemesis bench

clean:
	rm -rf $(VENV) $(MIN_VENV) build dist src/*.egg-info .pytest_cache
