"""Reading ``<root>/features/<backbone>_embeddings/<id>.npy`` fast and strictly.

A dataset is thousands of tiny files, so the reader is built around two facts: opening and
reading a file is cheap next to ``np.load``'s per-call header parsing, and nearly every file
of a backbone has the same header. Files are read raw in a thread pool, the header is parsed
once per distinct header, and the payload becomes an array with ``np.frombuffer``. Anything
unusual falls back to ``np.load`` so that odd-but-valid files still load and broken ones
produce a reason.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bst_search.config import is_text_backbone  # noqa: F401 - the data layer's name for it
from bst_search.data.errors import list_ids

FEATURES_DIR = "features"
SUFFIX = "_embeddings"
_MAGIC = b"\x93NUMPY"
_CHUNK = 256


def discover_backbones(root: Path) -> list[str]:
    """Backbone names from the ``features/*_embeddings/`` folders of a dataset, sorted."""
    folder = Path(root) / FEATURES_DIR
    if not folder.is_dir():
        return []
    return sorted(e.name[: -len(SUFFIX)] for e in os.scandir(folder)
                  if e.is_dir() and e.name.endswith(SUFFIX) and len(e.name) > len(SUFFIX))


def backbone_dir(root: Path, name: str) -> Path:
    return Path(root) / FEATURES_DIR / f"{name}{SUFFIX}"


def scan(folder: Path) -> dict[str, tuple[int, int]]:
    """``{file name: (size, mtime_ns)}`` of the ``.npy`` files in a folder, from stat only.

    This is the cheap half of the cache key: it notices any added, removed, resized or
    touched file without reading a byte of content.
    """
    out: dict[str, tuple[int, int]] = {}
    with os.scandir(folder) as it:
        for e in it:
            if e.name.endswith(".npy") and e.is_file():
                st = e.stat()
                out[e.name] = (st.st_size, st.st_mtime_ns)
    return out


def _parse_npy(data: bytes, headers: dict[bytes, tuple[np.dtype, tuple[int, ...]]]
               ) -> np.ndarray | str:
    """The array in ``data``, or a short reason why it is not a readable numeric vector."""
    if not data:
        return "zero-byte file"
    if len(data) < 10 or not data.startswith(_MAGIC):
        return "not a .npy file (bad magic bytes)"
    major = data[6]
    if major == 1:
        start = 10 + int.from_bytes(data[8:10], "little")
    elif major in (2, 3):
        start = 12 + int.from_bytes(data[8:12], "little") if len(data) >= 12 else len(data) + 1
    else:
        return f"unsupported .npy format version {major}"
    if start > len(data):
        return "truncated .npy header"
    header = data[:start]
    info = headers.get(header)
    if info is not None:
        dtype, shape = info
        count = int(np.prod(shape))
        if len(data) - start < count * dtype.itemsize:
            return f"truncated: {len(data) - start} data bytes, expected {count * dtype.itemsize}"
        return np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape)
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any failure here means "unreadable", with its reason
        return f"unreadable ({type(e).__name__}: {e})"
    if not isinstance(arr, np.ndarray):
        return "not a single array"
    if arr.dtype.kind in "fiu" and (arr.ndim <= 1 or (arr.ndim == 2 and arr.shape[0] == 1)):
        headers[header] = (arr.dtype, arr.shape)  # C and Fortran order agree for these shapes
    return arr


def _check_vector(arr: np.ndarray) -> str | None:
    if arr.dtype.kind not in "fiu":
        return f"not a real numeric array (dtype {arr.dtype})"
    if arr.size == 0:
        return "empty array"
    if sum(s > 1 for s in arr.shape) > 1 or arr.ndim == 0:
        return f"not a vector (shape {arr.shape})"
    return None


def read_files(paths: Sequence[str], *, workers: int | None = None,
               on_progress: Callable[[int], None] | None = None) -> list[np.ndarray | str]:
    """Read many ``.npy`` files in a thread pool; each result is an array or a reason."""
    headers: dict[bytes, tuple[np.dtype, tuple[int, ...]]] = {}

    def work(chunk: Sequence[str]) -> list[np.ndarray | str]:
        res: list[np.ndarray | str] = []
        for p in chunk:
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except OSError as e:
                res.append(f"cannot be read ({e.strerror or e})")
                continue
            res.append(_parse_npy(data, headers))
        return res

    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    out: list[np.ndarray | str] = []
    if not chunks:
        return out
    workers = workers or min(16, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=min(workers, len(chunks))) as ex:
        for chunk, res in zip(chunks, ex.map(work, chunks), strict=True):
            out.extend(res)
            if on_progress is not None:
                on_progress(len(chunk))
    return out


@dataclass
class BackboneResult:
    """One backbone's rows in metadata order: a matrix (zeros where missing) and findings."""

    name: str
    folder: Path
    matrix: np.ndarray | None
    missing: np.ndarray  # bool mask over the metadata rows
    problems: list[str] = field(default_factory=list)


def load_backbone(name: str, folder: Path, ids: np.ndarray, listing: dict[str, tuple[int, int]],
                  *, on_progress: Callable[[int], None] | None = None) -> BackboneResult:
    """Read and validate one backbone for the given ids; collect every problem found."""
    files = [f"{i}.npy" for i in ids]
    missing = np.array([f not in listing for f in files], dtype=bool)
    present = np.flatnonzero(~missing)
    res = BackboneResult(name=name, folder=folder, matrix=None, missing=missing)
    where = f"{folder}"
    arrays = read_files([os.path.join(folder, files[i]) for i in present],
                        on_progress=on_progress)
    zero_byte: list[str] = []
    unreadable: list[str] = []
    shape_bad: list[str] = []
    vectors: dict[int, np.ndarray] = {}
    for i, arr in zip(present, arrays, strict=True):
        if isinstance(arr, str):
            if arr == "zero-byte file":
                zero_byte.append(files[i])
            else:
                unreadable.append(f"{files[i]} ({arr})")
            continue
        why = _check_vector(arr)
        if why:
            shape_bad.append(f"{ids[i]} ({why})")
        else:
            vectors[int(i)] = arr.reshape(-1)
    if zero_byte:
        res.problems.append(f"{where}: zero-byte .npy files (empty embeddings), "
                            f"{list_ids(zero_byte, 'file')}")
    if unreadable:
        res.problems.append(f"{where}: unreadable .npy files, {list_ids(unreadable, 'file')}")
    if shape_bad:
        res.problems.append(f"{where}: embeddings that are not numeric vectors, "
                            f"{list_ids(shape_bad)}")
    if not vectors:
        return res
    dims = Counter(v.shape[0] for v in vectors.values())
    dim = dims.most_common(1)[0][0]
    odd = [i for i, v in vectors.items() if v.shape[0] != dim]
    if odd:
        shown = [f"{ids[i]} (dim {vectors[i].shape[0]})" for i in odd]
        res.problems.append(f"{where}: inconsistent embedding dimension: {len(vectors) - len(odd)}"
                            f" files have dim {dim} but {list_ids(shown)}")
    mat = np.zeros((len(ids), dim), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for i, v in vectors.items():
            if v.shape[0] == dim:
                mat[i] = v
    rows = np.array([i for i in vectors if vectors[i].shape[0] == dim], dtype=np.int64)
    finite = np.isfinite(mat[rows]).all(axis=1)
    if not finite.all():
        bad = [ids[i] for i in np.sort(rows[~finite])]
        res.problems.append(f"{where}: NaN or Inf values (after conversion to float32) in "
                            f"{list_ids(bad)}")
    res.matrix = mat
    return res
