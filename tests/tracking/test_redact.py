"""Secrets in URLs never reach what is printed or logged."""

from __future__ import annotations

from bst_search.tracking.redact import mask_text, mask_url


def test_mask_url_hides_the_password_only():
    assert mask_url("postgresql+psycopg://bst:s3cret@db:5432/optuna") == \
        "postgresql+psycopg://bst:***@db:5432/optuna"
    assert mask_url("sqlite:////tmp/optuna.db") == "sqlite:////tmp/optuna.db"
    assert mask_url("http://host:5000") == "http://host:5000"
    assert mask_url("s3://b/p?endpoint_override=x&secret_key=abc") == \
        "s3://b/p?endpoint_override=x&secret_key=***"


def test_mask_text_replaces_a_password_wherever_it_appears():
    url = "postgresql://u:pa55word@h/db"
    assert "pa55word" not in mask_text("could not connect to u:pa55word@h (pa55word)", url)
