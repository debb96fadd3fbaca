# Two entry points for a fresh machine (see README "Quick start"): `make demo` and `make test`.
# Both create .venv and install the pinned packages on first use; the Kafka jars and Postgres
# come with the first `streams dev up` or test session.
VENV   := .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed

.PHONY: demo test check install clean-cache

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/streams demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

# Static checks (CI runs them before the tests): lint everything, type-check the product code.
check: $(STAMP)
	$(VENV)/bin/ruff check streams topologies tests
	$(VENV)/bin/mypy streams topologies

clean-cache:
	rm -rf .cache
