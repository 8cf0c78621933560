"""The one entry point every front end uses to synthesise missing contrasts.

``SynthesisLogic.run`` takes named input volumes and returns output volumes on the
reference input's grid. It validates the inputs, normalises them as the model card says,
runs the network, maps the results back to an intensity scale and the reference grid,
and optionally computes per-input P3S saliency maps. It never writes files: the command
line does that, so the logic is equally usable from the Slicer module and from tests.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import __version__, modalities
from .cards import LoadedModel
from .coverage import Coverage, input_coverage, partial_inputs, percent
from .devices import choose_device, choose_precision
from .errors import InputError
from .inference import (
    CancelCheck,
    ProgressCallback,
    RunSettings,
    p3s_norm_scale,
    run_slicewise,
)
from .preprocessing import (
    IntensityStats,
    NormalisationSpec,
    denormalise,
    foreground_mask,
    normalise,
)
from .provenance import is_output
from .registration import OUT_OF_REGISTER_MM, apparent_motion, mask_onto, register_onto
from .tiling import run_tiled
from .validation import align, check_distinct, check_mask, check_reference, checked_image
from .volume import Geometry, Volume, reordered, reoriented_onto, resample_to, training_axis_order

TILE = 96  # default core edge of a 3D model's tiles (memory vs halo overhead)
# A 2D model slices the grid along the voxel axis nearest to its plane; beyond this tilt of the slices
# from that plane the result is not measured (held-out heads tilted by 10 and 20 degrees, in and out of
# the slice plane, scored as well as upright ones: docs/results/head_tilt_loso), so it is said.
OBLIQUE_NOTE_DEGREES = 20.0
# A network sees anatomy at the scale of its training voxels. Inputs whose voxels are coarser than the
# card's ``spacing_mm`` by more than this factor, along an axis the network convolves over (a 2D model:
# the two in its slices; a 3D model: all three), are synthesised on the card's spacing and resampled
# back. Measured (training/experiments/input_spacing.py, docs/results/input_spacing): the bundled model,
# T1 + T1c + T2 -> FLAIR of patient07 smoothed and resampled to 2 x 2 mm in-plane, SSIM in the brain
# 0.777 on the model's spacing against 0.712 on the 2 mm grid, MSE 0.0191 against 0.0236; the BraTS case
# (docs/results/input_spacing_brats) 0.628 against 0.591 at 2 mm, 0.604 against 0.591 at 1.5 mm. A 2D model's
# slice axis is left alone: resampling 3 mm slices to 1 mm changed nothing (ad hoc, SSIM 0.801 both).
# Finer voxels are left too (ad hoc, 0.5 mm in-plane resampled to 1 mm: MSE -3 %, SSIM -0.016, mixed).
# The 20 % margin is a judgement, not measured: it leaves the common 0.9-1.2 mm scans on their own grid.
COARSER_THAN_MODEL = 1.2
# Every model here was trained on skull-stripped brains, and the default brain mask (the inputs'
# foreground) covers the whole head when the skull is on (``preprocessing.foreground_mask``), which
# also skews the normalisation. A skull-stripped adult brain with its CSF measured 1.10-1.64 L in the
# shared data and 1.89 L in the MNI152 template; a head with its skull and scalp is about twice that.
# Above this volume the foreground is said to look like a head (a note: a large brain or a wide mask
# may reach it too).
HEAD_LIKE_LITRES = 2.5
# A given brain mask covering less than this share of the inputs' foreground is not a brain: a lesion mask
# given as the brain mask made patient07's synthetic FLAIR in its lesions darker than the real brain's mean,
# where the real lesions are 1.4 times it (the inputs are normalised by their mean inside the mask). A brain
# is all of the foreground of skull-stripped inputs (the shared data, the MNI template) and, with the skull on,
# roughly half of the head's (not measured: no such scan here); the lesion masks of the shared MS subjects
# cover 0.11 % and 4.6 % of their foreground.
SMALL_BRAIN_SHARE = 0.2
# An input resampled onto the reference grid from voxels at least this many times as large along a patient
# axis (a 2D acquisition's thick slices) holds no detail of its own there, and is said. Measured
# (training/experiments/thick_slices.py, docs/results/thick_slices; T1 + T2 -> FLAIR, the T2 made a 5 mm
# axial acquisition and resampled onto the T1's 1 mm grid): the bundled model, trained without thick slices,
# SSIM in the brain 0.650 / 0.580 (patient07 / patient19) against 0.686 / 0.622 from T1 alone and
# 0.693 / 0.613 with the 1 mm T2; at 3 mm 0.681 / 0.602 (the note starts at twice the grid's voxels). Models
# trained with thick slices (augment.thick_slice_mm) lost as much on patient07 and less on patient19, still below
# T1 alone there. Hence the advice to compare with the result without the input.
THICK_INPUT_RATIO = 2.0


@dataclass
class SynthesisRequest:
    """What to synthesise. Modality names may be aliases; they are made canonical."""

    inputs: Mapping[str, Volume]
    targets: Sequence[str]
    lesion_mask: Volume | None = None
    brain_mask: Volume | None = None
    reference: str | None = None  # whose grid the outputs take; default: the first input
    resample: bool = False  # resample other inputs onto the reference instead of refusing
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None  # None: ``default_batch_size`` for the device and model
    plane: str | None = None  # 2D models: slice in this plane instead of the card's (view transfer)
    saliency: bool = False
    saliency_references: Mapping[str, Volume] = field(default_factory=dict)  # target -> real image
    # where to summarise each input's contribution besides the whole brain; default: the lesion mask
    saliency_region: Volume | None = None
    tile: int | None = None  # 3D models: core edge of the exact tiles; None: TILE (a 2D model notes it ignored)
    native_spacing: bool = False  # synthesise on the inputs' own voxels even where they are coarser than the model's
    register: bool = False  # register the other inputs rigidly onto the reference (``registration``)
    # the input (any alias) whose scan the lesion mask was drawn on; with ``register`` the mask moves with that
    # input's registration onto the reference; None: the reference (masks are taken where the scanner puts them)
    lesion_mask_on: str | None = None


@dataclass
class SynthesisResult:
    outputs: dict[str, Volume]
    saliency: dict[str, dict[str, Volume]]  # target -> input -> map
    contributions: dict[str, dict[str, float]]  # target -> input -> share of the mean saliency in the brain
    device: str
    precision: str
    notes: list[str]
    saliency_objective: str | None = None
    region_contributions: dict[str, dict[str, float]] = field(default_factory=dict)  # same, in the region
    saliency_means: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # t -> n -> where -> mean
    # how the outputs came about, for the files written beside them (``provenance.sidecar``)
    provenance: dict[str, object] = field(default_factory=dict)
    # with saliency, what --register moved onto the reference's grid, for figures that draw the inputs under the maps
    # (the outputs' grid and anatomy): input -> the registered scan, and "lesion" -> the lesion mask when
    # --lesion-mask-on moved it; empty without --register or saliency
    registered: dict[str, Volume] = field(default_factory=dict)


def model_grid(geometry: Geometry, spacing_mm: Sequence[float] | None, plane: str | None, *,
               finer: bool = False) -> Geometry | None:
    """The grid to synthesise on when ``geometry``'s voxels are coarser than a model's (``COARSER_THAN_MODEL``)
    along an axis it convolves over, else None. ``plane``: a 2D model's slicing plane (None: a 3D model).
    ``finer``: the axes whose voxels are finer than the model's by that margin instead (training brings finer
    subjects to its scale; inference leaves finer inputs alone, where resampling measured no better)."""
    if spacing_mm is None:
        return None
    cosines = np.abs(np.asarray(geometry.direction).reshape(3, 3))
    through = None if plane is None else 2 - geometry.axis_for(plane)  # the ITK axis a 2D model slices along
    wanted = list(geometry.spacing)
    for j in range(3):
        trained = float(spacing_mm[int(np.argmax(cosines[:, j]))])
        ratio = geometry.spacing[j] / trained  # above 1: this grid's voxels are coarser than the model's
        if j != through and (ratio < 1 / COARSER_THAN_MODEL if finer else ratio > COARSER_THAN_MODEL):
            wanted[j] = trained
    return None if wanted == list(geometry.spacing) else geometry.respaced(wanted)


def voxel_size_text(values: Sequence[float]) -> str:
    """Voxel sizes as the notes give them, e.g. "1 x 1.2 x 3 mm"."""
    return " x ".join(f"{v:.3g}" for v in values) + " mm"


def default_batch_size(device_type: str, spatial_dims: int) -> int:
    """Slices (2D) or tiles (3D) per step. On the CPU small batches win: the Chartsias network on
    patient07 took 5.1-5.9 s with 1, 2 or 4 slices per batch and 14 s with 16 (bf16, 2 cores;
    activations of 16 slices overflow the caches). GPUs want larger batches to fill the device."""
    if device_type == "cpu":
        return 4 if spatial_dims == 2 else 1
    return 16 if spatial_dims == 2 else 2


class SynthesisLogic:
    """Runs one loaded model; ``progress(fraction, message)`` and ``cancelled()`` are injected, and so is the
    rule that finds inputs holding data over part of the brain (``coverage.input_coverage``; experiments
    compare others)."""

    def __init__(self, model: LoadedModel, progress: ProgressCallback | None = None,
                 cancelled: CancelCheck | None = None, coverage: Callable[..., Coverage] = input_coverage) -> None:
        self.model = model
        self.progress = progress or (lambda fraction, message: None)
        self.cancelled = cancelled or (lambda: False)
        self.coverage = coverage

    def run(self, request: SynthesisRequest) -> SynthesisResult:
        card = self.model.card
        inputs = self._canonical_inputs(request.inputs)
        targets = [self._canonical(t, "target") for t in request.targets]
        self._check_modalities(inputs, targets)
        masks = {k: v for k, v in (("lesion", request.lesion_mask), ("brain", request.brain_mask),
                                   ("region", request.saliency_region)) if v is not None}
        references = {self._canonical(t, "saliency reference"): v for t, v in request.saliency_references.items()}
        reference = self._canonical(request.reference, "reference") if request.reference else next(iter(inputs))
        check_reference(inputs, reference)  # before --register, which reads its grid first
        lesion_on = self._lesion_mask_on(request, inputs)
        early: list[str] = [  # said of the inputs on the user's grid (spikes before resampling spreads them)
            f"{v.source}: its header says \"{v.description}\": not an acquired scan but made from others, so it "
            "holds nothing they do not and weighs on the result as if it did (a T2 synthesised from T1, given with "
            "that T1, lowered the synthetic FLAIR's SSIM from 0.685 / 0.630 to 0.676 / 0.608 on the shared MS "
            "subjects, the bundled model); give the acquired scan, or leave it out" for v in inputs.values()
            if is_output(v.description)]
        early.extend(f"{t} is also an input ({inputs[t].source}): the synthetic {t} is the model's reconstruction of "
                     f"it from the inputs, itself included; compared with it, it shows how the model does on this scan"
                     for t in targets if t in inputs)
        check_distinct(inputs)
        for group in (inputs, references):
            for name, volume in group.items():
                group[name], changed = checked_image(volume)
                early.extend(changed)
        masks.update({f"reference:{t}": v for t, v in references.items()})
        acquired = {n: (v.source, v.geometry.anatomical_spacing()) for n, v in inputs.items()}
        moved: dict[str, Volume] = {}  # SynthesisResult.registered
        if request.register:
            reference_brain = foreground_mask([inputs[reference].array])  # once for every input registered onto it
            for name in [n for n in inputs if n != reference]:
                self.progress(0.0, f"registering {name} onto {reference}")
                registered = register_onto(inputs[reference], inputs[name], reference_brain)
                inputs[name] = moved[name] = registered.volume
                if registered.unmeasured is not None:  # travels with the masks onto the grid synthesised on
                    masks[f"unmeasured:{name}"] = registered.volume.with_array(
                        registered.unmeasured.astype(np.float32), source=f"{name} holds no data")
                early.append(f"{acquired[name][0]}: registered rigidly onto {acquired[reference][0]}, which "
                             f"moved its brain by up to {registered.moved_mm:.1f} mm (--register)")
                if name == lesion_on:  # drawn on this input's anatomy: it moves with it, before any later grid
                    check_mask(masks["lesion"])  # its values as given, before they are carried
                    masks["lesion"] = moved["lesion"] = mask_onto(inputs[reference], masks["lesion"],
                                                                   registered.transform)
                    early.append(f"lesion mask {masks['lesion'].source}: drawn on {name}: moved with {name}'s "
                                 f"registration onto {reference} (--lesion-mask-on {name})")
        given, given_masks = dict(inputs), dict(masks)
        inputs, masks = align(inputs, reference, resample=request.resample, masks=masks)
        early.extend(self._resampled_masks(given_masks, inputs[reference].geometry, acquired[reference][0]))
        early.extend(f"{acquired[n][0]}: resampled onto the grid of {acquired[reference][0]} by scanner coordinates "
                     "only, so any motion of the patient between the two scans stays in it (a T2 1 mm out of "
                     "register cost the FLAIR more than the T2 brought: MRSynthesisLib/registration.py); "
                     "--register aligns it first" for n in inputs
                     if n != reference and reoriented_onto(given[n], inputs[reference].geometry) is None)
        # Checked and said on the user's grid (voxel counts, volumes), before any change of grid.
        thick = self._thick_inputs(inputs, acquired, reference, brain_given="brain" in masks)
        native_brain = self._brain(inputs, masks, thick)
        said = early + list(thick.values())
        if "brain" not in masks:
            litres = float(np.count_nonzero(native_brain)) * float(np.prod(inputs[reference].geometry.spacing)) / 1e6
            if litres > HEAD_LIKE_LITRES:
                said.append(f"the inputs' foreground, taken as the brain, is {litres:.1f} L, more than a "
                            "skull-stripped brain (1.1-1.9 L): if the skull is still on, strip it first (e.g. "
                            "SynthStrip or HD-BET) or give a brain mask; the models were trained on skull-stripped "
                            "brains")
        else:
            share = np.count_nonzero(native_brain) / max(np.count_nonzero(self._brain(inputs, {}, thick)), 1)
            if share < SMALL_BRAIN_SHARE:
                said.append(f"brain mask {masks['brain'].source}: covers {percent(share)} of the inputs' "
                            "foreground, less than any brain does: only its voxels are synthesised, with the inputs "
                            "normalised by their mean there; if it is a lesion or region mask, give it as "
                            "--lesion-mask or --saliency-region")
        if "lesion" in masks:
            if not card.lesion_input:
                raise InputError(f"model {card.name!r} was not trained with a lesion channel; "
                                 "it cannot use --lesion-mask")
            painted = check_mask(masks["lesion"])
            if not painted.any():  # a wrong file or a label other than 1 would otherwise go unseen
                said.append(f"lesion mask {masks['lesion'].source}: is empty; the result has no lesion")
            outside = int(np.count_nonzero(painted & ~native_brain))
            if outside:  # painted off the brain (another volume, a wrong grid): say so rather than drop it unseen
                kept = int(np.count_nonzero(painted)) - outside
                said.append(f"lesion mask {masks['lesion'].source}: {outside} of its {outside + kept} voxels lie "
                            "outside the brain and were left out" + ("; the result has no lesion" if not kept else ""))

        plane = (request.plane or card.plane) if card.spatial_dims == 2 else None
        inputs, masks, back = self._onto_model_grid(inputs, masks, inputs[reference], native_brain, plane,
                                                    request.native_spacing, said)
        grid = inputs[reference]
        brain = native_brain if back is None else self._brain(inputs, masks, thick)
        lesion = check_mask(masks["lesion"]) & brain if "lesion" in masks else None

        slice_axis = grid.geometry.axis_for(plane) if card.spatial_dims == 2 else None
        arrays = {n: v.array for n, v in inputs.items()}
        known = {n: masks[f"unmeasured:{n}"].array > 0 for n in inputs if f"unmeasured:{n}" in masks}
        if getattr(self.model.network, "PARTIAL_COVERAGE", False):
            cover = self.coverage(arrays, brain, {n: v.source for n, v in inputs.items()}, slice_axis=slice_axis,
                                  known=known)
            unmeasured = {n: brain & ~h for n, h in cover.held.items()}
        else:
            cover = Coverage()
            unmeasured = partial_inputs(arrays, brain, known)
            said.extend(f"{inputs[n].source}: holds no data (zeros) in part of the brain; {card.name} cannot leave an "
                        "input out where it holds none, so the result there is unreliable (leave this input out, or "
                        "use a Chartsias model)" for n in unmeasured)
        if not request.register:
            said.extend(self._out_of_register(inputs, reference, unmeasured, acquired))
        said.extend(cover.notes)
        spec = NormalisationSpec.from_dict(card.normalisation)
        # statistics from where each input holds data: zeros outside a slab would lower its mean
        normalised = {n: normalise(v.array, spec, brain & cover.held[n] if n in cover.held else brain)[0]
                      for n, v in inputs.items()}
        device, reason = choose_device(request.device)
        dtype = choose_precision(request.precision, device)
        notes = ([reason] if reason else []) + said
        if request.batch_size is not None and request.batch_size < 1:
            raise InputError(f"batch size must be positive, not {request.batch_size}")
        batch = request.batch_size or default_batch_size(device.type, card.spatial_dims)
        settings = RunSettings(device, dtype, batch, self.progress, self.cancelled, notes)

        region = None
        if "region" in masks:
            region = check_mask(masks["region"]) & brain
            if not region.any():
                raise InputError(f"{masks['region'].source}: the saliency region has no voxel inside the brain")
        elif lesion is not None and lesion.any():
            region = lesion
        saliency_refs = {t: normalise(masks[f"reference:{t}"].array, spec, brain)[0] for t in references}
        unused = sorted(set(saliency_refs) - set(targets))
        if unused:
            raise InputError(f"saliency reference given for {', '.join(unused)}, which is not a target")
        if card.spatial_dims == 2:
            if request.tile is not None:
                notes.append(f"tile {request.tile} ignored: {card.name} is a 2D model and runs slice by slice")
            axis = slice_axis
            tilt = grid.geometry.plane_tilt(plane)
            if tilt > OBLIQUE_NOTE_DEGREES:
                notes.append(f"{grid.source}: its grid is oblique, its slices lie {tilt:.0f} degrees from the {plane} "
                             f"plane the model slices in (heads tilted up to {OBLIQUE_NOTE_DEGREES:.0f} degrees were "
                             "checked: "
                             "docs/results/head_tilt_loso); resample it to an axis-aligned grid if the result "
                             "looks off")
            result = run_slicewise(self.model.network, normalised, targets, axis=axis, mask=brain,
                                   settings=settings, lesion=lesion, saliency=request.saliency,
                                   saliency_references=saliency_refs, coverage=cover.used)
        else:
            tile = TILE if request.tile is None else request.tile
            if tile < 1:
                raise InputError(f"tile size must be positive, not {tile}")
            if request.plane:
                notes.append(f"plane {request.plane} ignored: {card.name} is a 3D model and sees the whole volume")
            result = run_tiled(self.model.network, normalised, targets, settings=settings, mask=brain,
                               tile=(tile,) * 3, lesion=lesion, saliency=request.saliency,
                               saliency_references=saliency_refs)
        raw, maps = result.outputs, result.saliency
        for t, total in result.squared_error.items():  # the paper's eq. 3: gradient of the L2 norm
            maps[t] = {n: m * p3s_norm_scale(total) for n, m in maps[t].items()}

        outputs = {}
        synthesised = brain if cover.uncovered is None else brain & ~cover.uncovered
        for t in targets:
            stats = card.output_intensity.get(t)
            array = (denormalise(raw[t], IntensityStats.from_dict(stats), synthesised) if stats
                     else np.where(synthesised, raw[t], 0))
            used = "+".join(inputs)
            outputs[t] = grid.with_array(array.astype(np.float32), source=f"{t} synthetic ({used})")
        saliency = {t: {n: grid.with_array(m * brain, source=f"P3S {t} <- {n}") for n, m in per.items()}
                    for t, per in maps.items()}
        if back is not None:
            outputs = {t: back(v) for t, v in outputs.items()}
            saliency = {t: {n: back(m) for n, m in per.items()} for t, per in saliency.items()}
        contributions = {t: self._contributions(per, brain) for t, per in maps.items()}
        region_contributions = ({t: self._contributions(per, region) for t, per in maps.items()}
                                if region is not None else {})
        means = {t: {n: {"brain": float(m[brain].mean()),
                         **({"region": float(m[region].mean())} if region is not None else {})}
                     for n, m in per.items()} for t, per in maps.items()}
        objective = None
        if request.saliency:
            objective = "; ".join(
                f"{t}: " + ("|d ||prediction - reference||_2 in brain / d input| (P3S, Wei et al. 2019 eq. 3)"
                            if t in saliency_refs else
                            "|d sum(prediction in brain) / d input| (target-free P3S variant)")
                for t in targets)
        precision = str(settings.dtype).replace("torch.", "") if settings.dtype else "float32"
        provenance = {
            "software": f"MRSynthesis {__version__}",
            "model": {"name": card.name, "architecture": card.architecture, "folder": str(self.model.folder),
                      "weights_sha256": card.weights_sha256},
            "inputs": {n: source for n, (source, _) in acquired.items()},
            "lesion_mask": request.lesion_mask.source if request.lesion_mask is not None else None,
            "brain_mask": request.brain_mask.source if request.brain_mask is not None else None,
            "grid_of": acquired[reference][0],
            "options": {"plane": plane, "resampled": request.resample, "registered": request.register,
                        "lesion_mask_on": lesion_on,
                        "native_spacing": request.native_spacing,
                        "device": settings.device.type, "precision": precision},
            "notes": list(settings.notes)}
        self.progress(1.0, "done")
        return SynthesisResult(outputs, saliency, contributions, settings.device.type, precision,
                               settings.notes, objective, region_contributions, means, provenance,
                               registered=moved if request.saliency else {})

    @staticmethod
    def _lesion_mask_on(request: SynthesisRequest, inputs: Mapping[str, Volume]) -> str | None:
        """The canonical input ``request.lesion_mask_on`` names, None when not given; an ``InputError`` when no
        lesion mask is given or it names no input."""
        given = request.lesion_mask_on
        if given is None:
            return None
        names = ", ".join(inputs)
        if request.lesion_mask is None:
            raise InputError(f"--lesion-mask-on {given}: no lesion mask was given; add --lesion-mask, or leave "
                             "--lesion-mask-on out")
        try:
            name = modalities.canonical(given)
        except ValueError as error:
            raise InputError(f"--lesion-mask-on: {error}; it names the input the lesion mask was drawn on, one of "
                             f"{names}") from None
        if name not in inputs:
            raise InputError(f"--lesion-mask-on {given}: {name} is not an input; it names the input the lesion mask "
                             f"was drawn on, one of {names}")
        return name

    @staticmethod
    def _resampled_masks(given: Mapping[str, Volume], grid: Geometry, reference: str) -> list[str]:
        """Notes for the masks and saliency references ``align`` resampled onto ``grid`` (every change of grid is
        said, as of the inputs): a mask's edge moves by up to half a voxel of either grid."""
        roles = {"lesion": "lesion mask", "brain": "brain mask", "region": "saliency region"}
        notes = []
        for key, volume in given.items():
            if key.startswith("unmeasured:") or reoriented_onto(volume, grid) is not None:
                continue
            role, how = ((f"saliency reference {key.partition(':')[2]}", "linearly") if key.startswith("reference:")
                         else (roles[key], "by nearest neighbour"))
            notes.append(f"{role} {volume.source}: on another grid ({'; '.join(volume.geometry.differences(grid))}), "
                         f"resampled {how} onto the grid of {reference} (--resample-to)")
        return notes

    @staticmethod
    def _out_of_register(inputs: Mapping[str, Volume], reference: str, unmeasured: Mapping[str, np.ndarray],
                         acquired: Mapping[str, tuple[str, tuple[float, float, float]]]) -> list[str]:
        """Notes for the inputs a quick rigid registration (``registration.apparent_motion``) moves by more than
        ``OUT_OF_REGISTER_MM``; ``unmeasured``: the brain voxels where an input holding data over part of the
        brain holds none, the reference's included, which keeps the check away from their edges (a moving
        input's drew it 4-30 mm off on the BraTS case; a reference slab's to 4.0 mm as given, the threshold,
        against 3.1 mm kept away)."""
        notes = []
        for name in [n for n in inputs if n != reference]:
            motion = apparent_motion(inputs[reference], inputs[name], unmeasured.get(name), unmeasured.get(reference))
            if motion is not None and motion > OUT_OF_REGISTER_MM:
                notes.append(f"{acquired[name][0]}: seems out of register with {acquired[reference][0]}: a quick rigid "
                             f"registration moves its brain by about {motion:.0f} mm; --register aligns it first (a T2 "
                             "6 mm out of register gave patient07's FLAIR SSIM 0.571, where T1 alone gives 0.685)")
        return notes

    def _thick_inputs(self, inputs: dict[str, Volume], acquired: dict[str, tuple[str, tuple[float, float, float]]],
                      reference: str, brain_given: bool) -> dict[str, str]:
        """The inputs resampled onto ``reference``'s grid from voxels ``THICK_INPUT_RATIO`` times as large along a
        patient axis, each with its note; ``acquired``: each input's file and ``anatomical_spacing`` before that;
        ``brain_given``: a brain mask was given (else the note says the brain is taken from the other inputs)."""
        grid = inputs[reference].geometry.anatomical_spacing()
        trained = (((self.model.card.training.get("recipe") or {}).get("config") or {}).get("augment") or {}
                   ).get("thick_slice_mm") or 0.0
        thick = [n for n, (_, spacing) in acquired.items()
                 if n != reference and max(spacing) >= THICK_INPUT_RATIO * grid[int(np.argmax(spacing))]]
        sharp = ", ".join(source for n, (source, _) in acquired.items() if n not in thick)  # the reference at least
        notes = {}
        for name in thick:
            source, spacing = acquired[name]
            thickest = max(spacing)
            axis = ("left-right", "anterior-posterior", "inferior-superior")[int(np.argmax(spacing))]
            said = (f"{source}: voxels of {voxel_size_text(spacing)}, resampled onto the {voxel_size_text(grid)} "
                    f"grid of {acquired[reference][0]}: along the {axis} axis it holds no detail finer than its "
                    f"{thickest:.3g} mm")
            if thickest > trained:
                said += (f"; {self.model.card.name} was not trained on inputs so coarse (the bundled model with a "
                         "5 mm T2 beside a 1 mm T1 scored below T1 alone on both shared MS subjects: "
                         "docs/results/thick_slices): compare with the result without this input")
            if not brain_given:
                said += (f"; the brain is taken from the foreground of {sharp} alone, since interpolation across "
                         "its thick voxels spreads it past the brain's edge")
            notes[name] = said
        return notes

    def _onto_model_grid(self, inputs: dict[str, Volume], masks: dict[str, Volume], native: Volume,
                         native_brain: np.ndarray, plane: str | None, native_spacing: bool, said: list[str]
                         ) -> tuple[dict[str, Volume], dict[str, Volume], Callable[[Volume], Volume] | None]:
        """Inputs and masks on the grid the model is run on, and the function that puts a result back on
        ``native``'s grid, masked by ``native_brain`` (None when nothing moved): their voxel axes in the order of
        the training data (``training_axis_order``; a lossless reordering, undone exactly), then on the model's
        spacing where theirs is coarser (``model_grid``)."""
        card = self.model.card
        order = training_axis_order(native.geometry)
        if order is not None:
            inputs = {n: reordered(v, order) for n, v in inputs.items()}
            masks = {k: reordered(v, order) for k, v in masks.items()}
        ordered = next(iter(inputs.values())).geometry  # every input and mask is on this grid now
        target = model_grid(ordered, card.spacing_mm, plane)
        if target is not None:
            coarse = (f"{native.source}: voxels of {voxel_size_text(native.geometry.spacing)}, coarser than the "
                      f"{voxel_size_text(card.spacing_mm)} {card.name} was trained on; ")
            if native_spacing:
                said.append(coarse + "synthesised on them as asked (--native-spacing)")
                target = None
            else:
                said.append(coarse + f"synthesised on voxels of {voxel_size_text(target.spacing)} and resampled back "
                            "to the input grid (--native-spacing to skip)")
                inputs = {n: resample_to(v, target) for n, v in inputs.items()}
                masks = {k: resample_to(v, target, nearest=not k.startswith("reference:")) for k, v in masks.items()}
        if order is None and target is None:
            return inputs, masks, None

        def back(volume: Volume) -> Volume:
            on_ordered = volume if target is None else resample_to(volume, ordered)
            return native.with_array(reoriented_onto(on_ordered, native.geometry).array * native_brain, volume.source)

        return inputs, masks, back

    @staticmethod
    def _brain(inputs: Mapping[str, Volume], masks: Mapping[str, Volume], thick: Collection[str] = ()) -> np.ndarray:
        """The given brain mask, else the inputs' foreground, leaving out the ``thick`` inputs (``_thick_inputs``)
        when any other is left: linear interpolation from 5 mm slices spreads an input up to a slab past the brain's
        edge, and in the union of foregrounds that smear became brain (patient07's T2 at 5 mm beside its T1: 99,117
        synthetic voxels, 8.7 % of the brain, outside the T1's), which the coverage rule then read as the sharp T1
        stripped too tightly and synthesised from the blurred T2 alone. The sharp inputs' edge is the anatomy's."""
        if "brain" not in masks:
            sharp = [v.array for n, v in inputs.items() if n not in thick]
            return foreground_mask(sharp or [v.array for v in inputs.values()])
        brain = check_mask(masks["brain"])
        if not brain.any():
            raise InputError(f"{masks['brain'].source}: the brain mask is empty")
        return brain

    @staticmethod
    def _contributions(maps: Mapping[str, np.ndarray], brain: np.ndarray) -> dict[str, float]:
        """Each input's share of the summed mean saliency inside the brain (shares sum to 1)."""
        means = {n: float(m[brain].mean()) for n, m in maps.items()}
        total = sum(means.values()) or 1.0
        return {n: v / total for n, v in means.items()}

    @staticmethod
    def _canonical(name: str, role: str) -> str:
        try:
            return modalities.canonical(name)
        except ValueError as error:
            raise InputError(f"{role}: {error}") from None

    def _canonical_inputs(self, inputs: Mapping[str, Volume]) -> dict[str, Volume]:
        if not inputs:
            raise InputError("no inputs given; pass at least one, e.g. --input T1=t1.nii.gz")
        result: dict[str, Volume] = {}
        for name, volume in inputs.items():
            key = self._canonical(name, f"input {volume.source}")
            if key in result:
                raise InputError(f"{volume.source} and {result[key].source} are both {key}; give each modality once")
            result[key] = volume
        return result

    def _check_modalities(self, inputs: Mapping[str, Volume], targets: Sequence[str]) -> None:
        card = self.model.card
        refused = [f"{n} ({v.source})" for n, v in inputs.items() if n not in card.inputs]
        if refused:
            raise InputError(f"model {card.name!r} does not accept {', '.join(refused)}; "
                             f"it accepts {', '.join(card.inputs)}")
        if card.missing_inputs == "all_required":
            missing = [n for n in card.inputs if n not in inputs]
            if missing:
                raise InputError(f"model {card.name!r} needs every input it was trained with; missing "
                                 f"{', '.join(missing)} (it was not trained to handle missing inputs)")
        if not targets:
            raise InputError(f"no target given; model {card.name!r} produces {', '.join(card.outputs)}")
        unknown = [t for t in targets if t not in card.outputs]
        if unknown:
            raise InputError(f"model {card.name!r} cannot produce {', '.join(unknown)}; "
                             f"it produces {', '.join(card.outputs)}")
        if len(set(targets)) != len(targets):
            raise InputError(f"a target is repeated: {', '.join(targets)}")
