"""PNG figures of an ensemble: the selection curve and row-normalised confusion matrices.

The curve shows why the selected score is not the one to believe: it climbs with every
step on the rows it is measured on, while the honest line stays where it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bst_search.metrics import confusion_matrix
from bst_search.taxonomy import CODES, N_TOP, PARENT, TOP_LEVELS


def _pyplot():  # noqa: ANN202 - matplotlib's module type
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curve(path: Path, curves: Sequence[Sequence[dict[str, object]]], *, metric: str,
               best_single: float, selected: float, best_step: int | None,
               honest: float | None, sk: float | None = None) -> Path:
    """Score after every step (greedy and Nelder-Mead), with best-single, honest and SK lines.

    The SK line is the cross-fitted (out-of-fold) score of SK fusion: to compare with honest.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for b, curve in enumerate(curves):
        size = [int(e["size"]) for e in curve]
        score = [float(e["score"]) for e in curve]
        alpha = 1.0 if len(curves) == 1 else 0.5
        ax.plot(size, score, "o-", ms=3, color="C0", alpha=alpha,
                label="greedy (uniform counts)" if b == 0 else None)
        nm = [(s, float(e["score_nm"])) for s, e in zip(size, curve, strict=True)
              if e.get("score_nm") is not None]
        if nm:
            ax.plot(*zip(*nm, strict=True), "x", ms=4, color="C1", alpha=alpha,
                    label="Nelder-Mead weights" if b == 0 else None)
    ax.axhline(best_single, color="grey", ls="--", label=f"best single {best_single:.4f}")
    if best_step is not None:
        ax.plot([best_step], [selected], "*", ms=12, color="C3", label=f"selected {selected:.4f}")
    else:
        ax.axhline(selected, color="C3", ls=":", label=f"bagged ensemble {selected:.4f}")
    if honest is not None:
        ax.axhline(honest, color="C2", ls="-", lw=2, label=f"honest (nested CV) {honest:.4f}")
    if sk is not None:
        ax.axhline(sk, color="C4", ls="-.", lw=2, label=f"SK fusion (cross-fitted) {sk:.4f}")
    ax.set_xlabel("ensemble size (step)")
    ax.set_ylabel(f"OOF hF ({metric})")
    ax.set_title("Greedy forward selection: the selected score is optimistic")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_matrix(path: Path, cm: np.ndarray, labels: Sequence[str], title: str) -> Path:
    plt = _pyplot()
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    k = len(labels)
    fig, ax = plt.subplots(figsize=(2 + 0.38 * k, 1.6 + 0.38 * k), dpi=110)
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=90, fontsize=7 if k > 10 else 9)
    ax.set_yticks(range(k), labels, fontsize=7 if k > 10 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    if k <= 10:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_confusions(out_dir: Path, y_true: np.ndarray, y_pred: np.ndarray) -> list[Path]:
    """23 x 23 and 5 x 5 (top level) confusion matrices of the ensemble, row-normalised."""
    cm = confusion_matrix(y_true, y_pred)
    top = np.zeros((N_TOP, N_TOP), dtype=np.int64)
    np.add.at(top, (PARENT[:, None], PARENT[None, :]), cm)
    return [
        _plot_matrix(out_dir / "confusion_fine.png", cm, CODES,
                     "Ensemble OOF confusion, 23 classes (row-normalised)"),
        _plot_matrix(out_dir / "confusion_top.png", top, TOP_LEVELS,
                     "Ensemble OOF confusion, top level (row-normalised)"),
    ]
