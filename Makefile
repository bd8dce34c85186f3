# Provider Access: `make demo` runs the whole system, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
VAR := $(or $(PA_VAR_DIR),var)
CHROMIUM := /usr/bin/chromium

.PHONY: install migrate seed demo test bench clean chromium npm

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

install: $(BIN)/.installed

# The demo's settings, read by config/settings.py, so that every `manage.py` command the README
# shows runs as printed (DEBUG on: a generated SECRET_KEY under var/). Production has no such file.
$(VAR)/demo.env:
	mkdir -p $(VAR)
	printf '# Written by `make demo`: the demo runs with DEBUG on. Delete for production.\nDEBUG=1\n' >$@

migrate: install $(VAR)/demo.env
	$(BIN)/python manage.py migrate --noinput

# The payer's demo data, Grace Hospital's connection to it (this same server), and the EMR's users.
seed: migrate
	$(BIN)/python manage.py seed_demo
	$(BIN)/python manage.py add_payer_connection --name unitedcare \
	    --display-name "UnitedCare Health" --fhir-base-url http://127.0.0.1:$(PORT)/payer/fhir \
	    --client-id grace-hospital-ehr --private-key-path $(VAR)/keys/grace-hospital-ehr.pem \
	    --key-id grace-hospital-ehr-rs384 --organization-npi 1345678902
	$(BIN)/python manage.py seed_emr

# Web server and a Celery worker (with its beat scheduler) together; Ctrl-C stops both.
# Ctrl-C: the worker gets SIGTERM (warm shutdown: finish the task at hand), and SIGQUIT (cold
# shutdown) if it is still up after 10 s; a background job of a script ignores SIGINT, so the
# trap is what stops it.
demo: seed
	@PORT=$(PORT) BIN=$(BIN) bash -c '\
	  export PORT; \
	  $$BIN/celery -A config worker --beat --loglevel=INFO --concurrency=2 \
	      >$(VAR)/worker.log 2>&1 & worker=$$!; \
	  stop() { trap - EXIT INT TERM; kill -TERM $$worker 2>/dev/null || return 0; \
	    for _ in $$(seq 100); do kill -0 $$worker 2>/dev/null || return 0; sleep 0.1; done; \
	    echo "Worker still running after 10 s: cold shutdown"; kill -QUIT $$worker 2>/dev/null; \
	    for _ in $$(seq 30); do kill -0 $$worker 2>/dev/null || return 0; sleep 0.1; done; \
	    kill -KILL $$worker 2>/dev/null; return 0; }; \
	  trap stop EXIT; trap "stop; exit 130" INT TERM; \
	  $$BIN/python manage.py demo_banner --port $$PORT; \
	  $$BIN/python manage.py emr_banner --port $$PORT; \
	  $$BIN/python manage.py runserver --noreload 127.0.0.1:$$PORT'

# The browser tests drive Debian's Chromium (Playwright cannot download browsers here).
chromium:
	@test -x $(CHROMIUM) || { echo "Installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || { echo "The browser tests need $(CHROMIUM): run 'apt-get install chromium' as root."; exit 1; }

# The accessibility test installs axe-core from the npm registry when it runs (tests/axe.py).
npm:
	@command -v npm >/dev/null || { echo "Installing Debian's npm for the accessibility test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; } \
	  || { echo "The accessibility test installs axe-core from the npm registry with npm: run 'apt-get install npm' as root."; exit 1; }

test: install chromium npm
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/export.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/fetch.py
	$(BIN)/python bench/fetch_latency.py
	$(BIN)/python bench/import.py

clean:
	rm -rf $(VAR)
