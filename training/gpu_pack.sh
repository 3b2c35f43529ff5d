#!/usr/bin/env bash
# Train the production-size pack on one GPU (an H200: about 10 minutes of wall time), then calibrate,
# evaluate and write it, every weight fp16 where the loader converts back (the pack stays < 60 MB).
#
#   training/gpu_pack.sh DATA RUNS OUT [--toy]
#
# DATA: a COVID-QU-Ex "Infection Segmentation Data/Train" folder, or a carry folder made by
#       python -m training.gpu_bundle bundle --data ... --out CARRY --wheels
#       (cqe.npz + wheels/ + site/ + stubs/: what a lent GPU machine without network needs).
# RUNS: run folder (resumable: run the same command again after an interruption).
# OUT:  the models folder to write (then compare its RUNS/report with the committed pack's and
#       replace models/ only when it is better).
# --toy: the same steps at toy sizes, epochs and data on the CPU (what CI runs).
#
# Production settings (models/README.md, docs/training.md): nnU-Nets at 336 (hist-eq) and 768 with
# default-like plans (features 32 -> 512, one pooling per stage), the refinement nnU-Net at 256,
# ConvNeXt-FPN (convnext_tiny trunk, random init: no CLIP checkpoint without network) at 336, the
# xrv DenseNet-121 classifier at 224 on every labelled image, the light lung U-Net at 256. The five
# independent trainings run side by side on the one GPU, then the refinement on crops.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?DATA (COVID-QU-Ex Train folder or a gpu_bundle carry folder)}
RUNS=${2:?RUNS folder}
OUT=${3:?OUT models folder}
TOY=${4:-}
mkdir -p "$RUNS"
RUNS=$(cd "$RUNS" && pwd)

# --- the carry: data, wheels, pure-Python packages, stubs ------------------------------------------
if [ -f "$DATA/cqe.npz" ]; then
  CARRY=$(cd "$DATA" && pwd)
  if [ -d "$CARRY/wheels" ] && ! python3 -c 'import nnunetv2' 2>/dev/null; then
    python3 -m pip install --quiet --no-index --no-deps --target "$RUNS/site-bin" "$CARRY"/wheels/*.whl
    export PYTHONPATH="$RUNS/site-bin:$CARRY/site:$CARRY/stubs${PYTHONPATH:+:$PYTHONPATH}"
  fi
  [ -d "$RUNS/data" ] || python3 -m training.gpu_bundle unpack "$CARRY/cqe.npz" "$RUNS/data"
  DATA="$RUNS/data"
fi
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"

# --- settings ----------------------------------------------------------------------------------------
if [ "$TOY" = "--toy" ]; then
  DEV=cpu; export nnUNet_n_proc_DA=0
  NN336="--size 64 --features 4,8,16 --epochs 1 --iterations 2 --val-iterations 1 --batch-size 2"
  NN768="--size 96 --features 4,8,16 --epochs 1 --iterations 2 --val-iterations 1 --batch-size 2"
  REFINE="--size 32 --features 4,8,16 --epochs 1 --iterations 2 --val-iterations 1 --batch-size 2"
  CNX="--size 64 --dims 8,16,32,64 --depths 1,1,1,1 --fpn-channels 8 --epochs 1 --batch-size 4"
  CLS="--epochs 1 --low-res-epochs 1 --low-res 64 --max-full-res-images 4 --max-val-images 4 --batch-size 4"
  LUNG="--size 32 --epochs 1"
else
  DEV=cuda; export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-4}
  NN336="--size 336 --features 32,64,128,256,512 --epochs 60 --iterations 50 --val-iterations 10 --batch-size 12"
  NN768="--size 768 --features 32,64,128,256,512,512,512 --epochs 30 --iterations 40 --val-iterations 5 --batch-size 4"
  REFINE="--size 256 --features 32,64,128,256,512,512,512 --epochs 40 --iterations 50 --val-iterations 10 --batch-size 12"
  CNX="--size 336 --trunk convnext_tiny --dims '' --depths '' --fpn-channels 128 --epochs 20 --batch-size 16"
  CLS="--epochs 8 --low-res-epochs 0 --max-full-res-images 0 --max-val-images 0 --batch-size 32"
  LUNG="--size 256 --epochs 10"
fi
E=$RUNS/export
log() { echo "$(date +%H:%M:%S) gpu_pack: $*"; }

# --- the five independent models, side by side on the one device --------------------------------
log "training on $DEV into $RUNS"
pids=()
python3 -m training.nnunet --data "$DATA" --work "$RUNS/nnunet_2d_336_histeq" --dataset-id 511 --name CxrOpacity336 \
  --trainer histeq $NN336 --device $DEV --out "$E/nnunet_2d_336_histeq" > "$RUNS/nnunet_2d_336_histeq.log" 2>&1 & pids+=($!)
python3 -m training.nnunet --data "$DATA" --work "$RUNS/nnunet_2d_768" --dataset-id 512 --name CxrOpacity768 \
  --trainer short $NN768 --device $DEV --out "$E/nnunet_2d_768" > "$RUNS/nnunet_2d_768.log" 2>&1 & pids+=($!)
eval python3 -m training.train_convnext_fpn --data "\"$DATA\"" --out "$E/convnext_fpn_336" --run-dir "$RUNS/convnext_fpn_336" \
  $CNX --device $DEV > "$RUNS/convnext_fpn_336.log" 2>&1 & pids+=($!)
python3 -m training.train_classifier --data "$DATA" --out "$E/xrv_densenet121_opacity" --run-dir "$RUNS/xrv_densenet121_opacity" \
  $CLS --device $DEV > "$RUNS/xrv_densenet121_opacity.log" 2>&1 & pids+=($!)
python3 -m training.train_lung --data "$DATA" --out "$E/lung_unet_256" --run-dir "$RUNS/lung_unet_256" $LUNG --device $DEV \
  > "$RUNS/lung_unet_256.log" 2>&1 & pids+=($!)
python3 -m training.crops --data "$DATA" --out "$RUNS/nnunet_refine_256/crops" > "$RUNS/crops.log" 2>&1
python3 -m training.nnunet --data "$RUNS/nnunet_refine_256/crops" --work "$RUNS/nnunet_refine_256" --dataset-id 513 --name CxrRefine256 \
  --trainer short $REFINE --device $DEV --out "$E/nnunet_refine_256" > "$RUNS/nnunet_refine_256.log" 2>&1
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
if [ "$failed" != 0 ]; then
  log "a training failed; see $RUNS/*.log"; tail -n 20 "$RUNS"/*.log; exit 1
fi
log "trained; assembling $OUT"

# --- the pack: assemble, calibrate, evaluate, cards ----------------------------------------------
SPEC=$RUNS/gpu_pack_spec.json
python3 - "$SPEC" <<'PY'
import json, sys
from training.make_pack import REFERENCE_PACK
names = {"convnext_fpn_256": ("convnext_fpn_336", 336, "ConvNeXt-FPN (convnext_tiny trunk, random init) on histogram-equalised input at 336 px."),
         "nnunet_2d_192_histeq": ("nnunet_2d_336_histeq", 336, "nnU-Net 2D, default-like plan, randomly applied histogram equalisation, 336 px."),
         "nnunet_2d_256": ("nnunet_2d_768", 768, "nnU-Net 2D, default-like plan, 768 px (stage one: no VinDr data here)."),
         "nnunet_refine_128": ("nnunet_refine_256", 256, "Refinement nnU-Net on crops around opacity components, 256 px."),
         "lung_unet_128": ("lung_unet_256", 256, "SmallUNet lung segmenter on COVID-QU-Ex lung masks, 256 px.")}
spec = []
for entry in REFERENCE_PACK:
    entry = dict(entry)
    if entry["name"] in names:
        entry["name"], entry["input_size_px"], entry["note"] = names[entry["name"]]
    spec.append(entry)
json.dump(spec, open(sys.argv[1], "w"), indent=1)
PY
python3 -m training.make_pack assemble --exports "$E" --runs "$RUNS" --out "$OUT" --spec "$SPEC"
python3 -m training.calibrate --models "$OUT" --data "$DATA" --cache "$RUNS/eval"
python3 -m training.evaluate --models "$OUT" --data "$DATA" --split val --out "$RUNS/report" --cache "$RUNS/eval"
python3 -m training.make_pack cards --models "$OUT" --runs "$RUNS" --metrics "$RUNS/report/metrics.json" --spec "$SPEC"
du -sh "$OUT"
log "done: pack in $OUT, report in $RUNS/report/report.html"
