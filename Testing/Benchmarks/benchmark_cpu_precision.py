"""Benchmark: fp32 against bf16 autocast on this CPU, for each network's inference and training step.

Run by hand, not by the test suite:

    .venv/bin/python Testing/Benchmarks/benchmark_cpu_precision.py [--rounds 2] [--repeats 5] [--threads 2]
        [--json out.json]

Why: ``precision auto`` must pick, per CPU, the faster of the two for what the user runs. bf16
halves the bytes moved, but it only multiplies faster where the hardware has a fast bf16 path:
with AMX it ran the slice-wise production path 3.2x faster than fp32
(docs/results/benchmark_slicewise_inference.md); with Intel's AVX512-BF16 alone (the dot-product
instruction without AMX, which is also what a virtual machine that hides AMX shows) it did not,
with AMD's (Zen 4) it did.
This script measures both on the machine it runs on:

- inference, what a user waits for: the production path on a whole 182x218x182 volume
  (``../shared/data/ms/patient07`` when present, else a phantom of that size; random weights at
  the papers' widths, the same helpers as ``benchmark_3d_inference.py``): the Chartsias model
  slice-wise (T1 + T1c + T2 -> FLAIR) and the Wei and Klingelhoefer 3D models tiled (T1 + T2 ->
  FLAIR). Each run in a fresh process, as the command line runs it, so that the per-shape kernel
  creation of oneDNN is counted (the slice-wise path gives every batch its own window shape);
  fp32 and bf16 alternate for ``--rounds`` rounds, the median of each is reported;
- training, where steps repeat at one shape: one step of each committed recipe's shape, in this
  process, fp32 and bf16 interleaved (A B A B ...) so that drift of a shared machine hits both
  alike, medians of ``--repeats`` after an untimed warm-up round: the Chartsias bundled recipe
  (4 inputs + lesion channel, 4 outputs, batch 16 of 64x64, the 3-part cost, Adam), the Wei FCN
  (batch 1 of 48^3, SGD) and the Klingelhoefer autoencoder (batch 32 of 38^3, Adam), MSE on
  their target crops as ``training.loop3d`` computes it.

Reported per workload: seconds in fp32 and bf16 and the bf16 speed-up (fp32 / bf16); the CPU's
bf16 flags and what ``auto`` picks for inference (``devices.choose_precision``) and for
training (``training.loop.autocast_dtype``); the 2048^2 matrix-multiply throughput in each dtype.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_slicewise_inference import matmul_throughput  # noqa: E402

from MRSynthesisLib import devices  # noqa: E402
from MRSynthesisLib.models.chartsias import ChartsiasMIMO  # noqa: E402
from MRSynthesisLib.models.klingelhoefer_ae3d import KlingelhoeferAE3D  # noqa: E402
from MRSynthesisLib.models.losses_chartsias import chartsias_loss  # noqa: E402
from MRSynthesisLib.models.wei_fcn3d import WeiFCN3D  # noqa: E402
from training.loop import autocast_dtype  # noqa: E402
from training.loop3d import train_loss  # noqa: E402
from training.patches3d import PatchBatch  # noqa: E402

ALL = ["T1", "T1c", "T2", "FLAIR"]
ARCHITECTURES = ("chartsias2018", "wei2019_fcn3d", "klingelhoefer_ae3d")


def _last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=generator)


def chartsias_training(generator: torch.Generator) -> Callable[[], object]:
    net = ChartsiasMIMO(ALL, ALL, lesion_input=True).to(memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    crops = {m: _last(_rand(generator, 16, 1, 64, 64)) for m in ALL}
    lesion = _last((_rand(generator, 16, 1, 64, 64) > 0.95).float())

    def step() -> object:
        optimiser.zero_grad(set_to_none=True)
        loss, _ = chartsias_loss(net, crops, crops, lesion)
        loss.backward()
        optimiser.step()
        return loss
    return step


def whole_volume(architecture: str, precision: str) -> float:
    """Seconds of the production path on the whole case, in this (fresh) process."""
    from benchmark_3d_inference import TARGET, load_case, network

    from MRSynthesisLib.inference import RunSettings, run_slicewise
    from MRSynthesisLib.logic import TILE, default_batch_size
    from MRSynthesisLib.tiling import run_tiled

    net, inputs, _ = network(architecture, None)
    arrays, brain, _ = load_case(architecture, inputs)
    spatial_dims = 2 if architecture == "chartsias2018" else 3
    dtype = torch.bfloat16 if precision == "bf16" else None
    settings = RunSettings(torch.device("cpu"), dtype, batch_size=default_batch_size("cpu", spatial_dims))
    start = time.perf_counter()
    if spatial_dims == 2:
        run_slicewise(net, arrays, [TARGET], axis=0, mask=brain, settings=settings)
    else:
        run_tiled(net, arrays, [TARGET], settings=settings, mask=brain, tile=(TILE,) * 3)
    return time.perf_counter() - start


def inference_rounds(rounds: int, threads: int) -> dict[str, dict[str, float]]:
    figures = {}
    for architecture in ARCHITECTURES:
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(rounds):
            for precision in times:
                command = [sys.executable, __file__, "--threads", str(threads), "--worker", architecture, precision]
                times[precision].append(float(subprocess.run(command, check=True, capture_output=True,
                                                             text=True).stdout.split()[-1]))
        figures[f"{architecture}_inference"] = summary(times)
    return figures


def patch_training(net: torch.nn.Module, generator: torch.Generator, batch: int, size: int,
                   optimiser: torch.optim.Optimizer) -> Callable[[], object]:
    """One step of ``training.loop3d`` (its ``train_loss``): MSE on the target crop (Config3D.margin)."""
    target = size - 2 * (net.CROP or net.HALO)
    patches = PatchBatch({m: _rand(generator, batch, 1, size, size, size) for m in net.inputs},
                         {"FLAIR": _rand(generator, batch, 1, target, target, target)}, None)

    def step() -> object:
        optimiser.zero_grad(set_to_none=True)
        loss = train_loss(net, patches, "mse")
        loss.backward()
        optimiser.step()
        return loss
    return step


def training_steps(generator: torch.Generator) -> dict[str, Callable[[], object]]:
    torch.manual_seed(0)
    wei_train = WeiFCN3D(["T1", "T2"], ["FLAIR"])
    ae_train = KlingelhoeferAE3D(["T1", "T2"], ["FLAIR"])
    return {
        "chartsias_training": chartsias_training(generator),
        "wei_training": patch_training(wei_train, generator, 1, 48,
                                       torch.optim.SGD(wei_train.parameters(), lr=5e-4)),
        "klingelhoefer_training": patch_training(ae_train, generator, 32, 38,
                                                 torch.optim.Adam(ae_train.parameters(), lr=1e-3)),
    }


def timed(call: Callable[[], object], dtype: torch.dtype | None) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
        call()
    return time.perf_counter() - start


def summary(times: dict[str, list[float]]) -> dict[str, float]:
    fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    return {"fp32_seconds": fp32, "bf16_seconds": bf16, "bf16_speedup": fp32 / bf16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="whole-volume runs per precision and model")
    parser.add_argument("--repeats", type=int, default=5, help="timed training steps per precision and recipe")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(whole_volume(*args.worker))
        return
    cpu = torch.device("cpu")
    figures: dict[str, object] = {
        "threads": args.threads, "rounds": args.rounds, "repeats": args.repeats, "torch": torch.__version__,
        "cpu_flags": sorted(devices.cpu_bf16_flags()),
        "auto_inference": str(devices.choose_precision("auto", cpu)),
        "auto_training": str(autocast_dtype("auto", cpu)),
        "matmul_fp32_flops": matmul_throughput("float32"),
        "matmul_bf16_flops": matmul_throughput("bfloat16"),
    }
    figures.update(inference_rounds(args.rounds, args.threads))
    steps = training_steps(torch.Generator().manual_seed(0))
    for name, call in steps.items():
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for repeat in range(args.repeats + 1):  # round 0 warms up and is not timed
            for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                seconds = timed(call, dtype)
                if repeat:
                    times[label].append(seconds)
        figures[name] = summary(times)
    for name in [*(f"{a}_inference" for a in ARCHITECTURES), *steps]:
        row = figures[name]
        print(f"{name:<32} fp32 {row['fp32_seconds']:7.3f} s  bf16 {row['bf16_seconds']:7.3f} s  "
              f"bf16 speed-up {row['bf16_speedup']:5.2f}x")
    for key in ("threads", "torch", "cpu_flags", "auto_inference", "auto_training"):
        print(f"{key:<32} {figures[key]}")
    print(f"{'matmul 2048^2':<32} fp32 {figures['matmul_fp32_flops']:.3g} FLOP/s  "
          f"bf16 {figures['matmul_bf16_flops']:.3g} FLOP/s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
