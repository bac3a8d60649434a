# `make run` and `make test` work on a fresh machine: they create .venv and install on first use;
# `make test` also installs the Debian peers the tests talk to (as root, e.g. in CI) or says in
# one line which packages are missing and how to install them.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The real peers of the integration tests (dcmtk, Orthanc, dicom3tools, PostgreSQL) and the
# summary's font.
DEBIAN_PEERS ?= dcmtk orthanc orthanc-dicomweb dicom3tools fonts-dejavu-core postgresql
# yes: install missing peers with apt-get; no: only name them. Default: yes when root.
INSTALL_PEERS ?= $(if $(filter 0,$(shell id -u)),yes,no)

.PHONY: run test lint clean peers

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

test: peers $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV)
