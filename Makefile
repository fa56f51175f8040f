# The two commands of the README. Both create .venv on first use; torch is installed first so that
# pip takes the local CPU build instead of pulling CUDA wheels for a bare `torch` requirement.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test install install-test clean

$(VENV)/.created:
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	touch $@

$(VENV)/.installed: $(VENV)/.created pyproject.toml
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q -e plugins/unisde-dpmsolver
	# k-diffusion is a reference in the tests; only its sampling.py is imported (tests/conftest.py), whose
	# dependencies the test extra carries (scipy, torchdiffeq, torchsde, tqdm) -- not its training stack
	$(PIP) install -q --no-deps k-diffusion==0.1.1.post1
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(VENV)/bin/unisde demo

test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 -q tests

clean:
	rm -rf $(VENV) build *.egg-info
