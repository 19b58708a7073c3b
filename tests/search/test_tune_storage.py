"""Tune storage URIs: object stores on any cluster, a local folder only where every node mounts it."""

from __future__ import annotations

import pytest
from pyarrow import fs

from bst_search.search.storage import StorageError, resolve


def _options(f: fs.S3FileSystem) -> dict:
    """The options a pickled S3FileSystem carries to the workers (no credentials here)."""
    return f.__reduce__()[1][0]


def test_s3_with_endpoint_override_builds_a_pyarrow_filesystem(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    st = resolve("s3://bucket/sweeps?endpoint_override=http://127.0.0.1:9000", cluster=True,
                 shared_fs=False)
    assert isinstance(st.filesystem, fs.S3FileSystem)
    opts = _options(st.filesystem)
    assert (opts["endpoint_override"], opts["scheme"]) == ("127.0.0.1:9000", "http")
    assert opts["access_key"] is None and opts["secret_key"] is None
    assert st.path == "bucket/sweeps" and st.experiment("x") == "bucket/sweeps/x"


def test_s3_endpoint_from_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://localhost:5555")
    st = resolve("s3://b/p", cluster=True, shared_fs=False)
    assert _options(st.filesystem)["endpoint_override"] == "localhost:5555"


def test_gs_is_accepted_on_a_cluster():
    st = resolve("gs://bucket/prefix", cluster=True, shared_fs=False)
    assert st.shared and st.path == "gs://bucket/prefix"


@pytest.mark.parametrize("uri", ["/tmp/x/tune", "file:///tmp/x/tune"])
def test_local_storage_with_address_is_refused_unless_shared(uri):
    with pytest.raises(StorageError) as e:
        resolve(uri, cluster=True, shared_fs=False)
    assert "--tune-storage" in str(e.value) and "--shared-fs" in str(e.value)
    ok = resolve(uri, cluster=True, shared_fs=True)
    assert ok.path == "/tmp/x/tune" and ok.filesystem is None
    assert resolve(uri, cluster=False, shared_fs=False).path == "/tmp/x/tune"


@pytest.mark.parametrize("uri,needle", [("hdfs://nn/x", "unsupported scheme"),
                                        ("s3://b/p?endpoint=x", "unknown query key"),
                                        ("s3:///nobucket", "no bucket")])
def test_bad_uris_are_refused_with_the_flag(uri, needle):
    with pytest.raises(StorageError, match=needle):
        resolve(uri, cluster=False, shared_fs=False)
