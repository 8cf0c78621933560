"""Lesion painting: does the lesion channel put a FLAIR lesion where it is told, and only there?

Run by hand from the repository root::

    python -m training.experiments.lesion_painting --subject ../shared/data/ms/patient07 \
        --out docs/results/lesion_painting

The subject (MS naming: T1.nii.gz, T2.nii.gz, FLAIR.nii.gz, lesion_mask.nii.gz) gives T1 and
T2 as inputs; FLAIR is the target. ``K`` spherical lesions are painted at seeded random
centres in normal-appearing white matter (the T1 white-matter mask of
``metrics.white_matter_mask`` minus the subject's real lesions dilated), deep enough that
each ball lies in white matter and far from the real lesions. FLAIR is then synthesised
three times:

* unpainted: no lesion channel (all zero; the subject's real lesions are not given either),
* painted: the painted mask as the lesion channel (the painted lesions only),
* real: the subject's expert lesion mask as the lesion channel.

Reported: Ratio 1 / Ratio 2 (``metrics.lesion_ratios``) of the painted synthetic FLAIR in
the painted mask; the change (painted - unpainted) near and far from the painted lesions,
in units of the unpainted synthetic FLAIR's brain mean (the model's normalised units); and
the ratios of the real-mask synthetic FLAIR in the real lesions next to the real FLAIR's.
Writes ``results.md``, ``results.json`` and ``lesion_painting.png`` to ``--out``; no image
volumes are written.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from MRSynthesisLib import registry
from MRSynthesisLib.cards import load_model
from MRSynthesisLib.logic import SynthesisLogic, SynthesisRequest
from MRSynthesisLib.metrics import lesion_ratios, white_matter_mask
from MRSynthesisLib.preprocessing import foreground_mask
from MRSynthesisLib.report import Panel, orthogonal_views
from MRSynthesisLib.volume import Volume, read_volume

DEFAULT_SUBJECT = "../shared/data/ms/patient07"
DEFAULT_OUT = "docs/results/lesion_painting"
FILES = {"T1": "T1.nii.gz", "T2": "T2.nii.gz", "FLAIR": "FLAIR.nii.gz", "lesion": "lesion_mask.nii.gz"}
RATIO1_REQUIRED = 1.2  # the acceptance threshold for the painted lesions
FIGURE = "lesion_painting.png"


@dataclass
class Settings:
    lesions: int = 3  # K painted lesions
    radius_mm: float = 4.5
    seed: int = 0
    real_margin_mm: float = 15.0  # painted centres at least this far from any real lesion voxel
    exclude_dilation_mm: float = 5.0  # NAWM = WM minus real lesions dilated by this
    spacing_mm: float = 25.0  # painted centres at least this far from each other
    far_mm: float = 10.0  # "far" = farther than this from every painted lesion voxel
    surround_voxels: int = 5  # Ratio 2's surrounding-NAWM shell (metrics.lesion_ratios' default)


def _distance_from(mask: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Euclidean distance in mm from every voxel to the nearest voxel of ``mask`` (inf when empty)."""
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndi.distance_transform_edt(~mask, sampling=spacing_zyx)


def paint_lesions(nawm: np.ndarray, real_lesion: np.ndarray, spacing_zyx: np.ndarray,
                  settings: Settings) -> tuple[np.ndarray, list[list[int]]]:
    """A bool mask of ``settings.lesions`` balls in ``nawm`` and their (z, y, x) centres.

    Centres are drawn with ``numpy.random.default_rng(settings.seed)`` among NAWM voxels at
    least ``radius_mm`` deep inside NAWM (so the ball lies in white matter), at least
    ``real_margin_mm`` from every real lesion voxel and ``spacing_mm`` from earlier centres.
    Each ball is intersected with NAWM, as the demo does with its white-matter map.
    """
    depth = ndi.distance_transform_edt(nawm, sampling=spacing_zyx)
    from_real = _distance_from(real_lesion, spacing_zyx)
    candidates = np.argwhere((depth >= settings.radius_mm) & (from_real >= settings.real_margin_mm))
    if len(candidates) == 0:
        raise ValueError(f"no NAWM voxel is {settings.radius_mm} mm deep in white matter and "
                         f"{settings.real_margin_mm} mm from the real lesions; lower --radius-mm")
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(len(candidates))
    centres: list[np.ndarray] = []
    for index in order:
        point = candidates[index]
        if all(np.linalg.norm((point - c) * spacing_zyx) >= settings.spacing_mm for c in centres):
            centres.append(point)
            if len(centres) == settings.lesions:
                break
    if len(centres) < settings.lesions:
        raise ValueError(f"only {len(centres)} of {settings.lesions} lesion centres fit "
                         f"{settings.spacing_mm} mm apart; lower --spacing-mm or --lesions")
    grid = np.indices(nawm.shape, dtype=np.float64)
    painted = np.zeros(nawm.shape, bool)
    for centre in centres:
        offset = (grid - centre[:, None, None, None]) * spacing_zyx[:, None, None, None]
        painted |= np.sqrt((offset ** 2).sum(axis=0)) <= settings.radius_mm
    return painted & nawm, [[int(v) for v in c] for c in centres]


def _abs_change(difference: np.ndarray, region: np.ndarray, unit: float) -> dict[str, float]:
    values = np.abs(difference[region]) / unit
    return {"voxels": int(region.sum()), "mean_abs": float(values.mean()),
            "p99_abs": float(np.percentile(values, 99)), "max_abs": float(values.max())}


def run_experiment(subject: str | os.PathLike, out: str | os.PathLike, *, model: str | None = None,
                   device: str = "auto", settings: Settings | None = None,
                   command: str | None = None) -> dict[str, Any]:
    """Paint, synthesise three times, measure, and write results.md / results.json / the PNG to ``out``."""
    settings = settings or Settings()
    subject, out = Path(subject), Path(out)
    volumes = {key: read_volume(subject / name) for key, name in FILES.items()}
    t1, t2, flair = volumes["T1"], volumes["T2"], volumes["FLAIR"]
    real_lesion = volumes["lesion"].array > 0.5
    spacing_zyx = np.asarray(t1.geometry.spacing, np.float64)[::-1]

    # The same brain mask SynthesisLogic derives from the inputs (foreground of T1 and T2).
    brain = foreground_mask([t1.array, t2.array])
    white_matter = white_matter_mask(t1.array, brain)
    exclude = _distance_from(real_lesion, spacing_zyx) <= settings.exclude_dilation_mm
    nawm = white_matter & ~exclude
    painted, centres = paint_lesions(nawm, real_lesion, spacing_zyx, settings)
    painted_volume = t1.with_array(painted.astype(np.float32), source="painted lesions")

    folder = registry.resolve(model)
    loaded = load_model(folder)
    logic = SynthesisLogic(loaded)
    inputs = {"T1": t1, "T2": t2}
    timings = {}

    def synthesise(label: str, lesion: Volume | None) -> np.ndarray:
        started = time.perf_counter()
        result = logic.run(SynthesisRequest(inputs=inputs, targets=["FLAIR"], lesion_mask=lesion, device=device))
        timings[label] = round(time.perf_counter() - started, 1)
        print(f"synthesised FLAIR ({label}) in {timings[label]} s on {result.device}", flush=True)
        return result.outputs["FLAIR"].array.astype(np.float64)

    unpainted = synthesise("unpainted", None)
    with_paint = synthesise("painted", painted_volume)
    with_real = synthesise("real mask", volumes["lesion"]) if real_lesion.any() else None

    # Painted lesions: contrast in the painted synthetic FLAIR (and, as controls, in the
    # unpainted synthetic and the real FLAIR at the same place, where there is no lesion).
    painted_ratios = {
        "painted_synthetic": lesion_ratios(with_paint, painted, nawm, settings.surround_voxels),
        "unpainted_synthetic": lesion_ratios(unpainted, painted, nawm, settings.surround_voxels),
        "real_flair": lesion_ratios(flair.array, painted, nawm, settings.surround_voxels),
    }

    # Change caused by the painting, in units of the unpainted synthetic FLAIR's brain mean.
    unit = float(unpainted[brain].mean())
    difference = with_paint - unpainted
    distance = _distance_from(painted, spacing_zyx)
    near = brain & ~painted & (distance <= settings.far_mm)
    far = brain & (distance > settings.far_mm)
    lesion_slices = np.zeros(brain.shape, bool)
    axis = t1.geometry.axis_for(loaded.card.plane or "axial") if loaded.card.spatial_dims == 2 else None
    if axis is not None:  # far voxels in the slices the 2D model saw a painted lesion in
        index = [slice(None)] * 3
        index[axis] = np.unique(np.nonzero(painted)[axis])
        lesion_slices[tuple(index)] = True
    change = {"inside": _abs_change(difference, painted, unit),
              "near": _abs_change(difference, near, unit),
              "far": _abs_change(difference, far, unit)}
    if axis is not None and (far & lesion_slices).any():
        change["far_in_lesion_slices"] = _abs_change(difference, far & lesion_slices, unit)
    change["far_unchanged_fraction"] = float((difference[far] == 0).mean())

    # Real lesions: the model given the expert mask vs the real FLAIR (NAWM = T1 white matter).
    real = None
    if with_real is not None:
        real = {"lesion_voxels": int(real_lesion.sum()),
                "real_mask_synthetic": lesion_ratios(with_real, real_lesion, white_matter, settings.surround_voxels),
                "unpainted_synthetic": lesion_ratios(unpainted, real_lesion, white_matter, settings.surround_voxels),
                "real_flair": lesion_ratios(flair.array, real_lesion, white_matter, settings.surround_voxels)}

    card = loaded.card
    results = {
        "experiment": "lesion_painting",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "subject": subject.name,
        "subject_path": str(subject),
        "model": {"name": card.name, "version": card.version, "weights_sha256": card.weights_sha256,
                  "folder": str(folder)},
        "inputs": ["T1", "T2"], "target": "FLAIR",
        "settings": vars(settings),
        "painted": {"centres_zyx": centres, "voxels": int(painted.sum()),
                    "nawm_voxels": int(nawm.sum()), "brain_voxels": int(brain.sum())},
        "painted_ratios": painted_ratios,
        "ratio1_required": RATIO1_REQUIRED,
        "ratio1_passes": bool(painted_ratios["painted_synthetic"]["ratio1"] > RATIO1_REQUIRED),
        "change_unit": {"what": "mean of the unpainted synthetic FLAIR in the brain", "value": unit},
        "change": change,
        "real_lesions": real,
        "timings_s": timings,
    }
    for key, value in _flat_numbers(results):
        if not math.isfinite(value):
            raise ValueError(f"non-finite result {key} = {value}")

    out.mkdir(parents=True, exist_ok=True)
    focus = _first_ball(painted)
    panels = [Panel("synthetic FLAIR, unpainted", flair.with_array(unpainted.astype(np.float32))),
              Panel("synthetic FLAIR, painted", flair.with_array(with_paint.astype(np.float32))),
              Panel("painted - unpainted", flair.with_array(difference.astype(np.float32)),
                    overlay=painted_volume, cmap="magma"),
              Panel("real FLAIR", flair)]
    orthogonal_views(panels, out / FIGURE, focus=flair.with_array(focus.astype(np.float32)),
                     title=f"{card.name}, {subject.name}: FLAIR from T1+T2, {settings.lesions} painted lesions "
                           f"(red outline); views through lesion 1")
    _write_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    _write_atomic(out / "results.md", render_markdown(results))
    return results


def _first_ball(painted: np.ndarray) -> np.ndarray:
    labels, _ = ndi.label(painted)
    return labels == 1 if labels.max() else painted


def _flat_numbers(value: Any, prefix: str = ""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flat_numbers(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, float):
        yield prefix, value


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def render_markdown(r: dict[str, Any]) -> str:
    s, p, c = r["settings"], r["painted_ratios"], r["change"]
    f = lambda v: f"{v:.3f}"  # noqa: E731
    lines = [
        "# Lesion painting",
        "",
        f"Generated by `training/experiments/lesion_painting.py` on {r['date']}; every figure below is "
        "written by the script (also in `results.json`).",
        "",
        f"- command: `{r['command']}`" if r["command"] else "- command: (called from Python)",
        f"- model: `{r['model']['name']}` version {r['model']['version']}, "
        f"weights_sha256 `{r['model']['weights_sha256']}`",
        f"- subject: `{r['subject']}` (`{r['subject_path']}`); inputs {' + '.join(r['inputs'])}, "
        f"target {r['target']}",
        f"- painted: {s['lesions']} balls of radius {s['radius_mm']} mm (seed {s['seed']}) in NAWM "
        f"(T1 white-matter mask of `metrics.white_matter_mask` minus the real lesions dilated by "
        f"{s['exclude_dilation_mm']} mm), centres >= {s['real_margin_mm']} mm from any real lesion and "
        f">= {s['spacing_mm']} mm apart; {r['painted']['voxels']} voxels, centres (z, y, x) "
        f"{r['painted']['centres_zyx']}",
        "- runs: unpainted = no lesion channel (all zero: the real lesions are not given either); "
        "painted = the painted mask only; real = the expert lesion mask",
        "",
        "## Painted lesions: contrast (Ratio 1 = lesion / NAWM, Ratio 2 = lesion / NAWM within "
        f"{s['surround_voxels']} voxels)",
        "",
        "| image | Ratio 1 | Ratio 2 |",
        "| --- | --- | --- |",
        f"| synthetic FLAIR, painted | **{f(p['painted_synthetic']['ratio1'])}** "
        f"| {f(p['painted_synthetic']['ratio2'])} |",
        f"| synthetic FLAIR, unpainted (same voxels) | {f(p['unpainted_synthetic']['ratio1'])} | "
        f"{f(p['unpainted_synthetic']['ratio2'])} |",
        f"| real FLAIR (same voxels, no lesion there) | {f(p['real_flair']['ratio1'])} "
        f"| {f(p['real_flair']['ratio2'])} |",
        "",
        f"Required by the issue: Ratio 1 > {r['ratio1_required']}: "
        f"**{'met' if r['ratio1_passes'] else 'NOT met'}**.",
        "",
        "## Change caused by painting (|painted - unpainted| / brain mean of the unpainted synthetic FLAIR "
        f"= {r['change_unit']['value']:.4g})",
        "",
        "| region | voxels | mean abs change | 99th percentile abs change | max abs change |",
        "| --- | --- | --- | --- | --- |",
    ]
    names = {"inside": "inside the painted lesions", "near": f"near: brain within {s['far_mm']} mm, outside lesions",
             "far": f"far: brain farther than {s['far_mm']} mm",
             "far_in_lesion_slices": f"far (> {s['far_mm']} mm), in the axial slices holding a painted lesion"}
    for key, label in names.items():
        if key in c:
            v = c[key]
            lines.append(f"| {label} | {v['voxels']} | {v['mean_abs']:.4f} | {v['p99_abs']:.4f} | {v['max_abs']:.4f} |")
    lines += ["", f"Fraction of far voxels exactly unchanged: {c['far_unchanged_fraction']:.4f} "
              "(the 2D model sees the lesion channel only in the slices that hold a lesion).", ""]
    real = r["real_lesions"]
    if real:
        lines += [
            f"## Real lesions ({real['lesion_voxels']} voxels; NAWM = T1 white-matter mask)",
            "",
            "| image | Ratio 1 | Ratio 2 |",
            "| --- | --- | --- |",
            f"| synthetic FLAIR, real mask as lesion channel | **{f(real['real_mask_synthetic']['ratio1'])}** | "
            f"**{f(real['real_mask_synthetic']['ratio2'])}** |",
            f"| synthetic FLAIR, no lesion channel | {f(real['unpainted_synthetic']['ratio1'])} | "
            f"{f(real['unpainted_synthetic']['ratio2'])} |",
            f"| real FLAIR | {f(real['real_flair']['ratio1'])} | {f(real['real_flair']['ratio2'])} |",
            "",
        ]
    lines += [
        f"![orthogonal views through painted lesion 1]({FIGURE})",
        "",
        "Columns: synthetic FLAIR without and with the painted mask, their difference (painted lesions "
        "outlined in red), and the acquired FLAIR; rows: axial, coronal, sagittal through the first "
        "painted lesion.",
        "",
        "Synthesis times (s): " + ", ".join(f"{k} {v}" for k, v in r["timings_s"].items()) + ".",
        "",
        "Data: open MS data set of the University of Ljubljana (Lesjak et al., Neuroinformatics 2018, "
        "doi:10.1007/s12021-017-9348-7), CC BY 4.0." if r["subject"].startswith("patient") else "",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m training.experiments.lesion_painting", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", default=DEFAULT_SUBJECT, help=f"subject folder (default {DEFAULT_SUBJECT})")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--model", default=None, help="model name or folder (default: the bundled model)")
    parser.add_argument("--device", default="auto")
    defaults = Settings()
    parser.add_argument("--lesions", type=int, default=defaults.lesions)
    parser.add_argument("--radius-mm", type=float, default=defaults.radius_mm)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--far-mm", type=float, default=defaults.far_mm)
    parser.add_argument("--spacing-mm", type=float, default=defaults.spacing_mm)
    parser.add_argument("--real-margin-mm", type=float, default=defaults.real_margin_mm)
    args = parser.parse_args(argv)
    settings = Settings(lesions=args.lesions, radius_mm=args.radius_mm, seed=args.seed, far_mm=args.far_mm,
                        spacing_mm=args.spacing_mm, real_margin_mm=args.real_margin_mm)
    command = shlex.join(["python", "-m", "training.experiments.lesion_painting", *argv])
    results = run_experiment(args.subject, args.out, model=args.model, device=args.device,
                             settings=settings, command=command)
    p = results["painted_ratios"]["painted_synthetic"]
    print(f"painted Ratio 1 {p['ratio1']:.3f} (required > {RATIO1_REQUIRED}), Ratio 2 {p['ratio2']:.3f}; "
          f"far-field mean |change| {results['change']['far']['mean_abs']:.4f}, "
          f"p99 {results['change']['far']['p99_abs']:.4f} (brain-mean units)")
    print(f"wrote {Path(args.out) / 'results.md'}, results.json, {FIGURE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
