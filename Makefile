# Everything a fresh machine needs is installed by these targets themselves.
#   make run    the whole thing locally: store + broker + upload page (no AWS account)
#   make test   the test suite (installs the venv, Chromium, and starts what tests need)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv system-deps ceph dynalite run test test-fast check bench soak package clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)  ## create .venv with the broker and its dev dependencies

system-deps:  ## install Chromium from Debian (browser tests)
	bash scripts/install-system-deps.sh

ceph:  ## install Ceph RGW from Debian (ceph-mon, ceph-osd, radosgw): the store tests' second store
	bash scripts/install-ceph.sh

# dynalite: a DynamoDB API server on Node, from the npm registry, for the ledger's DynamoDB
# engine tests (tests/ledger/dynamo_fixtures.py starts it). Node and npm are installed from
# Debian if missing (scripts/install-node.sh).
DYNALITE_VERSION ?= 4.0.0
DYNALITE := $(VENV)/dynalite/node_modules/dynalite/cli.js
$(DYNALITE): | $(STAMP)
	bash scripts/install-node.sh
	npm install --prefix $(VENV)/dynalite --no-audit --no-fund --loglevel=error dynalite@$(DYNALITE_VERSION)

dynalite: $(DYNALITE)  ## install dynalite (npm) into .venv/dynalite for the DynamoDB ledger tests

# STORE=rgw runs the same stack on Ceph RGW (a one-node cluster, objects in memory) instead of SeaweedFS.
STORE ?= seaweedfs
run: venv  ## start SeaweedFS (STORE=rgw: Ceph RGW) + the broker + the upload page on http://127.0.0.1:8000
	@if [ "$(STORE)" = rgw ]; then bash scripts/install-ceph.sh; fi
	BROKER_STORE=$(STORE) $(BIN)/python -m broker.dev.run

test: venv system-deps ceph dynalite  ## run every test (unit, real stores, real browser, real DynamoDB API)
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: venv  ## unit tests only: no store, no browser, no soak (pytest markers)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not store and not browser and not soak"

check: venv  ## validate rules.yaml
	$(BIN)/broker check rules.yaml

clean:  ## remove the venv and local data
	rm -rf $(VENV) var build dist *.egg-info

# The Lambda runtime is Python 3.12; bytecode is compiled when such an interpreter is found
# (LAMBDA_PYTHON), otherwise the zip ships sources only. RULES is the rules file to bundle.
RULES         ?= rules.yaml
LAMBDA_PYTHON ?= python3.12
# The rules must pass `broker check --production --auth $(STACK_AUTH)` (api-key, jwt or lambda: how the
# stack recognises callers); ALLOW_DEMO=1 packages them anyway, with a loud warning (trial stacks).
STACK_AUTH    ?= api-key
ALLOW_DEMO    ?=
package: venv  ## build build/lambda.zip and build/template.yaml (sam deploy) for RULES, refusing demo settings
	$(BIN)/python -m broker.deploy.package --rules $(RULES) --bytecode-python $(LAMBDA_PYTHON) \
		--auth $(STACK_AUTH) $(if $(ALLOW_DEMO),--allow-demo)

# Minutes, loopback only: SOAK_REQUESTS from SOAK_CLIENTS concurrent clients against `broker
# serve`, every answer and audit line checked, while SOAK_SLOW connections stall their request
# bodies (each must get its 408 within the body deadline); SOAK_OBJECTS objects announced to the verifier
# (10% twice, shuffled), each judged exactly once; then the fuzzers at SOAK_FUZZ_SCALE times their
# `make test` sizes. Figures: docs/RELIABILITY.md.
SOAK_REQUESTS   ?= 24000
SOAK_CLIENTS    ?= 16
SOAK_SLOW       ?= 50
SOAK_FUZZ_SCALE ?= 5
SOAK_OBJECTS    ?= 10000
soak: venv  ## load test (24,000 requests), a burst of 10,000 object events at the verifier, the fuzzers at 5x
	$(BIN)/python -m reliability.soak --requests $(SOAK_REQUESTS) --clients $(SOAK_CLIENTS) --slow-clients $(SOAK_SLOW)
	$(BIN)/python -m reliability.verify_burst --objects $(SOAK_OBJECTS)
	RELIABILITY_SCALE=$(SOAK_FUZZ_SCALE) $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/reliability/test_fuzz_api.py tests/reliability/test_fuzz_events.py \
		tests/reliability/test_fuzz_rules.py tests/reliability/test_secrets.py

# About a minute, loopback only, fake static credentials: the broker against a naive boto3
# signer, warm and cold, with 10 and 10,000 clients, and over HTTP. Figures: bench/RESULTS.md.
bench: venv  ## benchmark: broker vs bare boto3, warm and cold, scale, HTTP (~1 min); bench/RESULTS.md
	$(BIN)/python bench/bench.py
