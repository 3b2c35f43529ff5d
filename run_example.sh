#!/usr/bin/env bash
# One command, fresh machine: install, then run the app on the bundled example DICOM.
# Output: ./output/<SOPInstanceUID>/{seg_probability.dcm, seg_binary.dcm, preview.png, result.json}, ./output/summary.json
set -euo pipefail
cd "$(dirname "$0")"
bash tools/setup.sh
source tools/env.sh
MODELS=${MODELS:-models}
if [ ! -f "$MODELS/manifest.json" ]; then
  echo "No trained model pack in $MODELS yet: generating RANDOM models in models_random/ — the output MEANS NOTHING." >&2
  python3 -m tools.random_model_pack models_random
  MODELS=models_random
fi
exec python3 -m app -i examples -o output -m "$MODELS" "$@"
