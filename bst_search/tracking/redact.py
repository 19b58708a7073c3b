"""Secrets in URLs: masked in everything printed or logged.

Database and server URLs may carry a password (``postgresql+psycopg://user:pw@host/db``).
The driver receives them through the environment (``BST_OPTUNA_STORAGE``, ``PGPASSWORD``,
``MLFLOW_TRACKING_PASSWORD``) or the command line, and from then on only the masked form
leaves the process: printed lines, the sweep identity kept in shared state, MLflow tags.
"""

from __future__ import annotations

import re

MASK = "***"
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@]*):(?P<pw>[^@/]*)@")


def mask_url(url: str | None) -> str:
    """``url`` with the password of its user-info replaced by ``***`` (query secrets too)."""
    if not url:
        return url or ""
    out = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", url)
    return re.sub(r"(?i)([?&](?:password|passwd|secret|token|secret_key|access_key)=)[^&]*",
                  rf"\g<1>{MASK}", out)


def mask_text(text: str, *urls: str | None) -> str:
    """``text`` with every given URL's password replaced, wherever it appears."""
    for url in urls:
        m = _USERINFO.match(url or "")
        if m and m["pw"]:
            text = text.replace(m["pw"], MASK)
    return text
