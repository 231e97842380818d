# Two commands do everything on a fresh Debian machine: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
SANDBOX_DIR ?= .sandbox
PARAMS ?= params/sandbox.yaml
STAMP := $(VENV)/.installed

.PHONY: help setup redis iproute browser test unit demo demo-down clean

help:
	@echo "make demo       start the sandbox cluster (3+3 with data) and run the whole 3+3 -> 4+4 expansion"
	@echo "make demo-down  stop the sandbox"
	@echo "make test       unit, notebook, integration and browser tests (real redis-server, Debian's chromium)"
	@echo "make unit       only the fast unit tests"
	@echo "make setup      create $(VENV), install the project, and make sure redis-server/redis-cli exist"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

redis:
	@if [ -n "$$RUNBOOK_REDIS_SERVER" ] || { command -v redis-server >/dev/null && command -v redis-cli >/dev/null; }; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing redis-server and redis-cli with apt-get"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; \
	else \
		echo "redis-server and redis-cli are needed. Install them: 'sudo apt-get install redis-server' (Debian/Ubuntu)," >&2; \
		echo "or 'conda env create -f environment.yml', or set RUNBOOK_REDIS_SERVER and RUNBOOK_REDIS_CLI to their paths." >&2; \
		exit 1; \
	fi

# The browser tests drive Debian's chromium (Playwright never downloads one); `make demo` does not need it.
browser:
	@if [ -n "$$RUNBOOK_CHROMIUM" ] || command -v chromium >/dev/null; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium with apt-get (for the browser tests)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
		echo "chromium is needed for the browser tests: 'sudo apt-get install chromium' (Debian/Ubuntu)," >&2; \
		echo "or set RUNBOOK_CHROMIUM to a chromium binary." >&2; \
		exit 1; \
	fi

iproute:
	@if [ "$$(id -u)" = 0 ] && ! command -v ip >/dev/null && ! [ -x /usr/sbin/ip ] && command -v apt-get >/dev/null; then \
		echo "installing iproute2 (ip netns, tc) with apt-get for the multi-host sandbox"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2; \
	fi

setup: $(STAMP) redis iproute

test: setup browser
	$(BIN)/pytest -q

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit tests/notebooks

demo: setup
	@$(BIN)/runbook sandbox down --dir $(SANDBOX_DIR) >/dev/null
	$(BIN)/runbook sandbox up --dir $(SANDBOX_DIR)
	@status=0; $(BIN)/runbook run --params $(PARAMS) || status=$$?; \
	echo; \
	echo "Look at the report:  open the index.html printed above (or: cd reports && python3 -m http.server)"; \
	echo "Look at the cluster: $(BIN)/runbook check --params $(PARAMS)"; \
	echo "Step through by hand: $(BIN)/jupyter lab notebooks/"; \
	echo "Stop the sandbox:    make demo-down"; \
	exit $$status

demo-down: $(STAMP)
	$(BIN)/runbook sandbox down --dir $(SANDBOX_DIR)

clean: demo-down
	rm -rf $(VENV) reports
