#!/usr/bin/env bash
# The setup commands of launch/cluster.yaml (cloud) and launch/cluster.local.yaml (the local machine):
#
#   bash launch/setup.sh node   every node: its login shells source launch/cluster_env.sh
#   bash launch/setup.sh head   the head: creates the MLflow and Optuna databases (psycopg 3),
#                               (re)starts the MLflow tracking server (PostgreSQL backend,
#                               artifacts in the bucket) and waits until it answers
#
# Idempotent: `ray up` runs it again on every update. The MLflow server runs in its own process
# group recorded in ~/mlflow.pid, so a restart stops exactly that server and its workers.
#
# Only the driver and the commands run on the head (ensemble, report) talk to the MLflow
# server, so it listens on 127.0.0.1 (users come through `ray attach -p 5000`). Set in
# cluster.env: BST_MLFLOW_HOST=private to bind the head's private address instead (machines in
# the VPC), BST_MLFLOW_APP=basic-auth to put it behind MLflow's basic-auth app (launch/README.md,
# "Security"). Its store URL holds the database password: it reaches the server through
# MLFLOW_BACKEND_STORE_URI, never its command line (which any local user reads in /proc).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ ! -f "$HOME/bst-search.env" ]; then
    echo "error: $HOME/bst-search.env is missing: file_mounts copies it from the operator's" \
         "~/.bst-search/ (see launch/README.md)" >&2
    exit 1
fi

case "${1:-}" in
node)
    line=". $here/cluster_env.sh"
    grep -qxF "$line" "$HOME/.bashrc" 2>/dev/null || echo "$line" >> "$HOME/.bashrc"
    . "$here/cluster_env.sh"
    test -s "$RAY_AUTH_TOKEN_PATH" || { echo "error: no Ray token at $RAY_AUTH_TOKEN_PATH" >&2; exit 1; }
    ;;
head)
    . "$here/cluster_env.sh"
    : "${BST_DB_URL:?BST_DB_URL is not set in ~/bst-search.env}"
    : "${BST_S3_URI:?BST_S3_URI is not set in ~/bst-search.env}"
    python "$here/create_databases.py"
    host=${BST_MLFLOW_HOST:-127.0.0.1}
    if [ "$host" = private ]; then
        host=$(hostname -I 2>/dev/null | awk '{print $1}')
        [ -n "$host" ] || { echo "error: BST_MLFLOW_HOST=private: no address in 'hostname -I'" >&2; exit 1; }
    fi
    port=${BST_MLFLOW_PORT:-5000}
    app=()
    if [ -n "${BST_MLFLOW_APP:-}" ]; then app=(--app-name "$BST_MLFLOW_APP"); fi
    if [ -f "$HOME/mlflow.pid" ]; then
        pg=$(cat "$HOME/mlflow.pid")
        kill -- "-$pg" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 -- "-$pg" 2>/dev/null || break; sleep 1; done
    fi
    MLFLOW_BACKEND_STORE_URI="${BST_DB_URL%/}/${BST_MLFLOW_DB:-mlflow}" \
        setsid nohup mlflow server --host "$host" --port "$port" "${app[@]}" \
        --artifacts-destination "${BST_S3_URI%/}/mlartifacts" \
        > "$HOME/mlflow.log" 2>&1 < /dev/null &
    echo $! > "$HOME/mlflow.pid"
    case "$host" in 0.0.0.0|127.0.0.1) uri="http://127.0.0.1:$port" ;; *) uri="http://$host:$port" ;; esac
    if ! python - "$uri" <<'PY'
import sys, time, urllib.request
for _ in range(300):
    try:
        urllib.request.urlopen(sys.argv[1] + "/health", timeout=2)
        sys.exit(0)
    except Exception:
        time.sleep(1)
sys.exit(1)
PY
    then
        echo "error: the MLflow server did not answer at $uri; ~/mlflow.log:" >&2
        tail -n 30 "$HOME/mlflow.log" >&2
        exit 1
    fi
    # the driver (ray submit runs it on the head) and the ensemble find the server by default
    touch "$HOME/.bashrc"
    sed -i '/^export MLFLOW_TRACKING_URI=/d' "$HOME/.bashrc"
    echo "export MLFLOW_TRACKING_URI=$uri" >> "$HOME/.bashrc"
    echo "MLflow server up at $uri (log ~/mlflow.log)"
    ;;
*)
    echo "usage: setup.sh node|head" >&2
    exit 2
    ;;
esac
