"""KNN label priors from a bank of training rows (the multi-branch system).

Two uses share this one piece: post-processing blends p = (1-a) p_model + a p_knn on the
held-out and evaluation rows (``post.knn_*``), and KNN distillation trains the student
towards the bank's leave-one-out prior of each training row (``loss.knn_distill``).

The retrieval space is the trial's frozen input embeddings, each backbone L2-normalised
and the concatenation scaled to unit norm, so a dot product is the mean cosine over
backbones. (The multi-branch system also appends its trained model's features; the input space lets the
same bank serve distillation, which is built before the student exists.)

The bank is only ever built from a fold's training rows: held-out rows are queries, never
neighbours.
"""

from __future__ import annotations

import numpy as np
import torch

from bst_search.taxonomy import N_CLASSES


def retrieval_space(X: list[np.ndarray]) -> np.ndarray:
    """(n, sum dims) float32: per-backbone L2-normalised embeddings, concatenated, unit norm."""
    if not X:
        raise ValueError("retrieval_space: need at least one embedding array")
    parts = []
    for x in X:
        x = np.asarray(x, dtype=np.float32)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        parts.append(x / np.maximum(norm, 1e-12))
    return np.concatenate(parts, axis=1) / np.sqrt(len(X), dtype=np.float32)


class KnnPrior:
    """Similarity-weighted label distribution of the k nearest bank rows.

    prior(q)[c] = sum over the k neighbours n with label c of softmax_n(sim(q, n) / tau).
    Search is an exact chunked matrix product with ``topk`` on the given device (CUDA when
    there is one), so it scales to a crowd-sized bank without an index.
    """

    def __init__(self, bank: np.ndarray, labels: np.ndarray, *, k: int, tau: float,
                 device: torch.device | str = "cpu", n_classes: int = N_CLASSES,
                 chunk: int = 4096) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if bank.ndim != 2 or len(bank) != len(labels):
            raise ValueError(f"KnnPrior: bank {bank.shape} and labels {labels.shape} disagree")
        if len(bank) < 2:
            raise ValueError(f"KnnPrior: a bank needs at least 2 rows, got {len(bank)}")
        if k < 1 or tau <= 0:
            raise ValueError(f"KnnPrior: need k >= 1 and tau > 0, got k={k}, tau={tau}")
        self.device = torch.device(device)
        self.bank = torch.as_tensor(np.ascontiguousarray(bank, dtype=np.float32)).to(self.device)
        self.labels = torch.as_tensor(labels).to(self.device)
        self.k, self.tau, self.n_classes, self.chunk = k, float(tau), n_classes, chunk

    @torch.no_grad()
    def _prior(self, q: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
        sim = q @ self.bank.T  # (b, N)
        if exclude is not None:  # leave-one-out: a bank row is not its own neighbour
            sim[torch.arange(len(q), device=q.device), exclude] = -torch.inf
        k = min(self.k, self.bank.shape[0] - (exclude is not None))
        top, idx = sim.topk(k, dim=1)
        w = (top / self.tau).softmax(dim=1)
        out = torch.zeros(len(q), self.n_classes, device=q.device)
        return out.scatter_add_(1, self.labels[idx], w)

    def predict(self, query: np.ndarray | None = None) -> np.ndarray:
        """(n, n_classes) priors for ``query`` rows, or leave-one-out priors of the bank's own
        rows when ``query`` is None."""
        own = query is None
        Q = self.bank if own else torch.as_tensor(
            np.ascontiguousarray(query, dtype=np.float32)).to(self.device)
        if Q.shape[1] != self.bank.shape[1]:
            raise ValueError(f"KnnPrior: query dim {Q.shape[1]} != bank dim {self.bank.shape[1]}")
        out = []
        for i in range(0, len(Q), self.chunk):
            ex = torch.arange(i, min(i + self.chunk, len(Q)), device=self.device) if own else None
            out.append(self._prior(Q[i:i + self.chunk], ex).cpu())
        if not out:
            return np.zeros((0, self.n_classes), dtype=np.float32)
        return torch.cat(out).numpy()


def blend(p_model: np.ndarray, p_knn: np.ndarray, alpha: float) -> np.ndarray:
    """(1 - alpha) p_model + alpha p_knn, float32."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"blend: alpha must be in [0, 1], got {alpha}")
    return ((1.0 - alpha) * p_model + alpha * p_knn).astype(np.float32)
