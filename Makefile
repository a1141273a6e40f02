# gateway: `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_TOOLS := lftp curl unzip

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the gateway with its test tools

tools: ## install the Debian clients the tests drive (lftp, curl, unzip) when missing
	@missing=""; for t in $(APT_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null) \
	    || echo "warning: could not install$$missing (tests that need them are skipped)"; \
	fi

run: install ## run the gateway with config.toml (HTTP on 127.0.0.1:8080, FTP on 2121)
	$(VENV)/bin/gateway --config config.toml serve

test: install tools ## run the test suite (real servers on 127.0.0.1, real clients)
	$(PY) -m pytest -q

lint: install ## ruff and mypy --strict
	$(VENV)/bin/ruff check gateway tests bench
	$(VENV)/bin/mypy gateway bench

clean: ## remove the venv and caches (storage_root is left alone)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

.PHONY: help install tools run test lint clean

# ----------------------------------------------------------------------------- benchmarks (bench/)
BENCH_TOOLS := vsftpd nginx wrk lftp curl

bench-tools: ## install the Debian tools the benchmarks use (vsftpd, nginx, wrk, lftp, curl) when missing
	@missing=""; for t in $(BENCH_TOOLS); do command -v $$t >/dev/null || test -x /usr/sbin/$$t || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null) \
	    || echo "warning: could not install$$missing (the references that need them are skipped)"; \
	fi

bench: install bench-tools ## the benchmarks against their references (~10 min); writes bench/results/latest.md
	$(PY) -m bench

bench-smoke: install ## a few seconds: tiny sizes, one run each (a missing tool skips its reference)
	$(PY) -m bench --smoke

bench-large: install bench-tools ## the 5 GiB zip job (ZIP64, flat memory); writes bench/results/large.md
	$(PY) -m bench --large

.PHONY: bench-tools bench bench-smoke bench-large

soak: install tools ## mixed load against `gateway serve` with RSS sampled (MINUTES=10; not in CI)
	$(PY) tests/hardening/soak.py --minutes $(or $(MINUTES),10)

.PHONY: soak
