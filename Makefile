# The README's two commands: `make demo` (set-up + the main job) and `make test` (set-up, ruff and import-linter,
# then the tests).
VENV ?= .venv

.PHONY: setup demo test lint bench
setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/dca demo

test: setup lint
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: setup
	$(VENV)/bin/python benchmarks/retrieval_squad.py
	$(VENV)/bin/python benchmarks/speed.py
