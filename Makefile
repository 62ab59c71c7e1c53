# pibackup.docker_usb: the two commands a newcomer runs are `make demo` and
# `make test`. Both set up everything themselves on a fresh Debian machine
# (run as root): packages, the Python virtual environment, the lab engines and
# the loop-backed USB sticks. Recipes call Python scripts with argument lists.

PYTHON  ?= python3
VENV    := $(CURDIR)/.venv
PY      := $(VENV)/bin/python
LAB     := $(PY) tests/lab/lab.py
# A copy of the collection laid out as ansible_collections/pibackup/docker_usb,
# which ansible-test needs; refreshed before every gate that uses it.
COLLROOT := $(CURDIR)/build/collections
COLL     := $(COLLROOT)/ansible_collections/pibackup/docker_usb
export ANSIBLE_COLLECTIONS_PATH := $(COLLROOT)
export PATH := $(VENV)/bin:$(PATH)

.PHONY: help venv lab lab-down demo test test-units test-sanity test-lint \
        test-build test-integration test-molecule bench collection clean

help:
	@echo "make demo   - set up the lab, back up its sample images, remove them, restore, compare"
	@echo "make test   - every gate: units, sanity, lint, build/install, integration, molecule"
	@echo "make bench  - benchmark against plain docker save/load (after make demo's set-up)"
	@echo "make lab-down - stop the lab engines, unmount and detach the lab sticks"

$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r tests/requirements.txt
	touch $@

venv: $(VENV)/.installed

collection: venv
	$(PY) tests/lab/collection.py --dest $(COLL)

lab: venv collection
	$(LAB) up

lab-down: venv
	$(LAB) down

demo: lab
	$(PY) tests/lab/demo.py

test: lab test-units test-sanity test-lint test-build test-integration test-molecule
	@echo "make test: every gate passed"

test-units: collection
	$(PY) tests/lab/gate.py units

test-sanity: collection
	$(PY) tests/lab/gate.py sanity

test-lint: collection
	$(PY) tests/lab/gate.py lint

test-build: collection
	$(PY) tests/lab/gate.py build

test-integration: lab
	$(PY) tests/lab/gate.py integration

test-molecule: lab
	$(PY) tests/lab/gate.py molecule

bench: lab
	$(PY) tests/lab/bench.py

clean:
	rm -rf build tests/output
