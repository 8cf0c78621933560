"""``mrsynthesis demo``: the whole job on data every installation has.

Input: the MNI152 2009a symmetric T1 template that the nilearn package ships (read from
the installed package, no download). The demo synthesises every other contrast the
model produces, paints a spherical lesion in periventricular white matter (inside the
template's own white-matter map), synthesises the lesioned scan, and writes the volumes,
a PNG report and a JSON summary.

Run again into the same folder (the README's first command, run twice), the demo replaces its own earlier
outputs there without ``--overwrite``: each file it writes is recorded, by name and SHA-256, in the folder's
``MARKER``, and a file counts as its own only while its content is still the one recorded. Any other file under
an output's name (the user's own, or one of the demo's that was changed since) is refused as every command
refuses it ("already exists"), before any work, and left as it is.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from . import registry
from .atomic import check_writable, read_json, write_json
from .cards import file_sha256, load_model
from .errors import EXIT_OK, InputError
from .logic import SynthesisLogic, SynthesisRequest
from .progress import Reporter
from .provenance import run_description, sidecar, sidecar_path
from .report import Panel, orthogonal_views
from .volume import Volume, read_volume, write_volume

TEMPLATE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
WHITE_MATTER = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
# Right periventricular white matter, beside the body of the lateral ventricle, in
# MNI RAS millimetres: the commonest site of MS lesions.
LESION_CENTRE_RAS = (24.0, -16.0, 26.0)
LESION_RADIUS_MM = 6.0
# In the demo's output folder: {"written": {file name: SHA-256}} of every file the demo wrote there.
MARKER = ".mrsynthesis-demo.json"


def nilearn_file(name: str) -> Path:
    """A data file of the installed nilearn package, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the demo needs the nilearn package (it ships the MNI152 template): pip install nilearn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    if not path.is_file():
        raise InputError(f"{path}: not found in the installed nilearn package")
    return path


def demo_lesion(template: Volume, white_matter: Volume) -> Volume:
    """A ball of ``LESION_RADIUS_MM`` around ``LESION_CENTRE_RAS``, kept where white matter is likely (> 0.5)."""
    image = template.to_sitk()
    x, y, z = LESION_CENTRE_RAS
    centre = np.array(image.TransformPhysicalPointToContinuousIndex((-x, -y, z)))  # RAS -> ITK's LPS
    grid = np.indices(template.array.shape).astype(np.float64)  # (k, j, i)
    spacing = np.array(template.geometry.spacing)[::-1, None, None, None]
    distance = np.sqrt((((grid - centre[::-1, None, None, None]) * spacing) ** 2).sum(axis=0))
    wm = white_matter.array / max(float(white_matter.array.max()), 1e-6)
    mask = (distance <= LESION_RADIUS_MM) & (wm > 0.5)
    return template.with_array(mask.astype(np.float32), source="demo lesion")


def earlier_outputs(out: Path) -> dict[str, str] | None:
    """The files in ``out`` that an earlier demo wrote and nobody changed since, name -> SHA-256 (from ``MARKER``);
    None when ``MARKER`` is there but no record of the demo's (then it is not ours to replace either)."""
    marker = out / MARKER
    if not marker.is_file():
        return {}
    try:
        record = read_json(marker)
    except InputError:
        return None
    written = record.get("written") if isinstance(record, dict) else None
    if not isinstance(written, dict) or not all(
            isinstance(n, str) and n and Path(n).name == n and n != MARKER and isinstance(d, str)
            for n, d in written.items()):
        return None
    return {n: d for n, d in written.items() if (out / n).is_file() and file_sha256(out / n) == d}


def run_demo(out: Path, *, model: str | None, device: str, overwrite: bool, reporter: Reporter) -> int:
    template = read_volume(nilearn_file(TEMPLATE))
    print(f"input: MNI152 T1 template from nilearn ({template.source})\n"
          f"  grid {template.geometry.size}, spacing {template.geometry.spacing}, "
          f"orientation {template.geometry.orientation()}")
    try:
        folder = registry.resolve(model)
    except InputError as error:
        if model is not None:
            raise
        print(f"no synthesis run: {error}\nthe template was read and validated; nothing was written")
        return EXIT_OK
    loaded = load_model(folder)
    card = loaded.card
    if "T1" not in card.inputs:
        raise InputError(f"model {card.name!r} does not accept T1, the demo's input; "
                         f"it accepts {', '.join(card.inputs)}")
    targets = [t for t in card.outputs if t != "T1"]
    lesion = demo_lesion(template, read_volume(nilearn_file(WHITE_MATTER))) if card.lesion_input else None
    names = {t: out / f"{t}_synthetic.nii.gz" for t in targets}
    if lesion is not None:
        names.update({f"{t}+lesion": out / f"{t}_synthetic_lesion.nii.gz" for t in targets})
        names["lesion"] = out / "demo_lesion_mask.nii.gz"
    synthetic = [p for k, p in names.items() if k != "lesion"]
    planned = [*names.values(), *map(sidecar_path, synthetic), out / "report.png", out / "summary.json"]
    earlier = earlier_outputs(out)
    own = {*(earlier or {}), *([MARKER] if earlier is not None else [])}  # replaced without --overwrite
    check_writable([p for p in [*planned, out / MARKER] if p.name not in own], [], overwrite)  # before the work
    check_writable([p for p in planned if p.name in own], [], True)
    written = dict(earlier or {})

    def record(path: Path) -> None:
        """``path`` is the demo's own from now on: replaced by the next demo, while it is unchanged."""
        written[path.name] = file_sha256(path)
        write_json(out / MARKER, {"written": written})

    replace = {p.name: overwrite or p.name in own for p in planned}
    print(f"model: {card.name} ({folder}); synthesising {', '.join(targets)}")

    logic = SynthesisLogic(loaded, reporter.progress)
    healthy = logic.run(SynthesisRequest(inputs={"T1": template}, targets=targets, device=device))
    results = {t: healthy.outputs[t] for t in targets}
    if lesion is not None:
        lesioned = logic.run(SynthesisRequest(inputs={"T1": template}, targets=targets, lesion_mask=lesion,
                                              device=device))
        results.update({f"{t}+lesion": lesioned.outputs[t] for t in targets})
        results["lesion"] = lesion
    reporter.close()
    for key, volume in results.items():  # the synthetic ones say so in their headers and sidecars
        if key == "lesion":
            record(write_volume(volume, names[key], overwrite=replace[names[key].name]))
            continue
        target, _, painted = key.partition("+")
        run = (lesioned if painted else healthy).provenance
        record(write_volume(volume, names[key], overwrite=replace[names[key].name],
                            description=run_description(target, run)))
        record(write_json(sidecar_path(names[key]), sidecar(target, run, names[key])))
    panels = [Panel("T1 (MNI152 input)", template)] + [Panel(f"{t} synthetic", results[t]) for t in targets]
    if lesion is not None:  # the lesioned scan as a reader sees it, and what the lesion changed (outlined)
        shown = targets[-1]
        change = results[f"{shown}+lesion"].array - results[shown].array
        panels += [Panel(f"{shown} + painted lesion", results[f"{shown}+lesion"]),
                   Panel("lesioned - healthy", template.with_array(change), overlay=lesion, cmap="magma")]
    report = orthogonal_views(panels, out / "report.png", focus=lesion,
                              title=f"MRSynthesis demo, model {card.name}: synthesised from T1 alone")
    record(Path(report))
    summary = {"model": card.name, "device": healthy.device, "precision": healthy.precision,
               "outputs": {k: str(p) for k, p in names.items()}, "report": str(report), "notes": healthy.notes}
    if lesion is not None:
        summary["lesion_voxels"] = int(lesion.array.sum())
    record(write_json(out / "summary.json", summary))
    for key, path in names.items():
        print(f"{key}: {path}")
    print(f"report: {report}")
    return EXIT_OK
