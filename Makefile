# Everyday targets. Each one sets up what it needs in ./.venv on first use.
#
#   make run     install the service's requirements and run it (python app.py; embedded Redis)
#   make test    install test requirements and run the whole suite (node --test tests/js/, then pytest)
#   make lint    flake8 + mypy, configured in setup.cfg
#   make example the Django example site next to rrr and an embedded Redis (examples/django_site)
#   make docs    serve the documentation site (mkdocs.yml, docs/) at http://127.0.0.1:8008/
#   make docs-build  build it with mkdocs build --strict into site/ (a broken link fails)
#
# ARGS: extra arguments, e.g. make run ARGS="--port 8001" or make test ARGS="-k presence".

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test lint example docs docs-build

$(VENV)/.run-deps: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-deps: $(VENV)/.run-deps requirements-dev.txt pyproject.toml
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(VENV)/.example-deps: $(VENV)/.run-deps examples/django_site/requirements.txt pyproject.toml
	$(PY) -m pip install --quiet --disable-pip-version-check -r examples/django_site/requirements.txt
	touch $@

run: $(VENV)/.run-deps
	$(PY) app.py $(ARGS)

test: $(VENV)/.dev-deps
	node --test tests/js/
	$(PY) -m pytest $(ARGS)

# http://127.0.0.1:8000/ (users alice, bob, carol, dave, admin; password demo-pass); rrr on 8888.
example: $(VENV)/.example-deps
	$(PY) examples/django_site/run.py $(ARGS)

# The docs extra (mkdocs + Material) comes with requirements-dev.txt. DOCS_ADDR: where `make docs` listens.
DOCS_ADDR ?= 127.0.0.1:8008

docs: $(VENV)/.dev-deps
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve --dev-addr $(DOCS_ADDR)

docs-build: $(VENV)/.dev-deps
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

lint: $(VENV)/.dev-deps
	$(PY) -m flake8 app.py rrr handlers tests examples/django_site
	$(PY) -m mypy

# Benchmark targets (bench/ and docs/benchmarks.md). The harness and the peer servers
# live in their own venv so they never touch the project's test requirements.
#
#   make bench-quick   small sizes, 3 repeats, < 10 minutes; rewrites docs/benchmarks.md
#   make bench         full sizes (19k sockets, 10k-member rooms); takes much longer
#   make bench-report  redraw docs/benchmarks.md + plots from the latest results JSON
#   make bench-test    the harness's own tests (its checks catch injected faults), and the soak's checkers'
#   make soak-smoke    the soak's 2-minute CI run (below)
#
# BENCH_VENV: where the venv goes; RRR_PYTHON: interpreter for app.py (default: the
# bench venv, which also gets the project's requirements.txt); BENCH_ARGS: extra
# arguments for bench.run (e.g. BENCH_ARGS="--servers rrr,channels --scenarios fanout").

BENCH_VENV ?= /tmp/bench-venv
RRR_PYTHON ?= $(BENCH_VENV)/bin/python
BENCH_ARGS ?=
BENCH_PY := $(BENCH_VENV)/bin/python

.PHONY: bench bench-quick bench-report bench-test bench-venv soak soak-smoke soak-sentinel-smoke

$(BENCH_VENV)/.installed: bench/requirements.txt requirements.txt pyproject.toml
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet --upgrade pip
	$(BENCH_PY) -m pip install --quiet -r requirements.txt -r bench/requirements.txt
	touch $@

bench-venv: $(BENCH_VENV)/.installed

bench: bench-venv
	$(BENCH_PY) -m bench.run --profile full --rrr-python $(RRR_PYTHON) $(BENCH_ARGS)

bench-quick: bench-venv
	$(BENCH_PY) -m bench.run --profile quick --rrr-python $(RRR_PYTHON) $(BENCH_ARGS)

bench-report: bench-venv
	$(BENCH_PY) -m bench.report bench/results/quick.json

bench-test: bench-venv
	$(BENCH_PY) -m pytest -q -p no:cacheprovider bench/test_harness.py bench/tests

# The soak (issue 27, bench/soak.py): everything at once with faults injected, the whole history checked.
#   make soak-smoke   CI: ~120 clients, every fault kind once, under 3 minutes; fails when a guarantee breaks
#   make soak         SOAK_ARGS="--minutes 30 --seed 1" by default; rewrites the page's Soak section
#   make soak-sentinel-smoke   the smoke on one Redis master + replica under three sentinels (--redis sentinel);
#                     a full run: make soak SOAK_ARGS="--redis sentinel --minutes 5 --seed 1 ..." (its own subsection)
SOAK_ARGS ?= --minutes 30 --seed 1

soak-smoke: bench-venv
	$(BENCH_PY) -m bench.soak --smoke

soak-sentinel-smoke: bench-venv
	$(BENCH_PY) -m bench.soak --smoke --redis sentinel

soak: bench-venv
	$(BENCH_PY) -m bench.soak $(SOAK_ARGS)
