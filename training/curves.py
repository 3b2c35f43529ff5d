"""Training curves of a pack's run folders, in one figure (docs/training.md shows the reference pack's).

    python -m training.curves --runs RUNS --out docs/training_curves.png

Reads what the recipes leave behind: nnU-Net's own per-epoch log inside ``fold_0/checkpoint_final.pth``
(or ``checkpoint_latest.pth`` of a run stopped early) — train loss, val loss, EMA pseudo-Dice on its
val patches — and ``history.jsonl`` of our recipes (ConvNeXt-FPN: train loss, val Dice; classifier:
train loss, val AUC). A model whose run folder is missing is left out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

NNUNETS = ("nnunet_2d_256", "nnunet_2d_192_histeq", "nnunet_refine_128")
HISTORIES = {"convnext_fpn_256": "val_dice_pos", "xrv_densenet121_opacity": "val_auc"}


def nnunet_log(run: Path) -> dict[str, list[float]] | None:
    """nnU-Net's per-epoch train_losses, val_losses and ema_fg_dice of a run folder."""
    import torch

    from training.nnunet import checkpoint_of

    trainer_folders = sorted(path.parent for path in Path(run).glob("nnUNet_results/*/*/fold_0"))
    checkpoint = checkpoint_of(trainer_folders[0]) if trainer_folders else None
    if checkpoint is None or not checkpoint.is_file():
        return None
    logging = torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]
    return {k: [float(v) for v in logging[k]] for k in ("train_losses", "val_losses", "ema_fg_dice")}


def history(run: Path) -> list[dict] | None:
    """Our recipes' ``history.jsonl`` (one JSON object per epoch)."""
    path = Path(run) / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else None


def plot(runs: Path, out: Path) -> list[str]:
    """Draw every model found under ``runs``; returns the names drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, nnunet_log(runs / name)) for name in NNUNETS] + [(name, history(runs / name)) for name in HISTORIES]
    panels = [(name, data) for name, data in panels if data]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, data) in zip(axes[0], panels):
        right = ax.twinx()
        if isinstance(data, dict):
            epochs = np.arange(1, len(data["train_losses"]) + 1)
            ax.plot(epochs, data["train_losses"], lw=0.8, label="train loss")
            ax.plot(epochs, data["val_losses"], lw=0.8, label="val loss")
            right.plot(epochs, data["ema_fg_dice"], color="tab:green", lw=1.2, label="EMA pseudo-Dice")
            right.set_ylabel("pseudo-Dice (val patches)")
        else:
            metric = HISTORIES[name]
            epochs = [row["epoch"] for row in data]
            ax.plot(epochs, [row["train_loss"] for row in data], lw=0.8, marker=".", label="train loss")
            right.plot(epochs, [row[metric] for row in data], color="tab:green", lw=1.2, marker=".", label=metric)
            right.set_ylabel(metric)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        ax.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="center right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return [name for name, _ in panels]


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, required=True, help="the folder holding one run folder per model")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    drawn = plot(args.runs, args.out)
    print(f"wrote {args.out}: {', '.join(drawn)}")
    return drawn


if __name__ == "__main__":
    main()
