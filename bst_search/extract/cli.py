"""Arguments and entry point of ``bst-search extract``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bst_search.extract.audio import POLICIES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset root (metadata/<NAME>_metadata.csv)")
    p.add_argument("--backbone", action="append", required=True, metavar="NAME",
                   help="clap_audio, clap_text, panns, minilm_text (repeatable)")
    p.add_argument("--audio-dir", help="where <id>.wav|flac|ogg|mp3 are (searched recursively); "
                   "default ROOT/audio")
    p.add_argument("--checkpoint", action="append", default=[], metavar="[BACKBONE=]PATH",
                   help="model checkpoint (CLAP .pt, PANNs .pth); a plain PATH is for every "
                   "backbone that needs one, BACKBONE=PATH for one backbone (repeatable; "
                   "minilm_text=DIR: another sentence-transformers folder)")
    p.add_argument("--text-model-dir", help="local roberta-base folder (clap_text)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="backbone setting, e.g. amodel=HTSAT-base, fusion=true (checked "
                   "against the checkpoint)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--batch-size", type=int, default=16, help="clips (texts) per model call")
    p.add_argument("--address", help="run on Ray Data: 'auto' (running cluster) or 'local' "
                   "(a private local Ray); default: in this process")
    p.add_argument("--workers", type=int, default=1, help="Ray actors, one model each")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--on-bad-audio", choices=POLICIES, default="silence",
                   help="silence: embed a zero waveform (default); zero: zero vector; "
                   "skip: no file; error: stop before writing anything")
    p.add_argument("--limit", type=int, help="only the first N ids of the metadata")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a folder written with other settings")
    p.add_argument("--allow-random-weights", action="store_true",
                   help="accept test checkpoints with random weights (tests, demos)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _settings(pairs: list[str]) -> dict[str, str]:
    from bst_search.extract.errors import ExtractError

    out = {}
    for s in pairs:
        k, sep, v = s.partition("=")
        if not sep or not k.strip():
            raise ExtractError(f"--set {s!r}: expected KEY=VALUE")
        out[k.strip()] = v.strip()
    return out


def _checkpoints(values: list[str]) -> tuple[Path | None, dict[str, Path]]:
    """``--checkpoint`` values: one plain PATH (the default) and ``BACKBONE=PATH`` entries."""
    from bst_search.extract.backbones import BACKBONES
    from bst_search.extract.errors import ExtractError

    default: Path | None = None
    named: dict[str, Path] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if sep and name in BACKBONES:
            named[name] = Path(path)
        elif default is None:
            default = Path(v)
        else:
            raise ExtractError(f"--checkpoint {v}: a second plain path; name the backbone "
                               f"(BACKBONE=PATH)")
    return default, named


def execute(args: argparse.Namespace) -> int:
    from bst_search.extract.backbones import BackboneOptions
    from bst_search.extract.deps import check_dependencies
    from bst_search.extract.errors import ExtractError, ExtractInterrupted
    from bst_search.extract.run import ExtractJob, run_extract, summary_lines

    try:
        check_dependencies(args.backbone)  # before any data or model: README, Install
        default_ckpt, named_ckpts = _checkpoints(args.checkpoint)
        opts = BackboneOptions(
            checkpoint=default_ckpt,
            text_model_dir=Path(args.text_model_dir) if args.text_model_dir else None,
            device=args.device, batch_size=args.batch_size, settings=_settings(args.set),
            allow_random_weights=args.allow_random_weights)
        job = ExtractJob(root=Path(args.data), backbones=list(args.backbone), options=opts,
                         checkpoints=named_ckpts,
                         audio_dir=Path(args.audio_dir) if args.audio_dir else None,
                         on_bad_audio=args.on_bad_audio, limit=args.limit,
                         overwrite=args.overwrite, address=args.address, workers=args.workers,
                         cpus_per_worker=args.cpus_per_worker, progress=not args.quiet)
        results = run_extract(job)
    except ExtractError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ExtractInterrupted as e:  # SIGTERM / SIGINT: 143 / 130, as a shell reports them
        print(str(e), file=sys.stderr)
        return e.exit_code
    for line in summary_lines(results):
        print(line)
    return 0
