"""Offline compatibility layer for ``laion_clap``, scoped to loading CLAP models.

``import laion_clap`` does several things that cannot work here and that extraction does not
need (measured on CPU torch 2.13):

* it imports torchvision (``FrozenBatchNorm2d``, image transforms, datasets) and torchaudio
  (the mel front end of fusion models), neither of which has a working build for CPU
  torch 2.13;
* it imports ``webdataset``, ``wget`` and ``braceexpand`` for its training code;
* ``training/data.py`` calls ``BertTokenizer/RobertaTokenizer/BartTokenizer.from_pretrained``
  with hub names at import time, and ``CLAP`` builds its text tower with
  ``RobertaModel.from_pretrained("roberta-base")``.

:func:`laion_clap_environment` makes all of that offline and deterministic, only while it is
active: it puts small stand-in modules for torchvision, torchaudio, webdataset, wget and
braceexpand into ``sys.modules`` (removed again on exit; laion_clap's modules keep their
references), and intercepts exactly the hard-coded hub names (``roberta-base``,
``bert-base-uncased``, ``facebook/bart-base``) of ``from_pretrained``. ``roberta-base`` is
loaded from ``--text-model-dir``; the text tower gets only its *configuration* from there,
because every weight comes from the CLAP checkpoint. The other two names give ``None``
(laion_clap only keeps them in unused module globals). Any other name, or a network
access, fails.

laion_clap imports its model code as a top-level ``clap_module`` package (its ``__init__``
puts its own folder on ``sys.path``); the path entry is removed on exit, the already imported
``clap_module`` modules stay in ``sys.modules`` because the CLAP classes live there.

The stand-ins implement only what CLAP inference uses:

* ``torchvision.ops.misc.FrozenBatchNorm2d`` (used by laion_clap's ``freeze_batch_norm_2d``
  helper, never during inference);
* ``torchaudio.transforms.MelSpectrogram`` and ``AmplitudeToDB`` with torchaudio's
  definitions (HTK mel scale, no filter normalisation, power spectrum of a centred,
  reflect-padded Hann-window STFT; ``10 * log10(max(x, 1e-10))``). A test checks them against
  librosa's ``melspectrogram(htk=True, norm=None)``, which laion_clap names as its reference;
* ``torchvision.transforms.Resize`` is *not* provided: laion_clap uses it only to shrink the
  mel of a clip longer than 10 s with a random crop, which bst-search never does (long clips
  are cut into windows first).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

STUBBED = ("torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
           "torchvision.datasets", "torchaudio", "torchaudio.transforms", "webdataset", "wget",
           "braceexpand")
HUB_ROBERTA = "roberta-base"
HUB_UNUSED = ("bert-base-uncased", "facebook/bart-base")

# roberta-base's public config.json: the text tower's shape when no --text-model-dir is given
# (clap_audio never runs the text tower, it only has to exist for the checkpoint's layout).
ROBERTA_BASE_CONFIG: dict[str, Any] = {
    "vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 514, "type_vocab_size": 1,
    "initializer_range": 0.02, "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0,
    "eos_token_id": 2,
}


class OfflineError(RuntimeError):
    """Something inside laion_clap asked for a download or a hub model bst-search does not serve."""


# --- torchaudio stand-in ----------------------------------------------------------------------

def _hz_to_mel_htk(f: float) -> float:
    return 2595.0 * math.log10(1.0 + f / 700.0)


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int,
                   sample_rate: int) -> torch.Tensor:
    """torchaudio's ``melscale_fbanks`` (HTK scale, ``norm=None``): (n_freqs, n_mels) triangles."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    m_pts = torch.linspace(_hz_to_mel_htk(f_min), _hz_to_mel_htk(f_max), n_mels + 2,
                           dtype=torch.float64)
    f_pts = 700.0 * (10 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).to(torch.float32)


class MelSpectrogram(nn.Module):
    """The subset of ``torchaudio.transforms.MelSpectrogram`` that laion_clap's ``get_mel`` uses."""

    def __init__(self, sample_rate: int = 16000, n_fft: int = 400, win_length: int | None = None,
                 hop_length: int | None = None, f_min: float = 0.0, f_max: float | None = None,
                 pad: int = 0, n_mels: int = 128, power: float = 2.0, normalized: bool = False,
                 center: bool = True, pad_mode: str = "reflect", onesided: bool = True,
                 norm: str | None = None, mel_scale: str = "htk") -> None:
        super().__init__()
        if norm is not None or mel_scale != "htk" or pad or normalized or not onesided:
            raise NotImplementedError("bst-search's torchaudio stand-in implements laion_clap's "
                                      "settings only (htk, norm=None, onesided, no pad)")
        self.n_fft, self.power, self.center, self.pad_mode = n_fft, power, center, pad_mode
        self.win_length = win_length or n_fft
        self.hop_length = hop_length or self.win_length // 2
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)
        self.register_buffer("fb", mel_filterbank(n_fft // 2 + 1, f_min,
                                                  f_max if f_max is not None else sample_rate / 2,
                                                  n_mels, sample_rate), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        shape = waveform.shape
        x = waveform.reshape(-1, shape[-1])
        spec = torch.stft(x, self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window.to(x.device), center=self.center,
                          pad_mode=self.pad_mode, normalized=False, onesided=True,
                          return_complex=True)
        spec = spec.abs().pow(self.power)
        mel = torch.matmul(spec.transpose(-1, -2), self.fb.to(x.device)).transpose(-1, -2)
        return mel.reshape(shape[:-1] + mel.shape[-2:])


class AmplitudeToDB(nn.Module):
    """``torchaudio.transforms.AmplitudeToDB`` for power input with ref 1: 10 log10(max(x, amin))."""

    def __init__(self, stype: str = "power", top_db: float | None = None) -> None:
        super().__init__()
        if stype != "power" or top_db is not None:
            raise NotImplementedError("bst-search's torchaudio stand-in: power input, top_db=None only")
        self.amin = 1e-10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(torch.clamp(x, min=self.amin))


# --- torchvision stand-in ---------------------------------------------------------------------

class FrozenBatchNorm2d(nn.Module):
    """``torchvision.ops.misc.FrozenBatchNorm2d``: batch norm with fixed statistics and affine."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((num_features,), fill))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)


def _refuse(what: str) -> Any:
    def fail(*_a: object, **_k: object) -> Any:
        raise OfflineError(f"laion_clap asked for {what}, which bst-search does not provide "
                           f"(no downloads, no training pipeline)")
    return fail


class _RefusingModule(types.ModuleType):
    """A module whose every missing attribute is a callable that raises :class:`OfflineError`."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _refuse(f"{self.__name__}.{name}")


def _stub_modules() -> dict[str, types.ModuleType]:
    mods = {name: _RefusingModule(name) for name in STUBBED}
    for name, mod in mods.items():
        mod.__doc__ = "bst-search offline stand-in (bst_search.extract.compat)"
        if "." not in name:
            mod.__path__ = []  # a package, so that submodule imports resolve from sys.modules
    mods["torchvision"].ops = mods["torchvision.ops"]
    mods["torchvision"].transforms = mods["torchvision.transforms"]
    mods["torchvision"].datasets = mods["torchvision.datasets"]
    mods["torchvision.ops"].__path__ = []
    mods["torchvision.ops"].misc = mods["torchvision.ops.misc"]
    mods["torchvision.ops.misc"].FrozenBatchNorm2d = FrozenBatchNorm2d
    mods["torchaudio"].transforms = mods["torchaudio.transforms"]
    mods["torchaudio.transforms"].MelSpectrogram = MelSpectrogram
    mods["torchaudio.transforms"].AmplitudeToDB = AmplitudeToDB
    return mods


# --- hub-name interception --------------------------------------------------------------------

class NoTextTower(nn.Module):
    """Stands in for the RoBERTa text tower when only audio is embedded (its weights are skipped).

    It has the one attribute CLAP's initialiser reads (``embeddings.word_embeddings``)."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(1, 1)

    def forward(self, *_a: object, **_k: object) -> Any:
        raise OfflineError("this CLAP model was built for audio only (clap_audio); "
                           "use clap_text for text")


def _patched_from_pretrained(cls: type, original: Any, text_model_dir: Path | None,
                             build_model: bool, text_tower: bool) -> Any:
    def from_pretrained(name: object, *args: object, **kwargs: object) -> Any:
        if name in HUB_UNUSED:
            return None
        if name != HUB_ROBERTA:
            raise OfflineError(f"laion_clap asked for hub model {name!r}; only {HUB_ROBERTA!r} is "
                               f"served (from --text-model-dir)")
        if build_model and not text_tower:
            return NoTextTower()
        if build_model:  # the text tower: architecture only, the CLAP checkpoint has its weights
            from transformers import RobertaConfig
            if text_model_dir is None:
                config = RobertaConfig(**ROBERTA_BASE_CONFIG)
            else:
                config = RobertaConfig.from_pretrained(str(text_model_dir), local_files_only=True)
            return cls(config, add_pooling_layer=True)
        if text_model_dir is None:
            return None  # a tokenizer that clap_audio never uses
        return original(str(text_model_dir), local_files_only=True)
    return from_pretrained


@contextlib.contextmanager
def laion_clap_environment(text_model_dir: Path | None = None,
                           text_tower: bool = True) -> Iterator[types.ModuleType]:
    """Import ``laion_clap`` (and build CLAP models inside the block) offline; yields the package.

    ``text_model_dir``: a local ``roberta-base``-style folder (config.json + tokenizer files).
    Without it the text tower is built with roberta-base's shape and no tokenizer is loaded.
    ``text_tower=False`` builds CLAP with :class:`NoTextTower` instead (audio only: faster,
    ~500 MB less memory).
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import transformers

    added = {name: mod for name, mod in _stub_modules().items() if name not in sys.modules
             or getattr(sys.modules[name], "__doc__", "") == mod.__doc__}
    saved_path = list(sys.path)
    patches: dict[type, bool] = {}  # some transformers versions alias these classes: dedupe
    for cls, build in ((transformers.RobertaModel, True), (transformers.RobertaTokenizer, False),
                       (transformers.BertTokenizer, False), (transformers.BartTokenizer, False)):
        patches.setdefault(cls, build)
    originals = [(cls, cls.__dict__.get("from_pretrained"), cls.from_pretrained) for cls in patches]
    try:
        sys.modules.update(added)
        for cls, _own, bound in originals:
            cls.from_pretrained = staticmethod(
                _patched_from_pretrained(cls, bound, text_model_dir, patches[cls], text_tower))
        import laion_clap
        yield laion_clap
    finally:
        for cls, orig, _bound in originals:
            if orig is None:
                with contextlib.suppress(AttributeError):
                    delattr(cls, "from_pretrained")
            else:
                cls.from_pretrained = orig
        for name, mod in added.items():
            if sys.modules.get(name) is mod:
                del sys.modules[name]
        sys.path[:] = saved_path  # laion_clap/__init__ appends its own folder to sys.path


# --- panns_inference --------------------------------------------------------------------------

_PANNS_ALIAS = "_bst_panns_inference"


def panns_models() -> types.ModuleType:
    """``panns_inference.models`` without running ``panns_inference/__init__.py``.

    The package's ``__init__`` imports ``config.py``, which runs ``wget`` for a labels file at
    import time (leaving an empty file in ``$HOME/panns_data`` when offline), and its
    ``AudioTagging`` re-downloads and truncates any checkpoint under 300 MB. The model file
    itself only needs ``pytorch_utils`` and torchlibrosa, so it is loaded as a submodule of a
    private alias package whose ``__init__`` is never executed.
    """
    import importlib.util

    name = f"{_PANNS_ALIAS}.models"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("panns_inference")  # locates the folder, imports nothing
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("panns-inference is not installed (pip install bst-search[extract])")
    folder = list(spec.submodule_search_locations)[0]
    pkg = types.ModuleType(_PANNS_ALIAS)
    pkg.__path__ = [folder]
    pkg.__doc__ = "panns_inference's model files, imported without the package's side effects"
    sys.modules[_PANNS_ALIAS] = pkg
    mspec = importlib.util.spec_from_file_location(name, os.path.join(folder, "models.py"))
    assert mspec is not None and mspec.loader is not None
    mod = importlib.util.module_from_spec(mspec)
    sys.modules[name] = mod
    mspec.loader.exec_module(mod)
    return mod
