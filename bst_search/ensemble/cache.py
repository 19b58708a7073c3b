"""The artifact cache: a FINISHED run's artifacts, fetched once into ``<cache>/<run_id>/``.

A FINISHED run's artifacts never change, so a second coordinator on the same sweep touches
neither the tracking server nor its artifact store.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from bst_search.tracking.schema import CONFIG_FILE, EVAL_FILE, HOLDOUT_FILE, OOF_FILE

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# what the coordinator reads of a trial run; the order is the manifest's (see fetch_artifacts)
ARTIFACTS: tuple[str, ...] = (OOF_FILE, EVAL_FILE, HOLDOUT_FILE, CONFIG_FILE)
_MANIFEST = "manifest.json"


def fetch_artifacts(client: MlflowClient, run_id: str, cache_root: Path,
                    tracking_uri: str) -> dict[str, Path | None]:
    """Local paths of a run's artifacts, downloading them only on the first call.

    The cache entry is written under a temporary name and renamed when complete, with a
    manifest of which artifacts the run has, so a crash never leaves a half entry that
    looks whole and a second invocation touches neither the store nor the network.
    """
    import mlflow.artifacts

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # ours counts runs
    entry = cache_root / run_id
    manifest = entry / _MANIFEST
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        # an entry written before holdout.parquet was looked for names the other three
        if set(saved.get("looked_for", ARTIFACTS[:2] + ARTIFACTS[3:])) >= set(ARTIFACTS):
            present = set(saved["present"])
            return {name: (entry / name if name in present else None) for name in ARTIFACTS}
        # an entry from before an artifact was added to ARTIFACTS: fetched again below
    cache_root.mkdir(parents=True, exist_ok=True)
    names = {f.path for f in client.list_artifacts(run_id)}
    tmp = cache_root / f".{run_id}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    present = []
    for name in ARTIFACTS:
        if name in names:
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name,
                                                dst_path=str(tmp), tracking_uri=tracking_uri)
            present.append(name)
    (tmp / _MANIFEST).write_text(json.dumps({"run_id": run_id, "present": present,
                                             "looked_for": list(ARTIFACTS)}))
    shutil.rmtree(entry, ignore_errors=True)  # a half entry left by a crash
    try:
        os.replace(tmp, entry)
    except OSError:  # another coordinator finished the same entry first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not manifest.is_file():
            raise
    return {name: (entry / name if name in present else None) for name in ARTIFACTS}
