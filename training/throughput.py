"""Training throughput on this machine: samples per second of one optimiser step, per option.

    python -m training.throughput [--seconds 20] [--out docs/training_throughput.json]

Measures forward + backward + step of the reference pack's networks with random data (what the
recipes spend 85–92 % of their time in): the nnU-Net plan (features 8–128) at 256 px in fp32 and
under bf16 autocast, on patches of 128 px, with 1 and 2 threads; the ConvNeXt-FPN at 256 px in fp32
and bf16; and two 1-thread processes side by side against one 2-thread process. Each figure is the
median of several timed steps after two warm-up steps, all in one run, so ratios compare like with
like on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import time
from pathlib import Path

import torch


def _nnunet(features: tuple[int, ...]) -> torch.nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    n = len(features)
    return PlainConvUNet(1, n, list(features), torch.nn.Conv2d, 3, [1] + [2] * (n - 1), 2, 2, [2] * (n - 1), True,
                         torch.nn.InstanceNorm2d, {"eps": 1e-5, "affine": True}, None, None, torch.nn.LeakyReLU, {"inplace": True},
                         deep_supervision=False)


def _convnext(size: int) -> torch.nn.Module:
    from operators.nets.convnext_fpn import ConvNextFpn, ConvNextFpnConfig

    return ConvNextFpn(ConvNextFpnConfig(trunk="convnext_atto", trunk_kwargs={"dims": [24, 48, 96, 192], "depths": [2, 2, 4, 2]},
                                         fpn_channels=32, input_size_px=size))


def samples_per_second(network: str, size: int, batch: int, bf16: bool, threads: int, seconds: float) -> float:
    """Median samples/s of forward + backward + SGD step at ``size`` px, ``batch`` samples."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = _nnunet((8, 16, 32, 64, 128)) if network == "nnunet" else _convnext(size)
    channels = 1 if network == "nnunet" else 3
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, channels, size, size)
    y = (torch.rand(batch, 1, size, size) > 0.5).float()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out[:, :1].float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    times, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline or len(times) < 3:
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return batch / statistics.median(times)


def _worker(args) -> float:
    return samples_per_second(*args)


def side_by_side(seconds: float) -> float:
    """Total samples/s of two 1-thread nnU-Net bf16 processes running at once."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        return sum(pool.map(_worker, [("nnunet", 256, 8, True, 1, seconds)] * 2))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per configuration")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = {}
    for name, config in (("nnU-Net 256 fp32, 1 thread", ("nnunet", 256, 8, False, 1)),
                         ("nnU-Net 256 bf16, 1 thread", ("nnunet", 256, 8, True, 1)),
                         ("nnU-Net 128-px patches bf16, 1 thread", ("nnunet", 128, 8, True, 1)),
                         ("nnU-Net 256 bf16, 2 threads", ("nnunet", 256, 8, True, 2)),
                         ("ConvNeXt-FPN 256 fp32, 1 thread", ("convnext", 256, 8, False, 1)),
                         ("ConvNeXt-FPN 256 bf16, 1 thread", ("convnext", 256, 8, True, 1))):
        rows[name] = round(samples_per_second(*config, args.seconds), 2)
        print(f"{name:42s} {rows[name]:7.2f} samples/s", flush=True)
    rows["nnU-Net 256 bf16, two 1-thread processes (total)"] = round(side_by_side(args.seconds), 2)
    print(f"{'nnU-Net 256 bf16, two 1-thread processes':42s} {rows['nnU-Net 256 bf16, two 1-thread processes (total)']:7.2f} samples/s")
    report = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                         f"CPU capability {torch.backends.cpu.get_cpu_capability()}", "samples_per_second": rows}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
