# `make demo` and `make test` set up .venv when it is missing (scripts/setup_env.sh).
VENV ?= .venv
STAMP := $(VENV)/.lvtp-installed

.PHONY: demo test test-main test-timm info setup

$(STAMP): pyproject.toml setup.py requirements-dev.txt constraints-oldest.txt scripts/setup_env.sh $(wildcard csrc/*)
	VENV=$(VENV) bash scripts/setup_env.sh

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lvtp demo

info: $(STAMP)
	$(VENV)/bin/lvtp info

test: test-main test-timm

test-main: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# timm's adapter tests in a second venv (scripts/test_timm.sh: timm needs a CUDA torch's torchvision)
test-timm: $(STAMP)
	VENV=$(VENV) bash scripts/test_timm.sh
