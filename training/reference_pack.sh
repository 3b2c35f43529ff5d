#!/usr/bin/env bash
# Re-train the reference pack in models/ from COVID-QU-Ex, sequentially, one thread per process.
# Resumable: every step skips or resumes what is already done, so run it again after an interruption.
#   training/reference_pack.sh "…/COVID-QU-Ex/Infection Segmentation Data/Train" /work/train_runs [models]
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:?COVID-QU-Ex Train folder}
R=${2:?run folder (outside git)}
M=${3:-models}
E=$R/export
DEV=${DEVICE:-cpu}
mkdir -p "$R"
python -m training.train_lung --data "$D" --out "$E/lung_unet_128" --run-dir "$R/lung_unet_128" --size 128 --epochs 4 --device "$DEV"
python -m training.train_convnext_fpn --data "$D" --out "$E/convnext_fpn_256" --run-dir "$R/convnext_fpn_256" --size 256 --epochs 10 --device "$DEV"
python -m training.nnunet --data "$D" --work "$R/nnunet_2d_192_histeq" --dataset-id 501 --name CxrOpacity192 --size 192 \
  --features 8,16,32,64,128 --trainer histeq --epochs 60 --iterations 25 --val-iterations 5 --out "$E/nnunet_2d_192_histeq" --device "$DEV"
python -m training.nnunet --data "$D" --work "$R/nnunet_2d_256" --dataset-id 502 --name CxrOpacity256 --size 256 \
  --features 8,16,32,64,128 --trainer short --epochs 80 --iterations 25 --val-iterations 5 --out "$E/nnunet_2d_256" --device "$DEV"
python -m training.crops --data "$D" --out "$R/nnunet_refine_128/crops"
python -m training.nnunet --data "$R/nnunet_refine_128/crops" --work "$R/nnunet_refine_128" --dataset-id 503 --name CxrRefine128 --size 128 \
  --features 8,16,32,64,128 --trainer short --epochs 40 --iterations 50 --val-iterations 10 --out "$E/nnunet_refine_128" --device "$DEV"
python -m training.train_classifier --data "$D" --out "$E/xrv_densenet121_opacity" --run-dir "$R/xrv_densenet121_opacity" \
  --epochs 3 --low-res-epochs 2 --low-res 112 --max-full-res-images 400 --device "$DEV"
python -m training.make_pack assemble --exports "$E" --runs "$R" --out "$M"
python -m training.calibrate --models "$M" --data "$D" --cache "$R/eval" --max-calib-per-class 100
python -m training.evaluate --models "$M" --data "$D" --split val --out "$R/report" --cache "$R/eval"
python -m training.make_pack cards --models "$M" --runs "$R" --metrics "$R/report/metrics.json"
echo "reference pack in $M; report in $R/report/report.html"
