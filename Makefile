# distmon: the commands users, docs and CI rely on.
#   make setup   create .venv and install everything (idempotent; seconds when done)
#   make up      start the local stack (master, 3 minions, sshd storage host, dashboard)
#                DB=postgres: the dashboard's store is a PostgreSQL server under .run/pg (default: SQLite)
#   make demo    setup + up + sync + run sample_tests on every minion + summary
#                (as root, setup/up install missing Debian packages: python3-venv, openssh-server)
#   make down    stop every process the stack started, by pid file
#   make test    the whole suite, then the database-facing tests again on PostgreSQL (non-zero if either fails)
#   make bench   the benchmarks, as ratios against a floor measured in the same run
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.distmon-installed
REQS := requirements_minion.txt requirements_host.txt requirements_dev.txt constraints.txt
DB ?= sqlite
# The tests that talk to the dashboard's store, run a second time on PostgreSQL by `make test`.
PG_TESTS ?= tests/functional tests/integration/test_triage.py tests/e2e

.PHONY: setup up demo down status test test-faults bench lint

setup: $(STAMP)

$(STAMP): $(REQS)
	@test -x $(PY) || { $(PYTHON) tools/system_deps.py --check-or-install --for setup && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --disable-pip-version-check -r requirements_dev.txt -c constraints.txt
	@# The checkout on the venv's path: `.venv/bin/python -m dashboard ...` works from any directory
	@# (not for a .venv linked from another checkout: that venv's path stays its own checkout's).
	@test -L $(VENV) || $(PY) -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "distmon-checkout.pth").write_text(str(pathlib.Path.cwd()) + "\n")'
	@touch $(STAMP)

up: setup
	$(PY) tools/system_deps.py --check-or-install --for stack
	@if [ "$(DB)" = postgres ]; then $(PY) tools/system_deps.py --check-or-install --for postgres; fi
	$(PY) tools/stack.py up --db $(DB)

down:
	@if [ -x $(PY) ]; then $(PY) tools/stack.py down; else echo "no .venv: nothing was started"; fi

status: setup
	$(PY) tools/stack.py status

demo: setup up
	$(PY) tools/stack.py demo

test: setup
	$(PY) tools/system_deps.py --check-or-install --for test
	@rc=0; $(PY) -m pytest tests $(PYTEST_ARGS) || rc=$$?; \
	echo "== the store's tests again on PostgreSQL (--db-backend=postgres) =="; \
	$(PY) -m pytest $(PG_TESTS) --db-backend=postgres $(PYTEST_ARGS) || rc=$$((rc ? rc : $$?)); \
	exit $$rc

test-faults: setup
	$(PY) tools/system_deps.py --check-or-install --for test
	$(PY) -m pytest tests -m faults $(PYTEST_ARGS)

bench: setup up
	$(PY) bench/run.py

lint: setup
	$(VENV)/bin/ruff check .
