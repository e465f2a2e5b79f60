# azprov: MicroPython DPS provisioning client. `make run` and `make test` set up everything they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON3 ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
MP      := $(VENV)/bin/micropython
STAMP   := $(VENV)/.installed
UMQTT   := build/lib/umqtt/simple.py
APT_STAMP := build/.apt-installed
# Debian packages the tests use (a real MQTT broker for the TLS/MQTT peer test).
APT_PACKAGES := mosquitto faketime
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

PORT ?=
FIRMWARE ?=
CHIP ?= esp32
PROVISIONING ?=

.PHONY: help setup system-deps build run lint test bench mutants flash deploy monitor clean distclean

help:
	@echo "make run     - emulator + firmware on the MicroPython Unix port, end to end"
	@echo "make test    - the whole test suite (lint first)"
	@echo "make lint    - ruff: lint rules and formatting of host_tools/, tests/, firmware/ and boards/"
	@echo "make bench   - heap, footprint, speed and fleet measurements"
	@echo "make mutants - promise mutants (each must be killed by its tests) and the core's mutation score"
	@echo "make build   - compile firmware/ to .mpy (build/mpy) with a size table"
	@echo "make flash PORT=/dev/ttyUSB0 FIRMWARE=esp32.bin [CHIP=esp32]"
	@echo "make deploy PORT=/dev/ttyUSB0 PROVISIONING=provisioning.json"
	@echo "make monitor PORT=/dev/ttyUSB0"

$(STAMP): requirements.txt requirements.lock pyproject.toml
	$(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check pybind11==3.1.0
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

$(UMQTT): $(STAMP) host_tools/board/umqtt_fetch.py
	$(PY) -m host_tools fetch-umqtt --dest build/lib

$(APT_STAMP): Makefile
	@mkdir -p build
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	touch $@

setup: $(STAMP) $(UMQTT)

system-deps: $(APT_STAMP)

build: setup
	$(PY) -m host_tools build

run: setup
	$(PY) -m host_tools demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup system-deps lint
	$(PY) -m pytest

bench: setup system-deps
	$(PY) -m host_tools bench

mutants: setup system-deps
	$(PY) -m host_tools mutants

flash: setup
	$(PY) -m host_tools flash --port "$(PORT)" --chip "$(CHIP)" --firmware "$(FIRMWARE)"

deploy: setup
	$(PY) -m host_tools deploy --port "$(PORT)" $(if $(PROVISIONING),--provisioning "$(PROVISIONING)")

monitor: setup
	$(PY) -m host_tools monitor --port "$(PORT)"

clean:
	rm -rf build run .pytest_cache

distclean: clean
	rm -rf $(VENV)
