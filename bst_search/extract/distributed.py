"""The Ray Data path of ``bst-search extract``.

ids -> ``map_batches(decode_batch)`` in CPU tasks (decoding, resampling, bad-audio policy)
-> ``map_batches(EmbedActor, concurrency=workers)``: an actor pool, one model per actor
loaded once, ``num_gpus=1`` per actor with ``--device cuda`` -> the driver writes each
batch durably as results stream back (so resume works exactly as in-process). Ray Data
shows its own progress bars (rows/s per stage). With ``--address auto`` it joins the running
cluster; with ``--address local`` it starts a private local Ray for the job; if Ray is already
initialised in this process (tests), that instance is used.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from bst_search.extract.backbones import BACKBONES, Backbone, BackboneOptions
from bst_search.extract.records import Record, embed_records, prepare, prepare_text


def decode_batch(batch: dict[str, np.ndarray], rate: int, policy: str, text: bool) -> dict[str, np.ndarray]:
    """CPU task: one :class:`Record` per row, waveforms as float32 bytes (ragged-safe)."""
    recs = [prepare_text(str(i), str(t)) if text else
            prepare(str(i), str(p) or None, rate, policy)
            for i, p, t in zip(batch["id"], batch["path"], batch["text"], strict=True)]
    return {
        "id": np.array([r.id for r in recs], dtype=object),
        "action": np.array([r.action for r in recs], dtype=object),
        "item": np.array([(r.item.tobytes() if isinstance(r.item, np.ndarray) else
                           (r.item or "").encode()) for r in recs], dtype=object),
        "problems": np.array([json.dumps(r.problems) for r in recs], dtype=object),
    }


class EmbedActor:
    """One loaded backbone per actor; called on batches of decoded records."""

    def __init__(self, name: str, options: BackboneOptions, spec: dict[str, Any]) -> None:
        self.model: Backbone = BACKBONES.lookup(name)(options, spec)
        self.text = self.model.modality == "text"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        recs = []
        for i, a, it, p in zip(batch["id"], batch["action"], batch["item"], batch["problems"], strict=True):
            item: np.ndarray | str | None = None
            if a == "embed":
                item = bytes(it).decode() if self.text else np.frombuffer(bytes(it), dtype=np.float32)
            recs.append(Record(str(i), str(a), item, json.loads(str(p))))
        vecs = embed_records(self.model, recs)
        dim = self.model.dim
        return {"id": np.array([r.id for r in recs], dtype=object),
                "has_vec": np.array([v is not None for v in vecs]),
                "vec": np.stack([v if v is not None else np.zeros(dim, np.float32) for v in vecs]),
                "problems": np.array([json.dumps(r.problems) for r in recs], dtype=object)}


def run_on_ray(job: Any, cls: type[Backbone], spec: dict[str, Any], todo: list[str],
               paths: dict[str, str | None], texts: dict[str, str], on_batch: Any) -> None:
    import ray
    import ray.data

    if not ray.is_initialized():
        if job.address == "local":
            ray.init(address="local", include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=job.address, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(job.progress)
    text = cls.modality == "text"
    bs = max(1, job.options.batch_size)
    rows = [{"id": i, "path": paths.get(i) or "", "text": texts.get(i, "") if text else ""}
            for i in todo]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // bs, 200)))
    ds = ds.map_batches(decode_batch, batch_size=bs, batch_format="numpy", num_cpus=1,
                        fn_kwargs={"rate": int(spec["sample_rate"] or 0),
                                   "policy": job.on_bad_audio, "text": text})
    dev = str(job.options.device)
    gpus = 1 if dev.startswith("cuda") or (dev == "auto" and ray.cluster_resources().get("GPU", 0)) else 0
    ds = ds.map_batches(EmbedActor, batch_size=bs, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=max(1, int(job.workers))),
                        num_gpus=gpus,
                        num_cpus=job.cpus_per_worker,
                        fn_constructor_kwargs={"name": cls.name, "options": job.options, "spec": spec})
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        on_batch([(str(i), np.asarray(v, np.float32) if has else None, json.loads(str(p)))
                  for i, has, v, p in zip(batch["id"], batch["has_vec"], batch["vec"],
                                          batch["problems"], strict=True)])
