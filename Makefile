# alpaca-tunnel: every target works on a fresh Debian machine as root.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
APT_PKGS := python3 python3-venv iproute2 nftables iptables iperf3 iputils-ping tcpdump procps prometheus docker-compose
PYTEST_ARGS ?=

.PHONY: all deps venv test test-fast lint demo bench soak fuzz clean install install-files

all: test

# System packages the lab and the netns tests use. Skipped when already present. Their
# services are not started by the install (a policy-rc.d says no while it runs, unless the
# host has one), and Prometheus's own is disabled: the lab runs its Prometheus on loopback,
# and the package's would listen on every interface.
.deps.stamp:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; policy=/usr/sbin/policy-rc.d; own=""; \
	    if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy && chmod 755 $$policy && own=1; fi; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	    rc=$$?; [ -z "$$own" ] || rm -f $$policy; \
	    case "$$missing " in *" prometheus "*) deb-systemd-helper disable prometheus.service >/dev/null 2>&1 || true;; esac; \
	    [ $$rc = 0 ] || exit $$rc; \
	  fi; \
	  touch $@; \
	else echo "not root or no apt-get: skipping system packages ($(APT_PKGS))"; fi

deps: .deps.stamp

# The stamp is written once pip is done: an install cut short is run again next time.
$(VENV)/.installed: setup.cfg pyproject.toml | deps
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

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

# Long property runs and coverage-guided fuzzing of the config and secrets parsers (atheris).
fuzz: venv
	$(BIN)/pip install -q atheris
	HYPOTHESIS_PROFILE=long $(BIN)/pytest tests/core/test_fuzz.py tests/core/test_fuzz_parsers.py $(PYTEST_ARGS)

# Installs into a private virtualenv and copies its launcher (not a symlink: the launcher's
# own path decides where the config is read from, see README "Run") to $(PREFIX)/bin. The
# config directory and the systemd unit's paths are the ones that launcher will use
# (alpaca/paths.py: /usr/bin -> /etc/alpaca-tunnel.d, /usr/local/bin -> /usr/local/etc/...).
# A virtualenv only works where it was made, so `install` builds it in place; DESTDIR stages
# the files around one (`install-files`, for packaging and tests).
PREFIX      ?= /usr/local
APPDIR      ?= $(PREFIX)/lib/alpaca-tunnel
SYSTEMD_DIR ?= /etc/systemd/system
DESTDIR     ?=

install:
	@if [ -n "$(DESTDIR)" ]; then echo "make install builds its virtualenv in place (its scripts name their own path): build it at $(APPDIR), then stage with make install-files DESTDIR=..."; exit 2; fi
	$(PY) -m venv $(APPDIR)
	$(APPDIR)/bin/pip install -q --upgrade pip
	$(APPDIR)/bin/pip install -q .
	$(MAKE) install-files

# The files around an installed virtualenv (APPDIR must hold one with the package).
install-files:
	install -d -m 0755 $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SYSTEMD_DIR)
	install -m 0755 $(DESTDIR)$(APPDIR)/bin/alpaca-tunnel $(DESTDIR)$(PREFIX)/bin/alpaca-tunnel
	set -e; conf=$$($(DESTDIR)$(APPDIR)/bin/python -c 'import sys, pathlib, alpaca.paths as p; print(p.default_config_path(pathlib.Path(sys.argv[1])))' $(PREFIX)/bin/alpaca-tunnel); \
	  dir=$$(dirname "$$conf"); install -d -m 0755 "$(DESTDIR)$$dir"; \
	  [ -e "$(DESTDIR)$$conf" ] || install -m 0644 config/client.json "$(DESTDIR)$$conf"; \
	  [ -e "$(DESTDIR)$$dir/secrets.txt" ] || install -m 0600 config/secrets.example "$(DESTDIR)$$dir/secrets.txt"; \
	  sed -e "s|/usr/local/bin/alpaca-tunnel|$(PREFIX)/bin/alpaca-tunnel|" -e "s|/usr/local/etc/alpaca-tunnel.d/config.json|$$conf|" \
	    config/alpaca-tunnel.service > $(DESTDIR)$(SYSTEMD_DIR)/alpaca-tunnel.service; \
	  echo "installed: $(PREFIX)/bin/alpaca-tunnel, config $$conf"
	if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

clean:
	rm -rf $(VENV) .deps.stamp *.egg-info .mypy_cache .ruff_cache .pytest_cache
