# Two commands: `make run` starts the dashboard, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501
# The dashboard has no authentication: it listens on this machine only unless HOST says otherwise
# (`HOST=0.0.0.0 make run` serves every network interface, with a warning).
HOST ?= 127.0.0.1

.PHONY: run test bench install clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	@case "$(HOST)" in 127.0.0.1|localhost|::1) ;; *) \
	  echo "WARNING: serving the dashboard on $(HOST):$(PORT) without authentication; anyone who can reach" \
	       "this address can read the results and start jobs on this machine." >&2 ;; esac
	$(PY) -m streamlit run app.py --server.address $(HOST) --server.port $(PORT)

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/bench_bounds.py
	$(PY) -m smoothviz bench --device auto

clean:
	rm -rf $(VENV) tests/artifacts
