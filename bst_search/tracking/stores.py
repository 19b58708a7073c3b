"""Where a sweep lives, as every command names it, and opening its stores for a reader.

A sweep is three stores: the MLflow tracking store, the Optuna study's database and (for the
driver only) the Tune storage. Every command takes the first two with the same arguments and
defaults (:func:`add_store_arguments`); readers (the report, the dashboard) open them without
creating or locking anything, and the dashboard's viewers read-only where the store allows it
(:func:`viewer_url`: SQLite ``mode=ro``, PostgreSQL read-only transactions).
"""

from __future__ import annotations

import argparse
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from bst_search.tracking.redact import mask_text, mask_url

WORKDIR_ENV = "BST_WORKDIR"
OPTUNA_STORAGE_ENV = "BST_OPTUNA_STORAGE"
DEFAULT_WORKDIR = "bst-runs"
READ_ONLY_OPTION = "-c default_transaction_read_only=on"


class StoreError(RuntimeError):
    """A store named by the arguments cannot be read; the message says which and why."""


def add_store_arguments(p: argparse.ArgumentParser, *, experiment: bool = True,
                        optuna: bool = True) -> argparse.ArgumentParser:
    """``--experiment``, ``--workdir``, ``--tracking-uri`` and ``--optuna-storage``, with the
    defaults every command shares ($BST_WORKDIR, $MLFLOW_TRACKING_URI, $BST_OPTUNA_STORAGE)."""
    if experiment:
        p.add_argument("--experiment", required=True, help="MLflow experiment (= sweep) name")
    p.add_argument("--workdir", default=os.environ.get(WORKDIR_ENV, DEFAULT_WORKDIR),
                   help=f"the sweep's work dir: mlflow.db, mlartifacts/, optuna.db, tune/ and "
                        f"the caches (default: ${WORKDIR_ENV}, else {DEFAULT_WORKDIR})")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                          "else sqlite:///<workdir>/mlflow.db)")
    if optuna:
        p.add_argument("--optuna-storage",
                       help=f"Optuna RDB URL (default: ${OPTUNA_STORAGE_ENV}, else "
                            "sqlite:///<workdir>/optuna.db); keep passwords out of the command "
                            f"line: ${OPTUNA_STORAGE_ENV} or $PGPASSWORD")
    return p


def existing_optuna_storage(given: str | None, workdir: Path) -> str | None:
    """The sweep's Optuna storage for a reader: --optuna-storage, $BST_OPTUNA_STORAGE, else the
    work dir's SQLite file when it exists (a reader never creates one)."""
    storage = given or os.environ.get(OPTUNA_STORAGE_ENV)
    if storage is None and (workdir / "optuna.db").exists():
        storage = f"sqlite:///{workdir / 'optuna.db'}"
    return storage


def check_store(uri: str) -> None:
    """Fail fast with one line on a missing SQLite file or an unreachable server (MLflow
    itself would create an empty store, or retry for minutes)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
        if not path.exists():
            raise StoreError(f"no MLflow store at {path} ({uri}): run a sweep there first, or "
                             f"pass --workdir / --tracking-uri")
    elif uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as r:
                r.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise StoreError(f"MLflow tracking server {mask_url(uri)} is unreachable: "
                             f"{mask_text(str(reason), uri)}") from None


def read_only_sqlite(url: str) -> str:
    """A SQLite URL opened read-only, so a reader never takes the driver's write lock; any
    other URL unchanged."""
    if not url.startswith("sqlite:///"):
        return url
    path, _, query = url[len("sqlite:///"):].partition("?")
    params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in ("mode", "uri")]
    path = path if path.startswith("file:") else f"file:{path}"
    return f"sqlite:///{path}?{urlencode([('mode', 'ro'), ('uri', 'true'), *params], quote_via=quote)}"


def read_only_postgres(url: str) -> str:
    """A PostgreSQL URL whose sessions start every transaction read-only (libpq's ``options``,
    ``-c default_transaction_read_only=on``): what a viewer writes is refused by the server."""
    base, _, query = url.partition("?")
    params = parse_qsl(query, keep_blank_values=True)
    given = " ".join(v for k, v in params if k == "options")
    options = f"{given} {READ_ONLY_OPTION}".strip()
    params = [(k, v) for k, v in params if k != "options"] + [("options", options)]
    return f"{base}?{urlencode(params, quote_via=quote)}"


def viewer_url(url: str) -> tuple[str, bool]:
    """The URL a viewer (the MLflow UI, optuna-dashboard) opens a store with, and whether that
    makes the store read-only: SQLite (``mode=ro``) and PostgreSQL (read-only transactions)
    are; any other store is handed over as it is, writable."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if url.startswith("sqlite:///"):
        return read_only_sqlite(url), True
    if scheme.split("+", 1)[0] in ("postgresql", "postgres"):
        return read_only_postgres(url), True
    return url, False


def snapshot_storage() -> Any:
    """In-memory storage for a study's trials read once from the database. Readers only read
    them, so they get the stored objects: Optuna's default deep copy of every trial on every
    query costs seconds per figure on a sweep of 1,000 trials."""
    import optuna

    class Snapshot(optuna.storages.InMemoryStorage):
        def get_all_trials(self, study_id: int, deepcopy: bool = True,
                           states: Any = None) -> list[Any]:
            return super().get_all_trials(study_id, deepcopy=False, states=states)

    return Snapshot()
