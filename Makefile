# The two commands of the README quick start. Each sets up .venv on first use (scripts/setup.sh).
.PHONY: demo test setup lint bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/tunewise demo

test: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check src tests bench
