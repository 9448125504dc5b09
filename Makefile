# The two commands of the README: `make demo` (the main job on the bundled real data) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test install clean readme-config bench faults

# torch first, pinned, so nothing pulls a multi-GB CUDA build; then the package with its test extras.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/scarches-api demo

test: $(VENV)/.installed
	$(PY) -m pytest -ra

clean:
	rm -rf $(VENV) out

readme-config: $(VENV)/.installed
	$(PY) scripts/update_readme_config.py

# The fast-path benchmark, CI-sized (full size: .venv/bin/python bench/fastpath.py --scales 0,100000,300000).
bench: $(VENV)/.installed
	$(PY) bench/fastpath.py --quick

# docs/faults.md: every test marked `fault`, with what it observed (its intro text above the table is kept).
faults: $(VENV)/.installed
	SCARCHES_FAULT_TABLE=docs/faults.md $(PY) -m pytest -ra -m fault
