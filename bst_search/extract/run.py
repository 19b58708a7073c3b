"""``bst-search extract``: dataset in, ``features/<backbone>_embeddings/<id>.npy`` out.

For each backbone: resolve it (checkpoint identity, settings), compare with the folder's
manifest (same identity resumes, a different one is refused unless ``--overwrite``), check
every id has audio (missing audio is an error naming the ids, unless ``skip``), under
``--on-bad-audio error`` decode everything once before writing anything, then embed the ids
not written yet, in-process or on Ray Data. Every vector is written atomically and after
its problem record (:mod:`bst_search.extract.writer`), so a kill leaves whole files only, each
with its record, and a re-run picks up where it stopped. SIGTERM and SIGINT stop between
batches (:mod:`bst_search.extract.stopping`).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bst_search.data.errors import list_ids
from bst_search.data.features import backbone_dir
from bst_search.extract import manifest as mf
from bst_search.extract.audio import POLICIES, index_audio
from bst_search.extract.backbones import BACKBONES, Backbone, BackboneOptions
from bst_search.extract.errors import ExtractError, ExtractInterrupted
from bst_search.extract.inputs import TEXT_FIELDS, Items, read_items
from bst_search.extract.records import Record, embed_records, prepare, prepare_text
from bst_search.extract.stopping import StopOnSignals
from bst_search.extract.writer import OnBatch, Result, Writer


@dataclass
class ExtractJob:
    """One ``bst-search extract`` invocation."""

    root: Path
    backbones: list[str]
    options: BackboneOptions = field(default_factory=BackboneOptions)
    checkpoints: dict[str, Path] = field(default_factory=dict)  # per backbone, over options.checkpoint
    audio_dir: Path | None = None
    on_bad_audio: str = "silence"
    limit: int | None = None
    overwrite: bool = False
    address: str | None = None     # None: in-process; "auto" / "local" / ray://...: Ray Data
    workers: int = 1               # Ray actors (one model each)
    cpus_per_worker: float = 1.0
    progress: bool = True
    log: Callable[[str], None] = print


def _written(folder: Path) -> set[str]:
    """Ids already written; stale temporary files of a killed run are removed."""
    out = set()
    for e in os.scandir(folder):
        if e.name.endswith(".tmp") and e.name.startswith("."):
            Path(e.path).unlink(missing_ok=True)
        elif e.name.endswith(".npy"):
            out.add(e.name[:-4])
    return out


def _check_folder(folder: Path, ident: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """May this run add to ``folder``? Returns the problems recorded by earlier runs, the
    journal's included (none when ``overwrite``: the folder is cleared later, once every check
    has passed)."""
    if overwrite or not folder.is_dir():
        return {}
    old = mf.read(folder)
    if old is None:
        if any(n.endswith(".npy") for n in os.listdir(folder)):
            raise ExtractError(f"{folder}: holds .npy files but no {mf.MANIFEST}, so they were "
                               f"not written by bst-search extract; pass --overwrite to replace them")
        return {}
    diff = mf.differences(old.get("identity", {}), ident)
    if diff:
        raise ExtractError(f"{folder}: was written with other settings ({'; '.join(diff[:4])}); "
                           f"pass --overwrite to replace it, or write elsewhere")
    return mf.recorded_problems(folder, old)


def _clear(folder: Path) -> None:
    for n in os.listdir(folder):
        if n.endswith(".npy") or n in (mf.MANIFEST, mf.JOURNAL):
            (folder / n).unlink()


def _counts(ids: Sequence[str], written: set[str], problems: dict[str, dict[str, str]]) -> dict[str, Any]:
    kinds: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    for i in ids:
        for k, v in problems.get(i, {}).items():
            if k == "action":
                actions[v.split(":")[0]] += 1
            else:
                kinds[k] += 1
    return {"ids": len(ids), "written": sum(i in written for i in ids),
            "problems": dict(sorted(kinds.items())), "actions": dict(sorted(actions.items()))}


def run_extract(job: ExtractJob) -> dict[str, dict[str, Any]]:
    """Run every requested backbone; returns ``{backbone: manifest}``."""
    if job.on_bad_audio not in POLICIES:
        raise ExtractError(f"--on-bad-audio {job.on_bad_audio!r}: expected one of {', '.join(POLICIES)}")
    classes = [BACKBONES.lookup(b) for b in job.backbones]
    if job.options.checkpoint is not None and not any(c.needs_checkpoint for c in classes):
        raise ExtractError(f"--checkpoint {job.options.checkpoint}: none of {', '.join(job.backbones)} "
                           f"takes a plain checkpoint (minilm_text=DIR gives MiniLM another folder)")
    for name in job.checkpoints:
        if name not in job.backbones:
            raise ExtractError(f"--checkpoint {name}=...: {name} is not among --backbone "
                               f"{', '.join(job.backbones)}")
    if len(set(job.backbones)) != len(job.backbones):
        raise ExtractError(f"--backbone given twice: {', '.join(job.backbones)}")
    items = read_items(Path(job.root), job.limit)
    index: dict[str, Path] | None = None
    out = {}
    with StopOnSignals() as stop:
        for cls in classes:
            if cls.modality == "audio" and index is None:
                index = index_audio(Path(job.audio_dir) if job.audio_dir else Path(job.root) / "audio")
            out[cls.name] = _extract_one(job, cls, items, index or {}, stop)
    return out


def _extract_one(job: ExtractJob, cls: type[Backbone], items: Items,
                 index: dict[str, Path], stop: StopOnSignals) -> dict[str, Any]:
    t0 = time.perf_counter()
    ckpt = job.checkpoints.get(cls.name, job.options.checkpoint if cls.needs_checkpoint else None)
    job = dataclasses.replace(job, options=dataclasses.replace(job.options, checkpoint=ckpt))
    spec = cls.resolve(job.options)
    audio = cls.modality == "audio"
    ident = mf.identity(spec, None if audio else list(TEXT_FIELDS), job.on_bad_audio if audio else None)
    folder = backbone_dir(Path(job.root), cls.name)
    problems: dict[str, dict[str, str]] = _check_folder(folder, ident, job.overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    done = set() if job.overwrite else _written(folder)
    todo = [i for i in items.ids if i not in done]  # skipped ids are retried: maybe fixed now
    paths = {i: (str(index[i]) if i in index else None) for i in todo} if audio else {}
    texts = dict(zip(items.ids, items.texts, strict=True))

    if audio:
        missing = [i for i in todo if paths[i] is None]
        if missing and job.on_bad_audio != "skip":
            raise ExtractError(f"no audio file for {list_ids(missing)} under "
                               f"{job.audio_dir or Path(job.root) / 'audio'} (.wav .flac .ogg .mp3); "
                               f"use --on-bad-audio skip to leave them out")
        if job.on_bad_audio == "error":
            _preflight(job, cls, todo, paths)
    if job.overwrite:  # only now: a refused run leaves the old folder as it was
        _clear(folder)

    man: dict[str, Any] = {
        "identity": ident, "backbone": cls.name, "dataset": items.name,
        "metadata": str(items.path), "checkpoint": spec["checkpoint"], "settings": spec["settings"],
        "sample_rate": spec["sample_rate"], "dim": spec["dim"],
        "text_fields": None if audio else list(TEXT_FIELDS), "on_bad_audio": job.on_bad_audio,
        "status": "running", "problems": problems,
    }
    writer = Writer(folder, man)
    job.log(f"{cls.name}: {len(items.ids)} ids, {len(items.ids) - len(todo)} already written, "
            f"{len(todo)} to do -> {folder}")

    def on_batch(results: Sequence[Result]) -> None:
        writer.add(results)
        stop.ensure()
        stop.check()

    def finish(status: str) -> None:
        elapsed = time.perf_counter() - t0
        writer.close(status=status, counts=_counts(items.ids, _written(folder), writer.problems),
                     last_run={"written": writer.written, "seconds": round(elapsed, 2),
                               "clips_per_s": round(writer.written / elapsed, 2) if elapsed else None,
                               "path": "ray" if job.address else "in-process"})

    try:
        if todo:
            stop.check()  # a signal while the folder was checked
            if job.address:
                from bst_search.extract.distributed import run_on_ray
                run_on_ray(job, cls, spec, todo, paths, texts, on_batch)
            else:
                _run_in_process(job, cls, spec, todo, paths, texts, on_batch)
    except (ExtractInterrupted, KeyboardInterrupt):
        finish("interrupted")
        c = man["counts"]
        raise ExtractInterrupted(stop.signum or signal.SIGINT,
                                 f"{c['written']}/{c['ids']} ids of {cls.name} written in "
                                 f"{folder}") from None
    finish("complete")
    return man


def _preflight(job: ExtractJob, cls: type[Backbone], todo: list[str], paths: dict[str, str | None]) -> None:
    """``--on-bad-audio error``: decode everything first, so that a bad clip stops the run
    before a single file is written."""
    from tqdm import tqdm

    with ThreadPoolExecutor(2) as pool:
        it = pool.map(lambda i: prepare(i, paths[i], 0, "skip"), todo)
        bad = [r for r in tqdm(it, total=len(todo), desc="checking audio", unit="clip",
                               disable=not job.progress) if r.action != "embed"]
    if bad:
        lines = [f"  {r.id} ({paths[r.id]}): " + "; ".join(f"{k}: {v}" for k, v in r.problems.items()
                                                          if k != "action") for r in bad[:10]]
        raise ExtractError(f"{len(bad)} bad audio files, nothing written (--on-bad-audio error):\n"
                           + "\n".join(lines))


def _run_in_process(job: ExtractJob, cls: type[Backbone], spec: dict[str, Any], todo: list[str],
                    paths: dict[str, str | None], texts: dict[str, str], on_batch: OnBatch) -> None:
    """One model in this process; the next batch is decoded on two threads while this one runs."""
    from tqdm import tqdm

    model = cls(job.options, spec)
    rate = int(spec["sample_rate"] or 0)
    bs = max(1, job.options.batch_size)
    chunks = [todo[s:s + bs] for s in range(0, len(todo), bs)]

    def load(chunk: list[str], pool: ThreadPoolExecutor) -> list[Record]:
        if cls.modality == "text":
            return [prepare_text(i, texts[i]) for i in chunk]
        return list(pool.map(lambda i: prepare(i, paths[i], rate, job.on_bad_audio), chunk))

    with ThreadPoolExecutor(2) as decoders, ThreadPoolExecutor(1) as ahead, \
            tqdm(total=len(todo), desc=cls.name, unit="clip" if cls.modality == "audio" else "text",
                 disable=not job.progress) as bar:
        nxt = ahead.submit(load, chunks[0], decoders)
        for k in range(len(chunks)):
            records = nxt.result()
            if k + 1 < len(chunks):
                nxt = ahead.submit(load, chunks[k + 1], decoders)
            on_batch([(r.id, v, r.problems)
                      for r, v in zip(records, embed_records(model, records), strict=True)])
            bar.update(len(records))


def summary_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """What the command prints at the end: counts, problems and actions per backbone."""
    lines = []
    for name, m in results.items():
        c, r = m["counts"], m["last_run"]
        lines.append(f"{name}: {c['written']}/{c['ids']} ids written ({r['written']} this run in "
                     f"{r['seconds']:.1f}s with model loading, {r['clips_per_s'] or 0:.1f}/s, {r['path']})")
        if c["problems"]:
            lines.append("  problems: " + ", ".join(f"{k}={v}" for k, v in c["problems"].items()))
        if c["actions"]:
            lines.append("  bad audio: " + ", ".join(f"{k}={v}" for k, v in c["actions"].items()))
    return lines
