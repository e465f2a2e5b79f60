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
# Debian packages the tests use (a real MQTT broker for the TLS/MQTT peer test) and the MicroPython source build
# needs (gcc-multilib for the 32-bit ports; no libffi: the runtimes are built without the Unix-only ffi module).
APT_PACKAGES := mosquitto faketime build-essential gcc-multilib pkg-config python3 git xz-utils
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

PORT ?=
FIRMWARE ?=
CHIP ?= esp32
PROVISIONING ?=
APP ?=

# MicroPython built from source: mpy-cross and the Unix port, 32- and 64-bit, plain and with the firmware frozen in
# (boards/unix/manifest.py). The source is the tarball MICROPYTHON_TARBALL names (checked by sha256), or without one a
# shallow git clone of the pinned commit and its submodules. Runtime names match host_tools/board/runtimes.py.
MICROPYTHON_COMMIT := 1c3c201149f37fe8d81246191b3127bb198d6306
MICROPYTHON_TARBALL ?=
MICROPYTHON_TARBALL_SHA256 := 069d1ef30ef31958e746a259d5dd3d5f088228ea2fdc9043be76e0c3a86999be
MPY_SRC      := build/micropython-$(shell echo $(MICROPYTHON_COMMIT) | cut -c1-10)
MPY_SRC_OK   := $(MPY_SRC)/.source-ok
RUNTIMES_DIR := build/runtimes
MPY_CROSS_BIN := $(RUNTIMES_DIR)/mpy-cross
UNIX_RUNTIMES := unix64 unix64-frozen unix32 unix32-frozen
RUNTIME_BINS := $(foreach r,$(UNIX_RUNTIMES),$(RUNTIMES_DIR)/$(r)/micropython)
FROZEN_INPUTS := boards/unix/manifest.py boards/unix/manifest_stock.py $(shell find firmware/azprov -name '*.py' 2>/dev/null)
# Byte-identical binaries from build to build: every embedded date is the pinned commit's (2026-08-19).
export SOURCE_DATE_EPOCH := 1787097600
MPY_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# The version string comes from git: without this, git would find this project's repository around the unpacked
# tarball and stamp the binary with our commit (a different binary for every commit of ours).
MPY_GIT_ENV := GIT_CEILING_DIRECTORIES=$(abspath build)
# Unix-only ffi off in every variant: no libffi to install (none for i386), and an ESP32 has no ffi either.
UNIX_MAKE = $(MPY_GIT_ENV) $(MAKE) -s -C $(MPY_SRC)/ports/unix -j$(MPY_JOBS) MICROPY_PY_FFI=0 BUILD=$(abspath $(RUNTIMES_DIR)/$(1)) \
	$(if $(findstring 32,$(1)),CFLAGS_EXTRA=-m32 LDFLAGS_EXTRA=-m32) \
	FROZEN_MANIFEST=$(abspath boards/unix/$(if $(findstring frozen,$(1)),manifest.py,manifest_stock.py))

.PHONY: help setup system-deps build run lint test reliability bench soak mutants flash deploy monitor clean distclean runtimes need-port

help:
	@echo "make run     - emulator + firmware on the MicroPython Unix port, end to end"
	@echo "make test    - the whole test suite (lint first)"
	@echo "make lint    - ruff: lint rules and formatting of host_tools/, tests/, firmware/ and boards/"
	@echo "make reliability - every case of the bulk bad-input tests and every power-cut kill point (make test: a sample)"
	@echo "make soak    - the long run-loop soak: 10,000 messages, 500 renewals, 200 drops, heap sampled (minutes)"
	@echo "make bench   - heap, footprint, speed and fleet measurements"
	@echo "make mutants - promise mutants (each must be killed by its tests) and the core's mutation score"
	@echo "make build   - compile firmware/ to .mpy (build/mpy) with a size table"
	@echo "make runtimes - MicroPython from source: mpy-cross, Unix port 32/64-bit, plain and frozen (build/runtimes)"
	@echo "               source: MICROPYTHON_TARBALL=path/to/micropython-src.tar.xz, else a git clone"
	@echo "make flash PORT=/dev/ttyUSB0 FIRMWARE=esp32.bin [CHIP=esp32]"
	@echo "make deploy PORT=/dev/ttyUSB0 PROVISIONING=provisioning.json [APP=my_app.py]"
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

$(MPY_SRC_OK): | $(APT_STAMP)
	@mkdir -p build
	tools/micropython_source.sh $(MPY_SRC) $(MICROPYTHON_COMMIT) "$(if $(MICROPYTHON_TARBALL),$(abspath $(MICROPYTHON_TARBALL)))" $(MICROPYTHON_TARBALL_SHA256)
	touch $@

$(MPY_CROSS_BIN): $(MPY_SRC_OK) | $(APT_STAMP)
	@echo "building mpy-cross"
	$(MPY_GIT_ENV) $(MAKE) -s -C $(MPY_SRC)/mpy-cross -j$(MPY_JOBS) >/dev/null
	@mkdir -p $(RUNTIMES_DIR)
	cp $(MPY_SRC)/mpy-cross/build/mpy-cross $@

$(RUNTIMES_DIR)/%-frozen/micropython: $(MPY_CROSS_BIN) $(FROZEN_INPUTS)
	@echo "building the Unix port: $*-frozen"
	$(call UNIX_MAKE,$*-frozen) >/dev/null
	@touch $@

$(RUNTIMES_DIR)/unix32/micropython $(RUNTIMES_DIR)/unix64/micropython: $(RUNTIMES_DIR)/%/micropython: $(MPY_CROSS_BIN) boards/unix/manifest_stock.py
	@echo "building the Unix port: $*"
	$(call UNIX_MAKE,$*) >/dev/null
	@touch $@

runtimes: $(MPY_CROSS_BIN) $(RUNTIME_BINS)

system-deps: $(APT_STAMP)

build: setup
	$(PY) -m host_tools build

run: setup
	$(PY) -m host_tools demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup system-deps lint runtimes
	$(PY) -m pytest

# The firmware's reliability tests with every case: bad input in bulk (more than 10,000 DPS answers, 1,000
# provisioning files, 1,000 stored-file sets) and every power-cut kill point (littlefs and FAT). `make test` runs a
# sample of each (AZPROV_FULL unset: tests/host_helpers.py FULL_RUNS); figures in build/reliability/.
reliability: setup system-deps runtimes
	AZPROV_FULL=1 $(PY) -m pytest tests/test_bad_input_bulk.py tests/test_power_cut.py

# The long soak (tests/soak.py): 10,000 messages, 500 token renewals, 200 dropped connections in one device process
# on the 32-bit build, free heap sampled throughout; figures in build/reliability/soak.json. A short one is in `test`.
soak: setup system-deps runtimes
	$(PY) -m tests.soak

bench: setup system-deps runtimes
	$(PY) -m host_tools bench

mutants: setup system-deps
	$(PY) -m host_tools mutants

flash: need-port setup
	$(PY) -m host_tools flash --port "$(PORT)" --chip "$(CHIP)" --firmware "$(FIRMWARE)"

# The board commands need PORT: say so in one line instead of a cryptic error from the tool.
need-port:
	@if [ -z "$(PORT)" ]; then echo "PORT is not set: e.g. make $(MAKECMDGOALS) PORT=/dev/ttyUSB0 (python -m serial.tools.list_ports lists the ports)" >&2; exit 2; fi

deploy: need-port setup
	$(PY) -m host_tools deploy --port "$(PORT)" $(if $(PROVISIONING),--provisioning "$(PROVISIONING)") $(if $(APP),--app "$(APP)")

monitor: need-port setup
	$(PY) -m host_tools monitor --port "$(PORT)"

clean:
	rm -rf build run .pytest_cache

distclean: clean
	rm -rf $(VENV)
