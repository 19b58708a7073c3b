"""Train one model on in-memory embeddings: :func:`fit` and :func:`predict_proba`.

The whole training split lives on the device as tensors; an epoch is a seeded permutation
sliced into batches, augmented on the batch tensor. No DataLoader, no per-sample work and no
host synchronisation inside the epoch, so that the time goes to forward/backward/step (the
share that does not is reported by ``benchmarks/bench_trial.py``).

Determinism: model init and dropout draw from torch's global generator, seeded with
``seed``; batching and augmentation draw from a local ``torch.Generator``; nothing reads
numpy's global state. Same cfg, data and seed on CPU -> identical weights and predictions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from bst_search.config import ConfigError
from bst_search.knn import KnnPrior, retrieval_space
from bst_search.losses import Targets, build_loss
from bst_search.metrics import hf_score
from bst_search.models import build_model, inference_logits
from bst_search.taxonomy import N_CLASSES


def pick_device(pref: str = "auto") -> torch.device:
    """CUDA when present, else CPU; any other value ("cpu", "cuda", "cuda:1") is forced."""
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {pref!r} requested but CUDA is not available")
    return dev


def assigned_device(gpu_ids: list[str] | list[int], *, cuda_available: bool,
                    visible: str | None = None) -> str:
    """The torch device of a Ray trial: the GPU Ray assigned it, else the CPU.

    Recent Ray no longer hides GPUs from zero-GPU tasks, so "CUDA is available" says nothing
    about what the trial reserved: a trial given no GPU runs on the CPU even on a GPU node.
    Ray sets ``CUDA_VISIBLE_DEVICES`` (``visible``) to the assigned ids, so the first
    assigned id is found at its position there; without it the id is the device index.
    """
    if not gpu_ids:
        return "cpu"
    first = str(gpu_ids[0])
    if not cuda_available:
        raise RuntimeError(f"Ray assigned GPU {first} to this trial but torch sees no CUDA device")
    shown = [v.strip() for v in (visible or "").split(",") if v.strip()]
    return f"cuda:{shown.index(first)}" if first in shown else f"cuda:{int(first)}"


def assigned_threads(cpus: float) -> int:
    """Torch intra-op threads of a trial: the CPUs Ray reserved for it (at least one)."""
    return max(1, int(cpus))


# ----------------------------------------------------------------------------- augmentation
# Each mask takes a (B, D) batch, p and the generator and returns it with some dims zeroed.

def mask_count(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Per sample zero k ~ U{1..floor(p*D)} distinct random dims (the baseline's _rand_mask).

    The k dims are those whose uniform noise is among the k smallest: one sort per batch.
    """
    b, d = x.shape
    k_max = int(d * p)
    if k_max < 1:
        return x
    noise = torch.rand(b, d, generator=gen, device=x.device)
    k = torch.randint(1, k_max + 1, (b, 1), generator=gen, device=x.device)
    kth = noise.sort(dim=1).values.gather(1, k - 1)  # k-th smallest noise per row
    return x * (noise > kth)


def mask_bernoulli(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Zero each dim independently with probability p."""
    if p <= 0:
        return x
    return x * (torch.rand(x.shape, generator=gen, device=x.device) >= p)


def mask_none(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    return x


MASKS: dict[str, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {
    "count": mask_count,
    "bernoulli": mask_bernoulli,
    "none": mask_none,
}


def augment(x: torch.Tensor, tc: dict, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise, then masking (the baseline's order)."""
    if tc["noise_std"] > 0:
        x = x + tc["noise_std"] * torch.randn(x.shape, generator=gen, device=x.device)
    return MASKS[tc["mask_mode"]](x, tc["mask_p"], gen)


# ------------------------------------------------------------------------- learning rate

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def make_optimizer(tc: dict, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer, fused where PyTorch has a fused kernel.

    Fused Adam is one kernel over all parameters instead of ~5 ops per tensor: on CPU it
    makes the optimizer step of the baseline HATR ~6x and a whole training step ~1.5x faster.
    """
    if tc["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer: unknown {tc['optimizer']!r}")
    cls, params = OPTIMIZERS[tc["optimizer"]], list(model.parameters())
    try:
        return cls(params, lr=tc["lr"], weight_decay=tc["weight_decay"], fused=True)
    except (RuntimeError, TypeError, ValueError):  # device or dtype without a fused kernel
        return cls(params, lr=tc["lr"], weight_decay=tc["weight_decay"])


class LRSchedule:
    """Epoch-level schedule (step / plateau / none) times a per-step linear warm-up.

    Written out rather than chained torch schedulers so that warm-up and plateau compose
    without either overwriting the other's lr. ``plateau`` follows ReduceLROnPlateau
    (mode max, relative threshold 1e-4, no cooldown) on the validation hF and is not
    updated during warm-up, when hF is still rising by construction.
    """

    def __init__(self, tc: dict, steps_per_epoch: int) -> None:
        if tc["schedule"] not in ("step", "plateau", "none"):
            raise ConfigError(f"train.schedule: unknown schedule {tc['schedule']!r}")
        self.tc = tc
        self.base = tc["lr"]  # epoch-level lr before warm-up
        self.warmup_steps = tc["warmup_epochs"] * steps_per_epoch
        self.best = -math.inf
        self.bad_epochs = 0

    def lr(self, epoch: int, step: int) -> float:
        """Learning rate of global step ``step`` in (0-based) ``epoch``."""
        lr = self.base
        if self.tc["schedule"] == "step":
            lr *= self.tc["gamma"] ** (epoch // self.tc["step_size"])
        if step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr

    def end_epoch(self, epoch: int, val_hF: float) -> None:
        if self.tc["schedule"] != "plateau" or epoch + 1 <= self.tc["warmup_epochs"]:
            return
        if val_hF > self.best * (1 + 1e-4):  # best is -inf or >= 0
            self.best, self.bad_epochs = val_hF, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.tc["plateau_patience"]:
                self.base *= self.tc["gamma"]
                self.bad_epochs = 0


# ------------------------------------------------------------------------------ timing

class ModelClock:
    """Sums time spent in forward+backward+step without a host sync per batch.

    On CUDA, events are recorded around each step and read once at the end of the epoch
    (one synchronisation); on CPU it is plain perf_counter.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.pairs: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.cpu_seconds = 0.0
        self._t = 0.0

    def start(self) -> None:
        if self.cuda:
            self.pairs.append((torch.cuda.Event(enable_timing=True),
                               torch.cuda.Event(enable_timing=True)))
            self.pairs[-1][0].record(torch.cuda.current_stream(self.device))
        else:
            self._t = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            self.pairs[-1][1].record(torch.cuda.current_stream(self.device))
        else:
            self.cpu_seconds += time.perf_counter() - self._t

    def collect(self) -> float:
        """Seconds accumulated since the last collect (syncs the device once on CUDA)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            secs = sum(a.elapsed_time(b) for a, b in self.pairs) / 1000.0
            self.pairs = []
        else:
            secs, self.cpu_seconds = self.cpu_seconds, 0.0
        return secs


# -------------------------------------------------------------------------------- fit

@dataclass
class FitResult:
    """A trained model (best-validation weights, eval mode) and how it got there."""

    model: nn.Module
    best_epoch: int  # 1-based, as in history
    best_val_hF: float
    epochs: int  # epochs actually run
    # per epoch: epoch, train_loss, val_hF, lr, seconds, model_seconds, val_seconds
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # whole fit, setup and final weight loading included
    model_seconds: float = 0.0  # inside forward+backward+optimizer step


def _tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """float32 tensor on the device; read-only inputs (memmaps) are copied, not aliased."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    return torch.from_numpy(a if a.flags.writeable else a.copy()).to(device)


def _to_device(X: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    return [_tensor(x, device) for x in X]


def _check_inputs(X: list[np.ndarray], y: np.ndarray, modalities: list[str], what: str) -> None:
    if len(X) != len(modalities):
        raise ValueError(f"{what}: {len(X)} embedding arrays but {len(modalities)} modalities")
    for i, x in enumerate(X):
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError(f"{what}[{i}] has shape {x.shape}, expected ({len(y)}, dim)")


@torch.no_grad()
def _predict_logits(model: nn.Module, X: list[torch.Tensor], batch_size: int) -> torch.Tensor:
    n = X[0].shape[0]
    return torch.cat([inference_logits(model([x[i:i + batch_size] for x in X]))
                      for i in range(0, n, batch_size)])


class CheckpointAverage(nn.Module):
    """The mean of the inference logits of several snapshots of one model (the late-fusion system averages
    its 7 best validation checkpoints). Predicts like any model; it is not trained."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, xs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        outs = [m(xs) for m in self.members]
        return {"logits": torch.stack([inference_logits(o) for o in outs]).mean(dim=0),
                "embedding": outs[0]["embedding"]}


def _mixup(xb: list[torch.Tensor], alpha: float, gen: torch.Generator,
           rng: np.random.Generator) -> tuple[list[torch.Tensor], torch.Tensor, float]:
    """Mix each row with a random partner of the batch: (mixed inputs, partner index, lam)."""
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(xb[0].shape[0], generator=gen, device=xb[0].device)
    return [lam * x + (1.0 - lam) * x[perm] for x in xb], perm, lam


@dataclass
class _TrainingRows:
    """The training split on the device, and the loss targets of a batch of its rows."""

    X: list[torch.Tensor]
    y: torch.Tensor
    weight: torch.Tensor | None
    soft: torch.Tensor | None  # KNN distillation: leave-one-out priors of the training rows
    prob: torch.Tensor | None = None  # label distributions (soft pseudo-labels), else one-hot y

    def targets(self, idx: torch.Tensor) -> Targets:
        return Targets(y=self.y[idx], weight=None if self.weight is None else self.weight[idx],
                       soft=None if self.soft is None else self.soft[idx],
                       prob=None if self.prob is None else self.prob[idx])


def _batches_per_epoch(n: int, bs: int, drop_last: bool) -> int:
    if drop_last:
        return max(1, n // bs)
    # a trailing batch of one row would break BatchNorm in train mode: drop it
    return max(1, math.ceil(n / bs) - (n % bs == 1 and n > bs))


def _train_epoch(model: nn.Module, rows: _TrainingRows, loss_fn: nn.Module,
                 opt: torch.optim.Optimizer, sched: LRSchedule, clock: ModelClock, tc: dict,
                 epoch: int, step: int, n_batches: int, gen: torch.Generator,
                 rng: np.random.Generator) -> tuple[float, int, float]:
    """One pass over the shuffled training rows; returns (loss sum, next step, last lr)."""
    model.train()
    n, bs = len(rows.y), tc["batch_size"]
    perm = torch.randperm(n, generator=gen, device=rows.y.device)
    loss_sum = torch.zeros((), device=rows.y.device)
    lr = 0.0
    for b in range(n_batches):
        idx = perm[b * bs:(b + 1) * bs]
        xb = [augment(x[idx], tc, gen) for x in rows.X]
        if tc["mixup_alpha"] > 0:
            xb, partner, lam = _mixup(xb, tc["mixup_alpha"], gen, rng)
        lr = sched.lr(epoch, step)
        for g in opt.param_groups:
            g["lr"] = lr

        clock.start()
        out = model(xb)
        if tc["mixup_alpha"] > 0:
            loss = (lam * loss_fn(out, rows.targets(idx))
                    + (1 - lam) * loss_fn(out, rows.targets(idx[partner])))
        else:
            loss = loss_fn(out, rows.targets(idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc["grad_clip"] > 0:
            nn.utils.clip_grad_norm_(model.parameters(), tc["grad_clip"])
        opt.step()
        clock.stop()

        loss_sum += loss.detach() * len(idx)
        step += 1
    return loss_sum.item(), step, lr


def _validate(model: nn.Module, X_val: list[torch.Tensor], y_val: np.ndarray,
              device: torch.device) -> tuple[float, float]:
    """Strict hF on the whole validation split, a few large batches, one transfer back;
    returns (hF, seconds)."""
    if device.type == "cuda":  # let queued training kernels finish outside the val clock
        torch.cuda.synchronize(device)
    t_val = time.perf_counter()
    model.eval()
    val_pred = _predict_logits(model, X_val, 8192).argmax(dim=1).cpu().numpy()
    return hf_score(y_val, val_pred, variant="strict"), time.perf_counter() - t_val


Snapshot = tuple[float, int, dict]  # (val hF, 1-based epoch, weights on the CPU)


def _keep_top(best: list[Snapshot], val_hf: float, epoch: int, model: nn.Module,
              top_k: int) -> list[Snapshot]:
    """The ``top_k`` best snapshots so far, best first."""
    if len(best) < top_k or val_hf > best[-1][0]:
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        best = sorted([*best, (val_hf, epoch, state)], key=lambda b: -b[0])[:top_k]
    return best


def _best_model(model: nn.Module, best: list[Snapshot], build: Callable[[], nn.Module]) -> nn.Module:
    """The best snapshot's weights, or the average of the kept snapshots (post.ckpt_avg)."""
    model.load_state_dict(best[0][2])
    model.eval()
    if len(best) == 1:
        return model
    members = [model]
    for _, _, state in best[1:]:
        m = build()
        m.load_state_dict(state)
        members.append(m.eval())
    return CheckpointAverage(members).eval()


def _training_rows(X: list[np.ndarray], y: np.ndarray, modalities: list[str],
                   sample_weight: np.ndarray | None, target_proba: np.ndarray | None,
                   device: torch.device) -> _TrainingRows:
    """The training split checked and on the device once."""
    _check_inputs(X, y, modalities, "X_train")
    if sample_weight is not None and len(sample_weight) != len(y):
        raise ValueError(f"sample_weight has {len(sample_weight)} rows, X_train {len(y)}")
    if target_proba is not None and np.shape(target_proba) != (len(y), N_CLASSES):
        raise ValueError(f"target_proba has shape {np.shape(target_proba)}, expected "
                         f"({len(y)}, {N_CLASSES})")
    return _TrainingRows(_to_device(X, device), torch.as_tensor(y).to(device),
                         None if sample_weight is None else _tensor(sample_weight, device), None,
                         None if target_proba is None else _tensor(target_proba, device))


def fit(cfg: dict, X_train: list[np.ndarray], y_train: np.ndarray, X_val: list[np.ndarray],
        y_val: np.ndarray, *, modalities: list[str], seed: int,
        sample_weight: np.ndarray | None = None, device: torch.device | str | None = None,
        on_epoch: Callable[[dict], None] | None = None, init_state: dict | None = None,
        max_epochs: int | None = None, average_top: int | None = None,
        target_proba: np.ndarray | None = None) -> FitResult:
    """Train ``cfg["model"]`` with early stopping on the validation strict hF.

    ``X_*[i]`` are (n, dim_i) embeddings of backbone ``cfg["backbones"][i]``; ``y_*`` class
    indices in taxonomy order; ``sample_weight`` optional per-row loss weights. ``on_epoch``
    receives each history row (and may raise, e.g. to prune the trial). ``device``: a
    torch.device, a name for :func:`pick_device`, or None for "auto". ``init_state`` starts
    from given weights (two-stage fine-tuning); ``max_epochs`` and ``average_top`` override
    ``train.max_epochs`` and ``post.ckpt_avg`` (auxiliary fits: teachers, EL2N, stage 1).
    ``target_proba`` (n, 23), rows summing to 1, trains towards label distributions instead
    of one-hot ``y_train`` (soft pseudo-labels); ``y_train`` should then be its argmax.
    """
    t_fit = time.perf_counter()
    tc = cfg["train"]
    max_epochs = tc["max_epochs"] if max_epochs is None else max_epochs
    top_k = cfg["post"]["ckpt_avg"] if average_top is None else average_top
    device = device if isinstance(device, torch.device) else pick_device(device or "auto")
    y_train = np.asarray(y_train, dtype=np.int64)
    y_val = np.asarray(y_val, dtype=np.int64)
    _check_inputs(X_val, y_val, modalities, "X_val")
    rows = _training_rows(X_train, y_train, modalities, sample_weight, target_proba, device)
    Xva = _to_device(X_val, device)
    n, bs = len(y_train), tc["batch_size"]
    n_batches = _batches_per_epoch(n, bs, tc["drop_last"])

    # model, loss, optimizer
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed)  # mixup's Beta draws
    dims = [x.shape[1] for x in X_train]
    model = build_model(cfg, dims, modalities).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    loss_fn = build_loss(cfg, np.bincount(y_train, minlength=N_CLASSES)).to(device)
    if loss_fn.needs_soft_targets:
        lc = cfg["loss"]
        rows.soft = torch.as_tensor(KnnPrior(retrieval_space(X_train), y_train, k=lc["knn_k"],
                                             tau=lc["knn_tau"], device=device).predict()).to(device)
    opt = make_optimizer(tc, model)
    sched = LRSchedule(tc, n_batches)
    clock = ModelClock(device)

    history: list[dict] = []
    best: list[Snapshot] = []  # the top_k snapshots, best first
    since_best = 0
    step = 0
    for epoch in range(max_epochs):
        t_epoch = time.perf_counter()
        loss_sum, step, lr = _train_epoch(model, rows, loss_fn, opt, sched, clock, tc, epoch,
                                          step, n_batches, gen, rng)
        val_hf, val_secs = _validate(model, Xva, y_val, device)
        sched.end_epoch(epoch, val_hf)
        since_best = 0 if not best or val_hf > best[0][0] else since_best + 1
        best = _keep_top(best, val_hf, epoch + 1, model, top_k)

        model_secs = clock.collect()  # syncs on CUDA, so the epoch clock below is honest
        row = {"epoch": epoch + 1, "train_loss": loss_sum / min(n, n_batches * bs),
               "val_hF": val_hf, "lr": lr, "seconds": time.perf_counter() - t_epoch,
               "model_seconds": model_secs, "val_seconds": val_secs}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if since_best >= tc["patience"]:
            break

    model = _best_model(model, best, lambda: build_model(cfg, dims, modalities).to(device))
    return FitResult(model=model, best_epoch=best[0][1], best_val_hF=float(best[0][0]),
                     epochs=len(history), history=history, seconds=time.perf_counter() - t_fit,
                     model_seconds=sum(r["model_seconds"] for r in history))


def predict_proba(model: nn.Module, X: list[np.ndarray], *,
                  device: torch.device | str | None = None, batch_size: int = 8192) -> np.ndarray:
    """(n, 23) float32 softmax probabilities, in eval mode, chunked to bound memory.

    ``device`` None keeps the model where it is; otherwise the model is moved there.
    """
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    elif not isinstance(device, torch.device):
        device = pick_device(device)
    model = model.to(device).eval()
    n = len(X[0])
    out = []
    with torch.no_grad():
        for i in range(0, n, batch_size):
            xb = [_tensor(x[i:i + batch_size], device) for x in X]
            out.append(inference_logits(model(xb)).float().softmax(dim=1).cpu())
    if not out:
        return np.zeros((0, N_CLASSES), dtype=np.float32)
    return torch.cat(out).numpy()
