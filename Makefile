# The README's two commands: `make demo` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
EXTRAS ?= torch,tf,flax,test,plot,docs

.PHONY: setup demo test docs lint fixtures clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

demo: setup
	$(PY) examples/demo.py

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q
	$(PY) -m mkdocs build --strict --quiet

# The documentation site (mkdocs.yml): built into site/; `$(PY) -m mkdocs serve` to browse it.
docs: setup
	$(PY) -m mkdocs build --strict

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Regenerate the committed reference fixtures (needs Transformers 4.57.1; see the script's docstring).
fixtures:
	$(REF_PYTHON) tests/fixtures/make_fixtures.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache site
