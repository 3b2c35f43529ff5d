#!/usr/bin/env bash
# One command, fresh machine: install what is needed, then run every test (unit + end-to-end).
set -euo pipefail
cd "$(dirname "$0")"
bash tools/setup.sh
source tools/env.sh
exec python3 -m pytest "$@"
