# netstate.tcp — every entry point sets up what it needs by itself.
#   make audit   audit this host (connection local) and print the result
#   make test    everything CI runs (root: lab hosts are network namespaces)
#   make unit    unit tests only: needs the venv, nothing else, any user
#   make compat  the compatibility smoke on every ansible-core minor the collection claims
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
# Nothing of ours lands in the user's ~/.ansible: ANSIBLE_HOME moves ansible's local tmp, ssh control
# sockets, the galaxy cache and molecule's ephemeral directories (ansible-compat's cache) into .build.
# remote_tmp is not under ANSIBLE_HOME; lab hosts are namespaces on this machine, so their
# ~/.ansible/tmp would be ours too.
export ANSIBLE_HOME := $(BUILD)/ansible-home
export ANSIBLE_REMOTE_TMP := $(ANSIBLE_HOME)/remote-tmp
# The ssh connection's control sockets default to ~/.ansible/cp, not under ANSIBLE_HOME.
export ANSIBLE_SSH_CONTROL_PATH_DIR := $(ANSIBLE_HOME)/cp

.PHONY: help setup apt venv link audit test checks lint ruff yamllint ansible-lint changelog-lint sanity unit unit-unprivileged \
	integration molecule smoke compat compat-run release-check release bench clean lab-cleanup

help:
	@echo "make audit   audit this host and print the result"
	@echo "make test    lint, sanity, unit (also as nobody), integration, molecule, smoke on the oldest"
	@echo "             and newest ansible-core (root)"
	@echo "make unit    unit tests (any user; needs only the venv)"
	@echo "make compat  the compatibility smoke on every ansible-core minor (root)"
	@echo "make release turn the changelog fragments into CHANGELOG.rst for galaxy.yml's version"
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
# The guard around the checks fails the run when any of them left netstate in ~/.ansible.
HOME_GUARD := $(BUILD)/home-ansible-before.txt
test:
	@mkdir -p $(BUILD) && tools/home-ansible-guard.sh snapshot $(HOME_GUARD)
	$(MAKE) checks
	@tools/home-ansible-guard.sh compare $(HOME_GUARD)

checks: lint sanity unit unit-unprivileged integration molecule smoke

lint: ruff yamllint ansible-lint changelog-lint

ruff: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

yamllint: venv
	$(BIN)/yamllint -s .

ansible-lint: setup
	$(BIN)/ansible-lint --offline

changelog-lint: venv release-check
	$(BIN)/antsibull-changelog lint

# The release, rehearsed on a copy: antsibull-changelog release must turn the fragments into a
# CHANGELOG.rst section for galaxy.yml's version, and the result must lint.
RELEASE_ROOT := $(or $(TMPDIR),/tmp)/netstate-tcp-release-$(shell printf %s '$(CURDIR)' | md5sum | cut -c1-8)
VERSION = $(shell sed -n 's/^version: *//p' galaxy.yml)
release-check: venv
	@rm -rf $(RELEASE_ROOT) && mkdir -p $(RELEASE_ROOT)
	@$(COPY_TREE) | tar -xf - -C $(RELEASE_ROOT)
	@cd $(RELEASE_ROOT) && $(BIN)/antsibull-changelog release --version $(VERSION) && $(BIN)/antsibull-changelog lint
	@grep -qx 'v$(VERSION)' $(RELEASE_ROOT)/CHANGELOG.rst || { echo "release-check: no v$(VERSION) section in CHANGELOG.rst"; exit 1; }
	@! ls $(RELEASE_ROOT)/changelogs/fragments/*.yml >/dev/null 2>&1 || { echo "release-check: fragments left after the release"; exit 1; }
	@rm -rf $(RELEASE_ROOT)
	@echo "release-check: antsibull-changelog release $(VERSION) works and lints"

# The real release (the maintainer, once): fragments -> changelogs/changelog.yaml and CHANGELOG.rst.
release: venv
	$(BIN)/antsibull-changelog release --version $(VERSION)
	$(BIN)/antsibull-changelog lint

# ansible-test wants the collection at ansible_collections/<ns>/<name>: test a
# copy of exactly the files git tracks or would track (no .venv, no .build).
# ansible-test bootstraps pip in its venvs with a script from ci-files.testing.ansible.com,
# which our machines cannot reach: seed its cache with tools/ansible-test-get-pip.py.
# The pip version ansible-test 2.19 pins for its venvs (get_venv_packages); bump with ansible-core.
# ansible-test keeps that cache in ~/.ansible/test (HOME, not ANSIBLE_HOME): it runs with HOME in .build
# (pip keeps its usual cache).
ANSIBLE_TEST_HOME := $(BUILD)/ansible-test-home
ANSIBLE_TEST_PIP := $(ANSIBLE_TEST_HOME)/.ansible/test/cache/get_pip_24_2.py
# The files git tracks or would track (no .venv, no .build), as a tar stream on stdout.
COPY_TREE := git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf -

sanity: setup
	@mkdir -p $(dir $(ANSIBLE_TEST_PIP)) && cp tools/ansible-test-get-pip.py $(ANSIBLE_TEST_PIP)
	@rm -rf $(SANITY_DIR) && mkdir -p $(SANITY_DIR)
	@$(COPY_TREE) | tar -xf - -C $(SANITY_DIR)
	cd $(SANITY_DIR) && XDG_CACHE_HOME=$${XDG_CACHE_HOME:-$(HOME)/.cache} HOME=$(ANSIBLE_TEST_HOME) $(BIN)/ansible-test sanity --venv --python 3.11 --color no $(SANITY_ARGS)

# Unit tests need the venv and nothing else: no root, no apt, no ansible-playbook, no lab.
unit: venv link
	$(BIN)/python -m pytest tests/unit -q

# Proof of that: a fresh clone (plus uncommitted changes) owned by an unprivileged user, who makes
# its own venv and runs `make unit` with a clean environment. The venv lives beside the clone so
# that the next run reuses it; its pip cache too. UNPRIV_PYTHON must be runnable by that user
# (root's pyenv under /root is not).
UNPRIV_USER   ?= nobody
UNPRIV_PYTHON ?= /usr/bin/python3
UNPRIV_ROOT   ?= $(or $(TMPDIR),/tmp)/netstate-tcp-unpriv-$(shell printf %s '$(CURDIR)' | md5sum | cut -c1-8)
unit-unprivileged:
	@test "$$(id -u)" -eq 0 || { echo "unit-unprivileged switches to $(UNPRIV_USER): run it as root"; exit 1; }
	@rm -rf $(UNPRIV_ROOT)/tcp && mkdir -p $(UNPRIV_ROOT)/home
	@git clone -q --no-hardlinks $(CURDIR) $(UNPRIV_ROOT)/tcp
	@$(COPY_TREE) | tar -xf - -C $(UNPRIV_ROOT)/tcp
	@chown -R $(UNPRIV_USER): $(UNPRIV_ROOT) && chmod 0755 $(UNPRIV_ROOT)
	setpriv --reuid=$(UNPRIV_USER) --regid=$$(id -g $(UNPRIV_USER)) --clear-groups \
		env -i HOME=$(UNPRIV_ROOT)/home PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
		$$(env | grep -E '^(PIP_[A-Z_]+|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY)=' || true) \
		$(MAKE) --no-print-directory -C $(UNPRIV_ROOT)/tcp unit VENV=$(UNPRIV_ROOT)/venv PYTHON=$(UNPRIV_PYTHON)

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

# ---- compatibility: every ansible-core the collection claims (meta/runtime.yml: >=2.16) --------
# One venv per core under .build/compat, pinned by tests/compat/requirements/ansible-core-<v>.txt
# (pip freeze of that venv). Newer cores than 2.19 need Python >= 3.12, which Debian 12 lacks.
# `make test` smokes the oldest and newest; `make compat` every minor.
COMPAT_CORES := 2.16.19 2.17.14 2.18.19 2.19.14
SMOKE_CORES  := $(firstword $(COMPAT_CORES)) $(lastword $(COMPAT_CORES))
COMPAT_DIR   := $(BUILD)/compat

$(COMPAT_DIR)/%/.installed: tests/compat/requirements/ansible-core-%.txt
	@test -x $(COMPAT_DIR)/$*/bin/python || $(PYTHON) -m venv $(COMPAT_DIR)/$*
	$(COMPAT_DIR)/$*/bin/python -m pip install -q -r $<
	@touch $@

smoke: setup $(SMOKE_CORES:%=$(COMPAT_DIR)/%/.installed)
	@$(MAKE) --no-print-directory compat-run CORES="$(SMOKE_CORES)"

compat: setup $(COMPAT_CORES:%=$(COMPAT_DIR)/%/.installed)
	@$(MAKE) --no-print-directory compat-run CORES="$(COMPAT_CORES)"

# Every core runs even when one fails; each one's time is printed (make test must stay under 30 min).
compat-run:
	@test "$$(id -u)" -eq 0 || { echo "the compatibility smoke needs root (lab hosts)"; exit 1; }
	@failed=""; for v in $(CORES); do \
		echo "== compatibility smoke on ansible-core $$v"; \
		start=$$(date +%s); \
		COMPAT_ANSIBLE_BIN=$(COMPAT_DIR)/$$v/bin $(BIN)/python -m pytest tests/compat -q || failed="$$failed $$v"; \
		echo "== ansible-core $$v: smoke took $$(( $$(date +%s) - start )) s"; \
	done; \
	test -z "$$failed" || { echo "compatibility smoke failed on ansible-core$$failed"; exit 1; }

bench: setup
	@test "$$(id -u)" -eq 0 || { echo "benchmarks need root (lab hosts)"; exit 1; }
	$(BIN)/python tests/bench/run.py

lab-cleanup: setup
	$(BIN)/netstate-lab cleanup --stale

clean:
	rm -rf $(BUILD) .pytest_cache
