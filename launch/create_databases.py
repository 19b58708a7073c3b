"""Create the cluster's two PostgreSQL databases (MLflow's and Optuna's) when missing.

Run by ``launch/setup.sh head`` on the head node of ``cluster.yaml`` and ``cluster.local.yaml``:

    python launch/create_databases.py      # reads BST_DB_URL, BST_MLFLOW_DB, BST_OPTUNA_DB

``BST_DB_URL`` is the server without a database, ``postgresql+psycopg://USER:PASSWORD@HOST:5432``
(plain ``postgresql://`` works too); the user must be allowed to create databases (RDS's master
user is). MLflow and Optuna both keep an alembic version table, so they cannot share one
database. The password comes from the environment only and is masked in everything printed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

DEFAULTS = {"BST_MLFLOW_DB": "mlflow", "BST_OPTUNA_DB": "optuna"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def libpq_url(url: str, database: str = "postgres") -> str:
    """The SQLAlchemy URL ``postgresql+psycopg://...`` as psycopg wants it, on ``database``."""
    url = re.sub(r"^postgres(?:ql)?(?:\+[a-z0-9]+)?://", "postgresql://", url.strip())
    if not url.startswith("postgresql://"):
        raise ValueError(f"BST_DB_URL must be a PostgreSQL URL (postgresql+psycopg://...), "
                         f"got {mask(url)!r}")
    base, _, query = url.partition("?")
    scheme, rest = base.split("://", 1)
    host = rest.split("/", 1)[0]
    return f"{scheme}://{host}/{database}" + (f"?{query}" if query else "")


def mask(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def create(url: str, names: list[str]) -> list[str]:
    """Create each database in ``names`` that does not exist; return the ones created."""
    import psycopg

    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"invalid database name {name!r} (letters, digits, _; 63 at most)")
    created = []
    with psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=10) as conn:
        have = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        for name in names:
            if name not in have:
                conn.execute(f'CREATE DATABASE "{name}"')
                created.append(name)
    return created


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("BST_DB_URL"),
                   help="server URL without database (default: $BST_DB_URL)")
    p.add_argument("names", nargs="*", help="databases (default: $BST_MLFLOW_DB $BST_OPTUNA_DB, "
                   "else mlflow optuna)")
    args = p.parse_args(argv)
    if not args.url:
        p.error("no database server: set BST_DB_URL (postgresql+psycopg://USER:PASSWORD@HOST:5432)")
    names = args.names or [os.environ.get(k) or v for k, v in DEFAULTS.items()]
    try:
        created = create(args.url, names)
    except Exception as e:  # noqa: BLE001 - one clear line for the setup log, password masked
        print(f"error: cannot create databases {names} on {mask(args.url)}: "
              f"{mask(str(e))}", file=sys.stderr)
        return 1
    kept = [n for n in names if n not in created]
    print(f"databases on {mask(args.url)}: created {created or 'none'}, already there {kept or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
