#!/usr/bin/env bash
# The services profile's servers on this machine: `start` (make services) and `stop` (make services-stop).
#
#   start  Debian's postgresql (installed with apt-get when missing), its cluster on RECALIGN_PG_PORT
#          started, the role RECALIGN_PG_USER and the databases RECALIGN_PG_DAGSTER_DB and
#          RECALIGN_PG_MLFLOW_DB created when absent (the role's password set to RECALIGN_PG_PASSWORD),
#          then `mlflow server` on 127.0.0.1:MLFLOW_SERVER_PORT with its backend store in Postgres and
#          its artifacts served over HTTP from RECALIGN_HOME/services/mlflow-artifacts; it waits until
#          /health answers. Whatever already runs is left as it is, so `start` can be repeated.
#   stop   the MLflow server (its process group, from the pid file), then the Postgres cluster.
#   reset  the MLflow server stopped, both databases dropped and the artifact folder removed: the registry
#          (Postgres) and the artifacts it points at (a folder under RECALIGN_HOME) go together.
#
# The Makefile passes every setting (their defaults are there); the pid file and the server's log are
# under RECALIGN_HOME/services/.
set -euo pipefail

: "${RECALIGN_HOME:?}" "${VENV_BIN:?}" "${MLFLOW_SERVER_PORT:?}" "${MLFLOW_SERVER_WORKERS:?}"
: "${RECALIGN_PG_HOST:?}" "${RECALIGN_PG_PORT:?}" "${RECALIGN_PG_USER:?}" "${RECALIGN_PG_PASSWORD:?}"
: "${RECALIGN_PG_DAGSTER_DB:?}" "${RECALIGN_PG_MLFLOW_DB:?}"
SUDO=${SUDO-}  # `sudo` when not root (the Makefile's SUDO)
SERVICES_DIR="$RECALIGN_HOME/services"
PID_FILE="$SERVICES_DIR/mlflow-server.pid"
LOG="$SERVICES_DIR/mlflow-server.log"
ARTIFACTS="$SERVICES_DIR/mlflow-artifacts"
URL="http://127.0.0.1:$MLFLOW_SERVER_PORT"
START_TIMEOUT_S=${MLFLOW_SERVER_START_TIMEOUT_S:-240}  # a new backend store is migrated first (about a minute)

cluster() {  # "<version> <name>" of the cluster on RECALIGN_PG_PORT
    pg_lsclusters -h | awk -v port="$RECALIGN_PG_PORT" '$3 == port {print $1, $2; exit}'
}

cluster_online() {
    pg_lsclusters -h | awk -v port="$RECALIGN_PG_PORT" '$3 == port && $4 ~ /online/ {found = 1} END {exit !found}'
}

psql_as_postgres() {  # psql as the cluster's superuser (peer authentication over the local socket)
    (cd / && $SUDO runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$RECALIGN_PG_PORT" "$@")
}

healthy() {
    curl -fsS --noproxy '*' -m 2 "$URL/health" >/dev/null 2>&1
}

server_pid() {  # the pid of the server we started, when it still runs
    [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null && cat "$PID_FILE"
}

start_cluster() {
    if ! command -v pg_ctlcluster >/dev/null; then
        echo "postgres: not installed; installing Debian's postgresql"
        $SUDO apt-get update -q
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
    fi
    local name
    name=$(cluster)
    if [ -z "$name" ]; then
        echo "no Postgres cluster listens on port $RECALIGN_PG_PORT (pg_lsclusters lists them); set RECALIGN_PG_PORT" >&2
        exit 1
    fi
    if cluster_online; then
        echo "postgres: cluster $name already running on port $RECALIGN_PG_PORT"
    else
        # shellcheck disable=SC2086  # "<version> <name>" are two arguments
        $SUDO pg_ctlcluster $name start
        echo "postgres: started cluster $name on port $RECALIGN_PG_PORT"
    fi
}

start_postgres() {
    start_cluster
    psql_as_postgres -v user="$RECALIGN_PG_USER" -v pw="$RECALIGN_PG_PASSWORD" \
        -v dagster_db="$RECALIGN_PG_DAGSTER_DB" -v mlflow_db="$RECALIGN_PG_MLFLOW_DB" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'user') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
ALTER ROLE :"user" WITH LOGIN PASSWORD :'pw';
SELECT format('CREATE DATABASE %I OWNER %I', :'dagster_db', :'user')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'dagster_db') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'mlflow_db', :'user')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'mlflow_db') \gexec
SQL
    echo "postgres: role $RECALIGN_PG_USER, databases $RECALIGN_PG_DAGSTER_DB (Dagster) and $RECALIGN_PG_MLFLOW_DB (MLflow)" \
         "on $RECALIGN_PG_HOST:$RECALIGN_PG_PORT"
}

start_mlflow() {
    local pid
    if pid=$(server_pid); then
        echo "mlflow: server already running (pid $pid)"
    else
        if healthy; then
            echo "$URL answers, but not from a server started here ($PID_FILE): set MLFLOW_SERVER_PORT" >&2
            exit 1
        fi
        mkdir -p "$ARTIFACTS"
        # the driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed
        local backend="postgresql+psycopg2://$RECALIGN_PG_USER:$RECALIGN_PG_PASSWORD@$RECALIGN_PG_HOST:$RECALIGN_PG_PORT/$RECALIGN_PG_MLFLOW_DB"
        # Its own session (process group), so `stop` ends the server and its workers together; the venv's
        # scripts first on PATH (the server starts uvicorn by name). MLflow's job runner (GenAI scorers and
        # prompt optimization, about 1 GB in ten processes) is not used here and stays off.
        PATH="$VENV_BIN:$PATH" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$VENV_BIN/mlflow" server \
            --backend-store-uri "$backend" --artifacts-destination "$ARTIFACTS" --serve-artifacts \
            -h 127.0.0.1 -p "$MLFLOW_SERVER_PORT" --workers "$MLFLOW_SERVER_WORKERS" </dev/null >"$LOG" 2>&1 &
        pid=$!
        echo "$pid" >"$PID_FILE"
        echo "mlflow: started the server (pid $pid, log $LOG)"
    fi
    local waited=0
    until healthy; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "mlflow: the server exited; the end of $LOG:" >&2
            tail -n 40 "$LOG" >&2
            rm -f "$PID_FILE"
            exit 1
        fi
        if [ "$waited" -ge "$START_TIMEOUT_S" ]; then
            echo "mlflow: $URL/health did not answer within $START_TIMEOUT_S s; the end of $LOG:" >&2
            tail -n 40 "$LOG" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "mlflow: $URL answers /health (tracking, registry and UI; artifacts in $ARTIFACTS)"
}

stop_mlflow() {
    local pid
    if pid=$(server_pid); then
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
        echo "mlflow: stopped the server (pid $pid)"
    else
        echo "mlflow: no server started here is running"
    fi
    rm -f "$PID_FILE"
}

stop_postgres() {
    local name
    name=$(command -v pg_lsclusters >/dev/null && cluster || true)
    if [ -n "$name" ] && cluster_online; then
        # shellcheck disable=SC2086
        $SUDO pg_ctlcluster $name stop
        echo "postgres: stopped cluster $name"
    else
        echo "postgres: no cluster running on port $RECALIGN_PG_PORT"
    fi
}

reset() {
    stop_mlflow
    start_cluster
    psql_as_postgres -v dagster_db="$RECALIGN_PG_DAGSTER_DB" -v mlflow_db="$RECALIGN_PG_MLFLOW_DB" <<'SQL'
DROP DATABASE IF EXISTS :"dagster_db" WITH (FORCE);
DROP DATABASE IF EXISTS :"mlflow_db" WITH (FORCE);
SQL
    rm -rf "$ARTIFACTS"
    echo "postgres: dropped $RECALIGN_PG_DAGSTER_DB and $RECALIGN_PG_MLFLOW_DB; removed $ARTIFACTS"
    echo "make services starts afresh (make services-stop stops the cluster)"
}

case "${1:-}" in
    start)
        mkdir -p "$SERVICES_DIR"
        start_postgres
        start_mlflow
        echo "services up: MLflow $URL, Dagster storage postgresql://$RECALIGN_PG_USER@$RECALIGN_PG_HOST:$RECALIGN_PG_PORT/$RECALIGN_PG_DAGSTER_DB"
        echo "use them with RECALIGN_PROFILE=services (make run, make dev, make test); stop them with make services-stop"
        ;;
    stop)
        stop_mlflow
        stop_postgres
        ;;
    reset)
        reset
        ;;
    *)
        echo "usage: $0 start|stop|reset (make services, services-stop, services-reset)" >&2
        exit 2
        ;;
esac
