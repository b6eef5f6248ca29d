# Two commands do all set-up on a fresh Debian machine: `make run` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PGBIN ?= /usr/lib/postgresql/15/bin

.PHONY: run test lint typecheck bench system-packages clean

run: $(STAMP)
	$(BIN)/tunix-ingest run

test: $(STAMP) lint typecheck
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest
	$(BIN)/coverage combine -q
	$(BIN)/coverage report

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/tunix-ingest bench

# Debian packages the servers come from; installed only when missing (needs root, as on CI). `prometheus` is
# for promtool and the monitoring tests, which start their own server on a free port: on a host with systemd its
# package would also start a daemon on :9090, so that is switched off again.
system-packages:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	[ -x $(PGBIN)/postgres ] || missing="$$missing postgresql-15"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	python3 -c "import venv, ensurepip" 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "please install:$$missing (as root: make system-packages)"; exit 1; fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	  case "$$missing" in *prometheus*) systemctl disable --now prometheus >/dev/null 2>&1 || true;; esac; \
	fi

$(STAMP): pyproject.toml | system-packages
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) .tunix .coverage .coverage.* .mypy_cache .ruff_cache .pytest_cache *.egg-info
