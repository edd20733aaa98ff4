# netstate.tcp — every entry point sets up what it needs by itself.
#   make audit   audit this host (connection local) and print the result
#   make test    everything CI runs
#   make bench   benchmarks, recorded in docs/benchmarks.md
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON    ?= python3
VENV      := $(CURDIR)/.venv
BIN       := $(VENV)/bin
BUILD     := $(CURDIR)/.build
COLL_DIR  := $(BUILD)/collections/ansible_collections/netstate
# Outside the checkout: inside it, ansible-test would list files with the
# checkout's git, which ignores .build/, and skip every target.
SANITY_ROOT ?= $(or $(TMPDIR),/tmp)/netstate-tcp-sanity-$(shell printf %s '$(CURDIR)' | md5sum | cut -c1-8)
SANITY_DIR := $(SANITY_ROOT)/ansible_collections/netstate/tcp
APT_PACKAGES := python3-venv openssh-server openssh-client socat nftables iproute2 procps net-tools chromium shellcheck

export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_COLLECTIONS_PATH := $(BUILD)/collections
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup apt venv link audit test lint ruff yamllint ansible-lint changelog-lint sanity unit integration molecule bench clean lab-cleanup

help:
	@echo "make audit   audit this host and print the result"
	@echo "make test    lint, sanity, unit, integration and molecule (root)"
	@echo "make bench   benchmarks -> docs/benchmarks.md (root)"

# ---- set-up -------------------------------------------------------------
apt:
	@tools/ensure-apt-packages.sh $(APT_PACKAGES)

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt tests/lab/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel -c constraints.txt
	$(BIN)/python -m pip install -q -r requirements-dev.txt -c constraints.txt
	@touch $@

# Ansible finds this checkout as netstate.tcp through the link.
link:
	@mkdir -p $(COLL_DIR)
	@ln -sfn $(CURDIR) $(COLL_DIR)/tcp

setup: apt venv link

# ---- the main job -------------------------------------------------------
# Audit the controller itself with the venv's Python: interpreter discovery
# might otherwise pick the first python3.x shim on PATH.
audit: setup
	$(BIN)/ansible-playbook -i localhost, -c local -e ansible_python_interpreter=$(BIN)/python playbooks/audit.yml

# ---- checks -------------------------------------------------------------
test: lint sanity unit integration molecule

lint: ruff yamllint ansible-lint changelog-lint

ruff: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

yamllint: venv
	$(BIN)/yamllint -s .

ansible-lint: setup
	$(BIN)/ansible-lint --offline

changelog-lint: venv
	$(BIN)/antsibull-changelog lint

# ansible-test wants the collection at ansible_collections/<ns>/<name>: test a
# copy of exactly the files git tracks or would track (no .venv, no .build).
# ansible-test bootstraps pip in its venvs with a script from ci-files.testing.ansible.com,
# which our machines cannot reach: seed its cache with tools/ansible-test-get-pip.py.
# The pip version ansible-test 2.19 pins for its venvs (get_venv_packages); bump with ansible-core.
ANSIBLE_TEST_PIP := $(HOME)/.ansible/test/cache/get_pip_24_2.py

sanity: setup
	@mkdir -p $(dir $(ANSIBLE_TEST_PIP)) && cp tools/ansible-test-get-pip.py $(ANSIBLE_TEST_PIP)
	@rm -rf $(SANITY_DIR) && mkdir -p $(SANITY_DIR)
	@git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C $(SANITY_DIR)
	cd $(SANITY_DIR) && $(BIN)/ansible-test sanity --venv --python 3.11 --color no $(SANITY_ARGS)

unit: setup
	$(BIN)/python -m pytest tests/unit -q

integration: setup
	@test "$$(id -u)" -eq 0 || { echo "integration tests need root (network namespaces)"; exit 1; }
	$(BIN)/python -m pytest tests/integration -q

molecule: setup
	@test "$$(id -u)" -eq 0 || { echo "molecule scenarios need root (lab hosts)"; exit 1; }
	@for s in $$(ls molecule); do \
		[ -f molecule/$$s/molecule.yml ] || continue; \
		echo "== molecule test -s $$s"; \
		$(BIN)/molecule test -s $$s || exit 1; \
	done

bench: setup
	@test "$$(id -u)" -eq 0 || { echo "benchmarks need root (lab hosts)"; exit 1; }
	$(BIN)/python tests/bench/run.py

lab-cleanup: setup
	$(BIN)/netstate-lab cleanup --stale

clean:
	rm -rf $(BUILD) .pytest_cache
