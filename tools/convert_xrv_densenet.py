"""Convert a torchxrayvision DenseNet weights file (a pickled model) to the app's state-dict format.

    python -m tools.convert_xrv_densenet PICKLED_FILE OUT_FOLDER [--weights densenet121-res224-all] [--fp16]

torchxrayvision publishes its DenseNets as whole pickled models (``torch.save(model)``); loading one
runs arbitrary code from the file. The app never unpickles them: run this once, on a machine you
trust, on the file downloaded from torchxrayvision's release page (or an older pack's classifier),
and ship ``OUT_FOLDER`` (``config.json`` with xrv's targets, ``op_threshs`` and input size for
``--weights``, plus ``model.safetensors``) in the models folder. The output's sha256s go into the
manifest like any other model's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from app.model_formats import XRV_DENSENET_WEIGHTS, write_xrv_densenet, xrv_densenet_config
from operators.lib.segmenters import import_xrv, new_xrv_densenet


def convert(pickled: Path, out: Path, weights: str = XRV_DENSENET_WEIGHTS, fp16: bool = False) -> Path:
    """Unpickle ``pickled`` (trusted input only) and write it as config.json + model.safetensors."""
    import_xrv()  # the pickle refers to torchxrayvision's classes
    model = torch.load(pickled, map_location="cpu", weights_only=False)
    state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items() if k != "op_threshs"}
    config = xrv_densenet_config(weights)
    if len(config["targets"]) != state["classifier.weight"].shape[0]:
        raise ValueError(f"{pickled}: {state['classifier.weight'].shape[0]} outputs, but {weights} has {len(config['targets'])} targets.")
    network = new_xrv_densenet(config)
    network.load_state_dict({**state, "op_threshs": network.op_threshs}, strict=True)
    return write_xrv_densenet(out, network, config, fp16=fp16)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pickled", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--weights", default=XRV_DENSENET_WEIGHTS, help="torchxrayvision weights name (targets, op_threshs)")
    parser.add_argument("--fp16", action="store_true", help="store weights as fp16 (BatchNorm statistics stay fp32)")
    args = parser.parse_args(argv)
    print(f"wrote {convert(args.pickled, args.out, args.weights, args.fp16)}")


if __name__ == "__main__":
    main()
