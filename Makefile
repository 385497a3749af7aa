# Every target works on a fresh clone: `make test` and `make demo` create .venv and install from scratch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# transformers' own common test mixins (from its sdist; never committed), fetched once per venv.
TRANSFORMERS_TESTS := $(VENV)/transformers-tests
TRANSFORMERS_TESTS_STAMP := $(TRANSFORMERS_TESTS)/transformers_tests/__init__.py

.PHONY: install system-deps test lint demo bench clean

# transformers' audio-classification pipeline decodes file paths with the `ffmpeg` program (Debian package `ffmpeg`).
system-deps:
	@command -v ffmpeg >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; \
	  else echo "warning: install ffmpeg (e.g. apt-get install ffmpeg) for the audio pipeline on file paths"; fi; }

$(STAMP): setup.cfg pyproject.toml constraints.txt | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

$(TRANSFORMERS_TESTS_STAMP): tests/fetch_transformers_tests.py constraints.txt | $(STAMP)
	$(BIN)/python tests/fetch_transformers_tests.py $(TRANSFORMERS_TESTS)
	touch $@

install: system-deps $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: system-deps $(STAMP) $(TRANSFORMERS_TESTS_STAMP) lint
	$(BIN)/python -m pytest -q

demo: system-deps $(STAMP)
	$(BIN)/python -m avbert.training.demo

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_model.py

clean:
	rm -rf $(VENV) build *.egg-info
