"""Benchmark: whole-volume slice-wise synthesis with the Chartsias network on this machine's CPU.

Run by hand, not by the test suite:

    .venv/bin/python Testing/Benchmarks/benchmark_slicewise_inference.py [--naive-slices N] [--json out.json]

In one command it measures, each in a fresh subprocess so that peak memory is its own:
(a) the naive path: fp32, one full 182x218 slice at a time, every slice of the volume;
(b) the production path (``inference.run_slicewise``): the CPU's default batch
    (``logic.default_batch_size``: 4 slices), channels_last, the precision ``auto`` picks
    (bf16 autocast on CPUs with AMX or AMD's AVX512-BF16, else fp32; ``devices.choose_precision``), each batch
    cropped to its slices' brain (bounding box plus 8 voxels), slices without brain skipped;
(c) the production path in fp32 and (c') in bf16, whatever ``auto`` picks, to check that bf16
    changes the result by less than 0.005 SSIM (bf16 against fp32, and each against the real
    FLAIR when the shared data is present) and to time both;
(d) the production path in fp32 on whole slices (no cropping), to show what cropping changes
    (SSIM of (c) against (d) inside the brain);
plus this machine's bf16 and fp32 matrix-multiply throughput. Reported: seconds, peak RSS, the
speed-up (a)/(b), and the FLOP/s of (b) both as executed and as "useful" (the reference
network's nominal FLOP for the whole volume, 182 full slices) over the measured matmul peak of
bf16 (the issue's yardstick) and of the dtype (b) ran in.

Input: 3 inputs (T1, T1c, T2) -> FLAIR from ../shared/data/ms/patient07 when present, else a
generated phantom of the same size. Weights: the bundled model's when it accepts these
inputs, else random (speed does not depend on the weights; the SSIM check then compares two
precisions of the same random network, which still measures precision loss).
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "ms" / "patient07"
INPUTS = ("T1", "T1c", "T2")
TARGET = "FLAIR"


def load_case() -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    from MRSynthesisLib.preprocessing import NormalisationSpec, foreground_mask, normalise
    from MRSynthesisLib.volume import read_volume

    if DATA.is_dir():
        files = {"T1": "T1.nii.gz", "T1c": "T1POST.nii.gz", "T2": "T2.nii.gz"}
        arrays = {m: read_volume(DATA / f).array for m, f in files.items()}
        source = str(DATA)
    else:
        rng = np.random.default_rng(0)
        grid = np.indices((182, 218, 182)).astype(np.float32)
        radius = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, (91, 109, 91), (70, 85, 65))))
        arrays = {m: np.where(radius < 1, 100 + 40 * i + rng.normal(0, 5, radius.shape), 0).astype(np.float32)
                  for i, m in enumerate(INPUTS)}
        source = "generated ellipsoid phantom 182x218x182"
    brain = foreground_mask(list(arrays.values()))
    spec = NormalisationSpec("mean_in_brain")
    return {m: normalise(a, spec, brain)[0] for m, a in arrays.items()}, brain, source


def network():
    import torch

    from MRSynthesisLib import registry
    from MRSynthesisLib.cards import load_model
    from MRSynthesisLib.models.chartsias import ChartsiasMIMO

    try:
        loaded = load_model(registry.resolve(None))
        if set(INPUTS) <= set(loaded.card.inputs) and TARGET in loaded.card.outputs:
            return loaded.network, f"bundled model {loaded.card.name}"
    except Exception:  # noqa: BLE001 - no usable bundled model: random weights time the same
        pass
    torch.manual_seed(0)
    return ChartsiasMIMO(list(INPUTS), [TARGET]).eval(), "random weights (full-size 32/64/128, latent 16)"


def worker(mode: str, naive_slices: int | None, out: Path) -> None:
    import torch

    from MRSynthesisLib.devices import choose_precision
    from MRSynthesisLib.inference import RunSettings, run_slicewise
    from MRSynthesisLib.logic import default_batch_size

    inputs, brain, source = load_case()
    net, weights = network()
    dtype = None  # the naive path runs in fp32
    start = time.perf_counter()
    if mode == "naive":
        multiple = net.SIZE_MULTIPLE
        depth, height, width = brain.shape
        pad = ((0, -height % multiple), (0, -width % multiple))
        slices = range(depth) if naive_slices is None else np.linspace(0, depth - 1, naive_slices).astype(int)
        with torch.inference_mode():
            for k in slices:
                x = {m: torch.from_numpy(np.pad(a[k], pad))[None, None] for m, a in inputs.items()}
                net(x, targets=[TARGET])
        seconds = (time.perf_counter() - start) * (depth / len(slices))
        result = None
    else:
        fixed = {"fp32": None, "uncropped": None, "bf16": torch.bfloat16}
        dtype = fixed[mode] if mode in fixed else choose_precision("auto", torch.device("cpu"))
        margin = max(brain.shape) if mode == "uncropped" else 8  # a margin past every edge keeps whole slices
        settings = RunSettings(torch.device("cpu"), dtype, batch_size=default_batch_size("cpu", 2))
        result = run_slicewise(net, inputs, [TARGET], axis=0, mask=brain, settings=settings,
                               margin=margin).outputs[TARGET]
        seconds = time.perf_counter() - start
        np.save(out.with_suffix(".npy"), result)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps({"mode": mode, "seconds": seconds, "peak_rss_mb": peak_mb, "source": source,
                               "weights": weights, "dtype": str(dtype or torch.float32),
                               "extrapolated_from_slices": None if naive_slices is None else naive_slices}))


def flop_counts(brain: np.ndarray) -> tuple[float, float]:
    """(nominal FLOP of 182 full slices, FLOP executed by the cropped production path)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from MRSynthesisLib.inference import _batch_window
    from MRSynthesisLib.logic import default_batch_size
    from MRSynthesisLib.preprocessing import bounding_box, plan_crop_pad

    net, _ = network()

    @functools.cache
    def flops(height: int, width: int) -> float:
        x = {m: torch.zeros(1, 1, height, width) for m in INPUTS}
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            net(x, targets=[TARGET])
        return float(counter.get_total_flops())

    depth, height, width = brain.shape
    m = net.SIZE_MULTIPLE
    nominal = depth * flops(height + (-height % m), width + (-width % m))
    frame = plan_crop_pad(brain.shape, (1, m, m), bbox=bounding_box(brain, margin=8)).apply(brain)
    active = [k for k in range(frame.shape[0]) if frame[k].any()]
    batch = default_batch_size("cpu", 2)
    executed = 0.0
    for start in range(0, len(active), batch):  # the windows run_slicewise gives each batch
        index = active[start:start + batch]
        rows, cols = _batch_window(frame[index], 8, m)
        executed += len(index) * flops(rows.stop - rows.start, cols.stop - cols.start)
    return nominal, executed


def matmul_throughput(dtype_name: str, seconds: float = 3.0) -> float:
    """FLOP/s of a large square matrix multiply in ``dtype_name``: this machine's practical peak."""
    import torch

    n = 2048
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--naive-slices", type=int, help="time only N evenly spaced slices of (a) and extrapolate")
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--worker", choices=("naive", "production", "bf16", "fp32", "uncropped"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.naive_slices, Path(args.worker_out))
        return
    import torch

    from MRSynthesisLib.metrics import ssim

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("naive", "production", "bf16", "fp32", "uncropped"):
            out = Path(tmp) / f"{mode}.json"
            command = [sys.executable, __file__, "--worker", mode, "--worker-out", str(out)]
            if args.naive_slices:
                command += ["--naive-slices", str(args.naive_slices)]
            subprocess.run(command, check=True)
            runs[mode] = json.loads(out.read_text())
            print(f"{mode}: {runs[mode]['seconds']:.1f} s, peak RSS {runs[mode]['peak_rss_mb']:.0f} MB", flush=True)
        production, reference = np.load(Path(tmp) / "bf16.npy"), np.load(Path(tmp) / "fp32.npy")
        uncropped = np.load(Path(tmp) / "uncropped.npy")
    inputs, brain, source = load_case()
    data_range = float(reference.max() - reference.min())
    ssim_bf16_vs_fp32 = ssim(production, reference, mask=brain, data_range=data_range)
    against_real = {}
    if DATA.is_dir():  # each precision against the real FLAIR, both normalised as the model sees it
        from MRSynthesisLib.preprocessing import NormalisationSpec, normalise
        from MRSynthesisLib.volume import read_volume

        real = normalise(read_volume(DATA / "FLAIR.nii.gz").array, NormalisationSpec("mean_in_brain"), brain)[0]
        real_range = float(real.max() - real.min())
        against_real = {f"ssim_{name}_vs_real_flair_in_brain": ssim(array, real, mask=brain, data_range=real_range)
                        for name, array in (("bf16", production), ("fp32", reference))}
    nominal, executed = flop_counts(brain)
    peak = matmul_throughput("bfloat16")
    peak_fp32 = matmul_throughput("float32")
    own_peak = peak if runs["production"]["dtype"] == "torch.bfloat16" else peak_fp32
    seconds = runs["production"]["seconds"]
    figures = {
        "case": source, "weights": runs["production"]["weights"], "threads": torch.get_num_threads(),
        "naive_seconds": runs["naive"]["seconds"], "naive_peak_rss_mb": runs["naive"]["peak_rss_mb"],
        "naive_extrapolated_from_slices": runs["naive"]["extrapolated_from_slices"],
        "production_seconds": seconds, "production_peak_rss_mb": runs["production"]["peak_rss_mb"],
        "production_dtype": runs["production"]["dtype"], "fp32_production_seconds": runs["fp32"]["seconds"],
        "bf16_production_seconds": runs["bf16"]["seconds"],
        "speedup_naive_over_production": runs["naive"]["seconds"] / seconds,
        "ssim_bf16_vs_fp32_in_brain": ssim_bf16_vs_fp32, **against_real,
        "uncropped_fp32_seconds": runs["uncropped"]["seconds"],
        "ssim_fp32_vs_uncropped_fp32_in_brain": ssim(reference, uncropped, mask=brain, data_range=data_range),
        "bf16_matmul_flops": peak, "fp32_matmul_flops": peak_fp32, "nominal_flop_per_volume": nominal,
        "executed_flop_production": executed,
        "useful_flops_fraction_of_matmul": nominal / seconds / peak,
        "executed_flops_fraction_of_matmul": executed / seconds / peak,
        "useful_flops_fraction_of_own_dtype_matmul": nominal / seconds / own_peak,
        "executed_flops_fraction_of_own_dtype_matmul": executed / seconds / own_peak,
    }
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
