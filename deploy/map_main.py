"""The MAP's entry point: app.json's command ``python3 /opt/holoscan/app`` runs this file as ``__main__.py``.

It is ``python -m app`` with one addition. The packager copies each model folder to
``/opt/holoscan/models/<name>/`` (pkg.json lists them), so the pack's ``manifest.json`` lies one level
below ``HOLOSCAN_MODEL_PATH``. Unless ``-m`` is given, or ``HOLOSCAN_MODEL_PATH`` itself holds a
manifest (a models folder mounted over it), the app is pointed at the one sub-folder that holds
``manifest.json``. With none or several, nothing is changed and the app's own error names the folder.
"""

import os
import sys
from pathlib import Path

MANIFEST = "manifest.json"


def _model_option_given(argv: list[str]) -> bool:
    return any(arg in ("-m", "--model") or arg.startswith("--model=") for arg in argv)


def main() -> int:
    argv = sys.argv[1:]
    root = Path(os.environ.get("HOLOSCAN_MODEL_PATH", "/opt/holoscan/models"))
    if not _model_option_given(argv) and not (root / MANIFEST).is_file():
        packs = sorted(root.glob(f"*/{MANIFEST}"))
        if len(packs) == 1:
            os.environ["HOLOSCAN_MODEL_PATH"] = str(packs[0].parent)

    from app.cli import main as app_main

    return app_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
