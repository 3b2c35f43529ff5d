"""Shared pieces of the training recipes: threads, augmentation, losses, checkpoint-and-resume loop.

Every recipe keeps its run folder (``--run-dir``) outside git: ``last.pt`` (written after every
epoch, atomically), ``best.pt`` (the best validation epoch), ``history.jsonl`` and ``train.log``.
Running the same command again resumes from ``last.pt``; a finished run only re-exports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger("training")


def setup_run(run_dir: Path, threads: int = 1, seed: int = 0) -> Path:
    """Create the run folder, log to ``train.log`` and stdout, fix threads and seeds."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == (run_dir / "train.log").resolve() for h in root.handlers):
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)
        if not any(type(h) is logging.StreamHandler for h in root.handlers):
            root.addHandler(logging.StreamHandler())
        root.setLevel(logging.INFO)
    if threads > 0:
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return run_dir


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast for a training forward pass where asked for (CPUs with AVX-512 BF16 / AMX gain
    1.4–2.5×; losses are computed in fp32 outside it), else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    return f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} thread(s)"


# --------------------------------------------------------------------------- augmentation

@dataclass(frozen=True)
class Augment:
    """Random geometric (and optional intensity) augmentation applied to a batch on the fly."""

    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.06
    hflip: float = 0.5
    gamma: tuple[float, float] = (1.0, 1.0)  # (1, 1) = off; intensity aug is pointless before histogram equalisation
    contrast: float = 0.0

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """images B×C×S×S float, targets B×K×S×S float (0/1): the same random affine for both."""
        b = images.shape[0]
        rnd = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
        angle = (rnd(b) * 2 - 1) * math.radians(self.rotate_deg)
        scale = self.scale[0] + rnd(b) * (self.scale[1] - self.scale[0])
        flip = torch.where(rnd(b) < self.hflip, -1.0, 1.0)
        tx, ty = (rnd(b) * 2 - 1) * self.shift * 2, (rnd(b) * 2 - 1) * self.shift * 2
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        targets = F.grid_sample(targets, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.gamma != (1.0, 1.0):
            gamma = self.gamma[0] + rnd(b, 1, 1, 1) * (self.gamma[1] - self.gamma[0])
            images = images.clamp(0, 1) ** gamma
        if self.contrast:
            factor = 1 + (rnd(b, 1, 1, 1) * 2 - 1) * self.contrast
            mean = images.mean(dim=(1, 2, 3), keepdim=True)
            images = ((images - mean) * factor + mean).clamp(0, 1)
        return images, targets


# --------------------------------------------------------------------------- losses and metrics

def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, smooth: float = 1.0) -> torch.Tensor:
    """Mean BCE + batch soft-Dice loss (Dice over the whole batch, so empty masks do not explode)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if weight is not None:
        bce = bce * weight
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    dice = 1 - (2 * inter + smooth) / (prob.sum() + target.sum() + smooth)
    return bce.mean() + dice


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(pred, truth).sum() / total)


# --------------------------------------------------------------------------- the loop

@dataclass
class LoopState:
    epoch: int = 0  # epochs completed
    best_metric: float = -math.inf
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip_params=None, max_norm: float = 5.0) -> float:
    """Back-propagate ``loss`` and take one step (gradient norm clipped to ``max_norm`` over
    ``clip_params`` when given); returns the loss value for the epoch mean."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_params is not None:
        torch.nn.utils.clip_grad_norm_(clip_params, max_norm)
    optimizer.step()
    return loss.item()


def cosine_lr(base_lr: float, epoch: int, epochs: int, warmup: int = 1) -> float:
    if epoch < warmup:
        return base_lr * (epoch + 1) / (warmup + 1)
    progress = (epoch - warmup) / max(1, epochs - warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) + base_lr * 0.01


def run_loop(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epochs: int, base_lr: float,
             train_epoch: Callable[[int], float], validate: Callable[[], dict], select: str, config: dict) -> LoopState:
    """Epoch loop with resume: ``train_epoch(epoch) → mean loss``, ``validate() → metrics``;
    the best epoch by ``metrics[select]`` (higher is better) is kept in ``best.pt``."""
    run_dir = Path(run_dir)
    last, best = run_dir / "last.pt", run_dir / "best.pt"
    state = LoopState()
    if last.is_file():
        saved = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = LoopState(**saved["state"])
        torch.set_rng_state(saved["torch_rng"])
        np.random.set_state(saved["numpy_rng"])
        logger.info("Resumed %s at epoch %d/%d (best %s %.4f at epoch %d)", run_dir, state.epoch, epochs, select, state.best_metric, state.best_epoch)
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
    while state.epoch < epochs:
        epoch = state.epoch
        lr = cosine_lr(base_lr, epoch, epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        started = time.time()
        model.train()
        loss = train_epoch(epoch)
        model.eval()
        with torch.inference_mode():
            metrics = validate()
        seconds = time.time() - started
        entry = {"epoch": epoch + 1, "lr": lr, "train_loss": loss, "seconds": round(seconds, 1), **metrics}
        state.history.append(entry)
        state.epoch = epoch + 1
        value = float(metrics[select]) if math.isfinite(float(metrics[select])) else -1e9
        if value > state.best_metric or state.best_epoch < 0:
            state.best_metric, state.best_epoch = value, epoch + 1
            _atomic_save({"model": model.state_dict(), "epoch": epoch + 1, "metrics": metrics}, best)
        _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state.__dict__,
                      "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state()}, last)
        with open(run_dir / "history.jsonl", "a") as handle:
            handle.write(json.dumps(entry) + "\n")
        logger.info("epoch %d/%d %.0fs loss %.4f %s", epoch + 1, epochs, seconds, loss,
                    " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    return state


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def load_best(model: torch.nn.Module, run_dir: Path) -> dict:
    saved = torch.load(Path(run_dir) / "best.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(saved["model"])
    return saved


def total_seconds(state: LoopState) -> float:
    return float(sum(h.get("seconds", 0.0) for h in state.history))


def write_training_summary(run_dir: Path, state: LoopState, extra: dict) -> dict:
    """``training_summary.json`` in the run folder: what the model card needs."""
    best = next((h for h in state.history if h["epoch"] == state.best_epoch), {})
    summary = {"epochs": state.epoch, "best_epoch": state.best_epoch, "train_seconds": round(total_seconds(state)),
               "best_val": {k: v for k, v in best.items() if k not in ("lr", "seconds")}, **extra}
    (Path(run_dir) / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def batches(n: int, batch_size: int, shuffle: bool, rng: np.random.RandomState | None = None):
    order = (rng or np.random).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]
