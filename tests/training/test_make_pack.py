"""The pack's recorded re-train commands name no machine path (training/make_pack.py)."""

from __future__ import annotations

from pathlib import Path

from training.make_pack import portable_command


def test_data_and_run_folders_become_variables_even_when_the_summary_has_no_data_field():
    runs = Path("/somewhere/train_runs")
    command = ("python -m training.nnunet --data '/mnt/data/COVID-QU-Ex/Infection Segmentation Data/Train' /mnt/qata "
               "--work /somewhere/train_runs/nnunet_2d_256 --size 256 --out /somewhere/train_runs/export/nnunet_2d_256")
    portable = portable_command(command, data=None, runs=runs)
    assert portable == ('python -m training.nnunet --data "$DATA" $DATA --work $RUNS/nnunet_2d_256 --size 256 '
                        "--out $RUNS/export/nnunet_2d_256")
    assert "/mnt" not in portable and "/somewhere" not in portable


def test_every_card_reports_the_blend_against_the_targets():
    from training.make_pack import pack_results_lines

    def entry(dice, loss):
        return {"dice_mean_pos": dice, "logloss_class_balanced": loss}

    metrics = {"maps": {"expert_a": entry(0.6, 0.40), "final: Zones": entry(0.76, 0.30), "final: Weighted": entry(0.70, 0.45),
                        "lung prior alone (positive-study passes)": entry(0.0, 0.50)},
               "scores": {"gate mean (final maps)": {"auc": 0.96}, "classifier": {"auc": 0.9}, "expert_a": {"auc": 0.84}},
               "gate_specificity": 0.96}
    text = "\n".join(pack_results_lines(metrics))
    assert "Zones 0.760, Weighted 0.700 (target ≥ 0.7 for both: reached)" in text
    assert "classifier 0.900, expert_a 0.840 (target ≥ 0.85 each: **not reached**)" in text
    assert "specificity on clean negatives at the manifest's threshold: 0.960 (target ≥ 0.95: reached)" in text
    assert "0.960 (target ≥ 0.97: **not reached**)" in text
    assert "(target: lower than both: **not reached**)" in text  # Weighted 0.45 is not below the expert's 0.40
    metrics["maps"]["final: Weighted"] = entry(0.69, 0.35)
    text = "\n".join(pack_results_lines(metrics))
    assert "(target: lower than both: reached)" in text
    assert "Weighted 0.690 (target ≥ 0.7 for both: **not reached**)" in text


def test_a_continued_run_keeps_its_first_command_and_initialisation():
    from training.nnunet import continued_commands

    first = "python -m training.nnunet --epochs 200 --init /old/pack/nnunet_2d_256"
    second = "python -m training.nnunet --epochs 400"
    assert continued_commands({}, first) == [first]
    assert continued_commands({"command": first}, second) == [first, second]  # a summary from before the history
    assert continued_commands({"commands": [first, second], "command": second}, second) == [first, second]  # rerun: once


def test_a_card_lists_every_command_of_a_continued_run(tmp_path):
    import json

    from training.make_pack import _summary

    runs = tmp_path / "runs"
    (runs / "m").mkdir(parents=True)
    (runs / "m" / "training_summary.json").write_text(json.dumps({
        "init": "previous pack", "command": f"python -m training.nnunet --work {runs}/m --epochs 400",
        "commands": [f"python -m training.nnunet --work {runs}/m --epochs 200", f"python -m training.nnunet --work {runs}/m --epochs 400"]}))
    summary = _summary(runs, "m")
    assert summary["commands"] == ["python -m training.nnunet --work $RUNS/m --epochs 200", "python -m training.nnunet --work $RUNS/m --epochs 400"]
    assert _summary(runs, "absent")["commands"] == []
