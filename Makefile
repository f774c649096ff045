# One-command set-up: every target bootstraps what it needs on a fresh machine.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean deps native

$(VPY):
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install -q --upgrade pip 'setuptools>=77'
	$(VPY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The hot path compiled with mypyc (dfproxy/_native.py): rebuilt when one of its sources
# changed, in about a minute; without a C compiler `run` and `bench` go on interpreted.
native: $(STAMP)
	$(VPY) -m dfproxy._build_native $(NATIVE_FLAGS)

run: native
	$(VPY) -m dfproxy run $(ARGS)

# System packages the tests drive for real (curl as the client, jq for the seeds' commands,
# headless Chromium and its driver for the admin dashboard, redis-server for the shared rate
# limits: the tests start their own on a free port).
deps:
	@command -v curl >/dev/null && command -v jq >/dev/null && command -v redis-server >/dev/null || \
	  { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl jq redis-server; }
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

lint: $(STAMP)
	$(VENV)/bin/ruff check dfproxy tests bench
	$(VENV)/bin/ruff format --check dfproxy tests bench
	$(VENV)/bin/mypy

# The suite mostly waits (sockets, timers, child proxies), so two pytest workers halve its wall
# time on a 2-core machine; whole files go to one worker (their module-scoped proxies start
# once). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
# The whole suite runs against the compiled hot path (what `make run` serves); a second pass
# runs the core data-path files and the `interpreted` tests on the same code interpreted.
PURE_TESTS ?= tests/test_forwarding.py tests/test_streaming.py tests/test_errors.py \
  tests/test_connect.py tests/test_filter_chain.py tests/test_upstream_connection.py
test: $(STAMP) deps lint
	$(MAKE) native NATIVE_FLAGS=--require
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	DFPROXY_PURE=1 $(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile $(PURE_TESTS)
	DFPROXY_PURE=1 $(VENV)/bin/pytest -q -m interpreted tests

bench: native
	$(VPY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache dfproxy/_native.json
	find dfproxy -name '*.so' -delete
