#!/usr/bin/env bash
# Write the MAP's Docker build context with holoscan-cli 4.2.0's own packager (`monai-deploy package`),
# stopping before `docker buildx` (deploy/build_context.py says how). Needs no Docker engine.
#
#   tools/package_map.sh OUT_DIR [--models DIR] [--tag NAME] [--platform x86_64] [--uid N] [--gid N]
#
# --models defaults to models/; until trained weights land, use a random pack:
#   python -m tools.random_model_pack /tmp/pack && tools/package_map.sh /tmp/map-context --models /tmp/pack
# Then, on a Docker host: the `docker buildx build ...` line printed at the end (also in OUT_DIR/build.json).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
exec env PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m deploy.build_context "$@"
