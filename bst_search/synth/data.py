"""A synthetic dataset in the official BSD10k / BSD35k-CS / evaluation layout.

It exists so that the whole pipeline (loading, trials, search, ensembles, submission) can run
and be tested on a laptop with no data. It is built to be *realistic enough to rank ideas the
way the real data would*, not just to have the right file names:

* class priors as imbalanced as BSD10k (about 10x between the largest and smallest class);
* ~3 % rows labelled with a top-level-only or ``*-other`` code, which the loader must drop;
* annotator confidence 1..5 in the BSD10k proportions, where low confidence means the sound
  really is ambiguous (its latent point is pulled towards another class, mostly a sibling);
* sibling classes closer together than classes under other top levels, and the same hard
  (sp-c, ss-i, fx-a) and easy (is-w, is-s, fx-o) classes as BSD10k under the baseline;
* three backbones (``clap_audio``, ``clap_text``, ``panns``) that see one shared latent
  through their own projection and noise, so fusing them helps by a few points, and the text
  view confuses siblings differently from audio;
* a crowd set with uploader-clustered classes and ~17 % label noise, mostly to siblings;
* an evaluation set with anonymous hex ids whose labels are kept outside its folder.

A logistic regression on standardised ``clap_audio`` scores official hF 0.745 under 5-fold CV
(seed 0, n=11000) and audio + text 0.783 (+3.8), close to the official baseline on BSD10k
(0.759 and 0.787); other seeds land within about +-0.02 (``benchmarks/bench_data.py``). Everything comes from one ``np.random.Generator`` so a seed
gives byte-identical files.
"""

from __future__ import annotations

import shutil
import string
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bst_search import taxonomy as tx
from bst_search.synth.texts import sound_texts

# Relative class frequencies, shaped like BSD10k: large fx-o / is-p / m-si, small sp-p / ss-s.
PRIORS: dict[str, float] = {
    "m-sp": 420, "m-si": 900, "m-m": 650,
    "is-p": 950, "is-s": 420, "is-w": 300, "is-k": 360, "is-e": 520,
    "sp-s": 480, "sp-c": 230, "sp-p": 100,
    "fx-o": 1000, "fx-v": 330, "fx-m": 430, "fx-h": 560, "fx-a": 380, "fx-n": 420,
    "fx-ex": 260, "fx-el": 620,
    "ss-n": 520, "ss-i": 230, "ss-u": 400, "ss-s": 105,
}

EXCLUDED_SHARE = 0.03  # top-level-only and *-other rows, dropped by the loader
EXCLUDED_CODES: tuple[str, ...] = ("fx", "fx-other", "ss-other", "m", "is-other", "sp-other",
                                   "ss", "m-other", "is", "sp")
EXCLUDED_WEIGHTS = np.array([0.25, 0.2, 0.1, 0.08, 0.08, 0.07, 0.07, 0.06, 0.05, 0.04])

CONFIDENCE_P = np.array([0.01, 0.07, 0.30, 0.55, 0.07])  # confidence 1..5, as in BSD10k
# How far (as a mixing weight) a sound of each confidence level is pulled towards another class.
AMBIGUITY = {1: (0.40, 0.65), 2: (0.30, 0.55), 3: (0.12, 0.40), 4: (0.02, 0.25), 5: (0.0, 0.10)}
SIBLING_CONFUSION = 0.75  # share of ambiguity / crowd flips that go to a sibling class

BACKBONE_DIMS: dict[str, int] = {"clap_audio": 512, "clap_text": 512, "panns": 2048}

# Generator knobs, tuned so that LogReg(clap_audio) ~ 0.75 hF and + text a few points more.
LATENT_DIM = 48
TOP_SCALE = 0.42      # spread of top-level centres
CLASS_SCALE = 0.42    # spread of class offsets around their top centre (siblings are closer)
SHARED_NOISE = 0.58   # per-sound latent noise seen by every backbone: the irreducible part
VIEW_NOISE = {"clap_audio": 0.85, "clap_text": 0.9, "panns": 0.85}  # own latent noise
OBS_NOISE = {"clap_audio": 0.10, "clap_text": 0.10, "panns": 0.12}   # isotropic, in output space
TEXT_SHRINK = (0.55, 1.05)  # per-class factor on the class offset as the text view sees it
# Per-class multiplier of the shared noise, fixed rather than drawn so that every seed has
# the same hard and easy classes as BSD10k under the official HATR baseline (its Table 2:
# is-w, is-s, fx-o strong; sp-c, ss-i, fx-a weak).
CLASS_HARDNESS: dict[str, float] = {
    "m-sp": 1.0, "m-si": 1.0, "m-m": 1.2,
    "is-p": 0.95, "is-s": 0.8, "is-w": 0.75, "is-k": 0.9, "is-e": 1.1,
    "sp-s": 0.85, "sp-c": 1.35, "sp-p": 1.15,
    "fx-o": 0.85, "fx-v": 1.05, "fx-m": 1.15, "fx-h": 1.1, "fx-a": 1.3, "fx-n": 1.1,
    "fx-ex": 1.3, "fx-el": 1.15,
    "ss-n": 1.1, "ss-i": 1.35, "ss-u": 1.15, "ss-s": 1.2,
}

CROWD_FAVOURITE_P = 0.75    # share of an uploader's crowd sounds from their favourite classes
CROWD_NOISE_BETA = (1.3, 6.2)  # per-uploader flip rate ~ Beta, mean ~0.17

LICENSES = (
    "http://creativecommons.org/publicdomain/zero/1.0/",
    "https://creativecommons.org/licenses/by/4.0/",
    "http://creativecommons.org/licenses/by-nc/3.0/",
    "http://creativecommons.org/licenses/by/3.0/",
)
LICENSE_P = np.array([0.45, 0.3, 0.15, 0.1])

_SYLLABLES = ("ka", "lo", "mi", "ne", "so", "ra", "tu", "vi", "ze", "bo", "fi", "gu", "da", "re",
              "an", "el", "or", "ix")


def _world(rng: np.random.Generator) -> dict[str, object]:
    """Class centres and backbone projections, shared by the dev, crowd and eval sets."""
    tops = rng.standard_normal((tx.N_TOP, LATENT_DIM)) * TOP_SCALE
    offsets = rng.standard_normal((tx.N_CLASSES, LATENT_DIM)) * CLASS_SCALE
    centres = tops[tx.PARENT] + offsets
    hardness = np.array([CLASS_HARDNESS[c] for c in tx.CODES])
    text_shrink = rng.uniform(*TEXT_SHRINK, size=tx.N_CLASSES)
    proj = {}
    for name, dim in BACKBONE_DIMS.items():
        proj[name] = (rng.standard_normal((LATENT_DIM, dim)) / np.sqrt(LATENT_DIM)).astype(np.float32)
    panns_bias = rng.normal(-0.3, 0.3, size=BACKBONE_DIMS["panns"]).astype(np.float32)
    uploaders = _uploader_names(rng, 320)
    return {"tops": tops, "offsets": offsets, "centres": centres, "hardness": hardness,
            "text_shrink": text_shrink, "proj": proj, "panns_bias": panns_bias,
            "uploaders": uploaders}


def _uploader_names(rng: np.random.Generator, k: int) -> list[str]:
    """Unique, plausible user names."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < k:
        n_syl = int(rng.integers(2, 4))
        base = "".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), n_syl))
        name = base + (str(int(rng.integers(1, 99))) if rng.random() < 0.5 else "")
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _zipf_p(k: int, a: float = 1.1) -> np.ndarray:
    p = 1.0 / np.arange(1, k + 1) ** a
    return p / p.sum()


def _min_per_class(n: int) -> int:
    """Small sets still get a few rows of every class, so that 5-fold stratification works."""
    return min(10, n // (tx.N_CLASSES * 4))


def _draw_codes(rng: np.random.Generator, n: int, with_excluded: bool) -> np.ndarray:
    """Class codes for n sounds: task classes by PRIORS, plus ~3 % excluded codes."""
    p = np.array([PRIORS[c] for c in tx.CODES], dtype=np.float64)
    y = rng.choice(tx.N_CLASSES, size=n, p=p / p.sum())
    excl = (rng.random(n) < EXCLUDED_SHARE) if with_excluded else np.zeros(n, dtype=bool)
    m = _min_per_class(n)
    for c in range(tx.N_CLASSES):
        short = m - int((y[~excl] == c).sum())
        if short > 0:  # take task rows from the currently largest class
            donor = int(np.bincount(y[~excl], minlength=tx.N_CLASSES).argmax())
            rows = rng.choice(np.flatnonzero((y == donor) & ~excl), size=short, replace=False)
            y[rows] = c
    codes = np.asarray(tx.CODES, dtype=object)[y]
    if excl.any():
        w = EXCLUDED_WEIGHTS / EXCLUDED_WEIGHTS.sum()
        codes[excl] = np.asarray(EXCLUDED_CODES, dtype=object)[
            rng.choice(len(EXCLUDED_CODES), size=int(excl.sum()), p=w)]
    return codes


def _confusable(rng: np.random.Generator, y: np.ndarray) -> np.ndarray:
    """For each class index, another class: a sibling with SIBLING_CONFUSION, else any other."""
    out = np.empty_like(y)
    sib = rng.random(len(y)) < SIBLING_CONFUSION
    r = rng.random(len(y))
    for c in range(tx.N_CLASSES):
        rows = np.flatnonzero(y == c)
        if rows.size == 0:
            continue
        sibs = np.flatnonzero((tx.PARENT == tx.PARENT[c]) & (np.arange(tx.N_CLASSES) != c))
        others = np.flatnonzero(np.arange(tx.N_CLASSES) != c)
        pool_s = sibs if sibs.size else others
        pick_s = pool_s[np.minimum((r[rows] * pool_s.size).astype(int), pool_s.size - 1)]
        pick_o = others[np.minimum((r[rows] * others.size).astype(int), others.size - 1)]
        out[rows] = np.where(sib[rows], pick_s, pick_o)
    return out


def _latents(rng: np.random.Generator, world: dict, codes: np.ndarray,
             confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shared latent points and the class index each is centred on (-1 for excluded codes).

    Task-class sounds sit at their class centre, pulled towards a confusable class by an
    amount that grows as confidence falls. Top-level-only and *-other sounds sit near their
    top-level centre with an offset of their own (they belong to no listed child).
    """
    n = len(codes)
    centres, tops = world["centres"], world["tops"]
    is_task = np.array([c in tx.INDEX for c in codes], dtype=bool)
    y = np.full(n, -1, dtype=np.int64)
    y[is_task] = tx.encode(codes[is_task])
    a = np.empty(n)
    for level, (lo, hi) in AMBIGUITY.items():
        rows = confidence == level
        a[rows] = rng.uniform(lo, hi, size=int(rows.sum()))
    other = _confusable(rng, np.where(y >= 0, y, 0))
    noise = rng.standard_normal((n, LATENT_DIM))
    own = rng.standard_normal((n, LATENT_DIM)) * CLASS_SCALE
    z = np.empty((n, LATENT_DIM))
    t = is_task
    z[t] = (1 - a[t, None]) * centres[y[t]] + a[t, None] * centres[other[t]]
    z[t] += noise[t] * (SHARED_NOISE * world["hardness"][y[t]])[:, None]
    top_idx = np.array([tx.TOP_LEVELS.index(tx.top_of(c)) for c in codes[~t]], dtype=np.int64)
    z[~t] = tops[top_idx] + own[~t] + noise[~t] * SHARED_NOISE
    return z, y


def _views(rng: np.random.Generator, world: dict, z: np.ndarray,
           y: np.ndarray) -> dict[str, np.ndarray]:
    """Backbone embeddings: each sees the shared latent through its own noise and projection."""
    n = len(z)
    out: dict[str, np.ndarray] = {}
    for name, dim in BACKBONE_DIMS.items():
        zv = z + rng.standard_normal((n, LATENT_DIM)) * VIEW_NOISE[name]
        if name == "clap_text":
            # Text describes the class less precisely for some classes: their offset from the
            # top-level centre shrinks, so siblings blur together differently than in audio.
            t = y >= 0
            shrink = world["text_shrink"][y[t]] - 1.0
            zv[t] += shrink[:, None] * world["offsets"][y[t]]
        x = zv.astype(np.float32) @ world["proj"][name]
        x += rng.standard_normal((n, dim), dtype=np.float32) * np.float32(OBS_NOISE[name])
        if name == "panns":
            x = np.maximum(x + world["panns_bias"], 0.0) * np.float32(0.6)
        else:
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[name] = np.ascontiguousarray(x, dtype=np.float32)
    return out


def _confidences(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(np.arange(1, 6), size=n, p=CONFIDENCE_P / CONFIDENCE_P.sum())


def _labelled_frame(ids: Sequence[str], codes: np.ndarray, confidence: Sequence[object],
                    titles: list[str], tags: list[str], descs: list[str],
                    uploader: list[str], licenses: list[str]) -> pd.DataFrame:
    return pd.DataFrame({
        "sound_id": list(ids),
        "class": list(codes),
        "class_idx": [tx.CLASS_IDX[c] for c in codes],
        "class_top": [tx.top_of(c) for c in codes],
        "confidence": list(confidence),
        "title": titles, "tags": tags, "description": descs,
        "uploader": uploader, "license": licenses,
    })


def _write_features(root: Path, ids: Sequence[str], feats: dict[str, np.ndarray],
                    progress: bool, desc: str) -> None:
    """One ``<id>.npy`` per sound and backbone, as the official release ships them."""
    from tqdm import tqdm

    total = len(ids) * len(feats)
    with tqdm(total=total, desc=desc, disable=not progress, unit="file") as bar:
        for name, mat in feats.items():
            folder = root / "features" / f"{name}_embeddings"
            folder.mkdir(parents=True, exist_ok=True)
            for i, sid in enumerate(ids):
                np.save(folder / f"{sid}.npy", mat[i])
            bar.update(len(ids))


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False, lineterminator="\n")


def _check_target(path: Path, overwrite: bool) -> None:
    """Refuse to mix a new synthetic set with files already there."""
    if not path.exists():
        return
    non_empty = path.is_file() or any(path.iterdir())
    if not non_empty:
        return
    if not overwrite:
        raise FileExistsError(f"{path} already exists and is not empty; pass overwrite=True "
                              f"(--overwrite) to replace it")
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def make_synthetic(out: Path, *, n: int = 11000, crowd_n: int = 0, eval_n: int = 3246,
                   seed: int = 0, progress: bool = False,
                   overwrite: bool = False, audio_n: int = 0) -> dict[str, Path]:
    """Write a synthetic dev (BSD10k-like), optional crowd and evaluation set under ``out``.

    Returns the paths ``dev``, ``crowd`` and ``crowd_clean_labels`` (if ``crowd_n > 0``),
    ``eval`` and ``eval_labels`` (if ``eval_n > 0``). ``eval_labels.csv`` (``id,class``) sits
    outside the eval folder so that a self-check can score a submission without the loader
    ever seeing the labels; ``crowd_clean_labels.csv`` (``sound_id,class,true_class``) does
    the same for the crowd label noise, so noise-filtering strategies can be checked.
    Existing non-empty targets are refused unless ``overwrite=True``, which replaces them.
    ``audio_n > 0`` adds ``audio_demo``: that many generated clips with metadata and no
    embeddings, for ``bst-search extract`` (``bst_search.synth.audio``).
    """
    if n < 1 or crowd_n < 0 or eval_n < 0:
        raise ValueError(f"need n >= 1, crowd_n >= 0, eval_n >= 0; got {n}, {crowd_n}, {eval_n}")
    out = Path(out)
    targets = {"dev": out / "dev", "crowd": out / "crowd", "eval": out / "eval",
               "eval_labels": out / "eval_labels.csv",
               "crowd_clean_labels": out / "crowd_clean_labels.csv", "audio_demo": out / "audio_demo"}
    for p in targets.values():
        _check_target(p, overwrite)
    out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    world = _world(rng)
    up_p = _zipf_p(len(world["uploaders"]))
    all_ids = rng.choice(np.arange(1000, 1000 + 40 * (n + crowd_n) + 100_000),
                         size=n + crowd_n, replace=False)
    dev_ids_int = np.sort(all_ids[:n])
    crowd_ids_int = np.sort(all_ids[n:])
    paths: dict[str, Path] = {}

    _write_dev(rng, world, up_p, dev_ids_int, targets["dev"], progress)
    paths["dev"] = targets["dev"]
    if crowd_n > 0:
        _write_crowd(rng, world, up_p, crowd_ids_int, targets["crowd"],
                     targets["crowd_clean_labels"], progress)
        paths["crowd"] = targets["crowd"]
        paths["crowd_clean_labels"] = targets["crowd_clean_labels"]
    if eval_n > 0:
        _write_eval(rng, world, eval_n, targets["eval"], targets["eval_labels"], progress)
        paths["eval"] = targets["eval"]
        paths["eval_labels"] = targets["eval_labels"]
    if audio_n > 0:
        from bst_search.synth.audio import write_audio_demo
        paths["audio_demo"] = write_audio_demo(targets["audio_demo"], n=audio_n, seed=seed)
    return paths


def _write_dev(rng: np.random.Generator, world: dict, up_p: np.ndarray, ids_int: np.ndarray,
               dev: Path, progress: bool) -> None:
    """The development set: labelled, with confidences and every text field."""
    n = len(ids_int)
    uploaders = world["uploaders"]
    codes = _draw_codes(rng, n, with_excluded=True)
    conf = _confidences(rng, n)
    z, y = _latents(rng, world, codes, conf)
    feats = _views(rng, world, z, y)
    titles, tags, descs = sound_texts(rng, codes)
    up = [uploaders[i] for i in rng.choice(len(uploaders), size=n, p=up_p)]
    lic = [LICENSES[i] for i in rng.choice(len(LICENSES), size=n, p=LICENSE_P)]
    ids = [str(i) for i in ids_int]
    _write_csv(_labelled_frame(ids, codes, conf, titles, tags, descs, up, lic),
               dev / "metadata" / "BSD10k_metadata.csv")
    _write_csv(pd.DataFrame(tx.description_table()), dev / "metadata" / "BST_description.csv")
    _write_features(dev, ids, feats, progress, "synthetic dev")


def _write_crowd(rng: np.random.Generator, world: dict, up_p: np.ndarray, ids_int: np.ndarray,
                 crowd: Path, clean_labels: Path, progress: bool) -> None:
    """The crowd set: uploader-clustered classes and uploader-dependent label noise; the true
    labels go to ``clean_labels``, outside the set."""
    crowd_n = len(ids_int)
    uploaders = world["uploaders"]
    k = len(uploaders)
    prior = np.array([PRIORS[c] for c in tx.CODES], dtype=np.float64)
    prior /= prior.sum()
    fav = rng.choice(tx.N_CLASSES, size=(k, 2), p=prior)
    n_fav = np.where(rng.random(k) < 0.5, 1, 2)
    flip_rate = rng.beta(*CROWD_NOISE_BETA, size=k)
    u_idx = rng.choice(k, size=crowd_n, p=up_p)
    codes_c = _draw_codes(rng, crowd_n, with_excluded=True)
    from_fav = rng.random(crowd_n) < CROWD_FAVOURITE_P
    which = (rng.random(crowd_n) * n_fav[u_idx]).astype(int)
    task = np.array([c in tx.INDEX for c in codes_c])
    use_fav = from_fav & task
    codes_c[use_fav] = np.asarray(tx.CODES, dtype=object)[fav[u_idx, which][use_fav]]
    conf_c = _confidences(rng, crowd_n)
    zc, yc = _latents(rng, world, codes_c, conf_c)
    feats_c = _views(rng, world, zc, yc)
    titles, tags, descs = sound_texts(rng, codes_c)
    flip = task & (rng.random(crowd_n) < flip_rate[u_idx])
    target = _confusable(rng, np.where(yc >= 0, yc, 0))
    given = codes_c.copy()
    given[flip] = np.asarray(tx.CODES, dtype=object)[target[flip]]
    lic = [LICENSES[i] for i in rng.choice(len(LICENSES), size=crowd_n, p=LICENSE_P)]
    cids = [str(i) for i in ids_int]
    _write_csv(_labelled_frame(cids, given, [""] * crowd_n, titles, tags, descs,
                               [uploaders[i] for i in u_idx], lic),
               crowd / "metadata" / "BSD35k-CS_metadata.csv")
    _write_csv(pd.DataFrame(tx.description_table()),
               crowd / "metadata" / "BST_description.csv")
    _write_features(crowd, cids, feats_c, progress, "synthetic crowd")
    _write_csv(pd.DataFrame({"sound_id": cids, "class": list(given),
                             "true_class": list(codes_c)}), clean_labels)


def _write_eval(rng: np.random.Generator, world: dict, eval_n: int, ev: Path, labels: Path,
                progress: bool) -> None:
    """The evaluation set: anonymous hex ids, no labels inside; they go to ``labels``."""
    codes_e = _draw_codes(rng, eval_n, with_excluded=False)
    conf_e = _confidences(rng, eval_n)
    ze, ye = _latents(rng, world, codes_e, conf_e)
    feats_e = _views(rng, world, ze, ye)
    titles, tags, descs = sound_texts(rng, codes_e)
    hexd = np.array(list(string.hexdigits[:16]))
    eids: list[str] = []
    seen: set[str] = set()
    while len(eids) < eval_n:
        for row in rng.integers(0, 16, size=(eval_n - len(eids), 32)):
            s = "".join(hexd[row])
            if s not in seen:
                seen.add(s)
                eids.append(s)
    _write_csv(pd.DataFrame({"anonymous_id": eids, "title": titles, "tags": tags,
                             "description": descs}), ev / "metadata" / "eval_metadata.csv")
    _write_features(ev, eids, feats_e, progress, "synthetic eval")
    _write_csv(pd.DataFrame({"id": eids, "class": list(codes_e)}), labels)
