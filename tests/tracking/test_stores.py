"""Opening a sweep's stores for a viewer: read-only where the store allows it, and said so."""

from __future__ import annotations

import uuid

import pytest

from bst_search.tracking import stores
from bst_search.tracking.stores import read_only_sqlite, viewer_url


def test_sqlite_is_opened_read_only_whatever_its_url():
    assert viewer_url("sqlite:////x/optuna.db") == ("sqlite:///file:/x/optuna.db?mode=ro&uri=true", True)
    # a query of its own is kept, and a mode of its own cannot make it writable
    assert viewer_url("sqlite:////x/o.db?timeout=5")[0] == "sqlite:///file:/x/o.db?mode=ro&uri=true&timeout=5"
    assert viewer_url("sqlite:///file:/x/o.db?mode=rw&uri=true")[0] == \
        "sqlite:///file:/x/o.db?mode=ro&uri=true"
    assert read_only_sqlite("postgresql://u@h/db") == "postgresql://u@h/db"


def test_postgres_sessions_are_read_only_and_keep_their_options():
    url, read_only = viewer_url("postgresql+psycopg://bst:p%40ss@db:5432/optuna")
    assert read_only
    assert url == ("postgresql+psycopg://bst:p%40ss@db:5432/optuna"
                   "?options=-c%20default_transaction_read_only%3Don")
    url, _ = viewer_url("postgresql://u@h/db?sslmode=require&options=-c%20statement_timeout%3D5s")
    assert url == ("postgresql://u@h/db?sslmode=require"
                   "&options=-c%20statement_timeout%3D5s%20-c%20default_transaction_read_only%3Don")


@pytest.mark.parametrize("url", ["mysql+pymysql://u:pw@h/db", "file:///x/mlruns", "sqlite://",
                                 "http://h:5000"])
def test_other_stores_are_handed_over_writable(url):
    assert viewer_url(url) == (url, False)


@pytest.mark.postgres
def test_a_write_through_the_viewer_url_fails():
    """The same database, the same role: the plain URL writes, the viewer's URL cannot (DDL,
    DML, and Optuna's delete_study, which optuna-dashboard offers)."""
    import optuna
    import psycopg
    import sqlalchemy as sa

    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        psycopg.connect(admin, connect_timeout=3).close()
    except psycopg.OperationalError as e:
        pytest.skip(f"PostgreSQL at {admin} is not reachable: {e}")
    db = f"bst_viewer_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db}"')
    plain = f"postgresql+psycopg://postgres:not-checked@127.0.0.1:5432/{db}"
    engines = []
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna.create_study(study_name="rep", storage=plain).optimize(
            lambda t: t.suggest_float("x", 0, 1), n_trials=1)
        writer = sa.create_engine(plain)
        engines.append(writer)
        with writer.begin() as c:
            c.execute(sa.text("CREATE TABLE probe (x int)"))
            c.execute(sa.text("INSERT INTO probe VALUES (1)"))
        url, read_only = viewer_url(plain)
        assert read_only
        viewer = sa.create_engine(url)
        engines.append(viewer)
        with viewer.connect() as c:
            assert c.execute(sa.text("SELECT count(*) FROM probe")).scalar() == 1
            assert c.execute(sa.text("SHOW default_transaction_read_only")).scalar() == "on"
        for statement in ("CREATE TABLE other (x int)", "INSERT INTO probe VALUES (2)",
                          "DELETE FROM probe"):
            with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
                with viewer.begin() as c:
                    c.execute(sa.text(statement))
        with pytest.raises(optuna.exceptions.StorageInternalError) as err:
            optuna.delete_study(study_name="rep", storage=url)
        assert "read-only transaction" in str(err.value.__cause__)
        assert optuna.get_all_study_names(plain) == ["rep"]
        with writer.connect() as c:
            assert c.execute(sa.text("SELECT count(*) FROM probe")).scalar() == 1
    finally:
        for e in engines:
            e.dispose()
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def test_check_store_masks_the_password():
    with pytest.raises(stores.StoreError) as err:
        stores.check_store("http://bst:s3cret-pw@127.0.0.1:1")
    assert "s3cret-pw" not in str(err.value) and "bst:***@127.0.0.1:1" in str(err.value)
