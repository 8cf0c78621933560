"""Synthesis on a held-out head tilted away from the pose of the training scans (issue 3, augmentation).

Run by hand from the repository root::

    python -m training.experiments.head_tilt --inputs T1 T2 --target FLAIR \\
        --data ../shared/data/ms/patient07 ../shared/data/ms/patient19 \\
        --methods poly "chartsias+lesion.all:runs/loso-{subject}/<run>/<model>" \\
        "chartsias+lesion.intensity:runs/loso-{subject}/<run>/<model>" \\
        --planes axial sagittal --angles 0 10 20 --out docs/results/<name>

Why: at this project's budget the geometric augmentation (flips, in-plane rotation, zoom)
did not help on the leave-one-subject-out folds, whose held-out scans lie in the same pose
as the training ones. A model meant for scans it has never seen must not depend on that
pose, so this asks what a tilted head costs each model. Every subject in ``--data`` is held
out in turn with the method specs of ``training.experiments.loso`` (a model folder per
held-out subject, ``{subject}`` standing for its name; a model that read the subject is
refused). The subject's images and expert lesion mask are rotated rigidly about the centre
of its brain mask, on their own voxel grid (what a scanner records of a tilted head):
``axial`` turns the head in the axial plane (about the superior-inferior axis; the in-plane
rotation the 2D augmentation draws), ``sagittal`` nods it (about the left-right axis; out of
the slice plane, which no 2D augmentation draws), ``coronal`` rolls it (about the
anterior-posterior axis). Images are resampled linearly, the lesion mask by nearest
neighbour; the same resampling smooths the target too, so methods are compared at the same
angle, and ``poly`` (a voxel-wise regression fitted on the fold's training subjects, blind
to pose up to that smoothing) measures what the resampling alone costs; ``--round-trip`` adds
each tilt rotated back again (the pose as acquired, interpolated twice), which tells a model's answer to
the pose from its answer to interpolated images. Metrics and their
scale are the LOSO harness's (``loso.evaluate``). Writes ``results.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from MRSynthesisLib import modalities
from MRSynthesisLib.preprocessing import foreground_mask

from ..baselines import make_baseline
from ..datasets import SubjectFiles, discover
from .loso import _finite, _fmt, evaluate, load_case, model_predict, parse_method, versions, write_results

# Rotation axes in ITK's physical (LPS) frame; the plane a rotation stays in is the one it is named after.
PLANES = {"axial": (0.0, 0.0, 1.0), "sagittal": (1.0, 0.0, 0.0), "coronal": (0.0, 1.0, 0.0)}


def brain_centre(files: SubjectFiles, inputs: Sequence[str]) -> tuple[float, ...]:
    """Physical centre of the brain mask (``foreground_mask`` of the inputs, as inference computes it)."""
    images = [sitk.ReadImage(str(files.images[m]), sitk.sitkFloat32) for m in inputs]
    brain = foreground_mask([sitk.GetArrayFromImage(i) for i in images])
    if not brain.any():
        raise ValueError(f"{files.subject}: no brain found in {', '.join(inputs)}")
    index = [float(c) for c in np.argwhere(brain).mean(axis=0)[::-1]]  # numpy (z, y, x) -> ITK (x, y, z)
    return images[0].TransformContinuousIndexToPhysicalPoint(index)


def rotation(plane: str, degrees: float, centre: Sequence[float]) -> sitk.Transform:
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}: use {', '.join(PLANES)}")
    transform = sitk.VersorRigid3DTransform()
    transform.SetCenter(tuple(centre))
    transform.SetRotation(PLANES[plane], float(np.deg2rad(degrees)))
    return transform


def tilt(files: SubjectFiles, modalities_: Sequence[str], transform: sitk.Transform, folder: Path,
         round_trip: bool = False) -> SubjectFiles:
    """The subject's ``modalities_`` and lesion mask rotated by ``transform`` on their own grids, written to
    ``folder``; returns where they are. ``round_trip`` rotates them back again (a second resampling): the head
    in its pose as acquired, its images interpolated twice: the control that tells interpolation from pose."""
    folder.mkdir(parents=True, exist_ok=True)
    steps = [transform, transform.GetInverse()] if round_trip else [transform]

    def resample(source: Path, name: str, interpolator: int) -> Path:
        image = moved = sitk.ReadImage(str(source))
        for step in steps:
            moved = sitk.Resample(moved, image, step, interpolator, 0.0, image.GetPixelID())
        path = folder / f"{name}.nii.gz"
        sitk.WriteImage(moved, str(path))
        return path

    images = {m: resample(files.images[m], m, sitk.sitkLinear) for m in modalities_}
    lesion = resample(files.lesion, "lesion_mask", sitk.sitkNearestNeighbor) if files.lesion else None
    return SubjectFiles(files.subject, images, lesion)


def run_head_tilt(data: list[str], inputs: list[str], target: str, methods: list[str], planes: list[str],
                  angles: list[float], out: Path | None = None, command: str = "", round_trip: bool = False,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score every method on every held-out subject at every (plane, angle), and with ``round_trip`` also
    rotated there and back; returns (and writes) the results."""
    inputs = [modalities.canonical(m) for m in inputs]
    target = modalities.canonical(target)
    parsed = [parse_method(m) for m in methods]
    unknown = [p for p in planes if p not in PLANES]
    if unknown:  # before any work
        raise ValueError(f"unknown plane {unknown[0]!r}: use {', '.join(PLANES)}")
    subjects = [s for s in discover(data) if all(m in s.images for m in [*inputs, target])]
    if len(subjects) < 2:
        raise ValueError(f"head_tilt needs at least 2 subjects with {', '.join([*inputs, target])}; found "
                         f"{len(subjects)} (each held-out subject's baselines are fitted on the others)")
    needed = list(dict.fromkeys([*inputs, target, "T1"]))
    cases = {s.subject: load_case(s, inputs, target) for s in subjects}
    rows = []
    for files in subjects:
        held = files.subject
        baselines = {}
        for name, template in parsed:
            if template is None:
                baseline = make_baseline(name)  # the baselines' default settings, as the LOSO harness's
                baseline.fit([(c.inputs, c.target, c.brain) for n, c in cases.items() if n != held])
                baselines[name] = baseline
        centre = brain_centre(files, inputs)
        backs = (False, True) if round_trip else (False,)
        poses = ([("none", 0.0, False)] if 0 in angles else []) + [
            (p, a, back) for p in planes for a in angles if a != 0 for back in backs]
        for plane, angle, back in poses:
            with tempfile.TemporaryDirectory(prefix="head_tilt_") as tmp:
                case = cases[held] if angle == 0 else load_case(tilt(
                    files, [m for m in needed if m in files.images], rotation(plane, angle, centre), Path(tmp),
                    round_trip=back), inputs, target)
                row: dict[str, Any] = {"held_out": held, "plane": plane, "degrees": angle, "round_trip": back,
                                       "methods": {}}
                for name, template in parsed:
                    started = time.perf_counter()
                    entry: dict[str, Any] = {}
                    try:
                        if template is None:
                            synthetic = baselines[name].predict(case.inputs, case.brain)
                        else:
                            folder = Path(template.format(subject=held))
                            entry["model"] = str(folder)
                            if not (folder / "card.json").is_file():
                                entry["skipped"] = f"no model folder {folder}"
                                row["methods"][name] = entry
                                continue
                            use_lesion = name.partition(".")[0].endswith("+lesion")
                            synthetic = model_predict(folder, case, inputs, target, use_lesion)
                        entry["metrics"] = evaluate(synthetic, case)
                    except (ValueError, OSError) as error:
                        entry["error"] = str(error)
                    entry["seconds"] = round(time.perf_counter() - started, 1)
                    row["methods"][name] = entry
                    m = entry.get("metrics")
                    log(f"[{held} {pose_name(row)}] {name}: " + (
                        f"ssim_brain {m['ssim_brain']:.4f}" if m else entry.get("error", entry.get("skipped", ""))))
                rows.append(row)
    results = {
        "experiment": f"head tilt {'+'.join(inputs)} -> {target}",
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command, "versions": versions(), "data": list(data), "inputs": inputs, "target": target,
        "methods": methods, "planes": planes, "angles": angles, "round_trip": round_trip, "rows": rows,
        "change": ssim_change(rows, [n for n, _ in parsed]),
    }
    if out is not None:
        write_results(Path(out), _finite(results), markdown(results))
        log(f"wrote {Path(out) / 'results.md'} and {Path(out) / 'results.json'}")
    return results


def pose_name(row: dict[str, Any]) -> str:
    if row["degrees"] == 0:
        return "as acquired"
    return f"{row['plane']} {row['degrees']:g}" + (" there and back" if row.get("round_trip") else "")


def ssim_change(rows: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, float]]:
    """Per method and tilted pose ("plane angle"): SSIM in the brain minus that of the images as acquired, mean
    over the subjects scored in both."""
    acquired = {(r["held_out"], n): r["methods"][n]["metrics"]["ssim_brain"] for r in rows if r["degrees"] == 0
               for n in names if "metrics" in r["methods"].get(n, {})}
    change: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for r in rows:
        for n in names:
            if r["degrees"] != 0 and "metrics" in r["methods"].get(n, {}) and (r["held_out"], n) in acquired:
                change[n].setdefault(pose_name(r), []).append(r["methods"][n]["metrics"]["ssim_brain"]
                                                      - acquired[(r["held_out"], n)])
    return {n: {pose: float(np.mean(v)) for pose, v in poses.items()} for n, poses in change.items()}


def markdown(results: dict[str, Any]) -> str:
    names = [parse_method(m)[0] for m in results["methods"]]
    lines = [f"# {results['experiment']}", "", f"Date: {results['date']}  ", f"Command: `{results['command']}`  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()), "",
             "Each held-out subject rotated about its brain's centre on its own voxel grid (axial: in the axial "
             "plane; sagittal: a nod; coronal: a roll), images resampled linearly, lesion mask by nearest "
             "neighbour; 'there and back' rotates back again (the pose as acquired, interpolated twice: the "
             "interpolation without the pose). Metrics on the LOSO harness's scale. Cell: SSIM in the brain / |dR1| "
             "(MSE in the brain).", "", "## Per subject and pose", "",
             "| held out | pose | " + " | ".join(names) + " |", "|" + " --- |" * (2 + len(names))]
    for row in results["rows"]:
        cells = []
        for n in names:
            entry = row["methods"].get(n, {})
            m = entry.get("metrics")
            cells.append(f"{_fmt(m['ssim_brain'], 3)} / {_fmt(m.get('lesion_ratio1_abs_difference'), 3)} "
                         f"({_fmt(m['mse_brain'])})" if m else entry.get("skipped") or entry.get("error") or "-")
        lines.append(f"| {row['held_out']} | {pose_name(row)} | " + " | ".join(cells) + " |")
    poses = list(dict.fromkeys(p for v in results["change"].values() for p in v))
    lines += ["", "## SSIM change from the images as acquired, mean over the held-out subjects", "",
              "| method | " + " | ".join(poses) + " |", "|" + " --- |" * (1 + len(poses))]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{results['change'][n][p]:+.3f}" if p in results["change"][n] else "-"
                                             for p in poses) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.head_tilt",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", required=True, help="subject folders / CSV manifests")
    parser.add_argument("--inputs", nargs="+", default=["T1", "T2"])
    parser.add_argument("--target", default="FLAIR")
    parser.add_argument("--methods", nargs="+", required=True,
                        help="as for training.experiments.loso: poly, rf, <kind>[.<label>]:<model folder template>")
    parser.add_argument("--planes", nargs="+", default=["axial", "sagittal"], choices=sorted(PLANES))
    parser.add_argument("--angles", nargs="+", type=float, default=[0.0, 10.0, 20.0], help="degrees; 0 = as acquired")
    parser.add_argument("--round-trip", action="store_true",
                        help="also rotate each tilted case back (interpolation without the pose, a control)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    command = "python -m training.experiments.head_tilt " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    import torch

    torch.set_num_threads(args.threads)
    try:
        run_head_tilt(args.data, args.inputs, args.target, args.methods, args.planes, args.angles, Path(args.out),
                      command=command, round_trip=args.round_trip, log=lambda message: print(message, flush=True))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
