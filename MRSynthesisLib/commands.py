"""What each ``mrsynthesis`` sub-command does; ``cli`` parses, this module acts.

Every command that synthesises goes through ``SynthesisLogic``; files are read with
``read_volume`` and written atomically with ``write_volume``, after checking up front
that no output would replace an existing file or an input.
"""

from __future__ import annotations

import argparse
import json
import os
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import metrics, modalities, registry
from .atomic import check_distinct_outputs, check_folder, check_writable, is_temporary, read_json, write_json
from .cards import LoadedModel, load_model
from .errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, Cancelled, InputError
from .formats import WRITABLE_SUFFIXES, looks_like_a_file, suffix_of
from .logic import SynthesisLogic, SynthesisRequest, SynthesisResult, voxel_size_text
from .manifest import PATIENT_COLUMN, ManifestSubject, read_manifest
from .preprocessing import NormalisationSpec, foreground_mask, normalise
from .progress import Reporter
from .provenance import located, run_description, saliency_description, sidecar, sidecar_path, sidecars
from .report import Panel, orthogonal_views, saliency_figure
from .validation import check_mask, check_values
from .volume import Volume, read_volume, reoriented_onto, resample_to, write_volume


def _targets(values: Sequence[str]) -> list[str]:
    return [t.strip() for value in values for t in value.split(",") if t.strip()]


def _canonical(name: str, role: str) -> str:
    try:
        return modalities.canonical(name)
    except ValueError as error:
        raise InputError(f"{role}: {error}") from None


def default_targets(model: LoadedModel, inputs: Sequence[str]) -> list[str]:
    """Every output the model produces that is not already an input."""
    given = {_canonical(n, "input") for n in inputs}
    targets = [t for t in model.card.outputs if t not in given]
    if not targets:
        raise InputError(f"every output of model {model.card.name!r} ({', '.join(model.card.outputs)}) "
                         "is already an input; pass --target to re-synthesise one")
    return targets


def output_paths(out: str | os.PathLike, targets: Sequence[str], suffix: str) -> dict[str, Path]:
    """One file per target: ``out`` itself when it is an image name, else ``out/<T>_synthetic<suffix>``."""
    out = Path(out)
    try:
        suffix_of(out)
        is_file = True
    except InputError:
        is_file = False
    if is_file:
        if len(targets) != 1:
            raise InputError(f"{out}: an image file name holds one output, but {len(targets)} targets were asked "
                             f"for ({', '.join(targets)}); give a folder instead")
        return {targets[0]: out}
    return {t: out / f"{t}_synthetic{suffix}" for t in targets}


def check_out(out: str | os.PathLike, folder_only: bool = False, option: str = "--out") -> None:
    """``--out flair.png`` or ``t2.nhdr`` is meant as a file, not as a new folder to fill: refuse a new
    folder name with a file extension (``looks_like_a_file``) that is no output format; a dot elsewhere
    (``sub-01.ses-1``) names a folder, and an existing folder is taken as it is.
    ``folder_only``: the option takes a folder of several files, so any new name with an extension is refused."""
    out = Path(out)
    image = str(out).lower().endswith(WRITABLE_SUFFIXES)
    if folder_only and image:
        raise InputError(f"{out}: names an image file, but {option} takes a folder of files; name a folder")
    if looks_like_a_file(out) and not out.is_dir() and not image:
        if folder_only:
            raise InputError(f"{out}: looks like a file name, but {option} takes a folder of files; name a folder "
                             "without an extension")
        raise InputError(f"{out}: is neither a folder nor an image name the outputs can take "
                         f"({', '.join(WRITABLE_SUFFIXES)}); name a folder without an extension, or such a file")


def saliency_paths(folder: str | os.PathLike, result_targets: Sequence[str], inputs: Sequence[str],
                   suffix: str) -> dict[tuple[str, str], Path]:
    return {(t, n): Path(folder) / f"P3S_{t}_from_{n}{suffix}" for t in result_targets for n in inputs}


def _read_optional(path: str | None) -> Volume | None:
    return read_volume(path) if path else None


def _region_file(region: Volume | None) -> str | None:
    """The file the region mask was read from, named as the sidecars name the inputs (``provenance.located``:
    absolute, symbolic links kept): ``Volume.source`` is the path as the user typed it, relative to a working folder
    that means nothing to whoever reads the JSON later. None without a region, or when the region was not read from
    a file (there is no file to name)."""
    if region is None or not Path(region.source).is_file():
        return None
    return located(region.source)


def write_result(result: SynthesisResult, paths: Mapping[str, Path], saliency: Mapping[tuple[str, str], Path],
                 overwrite: bool, inputs: Mapping[str, Volume] | None = None,
                 region: Volume | None = None) -> dict[str, object]:
    """Write outputs (and saliency maps, their Fig. 6 PNG per target, contributions.json); return the summary.

    ``inputs`` (canonical modality -> volume; needed with ``saliency``) are drawn under the maps; ``region``
    is the mask the region contributions were computed in (its file named in contributions.json: ``_region_file``).

    All or nothing: when writing fails or is cancelled (SIGTERM, Ctrl-C) part-way, the files this
    call had created are removed again, so that no run leaves some of its outputs behind (and a
    batch can redo that subject instead of refusing to replace the outputs that were left).
    """
    created: list[Path] = []

    def write(volume: Volume, path: Path, description: str) -> str:
        existed = path.exists()
        done = write_volume(volume, path, overwrite=overwrite, description=description)
        if not existed:
            created.append(done)
        return str(done)

    def write_sidecar(target: str, image: Path) -> None:
        path = sidecar_path(image)
        existed = path.exists()
        write_json(path, sidecar(target, result.provenance, image))
        if not existed:
            created.append(path)

    model = result.provenance["model"]["name"]  # type: ignore[index]
    try:
        written = {}
        for t, path in paths.items():
            written[t] = write(result.outputs[t], path, run_description(t, result.provenance))
            write_sidecar(t, path)
        maps = {}
        for (t, n), path in saliency.items():
            maps.setdefault(t, {})[n] = write(result.saliency[t][n], path, saliency_description(t, n, model))
        summary: dict[str, object] = {"outputs": written, "device": result.device, "precision": result.precision,
                                      "notes": result.notes}
        if saliency:
            folder = next(iter(saliency.values())).parent
            figures = {}
            for t, per in result.saliency.items():
                figure = folder / f"P3S_{t}.png"
                grid = next(iter(per.values())).geometry
                # each map under its input where the network saw it: registered with --register, not as given
                shown = {n: result.registered.get(n, v) for n, v in inputs.items()}
                shown = {n: v if v.geometry == grid else resample_to(v, grid) for n, v in shown.items()}
                focus = None if region is None else (
                    region if region.geometry == grid else resample_to(region, grid, nearest=True))
                existed = figure.exists()
                figures[t] = str(saliency_figure(shown, per, figure, focus=focus,
                                                 title=f"P3S maps, target {t}"))
                if not existed:
                    created.append(figure)
            summary.update(saliency=maps, contributions=result.contributions,
                           region_contributions=result.region_contributions,
                           saliency_objective=result.saliency_objective, saliency_figures=figures)
            write_json(folder / "contributions.json",
                       {"objective": result.saliency_objective,
                        "contributions": result.contributions,  # shares of the mean saliency in the brain
                        "contributions_in_region": result.region_contributions,
                        "region": _region_file(region),
                        "mean_saliency": result.saliency_means, "maps": maps, "figures": figures})
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    return summary


def _read_pairs(pairs: Sequence[tuple[str, str]], option: str) -> dict[str, Volume]:
    """The volumes of repeated ``MODALITY=PATH`` options, each name and each file given once."""
    modalities.check_given_once(pairs, option)
    return {name: read_volume(path) for name, path in pairs}


def synthesize(args: argparse.Namespace, reporter: Reporter) -> int:
    check_out(args.out)
    if args.saliency_out:
        check_out(args.saliency_out, folder_only=True, option="--saliency-out")
    given = {"--saliency-reference": args.saliency_reference, "--saliency-region": args.saliency_region}
    unused = [option for option, value in given.items() if value]
    if unused and not args.saliency_out:  # they shape the saliency maps only: given alone, they would do nothing
        raise InputError(f"{' and '.join(unused)}: used by the saliency maps only; add --saliency-out DIR")
    inputs = _read_pairs(args.input, "--input")  # before the model: bad files fail fast
    model = load_model(registry.resolve(args.model))
    targets = [_canonical(t, "target") for t in _targets(args.target)] or default_targets(model, inputs)
    paths = output_paths(args.out, targets, args.format)
    saliency = (saliency_paths(args.saliency_out, targets, [_canonical(n, "input") for n in inputs], args.format)
                if args.saliency_out else {})
    extras = [Path(args.saliency_out) / f for f in ["contributions.json", *(f"P3S_{t}.png" for t in targets)]] \
        if args.saliency_out else []
    check_distinct_outputs([*((f"output {t}", p) for t, p in paths.items()),
                            *((f"the sidecar of output {t}", sidecar_path(p)) for t, p in paths.items()),
                            *((f"the P3S map of {t} from {n}", p) for (t, n), p in saliency.items()),
                            *((f"the saliency {'summary' if p.suffix == '.json' else 'figure'}", p) for p in extras)])
    # Every file the user gave is an input that no output may replace: images, masks, saliency references.
    given = [p for _, p in [*args.input, *args.saliency_reference]]
    given += [p for p in (args.lesion_mask, args.brain_mask, args.saliency_region) if p]
    theirs, ours = sidecars(list(paths.values()))
    check_writable([*paths.values(), *theirs, *saliency.values(), *extras], [Path(p) for p in given],
                   args.overwrite)
    check_writable(ours, [Path(p) for p in given], True)
    request = SynthesisRequest(
        inputs=inputs, targets=targets, lesion_mask=_read_optional(args.lesion_mask),
        brain_mask=_read_optional(args.brain_mask), reference=args.resample_to, resample=bool(args.resample_to),
        device=args.device, precision=args.precision, batch_size=args.batch_size, plane=args.plane,
        saliency=bool(args.saliency_out),
        saliency_references=_read_pairs(args.saliency_reference, "--saliency-reference"),
        saliency_region=_read_optional(args.saliency_region), tile=args.tile, native_spacing=args.native_spacing,
        register=args.register, lesion_mask_on=args.lesion_mask_on)
    result = SynthesisLogic(model, reporter.progress).run(request)
    for note in result.notes:
        reporter.note(note)
    # the lesion where the contributions were summed: moved with its input by --lesion-mask-on, or as given
    region = request.saliency_region or result.registered.get("lesion", request.lesion_mask)
    summary = write_result(result, paths, saliency, args.overwrite,
                           inputs={_canonical(n, "input"): v for n, v in inputs.items()},
                           region=region if result.region_contributions else None)
    reporter.close()
    reporter.event("done", model=model.card.name, **summary)
    if reporter.mode != "json":
        for target, path in summary["outputs"].items():  # type: ignore[union-attr]
            print(f"{target}: {path}")
    return EXIT_OK


MASK_COLUMNS = ("lesion_mask", "brain_mask")  # manifest columns of a batch that are masks, not inputs
LESION_MASK_ON_COLUMN = "lesion_mask_on"  # the modality a subject's lesion mask was drawn on (--lesion-mask-on)
# In a subject's output folder while a batch writes its outputs: the names of those it creates. A run
# killed outright (kill -9: no clean-up) leaves it behind with some outputs renamed into place, and
# the next run redoes that subject, replacing only those, instead of refusing their names.
WRITING = ".mrsynthesis-writing.json"


def shard(items: Sequence[ManifestSubject]) -> tuple[list[ManifestSubject], int, int]:
    """This process's share of ``items`` under torchrun (RANK/WORLD_SIZE), else all of them."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if os.environ.get("LOCAL_RANK") is not None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return list(items[rank::world]), rank, world


def _created_by_an_interrupted_run(marker: Path) -> set[str]:
    """Names of the outputs a killed batch run was creating in the marker's folder (see ``WRITING``)."""
    if not marker.is_file():
        return set()
    record = read_json(marker)
    created = record.get("created") if isinstance(record, dict) else None
    if not isinstance(created, list) or not all(isinstance(n, str) and Path(n).name == n for n in created):
        raise InputError(f"{marker}: not a record of MRSynthesis batch outputs; remove it to go on")
    return set(created)


def _kept(paths: Mapping[str, Path], interrupted: set[str], overwrite: bool) -> dict[str, Path]:
    """The outputs of a subject that a batch run keeps as they are, and does not synthesise again: without
    ``--overwrite``, each target whose image exists, unless a killed run was creating the image or its sidecar
    (``WRITING``: that target is redone). Rerun with a target added, a finished subject gets the new output only.

    An existing image is kept whatever its sidecar (none: it may be the user's file, and nothing is written to
    describe it); a target whose image is missing is made, its sidecar replaced only when it is ours
    (``sidecars``): the user's is refused as before ("already exists"), the subject failed and left as it is."""
    if overwrite:
        return {}
    return {t: p for t, p in paths.items()
            if p.exists() and not {p.name, sidecar_path(p).name} & interrupted}


@dataclass
class BatchTally:
    """What became of each subject of a batch run, for its final line, its ``done`` event and its record."""

    made: list[str] = field(default_factory=list)
    kept: dict[str, list[str]] = field(default_factory=dict)  # subject -> targets whose existing outputs it kept
    skipped: list[str] = field(default_factory=list)  # every output existed: nothing to do without --overwrite
    failed: dict[str, str] = field(default_factory=dict)  # subject -> why
    bugs: list[str] = field(default_factory=list)  # failed on an error other than an InputError: the exit status


def batch_record_path(out: str | os.PathLike, rank: int, world: int) -> Path:
    """Where a batch run records what it did: ``mrsynthesis-batch.json`` in ``--out`` (one per rank under torchrun,
    ``mrsynthesis-batch.rank<R>.json``), replaced by the next run; the terminal and JSON events are gone by then,
    and a cohort's failures must stay findable beside its outputs."""
    return Path(out) / ("mrsynthesis-batch.json" if world == 1 else f"mrsynthesis-batch.rank{rank}.json")


def _check_batch_record(path: Path) -> None:
    """An earlier batch's record is replaced; any other file under its name is the user's, and refused."""
    if not path.exists():
        return
    try:
        ours = isinstance(record := read_json(path), dict) and record.get("record") == "mrsynthesis batch"
    except InputError:
        ours = False
    if not ours:
        raise InputError(f"{path}: already exists and is not the record of an MRSynthesis batch, which the batch "
                         "writes there; move it, or choose another --out")


def batch(args: argparse.Namespace, reporter: Reporter) -> int:
    check_out(args.out, folder_only=True)
    check_folder(Path(args.out))  # once, before any subject's inference, rather than failing each in turn
    subjects, rank, world = shard(read_manifest(args.manifest, MASK_COLUMNS, [PATIENT_COLUMN, LESION_MASK_ON_COLUMN]))
    record_path = batch_record_path(args.out, rank, world)
    _check_batch_record(record_path)
    folder = registry.resolve(args.model)
    model = load_model(folder)
    logic = SynthesisLogic(model)
    tally = BatchTally()
    try:
        _batch_subjects(args, reporter, subjects, logic, model, tally)
    finally:  # also when cancelled: what was done until then
        write_json(record_path, {
            "record": "mrsynthesis batch", "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "complete": len(tally.made) + len(tally.skipped) + len(tally.failed) == len(subjects),
            "manifest": os.path.abspath(args.manifest), "model": model.card.name, "model_folder": str(folder),
            "rank": rank, "world_size": world, "subjects": len(subjects), "made": tally.made, "kept": tally.kept,
            "skipped": tally.skipped, "failed": tally.failed})
    reporter.close()
    reporter.event("done", rank=rank, world_size=world, subjects=len(subjects), failed=tally.failed,
                   skipped=tally.skipped)
    if reporter.mode != "json":
        failed = tally.failed
        print(f"rank {rank}/{world}: {len(subjects)} subjects: {len(tally.made)} made, {len(tally.skipped)} skipped"
              + (" (outputs exist; --overwrite redoes them)" if tally.skipped else "")
              + f", {len(failed)} failed" + (f": {', '.join(failed)}" if failed else "") + f"; record: {record_path}")
    return EXIT_INTERNAL if tally.bugs else EXIT_BAD_INPUT if tally.failed else EXIT_OK


def _batch_subjects(args: argparse.Namespace, reporter: Reporter, subjects: Sequence[ManifestSubject],
                    logic: SynthesisLogic, model: LoadedModel, tally: BatchTally) -> None:
    """Each subject of ``batch`` in turn; what became of each goes into ``tally``."""
    for index, subject in enumerate(subjects):
        name = subject.subject
        inputs = {n: str(p.resolve()) for n, p in subject.images.items()}
        masks = {c: str(p.resolve()) for c, p in subject.masks.items()}
        targets = [_canonical(t, "target") for t in _targets(args.target)] or default_targets(model, inputs)
        paths = output_paths(Path(args.out) / name, targets, args.format)
        marker = Path(args.out) / name / WRITING
        try:
            interrupted = _created_by_an_interrupted_run(marker)
            if interrupted:  # kill -9 while writing leaves the hidden temporary file of an output besides the record
                for leftover in [f for f in marker.parent.iterdir() if f.is_file() and is_temporary(f)]:
                    leftover.unlink()
            kept = _kept(paths, interrupted, args.overwrite)
            if len(kept) == len(paths):
                reporter.event("skipped", subject=name, reason="outputs exist")
                tally.skipped.append(name)
                continue
            paths = {t: p for t, p in paths.items() if t not in kept}  # e.g. a target added to a finished cohort
            theirs, left = sidecars(list(paths.values()))
            files = [*paths.values(), *theirs, *left]
            ours = interrupted | {p.name for p in left}
            logic.progress = lambda f, m, i=index: reporter.progress((i + f) / len(subjects), f"{name}: {m}")
            sources = [Path(p) for p in [*inputs.values(), *masks.values(), args.manifest]]
            check_writable([p for p in files if p.name not in ours], sources, args.overwrite)
            check_writable([p for p in files if p.name in ours], sources, True)
            request = SynthesisRequest(
                inputs={n: read_volume(p) for n, p in inputs.items()}, targets=list(paths),
                lesion_mask=_read_optional(masks.get("lesion_mask")),
                brain_mask=_read_optional(masks.get("brain_mask")),
                reference=args.resample_to, resample=bool(args.resample_to), device=args.device,
                precision=args.precision, batch_size=args.batch_size, plane=args.plane, tile=args.tile,
                native_spacing=args.native_spacing, register=args.register,
                lesion_mask_on=subject.labels.get(LESION_MASK_ON_COLUMN))
            result = logic.run(request)
            for note in result.notes:  # what the logic says of this subject (a lesion off the brain, coarse voxels)
                reporter.note(f"{name}: {note}")
            created = sorted(p.name for p in files if p.name in ours or not p.exists())
            write_json(marker, {"created": created})
            try:
                summary = write_result(result, paths, {}, overwrite=True)  # check_writable allowed what exists
            except BaseException:  # write_result removed what it created; the record goes once nothing of it is left
                if not any((marker.parent / n).exists() for n in created):
                    marker.unlink()
                raise
            marker.unlink()
            if kept:
                reporter.note(f"{name}: kept the existing {', '.join(kept)} output "
                              f"({', '.join(p.name for p in kept.values())}; --overwrite redoes it), "
                              f"made {', '.join(paths)}")
            reporter.event("subject_done", subject=name, **summary, kept={t: str(p) for t, p in kept.items()})
            tally.made.append(name)
            if kept:
                tally.kept[name] = list(kept)
        except InputError as error:
            tally.failed[name] = str(error)
            reporter.failure(name, str(error))
        except Cancelled:  # the user stopped the batch, not this subject
            raise
        except Exception as error:  # noqa: BLE001 - a bug or a library failure on one subject must not stop the rest
            tally.failed[name] = f"internal error (a bug; please report it): {type(error).__name__}: {error}"
            tally.bugs.append(name)
            reporter.failure(name, f"{tally.failed[name]}\n{traceback.format_exc().rstrip()}")


def models(args: argparse.Namespace, reporter: Reporter) -> int:
    """List every model folder found. A name that several folders carry is marked ``[name clash]`` (in JSON,
    ``name_clash``: the other folders of that name, empty for a unique one): ``--model NAME`` refuses it
    (``registry.resolve``), and a folder path picks one."""
    entries = registry.list_models()
    clashes = registry.name_clashes(entries)

    def others(e: registry.ModelEntry) -> list[str]:
        return [str(f) for f in clashes.get(e.name, []) if f.resolve() != e.folder.resolve()]

    if args.json:
        print(json.dumps([{"name": e.name, "folder": str(e.folder), "origin": e.origin, "problem": e.problem,
                           "card": e.card.to_dict() if e.card else None, "name_clash": others(e)}
                          for e in entries], indent=2))
        return EXIT_OK
    if not entries:
        print("no models found; searched: " + ", ".join(str(f) for f, _ in registry.search_folders()))
    for e in entries:
        origin = f"[{e.origin}]" + ("  [name clash]" if e.name in clashes else "")
        if e.card is None:
            print(f"{e.name}  {origin}  unusable: {e.problem}")
            continue
        c = e.card
        where = f"{c.spatial_dims}D" + (f" {c.plane}" if c.spatial_dims == 2 else "")
        where += f", {voxel_size_text(c.spacing_mm)} voxels" if c.spacing_mm else ""
        lesion = " +lesion" if c.lesion_input else ""
        print(f"{e.name}  {origin}  {'+'.join(c.inputs)}{lesion} -> {'+'.join(c.outputs)}  ({where})  {e.folder}")
    for name, folders in clashes.items():
        print(f"name clash: {len(folders)} model folders are named {name}; --model {name} is refused: pass the "
              f"folder instead (e.g. --model {folders[0]})")
    return EXIT_OK


def evaluate(args: argparse.Namespace, reporter: Reporter) -> int:
    if args.figure and Path(args.figure).suffix.lower() != ".png":
        raise InputError(f"{args.figure}: --figure writes a PNG; give a name ending in .png")
    given = (args.synthetic, args.reference, args.brain_mask, args.lesion_mask, args.nawm_mask, args.t1)
    check_distinct_outputs([(option, Path(p)) for option, p in (("--figure", args.figure), ("--json", args.json)) if p])
    check_writable([Path(p) for p in (args.figure, args.json) if p], [Path(p) for p in given if p], args.overwrite)
    reference = read_volume(args.reference)

    def on_grid(path: str) -> Volume:
        """Every other file of the comparison must lie on the reference's grid, voxel for voxel (stored in
        any voxel order)."""
        volume = read_volume(path)
        reordered = reoriented_onto(volume, reference.geometry)
        if reordered is None:
            raise InputError(f"{volume.source} and {reference.source} are on different grids "
                             f"({'; '.join(volume.geometry.differences(reference.geometry))})")
        return reordered

    synthetic = on_grid(args.synthetic)
    # NaN is "no value" (SPM's reslicing writes it outside a field of view; inference takes it so): such
    # voxels are compared nowhere, rather than the whole comparison refused. Infinite ones stay refused.
    with_nan = [v.source for v in (synthetic, reference) if np.isnan(v.array).any()]
    unvalued = np.isnan(synthetic.array) | np.isnan(reference.array)
    # where only the reference lacks a value, the synthetic tells whether the voxel is brain (counted below)
    stand_in = np.where(np.isnan(reference.array) & ~np.isnan(synthetic.array), synthetic.array, np.float32(0))
    if with_nan:
        synthetic, reference = (v.with_array(np.where(unvalued, np.float32(0), v.array))
                                for v in (synthetic, reference))
    for volume in (synthetic, reference):
        check_values(volume)
    if args.brain_mask:
        brain = check_mask(on_grid(args.brain_mask))
    else:  # the reference's foreground; where it holds no value, the synthetic's, so that the count below is right
        brain = foreground_mask([reference.array, stand_in])
    left_out = int(np.count_nonzero(brain & unvalued))
    brain &= ~unvalued
    if not brain.any():
        raise InputError(f"{args.brain_mask or args.reference}: the brain mask is empty"
                         + (" where both images hold a value (not NaN)" if left_out else ""))
    unvalued_line = (f"\nNaN (no value) in {' and '.join(map(str, with_nan))}: {left_out} brain voxels left out of "
                     "every figure" if with_nan else "")
    try:
        spec = NormalisationSpec.from_dict({"scheme": args.normalisation})
    except ValueError as error:
        raise InputError(f"--normalisation: {error}") from None

    def normalised(volume: Volume) -> np.ndarray:
        try:
            return normalise(volume.array, spec, brain)[0]
        except ValueError as error:  # e.g. a mean of 0 or below in the brain: nothing to divide by
            raise InputError(f"{volume.source}: --normalisation {spec.scheme}: {error}") from None

    synth_n, ref_n = normalised(synthetic), normalised(reference)
    lesion = nawm = None
    if args.lesion_mask:
        lesion = check_mask(on_grid(args.lesion_mask))
        if not lesion.any():
            raise InputError(f"{args.lesion_mask}: the lesion mask is empty; the lesion ratios need lesion voxels")
        if args.nawm_mask:
            nawm, nawm_source = check_mask(on_grid(args.nawm_mask)), args.nawm_mask
        elif args.t1:
            nawm, nawm_source = _white_matter(on_grid(args.t1), brain), f"the white matter of {args.t1}"
        else:
            raise InputError("--lesion-mask needs --nawm-mask or --t1 (to derive white matter) for the lesion ratios")
        if with_nan and not (lesion & ~unvalued).any():
            raise InputError(f"{args.lesion_mask}: every lesion voxel is NaN (no value) in "
                             f"{' or '.join(map(str, with_nan))}; the lesion ratios need lesion voxels with values")
        if not (nawm & ~lesion & ~unvalued).any():
            raise InputError(f"{nawm_source}: holds no voxel outside the lesions"
                             + (" where both images hold a value (not NaN)" if with_nan else "")
                             + "; the lesion ratios need normal-appearing white matter")
    axis = reference.geometry.axis_for(args.slice_plane) if args.slice_plane else None
    try:
        values = metrics.compute_all(synth_n, ref_n, brain_mask=brain, lesion_mask=lesion, nawm_mask=nawm,
                                     slice_axis=axis, valid_mask=~unvalued if with_nan else None)
    except ValueError as error:  # e.g. no white matter near the lesions: the files the figures came from
        named = [args.synthetic, args.reference, args.brain_mask, args.lesion_mask, args.nawm_mask or args.t1]
        raise InputError(f"{', '.join(str(p) for p in named if p)}: {error}") from None
    planes = {reference.geometry.axis_for(p): p for p in ("axial", "coronal", "sagittal")}
    values = {_plane_name(k, planes): v for k, v in values.items()}
    dropped = ""
    if spec.scheme == "zscore":  # its reference has mean 0 in the brain: 10 log10(mean^2 / MSE) says nothing
        del values["snr_brain"]
        dropped = "\nsnr_brain left out: it needs the reference's brain mean, which zscore sets to 0"
    figure = None
    if args.figure:
        difference = synthetic.with_array(np.abs(synth_n - ref_n) * brain)
        panels = [Panel("synthetic", synthetic.with_array(synth_n)), Panel("reference", reference.with_array(ref_n)),
                  Panel("|synthetic - reference|", difference, cmap="magma")]
        title = (f"{Path(synthetic.source).name} vs {Path(reference.source).name}: "
                 f"SSIM in brain {values['ssim_brain']:.3f}")
        figure = orthogonal_views(panels, args.figure, title=title)
    if args.json:
        write_json(Path(args.json), values)
    print(f"synthetic: {synthetic.source}\nreference: {reference.source}\nnormalisation: {spec.scheme}; "
          f"data range: max-min of the normalised reference" + unvalued_line + dropped
          + (f"\nfigure: {figure}" if figure else "")
          + "\n")
    print(metrics.format_table(values))
    return EXIT_OK


def _white_matter(t1: Volume, brain: np.ndarray) -> np.ndarray:
    """White matter from ``t1`` (``metrics.white_matter_mask``) in the brain, its NaN voxels taken as no data as
    in the images compared: NaN would make every Otsu threshold NaN and the mask empty."""
    missing = np.isnan(t1.array)
    check_values(t1.with_array(np.where(missing, np.float32(0), t1.array)))
    within = brain & ~missing
    if not within.any():
        raise InputError(f"{t1.source}: every brain voxel is NaN (no value); white matter cannot be derived from it")
    return metrics.white_matter_mask(np.where(missing, np.float32(0), t1.array), within)


def _plane_name(key: str, planes: Mapping[int, str]) -> str:
    """``offplane_ssim_axis2`` -> ``offplane_ssim_sagittal``: name views by anatomy, not array axis."""
    prefix, _, axis = key.rpartition("_axis")
    return f"{prefix}_{planes[int(axis)]}" if prefix and axis.isdigit() else key


def demo(args: argparse.Namespace, reporter: Reporter) -> int:
    from .demo import run_demo

    check_out(args.out, folder_only=True)
    return run_demo(Path(args.out), model=args.model, device=args.device, overwrite=args.overwrite, reporter=reporter)
