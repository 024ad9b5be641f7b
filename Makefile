# Every target depends on `venv`, so `make test` alone works on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test lint bench demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml getpatter/core/_audio.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	$(BIN)/python -c "import getpatter.core._audio"  # the C core must build here
	touch $(STAMP)

demo: venv
	$(BIN)/getpatter demo

# Four workers: most tests wait on audio paced at real time, so they overlap well even on 2 cores.
# Tests that measure wall-clock time (marked `timing`) then run alone, on an otherwise idle machine.
# loadgroup: tests that share one costly rig (nginx + PostgreSQL + node processes) stay on one
# worker (@pytest.mark.xdist_group); every other test is spread as usual.
test: venv
	$(BIN)/python -m pytest -q -n 4 --dist loadgroup -m "not timing"
	$(BIN)/python -m pytest -q -m timing

lint: venv
	$(BIN)/ruff check getpatter tests benchmarks examples
	$(BIN)/ruff format --check getpatter tests benchmarks examples
	$(BIN)/mypy

bench: venv
	-$(BIN)/python benchmarks/audio_core.py
	-PATH=$(abspath $(BIN)):$$PATH $(BIN)/python benchmarks/startup.py
	-$(BIN)/python benchmarks/load.py
	-$(BIN)/python benchmarks/load.py --engine both --calls 10 100 --seconds 10 --repeat 3
	-$(BIN)/python benchmarks/ws_cost.py
	-$(BIN)/python benchmarks/cluster.py

clean:
	rm -rf $(VENV) build *.egg-info getpatter/core/_audio*.so
