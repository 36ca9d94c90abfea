# The README's two commands: `make demo` (set-up + the main job) and `make test` (set-up + the tests).
VENV ?= .venv

.PHONY: setup demo test bench
setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/dca demo

test: setup
	$(VENV)/bin/python -m pytest -q

bench: setup
	$(VENV)/bin/python benchmarks/retrieval_squad.py
	$(VENV)/bin/python benchmarks/speed.py
