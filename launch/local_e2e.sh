#!/usr/bin/env bash
# `ray up` -> `ray submit` -> `ray down` end to end on the local machine with launch/cluster.local.yaml:
#
#   bash launch/local_e2e.sh            # from anywhere; needs `make venv`, PostgreSQL, sshd
#
# 1. sshd on 127.0.0.1:22 with a fresh key when ours is not running (launch/local_sshd.sh);
# 2. the shared services a cloud cluster has: an S3 endpoint (moto server) for Tune storage and
#    MLflow artifacts, and the PostgreSQL server (the head setup creates the two databases);
# 3. ray up -y: rsync of the repository, venv build, launch/setup.sh (the cloud file's setup),
#    ray start with token authentication;
# 4. a synthetic dataset made on the head (ray exec), then ray submit launch/search.py -- a smoke
#    sweep of $BST_E2E_TRIALS trials;
# 5. the runs are checked through the head's MLflow server: N FINISHED trial runs, one per trial,
#    each with its OOF, and the Optuna study N COMPLETE;
# 6. ray down -y; then everything started here is stopped and the databases are dropped.
#
# Prints one line `e2e: ray up Xs, ray submit Ys, ray down Zs, total Ts` at the end.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bin=${BST_E2E_BIN:-$root/.venv/bin}
[ -x "$bin/ray" ] || { echo "error: $bin/ray is missing: run 'make venv' first" >&2; exit 3; }
export PATH="$bin:$PATH"
yaml=launch/cluster.local.yaml
conf=$HOME/.bst-search/local
sshdir=$conf/sshd
trials=${BST_E2E_TRIALS:-2}
tag=$(python3 -c 'import uuid; print(uuid.uuid4().hex[:8])')
dbs="bst_cluster_e2e_${tag}_mlflow bst_cluster_e2e_${tag}_optuna"
pg_admin=${BST_TEST_PG:-postgresql://postgres@127.0.0.1:5432/postgres}
mkdir -p "$conf"
chmod 700 "$conf"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
s3_port=$(free_port)
mlflow_port=$(free_port)
s3_pid=""
started_sshd=""
upped=""

cleanup() {
    rc=$?
    set +e
    if [ -n "$upped" ]; then ray down -y "$yaml" > "$conf/ray-down-cleanup.log" 2>&1; fi
    if [ -n "$s3_pid" ]; then kill "$s3_pid" 2>/dev/null; fi
    rm -rf "/tmp/bst-local-e2e-data-$tag"
    if [ -n "$started_sshd" ]; then bash "$root/launch/local_sshd.sh" stop "$sshdir"; fi
    BST_TEST_PG=$pg_admin "$bin/python" - $dbs <<'PY'
import os, sys
import psycopg
with psycopg.connect(os.environ["BST_TEST_PG"], autocommit=True) as c:
    for db in sys.argv[1:]:
        c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
PY
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
t0=$(now)

# 1. sshd
if ! bash launch/local_sshd.sh running "$sshdir" 2>/dev/null; then
    bash launch/local_sshd.sh start "$sshdir"
    started_sshd=1
fi

# 2. shared services: S3 endpoint and bucket; the env file and token every node gets
"$bin/moto_server" -H 127.0.0.1 -p "$s3_port" > "$conf/s3.log" 2>&1 &
s3_pid=$!
"$bin/python" - "$s3_port" <<'PY'
import sys, time
import boto3
url = f"http://127.0.0.1:{sys.argv[1]}"
s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="testing",
                  aws_secret_access_key="testing", region_name="us-east-1")
for _ in range(120):
    try:
        s3.create_bucket(Bucket="bst-e2e")
        break
    except Exception:
        time.sleep(0.5)
else:
    sys.exit(f"no S3 endpoint at {url}")
PY
read -r mlflow_db optuna_db <<< "$dbs"
umask 077
cat > "$conf/cluster.env" <<EOF
# written by launch/local_e2e.sh for launch/cluster.local.yaml
export BST_DB_URL=postgresql+psycopg://postgres@127.0.0.1:5432
export BST_MLFLOW_DB=$mlflow_db
export BST_OPTUNA_DB=$optuna_db
export BST_S3_URI=s3://bst-e2e/bst-search
export BST_MLFLOW_HOST=127.0.0.1
export BST_MLFLOW_PORT=$mlflow_port
export BST_VENV=\$HOME/bst-search/.venv
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port
export MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:$s3_port
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
EOF
python3 -c 'import secrets; print(secrets.token_hex(32), end="")' > "$conf/ray-token"
umask 022

# 3. ray up
t_up=$(now)
upped=1
ray up -y --no-config-cache "$yaml" > "$conf/ray-up.log" 2>&1 || {
    echo "error: ray up failed; the end of $conf/ray-up.log:" >&2; tail -n 60 "$conf/ray-up.log" >&2; exit 1; }
up_s=$(python3 -c "print(f'{$(now) - $t_up:.0f}')")

# 4. data on the head, then the sweep through ray submit
data=/tmp/bst-local-e2e-data-$tag
ray exec "$yaml" "bst-search synth --out $data --n 600 --eval-n 150 --seed 0" > "$conf/ray-exec.log" 2>&1 || {
    echo "error: ray exec (synth) failed:" >&2; tail -n 40 "$conf/ray-exec.log" >&2; exit 1; }
t_submit=$(now)
ray submit "$yaml" launch/search.py -- --address 127.0.0.1:6388 \
    --data "$data/dev" --eval-data "$data/eval" --space smoke \
    --experiment "e2e-$tag" --trials "$trials" --concurrency 1 --workdir "$data/runs" \
    > "$conf/ray-submit.log" 2>&1 || {
    echo "error: ray submit failed; the end of $conf/ray-submit.log:" >&2
    tail -n 60 "$conf/ray-submit.log" >&2; exit 1; }
submit_s=$(python3 -c "print(f'{$(now) - $t_submit:.0f}')")

# 5. check through the head's MLflow server (and the Optuna study the driver used)
# (store URLs reach the checks through the environment, like every secret: never a command line)
MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false BST_OPTUNA_STORAGE="postgresql+psycopg://postgres@127.0.0.1:5432/$optuna_db" \
    "$bin/python" - "http://127.0.0.1:$mlflow_port" "e2e-$tag" "$trials" "$data/dev" <<'PY'
import os
import sys

import optuna
import pandas as pd

from bst_search import tracking
from bst_search.data import load_dataset

uri, experiment, n, dev = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
optuna_url = os.environ["BST_OPTUNA_STORAGE"]
cl = tracking.client(uri)
exp = cl.get_experiment_by_name(experiment)
assert exp is not None, f"no experiment {experiment} on {uri}"
runs = tracking.find_runs(cl, exp.experiment_id, status="FINISHED")
ids = [r.data.tags["bst.trial_id"] for r in runs]
assert len(runs) == n and len(set(ids)) == n, f"{len(runs)} FINISHED runs {ids}, expected {n}"
dev_ids = sorted(load_dataset(dev).ids)
for r in runs:
    assert r.data.tags.get("bst.status") == "complete" and r.data.tags.get("bst.node"), r.data.tags
    oof = pd.read_parquet(cl.download_artifacts(r.info.run_id, "oof.parquet"))
    assert sorted(oof["sound_id"]) == dev_ids, f"run {r.info.run_id}: incomplete OOF"
    assert r.info.artifact_uri.startswith("mlflow-artifacts:"), r.info.artifact_uri
names = set(optuna.get_all_study_names(optuna_url)) & {experiment, runs[0].data.tags["bst.sweep"]}
assert len(names) == 1, f"no single Optuna study for {experiment}: {names}"
study = optuna.load_study(study_name=names.pop(), storage=optuna_url)
states = [t.state.name for t in study.get_trials(deepcopy=False)]
assert states.count("COMPLETE") == n and len(states) == n, states
print(f"e2e check: {n} FINISHED trial runs with complete OOF on {uri}, Optuna {n} COMPLETE")
PY
"$bin/python" - "$s3_port" <<'PY'
import sys
import boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", aws_access_key_id="testing",
                  aws_secret_access_key="testing", region_name="us-east-1")
keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket="bst-e2e")
        for o in p.get("Contents", [])]
assert any(k.startswith("bst-search/mlartifacts/") and k.endswith("oof.parquet") for k in keys), keys[:20]
assert any(k.startswith("bst-search/tune/") for k in keys), keys[:20]
print(f"e2e check: {len(keys)} objects in s3://bst-e2e (MLflow artifacts and Tune storage)")
PY

# 6. ray down
t_down=$(now)
ray down -y "$yaml" > "$conf/ray-down.log" 2>&1
upped=""
down_s=$(python3 -c "print(f'{$(now) - $t_down:.0f}')")
rm -rf "$data"
echo "e2e: ray up ${up_s}s, ray submit ${submit_s}s (${trials} trials), ray down ${down_s}s," \
     "total $(python3 -c "print(f'{$(now) - $t0:.0f}')")s ($(date -u +%Y-%m-%dT%H:%MZ))"
