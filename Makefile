# recorderd — `make demo` runs the appliance on an embedded default, `make test` runs the tests.
# Both set everything up themselves (Debian packages, a virtualenv, pip packages).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test lint audit demo bench clean

$(STAMP): pyproject.toml packaging/system-deps.txt
	./packaging/install-system-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The consent prompts (NAME.8k.wav, NAME.16k.wav), spoken from consent.prompt_texts in
# etc/recorderd.toml by espeak-ng: no audio is committed. The package installs build/prompts.
PROMPTS := build/prompts
$(PROMPTS)/.made: $(STAMP) etc/recorderd.toml
	$(PY) -m recorderd --config etc/recorderd.toml consent prompts --out $(PROMPTS)
	touch $@

.PHONY: prompts
prompts: $(PROMPTS)/.made

setup: $(STAMP) prompts

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
# bandit: medium and up; each silenced finding says why at its line (# nosec BXXX  # why). Its
# "nosec encountered ... but no failed test" warnings on f-strings (PyCQA/bandit#1204) are
# filtered out; its exit status is kept.
	set -o pipefail; $(VENV)/bin/bandit -q -r capture storage retention analysis webadmin recorderd -ll 2>&1 \
		| { grep -v 'nosec encountered' || true; }

# pip-audit needs PyPI's per-release JSON API (or OSV); see README ("Security checks").
audit: setup
	$(VENV)/bin/pip-audit --strict --progress-spinner off

test: setup lint
	$(VENV)/bin/pytest -q

demo: setup
	$(PY) scripts/demo.py

bench: setup
	$(PY) bench/replay.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
