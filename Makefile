# alpaca-tunnel: every target works on a fresh Debian machine as root.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
APT_PKGS := iproute2 nftables iptables iperf3 iputils-ping tcpdump procps prometheus docker-compose
PYTEST_ARGS ?=

.PHONY: all deps venv test test-fast lint demo bench soak fuzz clean install

all: test

# System packages the lab and the netns tests use. Skipped when already present.
.deps.stamp:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	else echo "not root or no apt-get: skipping system packages ($(APT_PKGS))"; fi
	@touch $@

deps: .deps.stamp

$(BIN)/activate: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(BIN)/activate

# The whole suite but the long runs (soak, marked slow: `make soak`); as root this includes
# every namespace test.
test: deps venv
	$(BIN)/pytest -m "not slow" --durations=15 $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/pytest -m "not netns and not slow" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check alpaca tests bench
	$(BIN)/mypy

demo: deps venv
	$(BIN)/alpaca-tunnel lab demo

bench: deps venv
	$(BIN)/python bench/micro.py
	$(BIN)/python bench/throughput.py

soak: deps venv
	$(BIN)/pytest -m slow tests/security/test_soak.py $(PYTEST_ARGS)

fuzz: venv
	HYPOTHESIS_PROFILE=long $(BIN)/pytest tests/core/test_fuzz.py $(PYTEST_ARGS)

# Installs into a private virtualenv and copies its launcher (not a symlink: the launcher's
# own path decides where the config is read from, see README "Run") to $(PREFIX)/bin.
PREFIX      ?= /usr/local
APPDIR      ?= $(PREFIX)/lib/alpaca-tunnel
CONFDIR     ?= $(PREFIX)/etc/alpaca-tunnel.d
SYSTEMD_DIR ?= /etc/systemd/system

install:
	$(PY) -m venv $(APPDIR)
	$(APPDIR)/bin/pip install -q --upgrade pip
	$(APPDIR)/bin/pip install -q .
	install -d -m 0755 $(PREFIX)/bin $(CONFDIR) $(SYSTEMD_DIR)
	install -m 0755 $(APPDIR)/bin/alpaca-tunnel $(PREFIX)/bin/alpaca-tunnel
	[ -e $(CONFDIR)/config.json ] || install -m 0644 config/client.json $(CONFDIR)/config.json
	[ -e $(CONFDIR)/secrets.txt ] || install -m 0600 config/secrets.example $(CONFDIR)/secrets.txt
	install -m 0644 config/alpaca-tunnel.service $(SYSTEMD_DIR)/alpaca-tunnel.service
	if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

clean:
	rm -rf $(VENV) .deps.stamp *.egg-info .mypy_cache .ruff_cache .pytest_cache
