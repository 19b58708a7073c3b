"""fit / predict_proba on tiny in-memory data: learning, determinism, early stopping,
checkpoint choice and augmentation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from bst_search.config import load
from bst_search.metrics import hf_score
from bst_search.training import (
    LRSchedule,
    augment,
    fit,
    make_optimizer,
    mask_bernoulli,
    mask_count,
    pick_device,
    predict_proba,
)

CLASSES = [0, 3, 8, 11, 16, 19]  # spread over the 5 top levels
CPU = torch.device("cpu")


def toy(n: int = 300, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Gaussian classes: a clean 16-dim 'audio' view and a noisier 24-dim 'text' view."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(size=(23, 40))
    y = rng.choice(CLASSES, n)
    X = [(3 * centers[y, :16] + rng.normal(size=(n, 16))).astype(np.float32),
         (centers[y, 16:] + rng.normal(size=(n, 24))).astype(np.float32)]
    return X, y


def split(X: list[np.ndarray], y: np.ndarray, n_train: int = 200):
    return [x[:n_train] for x in X], y[:n_train], [x[n_train:] for x in X], y[n_train:]


def small_cfg(name: str = "hatr", **over: object) -> dict:
    base = {"backbones": ["a", "b"], "model.name": name, "model.hidden": 32, "model.heads": 4,
            "model.res_blocks": 1, "model.dropout": 0.1, "train.lr": 3e-3,
            "train.batch_size": 32, "train.max_epochs": 12, "train.patience": 50,
            "train.mask_mode": "none", "train.noise_std": 0.0}
    return load(None, {**base, **over})


MODS = ["audio", "text"]


@pytest.mark.parametrize("name", ["hatr", "late_fusion"])
def test_fit_learns_separable_toy_problem(name: str) -> None:
    Xtr, ytr, Xva, yva = split(*toy())
    res = fit(small_cfg(name, **{"train.warmup_epochs": 1, "loss.alpha": 0.3,
                                 "train.schedule": "plateau", "train.grad_clip": 1.0,
                                 "train.batch_size": 16, "train.max_epochs": 15}),
              Xtr, ytr, Xva, yva, modalities=MODS, seed=0, device=CPU)
    assert res.best_val_hF > 0.9
    assert not res.model.training
    assert len(res.history) == res.epochs == 15
    assert set(res.history[0]) >= {"epoch", "train_loss", "val_hF", "lr", "seconds"}
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert 0 < res.model_seconds <= res.seconds


def test_same_seed_same_predictions_other_seed_differs() -> None:
    Xtr, ytr, Xva, yva = split(*toy())
    cfg = small_cfg(**{"train.max_epochs": 3, "train.mask_mode": "count", "train.noise_std": 0.01,
                       "train.drop_last": False})
    probs = [predict_proba(fit(cfg, Xtr, ytr, Xva, yva, modalities=MODS, seed=s, device=CPU).model,
                           Xva) for s in (5, 5, 6)]
    assert np.array_equal(probs[0], probs[1])
    assert not np.array_equal(probs[0], probs[2])


def test_early_stopping_and_best_checkpoint() -> None:
    X, _ = toy()
    y = np.random.default_rng(1).choice(CLASSES, len(X[0]))  # labels unrelated to X
    Xtr, ytr, Xva, yva = split(X, y)
    res = fit(small_cfg(**{"train.max_epochs": 40, "train.patience": 2, "train.lr": 1e-2}),
              Xtr, ytr, Xva, yva, modalities=MODS, seed=0, device=CPU)
    assert res.epochs < 40
    hfs = [r["val_hF"] for r in res.history]
    assert res.best_epoch == res.history[int(np.argmax(hfs))]["epoch"]
    assert res.best_val_hF == max(hfs)
    assert res.epochs - res.best_epoch == 2
    # the returned weights are those of the best epoch, not the last one
    pred = predict_proba(res.model, Xva).argmax(1)
    assert hf_score(yva, pred) == pytest.approx(res.best_val_hF)


def test_on_epoch_and_sample_weight() -> None:
    Xtr, ytr, Xva, yva = split(*toy())
    rows: list[dict] = []
    w = np.where(ytr == CLASSES[0], 0.0, 1.0)
    res = fit(small_cfg(**{"train.max_epochs": 2}), Xtr, ytr, Xva, yva, modalities=MODS, seed=0,
              sample_weight=w, device=CPU, on_epoch=rows.append)
    assert rows == res.history


def test_predict_proba_rows_sum_to_one() -> None:
    Xtr, ytr, Xva, yva = split(*toy())
    res = fit(small_cfg(**{"train.max_epochs": 1}), Xtr, ytr, Xva, yva, modalities=MODS, seed=0,
              device="cpu")
    p = predict_proba(res.model, Xva, batch_size=7, device="cpu")
    assert p.dtype == np.float32 and p.shape == (len(yva), 23)
    assert np.allclose(p.sum(1), 1.0, atol=1e-5) and (p >= 0).all()
    assert np.allclose(p, predict_proba(res.model, Xva), atol=1e-6)  # chunking is invisible


def test_mask_count_zeroes_1_to_floor_p_dim() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.ones(4000, 50)
    zeros = (mask_count(x, 0.7, g) == 0).sum(1)
    assert zeros.min() == 1 and zeros.max() == 35  # floor(0.7 * 50)
    assert zeros.float().mean().item() == pytest.approx(18.0, abs=0.5)  # mean of U{1..35}
    assert torch.equal(mask_count(x, 0.01, g), x)  # floor(0.5) = 0: nothing to mask


def test_mask_bernoulli_fraction() -> None:
    g = torch.Generator().manual_seed(0)
    frac = (mask_bernoulli(torch.ones(2000, 64), 0.1, g) == 0).float().mean().item()
    assert frac == pytest.approx(0.1, abs=0.01)


def test_augment_none_is_identity_and_noise_is_small() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 8)
    tc = small_cfg()["train"]
    assert torch.equal(augment(x, tc, g), x)
    noisy = augment(x, {**tc, "noise_std": 1e-4}, g)
    assert 0 < (noisy - x).abs().max() < 1e-3


def test_lr_schedule_warmup_step_plateau() -> None:
    tc = small_cfg(**{"train.lr": 1.0, "train.warmup_epochs": 2, "train.schedule": "step",
                      "train.step_size": 3, "train.gamma": 0.5})["train"]
    s = LRSchedule(tc, steps_per_epoch=4)
    assert [s.lr(e, e * 4) for e in range(7)] == pytest.approx([1 / 8, 5 / 8, 1, 0.5, 0.5, 0.5, 0.25])
    tc = {**tc, "schedule": "plateau", "warmup_epochs": 0, "plateau_patience": 1}
    s = LRSchedule(tc, steps_per_epoch=4)
    for e, hf in enumerate([0.5, 0.5, 0.5, 0.6, 0.6, 0.6]):
        s.end_epoch(e, hf)
    assert s.lr(6, 100) == pytest.approx(0.25)


def test_pick_device() -> None:
    assert pick_device("cpu") == CPU
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            pick_device("cuda")


def test_read_only_inputs_are_accepted_without_warnings() -> None:
    Xtr, ytr, Xva, yva = split(*toy())
    for x in Xtr + Xva:
        x.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = fit(small_cfg(**{"train.max_epochs": 1}), Xtr, ytr, Xva, yva, modalities=MODS,
                  seed=0, device=CPU)
        assert predict_proba(res.model, [x[:, ::1] for x in Xva]).shape == (len(yva), 23)


def test_optimizer_uses_fused_kernel_when_available() -> None:
    opt = make_optimizer(small_cfg(**{"train.optimizer": "adamw"})["train"], torch.nn.Linear(3, 4))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]


@pytest.mark.parametrize("head, over", [("gc", {"loss.top": 1.0}), ("lcl", {"loss.top": 1.0}),
                                        ("proxy", {"loss.ce": 0.0, "loss.proxy": 1.0})])
def test_every_head_learns_the_toy_problem(head: str, over: dict) -> None:
    Xtr, ytr, Xva, yva = split(*toy())
    cfg = small_cfg("late_fusion", **{"model.head": head, "model.fusion": "gated",
                                      "train.max_epochs": 15, "train.batch_size": 16, **over})
    res = fit(cfg, Xtr, ytr, Xva, yva, modalities=MODS, seed=0, device=CPU)
    assert res.best_val_hF > 0.8
    p = predict_proba(res.model, Xva)
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_checkpoint_average_is_the_mean_of_the_top_k_snapshots() -> None:
    from bst_search.models import inference_logits
    from bst_search.training import CheckpointAverage

    Xtr, ytr, Xva, yva = split(*toy())
    res = fit(small_cfg(**{"post.ckpt_avg": 3, "train.max_epochs": 6}), Xtr, ytr, Xva, yva,
              modalities=MODS, seed=0, device=CPU)
    assert isinstance(res.model, CheckpointAverage) and len(res.model.members) == 3
    top3 = sorted(r["val_hF"] for r in res.history)[-3:]
    assert res.best_val_hF == top3[-1]
    xs = [torch.as_tensor(x) for x in Xva]
    with torch.no_grad():
        mean = torch.stack([inference_logits(m(xs)) for m in res.model.members]).mean(0)
        assert torch.allclose(res.model(xs)["logits"], mean)
    one = fit(small_cfg(**{"train.max_epochs": 6}), Xtr, ytr, Xva, yva, modalities=MODS, seed=0,
              device=CPU)
    # the first member is the single best checkpoint, the same one a plain fit keeps
    assert np.allclose(predict_proba(res.model.members[0], Xva), predict_proba(one.model, Xva))


def test_mixup_and_knn_distillation_train_and_are_deterministic() -> None:
    Xtr, ytr, Xva, yva = split(*toy())
    cfg = small_cfg(**{"train.mixup_alpha": 0.4, "loss.knn_distill": 1.0, "loss.knn_k": 5,
                       "train.max_epochs": 15})
    a, b = (fit(cfg, Xtr, ytr, Xva, yva, modalities=MODS, seed=1, device=CPU) for _ in range(2))
    assert a.best_val_hF > 0.8
    assert np.array_equal(predict_proba(a.model, Xva), predict_proba(b.model, Xva))
    plain = fit(small_cfg(**{"train.max_epochs": 1}), Xtr, ytr, Xva, yva, modalities=MODS, seed=1,
                device=CPU)
    assert a.history[0]["train_loss"] != plain.history[0]["train_loss"]


def test_init_state_starts_from_given_weights() -> None:
    Xtr, ytr, Xva, yva = split(*toy())
    cfg = small_cfg(**{"train.max_epochs": 5})
    trained = fit(cfg, Xtr, ytr, Xva, yva, modalities=MODS, seed=0, device=CPU)
    tiny_lr = small_cfg(**{"train.max_epochs": 1, "train.lr": 1e-6})
    again = fit(tiny_lr, Xtr, ytr, Xva, yva, modalities=MODS, seed=3, device=CPU,
                init_state=trained.model.state_dict())
    fresh = fit(tiny_lr, Xtr, ytr, Xva, yva, modalities=MODS, seed=3, device=CPU)
    assert again.best_val_hF > fresh.best_val_hF + 0.2
    assert again.best_val_hF == pytest.approx(trained.best_val_hF, abs=0.05)


def test_assigned_device_follows_ray_not_cuda_availability() -> None:
    from bst_search.training import assigned_device, assigned_threads

    # no GPU assigned: the CPU, even on a machine where CUDA is available
    assert assigned_device([], cuda_available=True, visible="0,1") == "cpu"
    assert assigned_device([], cuda_available=True, visible=None) == "cpu"
    # Ray narrows CUDA_VISIBLE_DEVICES to the assigned ids: device index = position there
    assert assigned_device(["3"], cuda_available=True, visible="3") == "cuda:0"
    assert assigned_device(["3"], cuda_available=True, visible="1,3") == "cuda:1"
    assert assigned_device([2], cuda_available=True, visible=None) == "cuda:2"  # not narrowed
    with pytest.raises(RuntimeError, match="assigned GPU 0"):
        assigned_device(["0"], cuda_available=False)
    assert [assigned_threads(c) for c in (0.5, 1, 2.0, 4)] == [1, 1, 2, 4]
