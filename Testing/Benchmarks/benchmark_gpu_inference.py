"""Benchmark: whole-volume synthesis and P3S saliency on a CUDA GPU, against the CPU production path.

Run by hand on a machine with a GPU, not by the test suite:

    python Testing/Benchmarks/benchmark_gpu_inference.py [--case FOLDER] [--json out.json]

For each model (Chartsias T1+T1c+T2 -> FLAIR, Wei's FCN and Klingelhoefer's AE T1+T2 -> FLAIR,
at the papers' widths with random weights: speed does not depend on the weights, and the
precision checks compare two runs of the same network), in one process on one 182x218x182 case:
- ``cpu``: the production path on the CPU (the CPU default batch, bf16 autocast where the CPU
  has it natively, all the machine's cores): the baseline of the ratios;
- ``gpu``: the same production path on CUDA (``logic.default_batch_size`` for GPUs, bf16
  autocast), after one untimed warm-up run (cuDNN picks its kernels on the first call);
- ``gpu_fp32``: the same in fp32 (TF32 convolutions, PyTorch's default);
- ``gpu_saliency``: ``gpu`` plus target-free P3S maps for every input.
Reported: seconds (CUDA synchronised), peak GPU memory allocated by PyTorch, the speed-up
cpu / gpu, saliency / plain on the GPU, and SSIM in the brain of gpu (bf16) against gpu_fp32
and of gpu_fp32 against the CPU fp32 result (the GPU path must not change the synthesis).

Input: ``--case`` (a folder holding T1.nii.gz, T1POST.nii.gz, T2.nii.gz; default
../shared/data/ms/patient07), else a generated phantom of the same size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_3d_inference import DATA, TARGET, load_case, network  # noqa: E402

ARCHITECTURES = ("chartsias2018", "wei2019_fcn3d", "klingelhoefer_ae3d")


def run(net, arrays, brain, architecture: str, device: str, dtype, saliency: bool = False):
    import torch

    from MRSynthesisLib.inference import RunSettings, run_slicewise
    from MRSynthesisLib.logic import default_batch_size
    from MRSynthesisLib.tiling import run_tiled

    spatial_dims = 2 if architecture == "chartsias2018" else 3
    settings = RunSettings(torch.device(device), dtype, batch_size=default_batch_size(device, spatial_dims))
    net = net.to(device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if spatial_dims == 2:
        result = run_slicewise(net, arrays, [TARGET], axis=0, mask=brain, settings=settings, saliency=saliency)
    else:
        result = run_tiled(net, arrays, [TARGET], settings=settings, mask=brain, tile=(96,) * 3, saliency=saliency)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else None
    return result.outputs[TARGET], seconds, peak


def benchmark(architecture: str, case: Path) -> dict:
    import torch

    from MRSynthesisLib.devices import choose_precision
    from MRSynthesisLib.metrics import ssim

    net, inputs, weights = network(architecture, None)
    arrays, brain, source = load_case(architecture, inputs, case)
    cpu_dtype = choose_precision("auto", torch.device("cpu"))
    gpu_dtype = choose_precision("auto", torch.device("cuda"))
    cpu, cpu_seconds, _ = run(net, arrays, brain, architecture, "cpu", cpu_dtype)
    cpu_fp32, _, _ = run(net, arrays, brain, architecture, "cpu", None)
    run(net, arrays, brain, architecture, "cuda", gpu_dtype)  # warm-up: cuDNN autotuning, CUDA context
    gpu, gpu_seconds, gpu_peak = run(net, arrays, brain, architecture, "cuda", gpu_dtype)
    gpu_fp32, fp32_seconds, fp32_peak = run(net, arrays, brain, architecture, "cuda", None)
    run(net, arrays, brain, architecture, "cuda", gpu_dtype, saliency=True)
    _, saliency_seconds, saliency_peak = run(net, arrays, brain, architecture, "cuda", gpu_dtype, saliency=True)
    return {
        "architecture": architecture, "inputs": list(inputs), "weights": weights, "case": source,
        "gpu": torch.cuda.get_device_name(), "cpu_threads": torch.get_num_threads(),
        "cpu_dtype": str(cpu_dtype or "torch.float32"), "gpu_dtype": str(gpu_dtype),
        "cpu_seconds": round(cpu_seconds, 3), "gpu_seconds": round(gpu_seconds, 3),
        "gpu_fp32_seconds": round(fp32_seconds, 3), "gpu_saliency_seconds": round(saliency_seconds, 3),
        "gpu_peak_mb": round(gpu_peak), "gpu_fp32_peak_mb": round(fp32_peak),
        "gpu_saliency_peak_mb": round(saliency_peak),
        "speedup_cpu_over_gpu": round(cpu_seconds / gpu_seconds, 2),
        "saliency_over_plain_gpu": round(saliency_seconds / gpu_seconds, 2),
        "ssim_gpu_bf16_vs_gpu_fp32": round(ssim(gpu, gpu_fp32, brain), 5),
        "ssim_gpu_fp32_vs_cpu_fp32": round(ssim(gpu_fp32, cpu_fp32, brain), 5),
        "ssim_gpu_vs_cpu_production": round(ssim(gpu, cpu, brain), 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=DATA)
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark times the GPU path")
    rows = []
    for architecture in args.models:
        rows.append(benchmark(architecture, args.case))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
