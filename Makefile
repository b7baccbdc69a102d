# `make demo` and `make test` set up .venv when it is missing (scripts/setup_env.sh).
VENV ?= .venv
STAMP := $(VENV)/.lvtp-installed

.PHONY: demo test info setup

$(STAMP): pyproject.toml setup.py requirements-dev.txt scripts/setup_env.sh $(wildcard csrc/*)
	VENV=$(VENV) bash scripts/setup_env.sh

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lvtp demo

info: $(STAMP)
	$(VENV)/bin/lvtp info

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q
