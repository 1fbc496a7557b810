# jaxmim: the two entry points a newcomer needs.
#   make demo   set up .venv and the data, pre-train + fine-tune a small Swin on Fashion-MNIST
#   make test   set up .venv and the data, run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
WORKDIR ?= work/demo

.PHONY: demo test venv data clean

venv: $(STAMP)

INTEROP_STAMP := $(VENV)/.interop-installed

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt
	touch $(STAMP)

# timm / transformers: test references for convert/'s timm and HF layouts, installed with the pinned
# requirements as constraints (CPU torch kept). Not fatal: without them those tests skip and say why.
$(INTEROP_STAMP): $(STAMP) tests/requirements-interop.txt
	$(VPY) -m pip install -q -r tests/requirements-interop.txt -c requirements.txt && touch $(INTEROP_STAMP) \
	  || echo 'warning: timm / transformers not installed; the interop tests will skip'

# Debian/Ubuntu ship the Fashion-MNIST idx files as a package; install it when missing.
data: $(FMNIST_DIR)/train-images-idx3-ubyte.gz

$(FMNIST_DIR)/train-images-idx3-ubyte.gz:
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "Fashion-MNIST not found under $(FMNIST_DIR): installing Debian package dataset-fashion-mnist"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist

# Two worker processes, one test file at a time each (module fixtures stay per file): the
# suite is bound by single-threaded XLA compilation, so this halves its time on 2 cores.
PYTEST_WORKERS ?= 2

test: venv data $(INTEROP_STAMP)
	$(VPY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile tests

demo: venv data
	$(VPY) -m launch.demo --workdir=$(WORKDIR) $(DEMO_FLAGS)

clean:
	rm -rf $(VENV) work
