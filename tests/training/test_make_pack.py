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
