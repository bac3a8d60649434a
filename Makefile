# `make run` and `make test` work on a fresh machine: they create .venv and install on first use;
# `make test` also installs the Debian peers the tests talk to (as root, e.g. in CI) or says in
# one line which packages are missing and how to install them.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The real peers of the integration tests (dcmtk, Orthanc, dicom3tools, PostgreSQL), the
# summary's font, and chromium for the browser tests (console, OHIF viewer; driven by
# Playwright). npm (fetches the viewer) is checked by `make ohif` instead: a NodeSource nodejs
# already brings it, and Debian's npm conflicts.
DEBIAN_PEERS ?= dcmtk orthanc orthanc-dicomweb dicom3tools fonts-dejavu-core postgresql chromium
# yes: install missing peers with apt-get; no: only name them. Default: yes when root.
INSTALL_PEERS ?= $(if $(filter 0,$(shell id -u)),yes,no)

# OHIF v3's prebuilt viewer for tests/test_e2e_ohif.py: the npm package's dist/, unpacked into
# an ignored cache folder once per version (50 MB download, 200 MB unpacked).
OHIF_VERSION ?= 3.13.2
OHIF_DIR := .cache/ohif/$(OHIF_VERSION)

.PHONY: run test lint clean peers ohif

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

peers:
	@missing=""; \
	for p in $(DEBIAN_PEERS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "ok installed" \
	    || missing="$$missing $$p"; \
	done; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$(INSTALL_PEERS)" = yes ] && command -v apt-get >/dev/null; then \
	  echo "make: installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	else \
	  echo "make: missing Debian packages:$$missing; install them with:" \
	    "sudo apt-get install -y$$missing" >&2; \
	  exit 1; \
	fi

run: $(STAMP)
	$(VENV)/bin/dicom-node serve

ohif: $(OHIF_DIR)/dist/index.html

$(OHIF_DIR)/dist/index.html:
	@command -v npm >/dev/null || [ "$(INSTALL_PEERS)" != yes ] \
	  || { echo "make: installing Debian package: npm"; \
	       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
	@command -v npm >/dev/null || { echo "make: npm is needed to fetch the OHIF viewer;" \
	  "install it with: sudo apt-get install -y npm" >&2; exit 1; }
	rm -rf $(OHIF_DIR) && mkdir -p $(OHIF_DIR)
	cd $(OHIF_DIR) && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null \
	  && tar xzf ohif-app-$(OHIF_VERSION).tgz --strip-components=1 package/dist \
	  && rm ohif-app-$(OHIF_VERSION).tgz

test: peers $(STAMP) ohif
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV)
