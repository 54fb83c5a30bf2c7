# Two commands on a fresh Debian machine with Python 3.11: `make test` and `make demo`.
# Both set up what they need (headless X server and Qt libraries, .venv with torch and the package) and are
# quick the second time: the venv is rebuilt only when pyproject.toml changes.

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := xvfb xauth libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0 \
	libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 \
	libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxcb-xkb1
LINT_PATHS := src tests benchmarks scripts
XVFB := xvfb-run -a -s "-screen 0 1600x1000x24"

.PHONY: setup system-deps test demo lint bench clean

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages for headless Qt: $$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[testing]"
	touch $(STAMP)

setup: system-deps $(STAMP)

lint: setup
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

test: setup lint
	$(VENV)/bin/npe2 validate --imports napari-samtune
	OMP_NUM_THREADS=2 $(PY) -m pytest -p xvfb

# The demo drives a napari window: on a machine without a display it runs on a virtual one (Xvfb).
demo: setup
	if [ -n "$$DISPLAY" ]; then OMP_NUM_THREADS=2 $(PY) -m napari_samtune.demo --output demo_output; \
	else OMP_NUM_THREADS=2 $(XVFB) $(PY) -m napari_samtune.demo --output demo_output; fi

bench: setup
	for script in benchmarks/*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) demo_output .pytest_cache .ruff_cache
