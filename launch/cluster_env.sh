# Sourced by every login shell of a cluster node (`launch/setup.sh node` adds it to ~/.bashrc), so
# `ray start`, `ray submit` and `ray exec` all see the cluster's settings. Shared by
# launch/cluster.yaml (cloud) and launch/cluster.local.yaml (the local machine).
#
# ~/bst-search.env (copied by file_mounts from the operator's ~/.bst-search/...) sets:
#   BST_DB_URL      PostgreSQL server, no database: postgresql+psycopg://USER:PASSWORD@HOST:5432
#   BST_S3_URI      bucket and prefix: s3://BUCKET/bst-search
# and optionally BST_MLFLOW_DB / BST_OPTUNA_DB (database names, default mlflow / optuna),
# BST_MLFLOW_HOST / BST_MLFLOW_PORT (the head's tracking server, default 127.0.0.1:5000;
# BST_MLFLOW_HOST=private: the head's private address), BST_MLFLOW_APP (basic-auth),
# BST_VENV (a virtual environment whose bin/ goes first on PATH), AWS_ENDPOINT_URL and
# MLFLOW_S3_ENDPOINT_URL (an S3-compatible server instead of AWS), AWS credentials when the
# nodes have no instance profile.
if [ -f "$HOME/bst-search.env" ]; then . "$HOME/bst-search.env"; fi
if [ -n "${BST_VENV:-}" ] && [ -d "$BST_VENV/bin" ]; then
    case ":$PATH:" in *":$BST_VENV/bin:"*) ;; *) export PATH="$BST_VENV/bin:$PATH" ;; esac
fi
# what `bst-search search` reads by default: the Optuna study and Tune's storage, shared by all nodes
if [ -n "${BST_DB_URL:-}" ]; then export BST_OPTUNA_STORAGE="${BST_DB_URL%/}/${BST_OPTUNA_DB:-optuna}"; fi
if [ -n "${BST_S3_URI:-}" ]; then export BST_TUNE_STORAGE="${BST_S3_URI%/}/tune"; fi
# Ray token authentication: every node, driver and CLI call presents the cluster's token
# (file_mounts copies the operator's ~/.bst-search/ray-token to every node)
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$HOME/bst-search-ray-token"
