"""Where Ray Tune keeps a sweep's experiment state and trial checkpoints.

On one machine that is a folder; on a cluster every node must write there, so it is an
object store (``s3://``, ``gs://``) or a file system that every node mounts (NFS, or all
nodes on one machine). A driver folder that workers cannot reach makes every trial on another
node fail at its first checkpoint, after all retries, so with ``--address`` a local path is
refused before any trial starts unless ``--shared-fs`` says every node mounts it.

``s3://bucket/prefix?endpoint_override=http://host:port`` talks to an S3-compatible server
(MinIO, moto, Ceph); without the query, ``$AWS_ENDPOINT_URL_S3`` or ``$AWS_ENDPOINT_URL`` is
used when set. Credentials are never part of the URI: pyarrow reads them from the standard
AWS environment variables, files or instance role on each node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

OBJECT_STORES = ("s3", "gs", "gcs")
S3_QUERY_KEYS = ("endpoint_override", "region", "scheme")


class StorageError(ValueError):
    """A Tune storage URI that cannot work for this sweep; the message names the flag."""


@dataclass(frozen=True)
class TuneStorage:
    """A resolved Tune storage: what to pass to ``RunConfig``/``Tuner.restore``."""

    uri: str  # as given (or the default folder), without secrets; identifies the storage
    path: str  # storage_path for Ray: a local path, or "bucket/prefix" with ``filesystem``
    filesystem: Any = None  # a pyarrow FileSystem (s3), or None (Ray resolves path itself)
    shared: bool = True  # every node can write there

    def experiment(self, name: str) -> str:
        """Path (for Ray, with :attr:`filesystem`) of the Tune experiment ``name``."""
        return f"{self.path.rstrip('/')}/{name}"


def _s3(uri: str) -> TuneStorage:
    from pyarrow import fs

    parts = urlsplit(uri)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - set(S3_QUERY_KEYS))
    if unknown:
        raise StorageError(f"--tune-storage {uri}: unknown query key {unknown[0]!r} "
                           f"({', '.join(S3_QUERY_KEYS)})")
    if not parts.netloc:
        raise StorageError(f"--tune-storage {uri}: no bucket (s3://BUCKET/prefix)")
    endpoint = (query.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL"))
    kwargs: dict[str, Any] = {}
    if endpoint:
        ep = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        kwargs.update(endpoint_override=ep.netloc, scheme=query.get("scheme", ep.scheme or "https"))
    if query.get("region"):
        kwargs["region"] = query["region"]
    path = f"{parts.netloc}{parts.path}".rstrip("/")
    return TuneStorage(uri=uri, path=path, filesystem=fs.S3FileSystem(**kwargs), shared=True)


def resolve(uri: str, *, cluster: bool, shared_fs: bool) -> TuneStorage:
    """Check and resolve a ``--tune-storage`` value.

    ``cluster`` is true when the driver joins an existing cluster (``--address``); a local
    path (plain or ``file://``) is then refused unless ``shared_fs`` is set.
    """
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
    if scheme == "s3":
        return _s3(uri)
    if scheme in ("gs", "gcs"):
        if not urlsplit(uri).netloc:
            raise StorageError(f"--tune-storage {uri}: no bucket (gs://BUCKET/prefix)")
        return TuneStorage(uri=uri, path=uri, filesystem=None, shared=True)
    if scheme not in ("", "file"):
        raise StorageError(f"--tune-storage {uri}: unsupported scheme {scheme!r} "
                           "(s3://, gs://, file:// or a path)")
    local = Path(urlsplit(uri).path if scheme == "file" else uri).expanduser().resolve()
    if cluster and not shared_fs:
        raise StorageError(
            f"--tune-storage {local} is a local folder, but --address joins a cluster "
            "whose other nodes cannot write there: pass --tune-storage s3://... or gs://..., "
            "or --shared-fs if every node mounts this path (NFS, or all nodes on one machine)")
    return TuneStorage(uri=local.as_uri(), path=str(local), filesystem=None, shared=shared_fs or not cluster)
