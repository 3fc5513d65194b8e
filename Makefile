# Two entry points for a fresh machine: `make bench` and `make test` (see README).
# Both create .venv with the CPU build of torch (an unpinned torch pulls GBs of CUDA wheels).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check

.PHONY: setup bench test test-slow benchmarks browser clean-store

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	touch $@

setup: $(VENV)/.installed

bench: setup
	$(VENV)/bin/mch bench

# The leaderboard's browser test needs Debian's chromium + chromium-driver; installed here when
# missing and we are root (CI is). Without them that one test skips and says why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "note: chromium not installed; the browser test will skip"; }

# Lint (ruff, config in pyproject.toml) and types (mypy on harness/) before the tests: CI runs them too.
test: setup browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy harness
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

benchmarks: setup
	$(PY) benchmarks/extract.py
	$(PY) benchmarks/analyses.py
	$(PY) benchmarks/gmi.py
	$(PY) benchmarks/store.py

# Every entry of the representation store ($MCH_STORE, default ~/.cache/mch/store); entries
# another mch process is writing are left alone. `mch store list` shows what is there.
clean-store: setup
	$(VENV)/bin/mch store rm --all
