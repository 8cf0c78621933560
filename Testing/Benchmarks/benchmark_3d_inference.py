"""Benchmark: whole-volume inference of the 3D models, and the cost of P3S saliency, on this CPU.

Run by hand, not by the test suite:

    .venv/bin/python Testing/Benchmarks/benchmark_3d_inference.py \
        [--models wei2019_fcn3d klingelhoefer_ae3d chartsias2018]
        [--tile 96] [--json out.json]

In one command, each variant in a fresh subprocess so that its peak memory is its own:
- ``whole``: the naive reference, the network called once on the whole 182x218x182 volume
  (padded by ``CROP`` for the valid autoencoder), autocast as ``auto`` picks;
- ``monai``: MONAI ``sliding_window_inference``, 64^3 windows, 25 % overlap, Gaussian blending
  (the issue's reference; the valid-convolution autoencoder cannot use it: its output is
  smaller than its window);
- ``tiled``: ``tiling.run_tiled``, the production path: the brain's bounding box grown by the
  receptive field, tiles overlapping by the receptive field only, tiles without brain skipped;
- ``tiled_fp32`` and ``whole_fp32``: the same two in fp32, to show that tiling is exact (the
  bf16 pair differs by bf16 rounding of two different summation orders, nothing else);
- ``saliency``: the production path plus target-free P3S maps for every input (one forward
  and one backward pass per tile);
- ``idle``: loads torch, the data and the network and runs nothing: the process's own
  footprint, subtracted to give the memory the inference itself needs.
For ``chartsias2018`` (2D) the variants are the slice-wise production path and its saliency.
Reported per model: seconds, peak RSS and peak RSS above idle; the ratio tiled / whole and
saliency / tiled; the largest difference (in brain) of tiled against whole in fp32 and bf16.

Input: T1 + T2 (+ T1c for the Chartsias model) -> FLAIR of ../shared/data/ms/patient07 when
present, else a generated ellipsoid phantom of the same size. Weights: random (speed and
exactness do not depend on them); ``--model-folder`` times a trained model instead.
"""

from __future__ import annotations

import argparse
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
FILES = {"T1": "T1.nii.gz", "T1c": "T1POST.nii.gz", "T2": "T2.nii.gz"}
TARGET = "FLAIR"
NORMALISATION = {"wei2019_fcn3d": "zscore", "klingelhoefer_ae3d": "three_mean_nonzero",
                 "chartsias2018": "mean_in_brain"}
VARIANTS_3D = ("idle", "whole", "whole_fp32", "tiled", "tiled_fp32", "saliency", "monai")
VARIANTS_2D = ("idle", "tiled", "saliency")


def load_case(architecture: str, inputs: tuple[str, ...],
              folder: Path = DATA) -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    from MRSynthesisLib.preprocessing import (
        NormalisationSpec,
        foreground_mask,
        normalise,
    )
    from MRSynthesisLib.volume import read_volume

    if folder.is_dir():
        arrays = {m: read_volume(folder / FILES[m]).array for m in inputs}
        source = str(folder)
    else:
        rng = np.random.default_rng(0)
        grid = np.indices((182, 218, 182)).astype(np.float32)
        radius = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, (91, 109, 91), (70, 85, 65))))
        arrays = {m: np.where(radius < 1, 100 + 40 * i + rng.normal(0, 5, radius.shape), 0).astype(np.float32)
                  for i, m in enumerate(inputs)}
        source = "generated ellipsoid phantom 182x218x182"
    brain = foreground_mask(list(arrays.values()))
    spec = NormalisationSpec(NORMALISATION[architecture])
    return {m: normalise(a, spec, brain)[0] for m, a in arrays.items()}, brain, source


def network(architecture: str, folder: str | None):
    import torch

    from MRSynthesisLib.cards import load_model
    from MRSynthesisLib.models import build

    if folder:
        loaded = load_model(folder)
        return loaded.network, tuple(loaded.card.inputs), f"model folder {folder}"
    inputs = ("T1", "T1c", "T2") if architecture == "chartsias2018" else ("T1", "T2")
    torch.manual_seed(0)
    return build(architecture, inputs, [TARGET], False, {}).eval(), inputs, "random weights, paper widths"


def worker(architecture: str, variant: str, tile: int, folder: str | None, out: Path) -> None:
    import torch

    from MRSynthesisLib.devices import choose_precision
    from MRSynthesisLib.inference import RunSettings, run_slicewise
    from MRSynthesisLib.logic import default_batch_size
    from MRSynthesisLib.tiling import run_tiled

    net, inputs, weights = network(architecture, folder)
    arrays, brain, source = load_case(architecture, inputs)
    dtype = None if variant.endswith("fp32") else choose_precision("auto", torch.device("cpu"))
    spatial_dims = 2 if architecture == "chartsias2018" else 3
    settings = RunSettings(torch.device("cpu"), dtype, batch_size=default_batch_size("cpu", spatial_dims))
    start = time.perf_counter()
    result = None
    if variant == "idle":
        pass
    elif architecture == "chartsias2018":
        result = run_slicewise(net, arrays, [TARGET], axis=0, mask=brain, settings=settings,
                               saliency=variant == "saliency").outputs[TARGET]
    elif variant == "monai":
        from monai.inferers import sliding_window_inference

        volume = torch.from_numpy(np.stack([arrays[m] for m in inputs])[None])

        def predictor(window: torch.Tensor) -> torch.Tensor:
            with settings.autocast():
                return net({m: window[:, i:i + 1] for i, m in enumerate(inputs)})[TARGET].float()

        with torch.inference_mode():
            result = sliding_window_inference(volume, (64, 64, 64), 1, predictor, overlap=0.25,
                                              mode="gaussian")[0, 0].numpy()
    elif variant.startswith("whole"):  # the naive reference: the network once over the whole volume
        crop, multiple = int(getattr(net, "CROP", 0)), int(getattr(net, "SIZE_MULTIPLE", 1))
        pad = [(crop, crop + (-s) % multiple) for s in brain.shape]
        x = {m: torch.from_numpy(np.pad(arrays[m], pad))[None, None] for m in inputs}
        with torch.inference_mode(), settings.autocast():
            full = net(x)[TARGET][0, 0].float().numpy()
        result = full[tuple(slice(0, s) for s in brain.shape)]
    else:
        result = run_tiled(net, arrays, [TARGET], settings=settings, mask=brain, tile=(tile,) * 3,
                           saliency=variant == "saliency").outputs[TARGET]
    seconds = time.perf_counter() - start
    if result is not None:
        np.save(out.with_suffix(".npy"), result)
    out.write_text(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                               / 1024, "source": source, "weights": weights, "dtype": str(dtype or "torch.float32"),
                               "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["wei2019_fcn3d", "klingelhoefer_ae3d", "chartsias2018"])
    parser.add_argument("--tile", type=int, default=96, help="core edge of the exact tiles")
    parser.add_argument("--model-folder", help="time this trained model (its architecture must be the only --models)")
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.tile, args.model_folder, Path(args.worker_out))
        return
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for architecture in args.models:
            runs = {}
            for variant in (VARIANTS_2D if architecture == "chartsias2018" else VARIANTS_3D):
                if variant == "monai" and architecture == "klingelhoefer_ae3d":
                    continue
                out = Path(tmp) / f"{architecture}-{variant}.json"
                command = ([sys.executable, __file__, "--worker", architecture, variant, "--worker-out", str(out),
                            "--tile", str(args.tile)]
                           + (["--model-folder", args.model_folder] if args.model_folder else []))
                subprocess.run(command, check=True)
                runs[variant] = json.loads(out.read_text())
                print(f"{architecture} {variant}: {runs[variant]['seconds']:.1f} s, "
                      f"peak RSS {runs[variant]['peak_rss_mb']:.0f} MB", flush=True)
            _, inputs, _ = network(architecture, args.model_folder)
            _, brain, source = load_case(architecture, inputs)
            results = {v: np.load(Path(tmp) / f"{architecture}-{v}.npy") for v in runs if v != "idle"}
            idle = runs["idle"]["peak_rss_mb"]
            row = {"case": source, "weights": runs["idle"]["weights"], "threads": runs["idle"]["threads"],
                   "tile": args.tile, "idle_rss_mb": idle}
            for variant, run in runs.items():
                if variant != "idle":
                    row[f"{variant}_seconds"] = run["seconds"]
                    row[f"{variant}_peak_rss_mb"] = run["peak_rss_mb"]
                    row[f"{variant}_rss_above_idle_mb"] = run["peak_rss_mb"] - idle
                    row[f"{variant}_dtype"] = run["dtype"]
            row["saliency_over_plain"] = runs["saliency"]["seconds"] / runs["tiled"]["seconds"]
            if "whole" in runs:
                row["tiled_over_whole"] = runs["tiled"]["seconds"] / runs["whole"]["seconds"]
                scale = float(np.abs(results["whole_fp32"][brain]).max())
                row["max_abs_diff_tiled_vs_whole_fp32_in_brain"] = float(
                    np.abs(results["tiled_fp32"] - results["whole_fp32"])[brain].max())
                row["max_abs_diff_tiled_vs_whole_bf16_in_brain"] = float(
                    np.abs(results["tiled"] - results["whole"])[brain].max())
                row["max_abs_output_fp32_in_brain"] = scale
            if "monai" in runs:  # against the whole-volume pass in the same precision
                row["max_abs_diff_monai_vs_whole_bf16_in_brain"] = float(
                    np.abs(results["monai"] - results["whole"])[brain].max())
            figures[architecture] = row
    for architecture, row in figures.items():
        print(f"\n{architecture}")
        width = max(map(len, row))
        for key, value in row.items():
            print(f"  {key:<{width}}  {value:.4g}" if isinstance(value, float) else f"  {key:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
