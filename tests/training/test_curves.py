"""training.curves reads the run folders the recipes leave (nnU-Net's checkpoint log, our history.jsonl)."""

from __future__ import annotations

import json

import torch

from training.curves import history, nnunet_log, plot


def test_curves_read_both_kinds_of_run_folder_and_skip_missing_ones(tmp_path):
    fold = tmp_path / "nnunet_2d_256" / "nnUNet_results" / "Dataset502_X" / "T__P__2d" / "fold_0"
    fold.mkdir(parents=True)
    torch.save({"logging": {"train_losses": [-0.1, -0.3], "val_losses": [-0.2, -0.25], "ema_fg_dice": [0.4, 0.5],
                            "dice_per_class_or_region": [[0.4], [0.5]]}}, fold / "checkpoint_latest.pth")
    (tmp_path / "convnext_fpn_256").mkdir()
    (tmp_path / "convnext_fpn_256" / "history.jsonl").write_text(
        "\n".join(json.dumps({"epoch": e, "train_loss": 1.0 / e, "val_dice_pos": 0.1 * e}) for e in (1, 2, 3)))
    assert nnunet_log(tmp_path / "nnunet_2d_256") == {"train_losses": [-0.1, -0.3], "val_losses": [-0.2, -0.25], "ema_fg_dice": [0.4, 0.5]}
    assert [row["epoch"] for row in history(tmp_path / "convnext_fpn_256")] == [1, 2, 3]
    assert nnunet_log(tmp_path / "nnunet_2d_192_histeq") is None and history(tmp_path / "absent") is None
    out = tmp_path / "curves.png"
    assert plot(tmp_path, out) == ["nnunet_2d_256", "convnext_fpn_256"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
