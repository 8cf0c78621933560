"""Rigid registration of an input onto the reference input (``--register``), with SimpleITK.

The models take co-registered inputs, and a small misregistration costs more than the input
brings: patient07's T2 moved by 1 / 2 / 3 mm gave a synthetic FLAIR (bundled model, T1 + T2)
with SSIM in the brain 0.670 / 0.613 / 0.550 against 0.692 in register and 0.685 from T1 alone
(measured ad hoc). Sequences of one session move with the patient between them, and a scan
resampled onto another's grid by its scanner coordinates (``--resample-to``) keeps that motion.

The method is the standard multi-modal one, on edges: Mattes mutual information between the
gradient magnitudes of the two images (Gaussian of 1 mm), a rigid (Euler) transform started at
the images' geometric centres, regular-step gradient descent on a 4 mm then 2 mm pyramid, the
metric sampled at random (fixed seed: reproducible) in the reference's foreground. On the
intensities themselves, mutual information moved the BraTS case's T2 by 5.3 mm and its synthetic
FLAIR's SSIM fell from 0.559 to 0.409; on edges it moved it by 1.8 mm and the SSIM rose to 0.610.
Measured ad hoc with the bundled model, T1 + T2 -> FLAIR, SSIM in the brain against the real
FLAIR, without / with ``--register``: patient07 0.692 / 0.695, patient19 0.620 / 0.625, BraTS
0.559 / 0.610; T1 + T1c + T2 -> FLAIR: patient07 0.690 / 0.694, patient19 0.629 / 0.630, BraTS
0.562 / 0.613 (the T1c moved by 0.2 mm on the MS subjects, 1.1 mm on BraTS); the T2 moved by 3
degrees and 2 mm (6.0-6.3 mm at most in the brain): patient07 0.571 / 0.694, patient19 0.557 /
0.621, the motion found as
6.4-6.6 mm. On the shared scans as given it moved the T2 by 0.6-1.8 mm and raised the SSIM on all
three: they may not be quite in register with their T1. Not done by default: it costs 2-5 s per
input on 2 cores, and three subjects are too few to trust it unasked.

Where the moving input holds no data (a slab's limit, slices lost from a 2D acquisition), that region
is found on the input's own grid (``coverage.not_measured``), where lost slices are whole sections of
the grid, and carried through the transform: resampled, a band of lost slices lies across the
reference grid's sections and interpolation fills its edges, so it was no longer found there. Ad hoc,
patient07's T2 with two axial slices zeroed, T1 + T2 -> FLAIR: SSIM 0.691 without ``--register``
(the band found and left out), 0.649 with it before the region was carried.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from .coverage import not_measured
from .preprocessing import foreground_mask
from .volume import Volume

SHRINK = (4, 2)  # pyramid levels, as factors of the reference's voxels
SMOOTHING_MM = (2.0, 1.0)
HISTOGRAM_BINS = 32
SAMPLING = 0.2  # share of the reference's foreground voxels the metric reads per iteration
ITERATIONS = 100
SEED = 1
EDGES_MM = 1.0  # the metric compares gradient magnitudes (Gaussian of this sigma), not intensities: see above


# Without --register, each other input holding data over the whole brain is checked on voxels of CHECK_MM (0.1-0.2 s
# an input, 2 cores), from where the scanner puts it: a rigid registration there moved the T1c, T2 and FLAIR of the
# three subjects as given by 0.5-2.5 mm onto their T1, and made 5 mm slices by 0.6-2.3 mm; moved by 3 degrees and
# 2 mm (6 mm at most in the brain) by 5.5-7.7 mm, by 1 degree and 0.5 mm by 1.7-3.9 mm (ad hoc). Beyond
# OUT_OF_REGISTER_MM a note says so: fed as it was, the T2 moved by 6 mm gave patient07's FLAIR SSIM 0.571, where
# T1 alone gives 0.685. An input holding data over part of the brain is checked with the metric kept
# CHECK_MARGIN coarse voxels away from the brain voxels where it holds none (``logic`` passes them from coverage):
# the edges of a zeroed slab drew the unmasked check off (BraTS's T2 as given, all but a 60 mm slab zeroed: 4.1 mm;
# moved as above, 29.7 mm). Masked, the T2s of the three subjects as given, with their top third, upper half or all
# but a 60 mm slab zeroed, came out 0.2-3.1 mm off, and moved as above 5.0-10.1 mm (ad hoc). A partial reference
# input is not checked.
CHECK_MM = 4.0
CHECK_MARGIN = 2
CHECK_VOXELS = 8  # fewer coarse voxels along an axis than this (a field of view under 32 mm) is not checked
OUT_OF_REGISTER_MM = 4.0


def _rigid(fixed: sitk.Image, other: sitk.Image, edges_mm: float, shrink: tuple[int, ...],
           smoothing_mm: tuple[float, ...], sampling: float, check: bool = False,
           moving_mask: sitk.Image | None = None, fixed_mask: sitk.Image | None = None) -> sitk.Transform:
    """Mattes MI between the gradient magnitudes (Gaussian of ``edges_mm``) of two images, a rigid transform from
    their geometric centres, on a pyramid of ``shrink`` / ``smoothing_mm``, sampled in ``fixed``'s foreground
    (within ``fixed_mask`` when given, and, with ``moving_mask``, where it maps into that mask of ``other``).
    ``check``: from where the scanner puts them instead (the question is whether they are in register there; a
    slab on its own smaller grid, centred onto the reference's, started 60 mm off and ended 23 mm off)."""
    mask = sitk.Cast(fixed > 0, sitk.sitkUInt8)
    if fixed_mask is not None:
        mask = sitk.And(mask, fixed_mask)
    fixed, other = (sitk.GradientMagnitudeRecursiveGaussian(i, edges_mm) for i in (fixed, other))
    if check:
        start = sitk.Euler3DTransform()
        start.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
    else:
        start = sitk.CenteredTransformInitializer(fixed, other, sitk.Euler3DTransform(),
                                                  sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling, SEED)
    method.SetMetricFixedMask(mask)
    if moving_mask is not None:
        method.SetMetricMovingMask(moving_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=ITERATIONS,
                                                    relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel(list(smoothing_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(start, inPlace=False)
    return method.Execute(fixed, other)


def rigid_transform(reference: Volume, moving: Volume) -> sitk.Transform:
    """The rigid transform that maps points of ``reference`` to where ``moving`` holds the same anatomy."""
    return _rigid(reference.to_sitk(), moving.to_sitk(), EDGES_MM, SHRINK, SMOOTHING_MM, SAMPLING)


def apparent_motion(reference: Volume, moving: Volume, unmeasured: np.ndarray | None = None,
                    reference_unmeasured: np.ndarray | None = None) -> float | None:
    """How far (mm) a quick rigid registration of ``moving`` onto ``reference`` on voxels of about ``CHECK_MM``
    moves the reference's brain: a check that the inputs are in register, not a registration. None where it cannot
    tell: an image under ``CHECK_VOXELS`` coarse voxels along an axis, or a registration ITK gives up on.
    ``unmeasured`` / ``reference_unmeasured``: the brain voxels (of ``moving``'s / ``reference``'s grid) where that
    image holds no data, if any; the metric then reads each image only ``CHECK_MARGIN`` coarse voxels away from
    them (the edge of a zeroed slab is an edge of neither anatomy), and fewer than ``CHECK_VOXELS`` of its brain's
    coarse voxels left along an axis is too little to tell (None)."""

    def coarse(volume: Volume) -> sitk.Image:
        return sitk.BinShrink(volume.to_sitk(), [max(1, round(CHECK_MM / s)) for s in volume.geometry.spacing])

    def away_from(volume: Volume, image: sitk.Image, lost: np.ndarray | None) -> tuple[bool, sitk.Image | None]:
        """Whether enough of ``image``'s brain is far enough from ``lost`` to tell, and those coarse voxels as a
        mask (None: nothing lost, the whole image)."""
        if lost is None:
            return True, None
        near = sitk.GetArrayFromImage(coarse(volume.with_array(lost.astype(np.float32)))) > 0
        kept = ~ndi.binary_dilation(near, iterations=CHECK_MARGIN)
        brain = np.nonzero(kept & (sitk.GetArrayFromImage(image) > 0))
        if not len(brain[0]) or min(np.ptp(i) + 1 for i in brain) < CHECK_VOXELS:  # as for a small image
            return False, None
        mask = sitk.GetImageFromArray(kept.astype(np.uint8))
        mask.CopyInformation(image)
        return True, mask

    fixed, other = coarse(reference), coarse(moving)
    if min(*fixed.GetSize(), *other.GetSize()) < CHECK_VOXELS:
        return None
    (moving_enough, moving_mask), (fixed_enough, fixed_mask) = (away_from(moving, other, unmeasured),
                                                                away_from(reference, fixed, reference_unmeasured))
    if not (moving_enough and fixed_enough):
        return None
    try:
        transform = _rigid(fixed, other, CHECK_MM / 2, (1,), (0.0,), 0.5, check=True, moving_mask=moving_mask,
                           fixed_mask=fixed_mask)
    except RuntimeError:  # e.g. too few samples inside both images: nothing to say, and the run goes on
        return None
    return largest_displacement(transform, reference)


def largest_displacement(transform: sitk.Transform, reference: Volume) -> float:
    """How far (mm) the transform moves the farthest foreground voxel of ``reference`` (a sample of them)."""
    image = reference.to_sitk()
    points = np.argwhere(reference.array > 0)[::97]  # (z, y, x); every 97th is plenty for a rigid motion
    if not len(points):
        return 0.0
    moved = [np.subtract(transform.TransformPoint(p), p) for p in
             (image.TransformIndexToPhysicalPoint([int(i) for i in q[::-1]]) for q in points)]
    return float(np.max(np.linalg.norm(moved, axis=1)))


@dataclass
class Registration:
    volume: Volume  # the moving input on the reference's grid (linear, 0 outside)
    moved_mm: float  # the largest displacement of a reference foreground voxel (``largest_displacement``)
    unmeasured: np.ndarray | None  # reference voxels where the moving input holds no data (None: nowhere)
    # what ``register_onto`` found: maps reference physical points to the moving input's (as ``sitk.Resample`` uses
    # it), so that anything drawn on the moving input (a lesion mask: ``mask_onto``) follows its anatomy
    transform: sitk.Transform


def unmeasured_onto(reference: Volume, moving: Volume, transform: sitk.Transform,
                    reference_brain: np.ndarray | None = None) -> np.ndarray | None:
    """The voxels of ``reference``'s grid in which ``moving`` holds no data, found on ``moving``'s own grid
    within the brain there (its own foreground and the reference's carried back, which covers what it lost) and
    carried through ``transform`` (a voxel counts when most of its interpolated value would come from there).
    ``reference_brain``: the reference's foreground, when the caller registers several inputs onto it."""
    fixed, other = reference.to_sitk(), moving.to_sitk()

    def on(grid: sitk.Image, array: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(grid)
        return image

    if reference_brain is None:
        reference_brain = foreground_mask([reference.array])
    carried_back = sitk.Resample(on(fixed, reference_brain.astype(np.uint8)), other, transform.GetInverse(),
                                 sitk.sitkNearestNeighbor, 0)
    brain = foreground_mask([moving.array]) | sitk.GetArrayFromImage(carried_back).astype(bool)
    region = not_measured(moving.array, brain)
    if not region.any():
        return None
    carried = sitk.Resample(on(other, region.astype(np.float32)), fixed, transform, sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(carried) >= 0.5


def register_onto(reference: Volume, moving: Volume, reference_brain: np.ndarray | None = None) -> Registration:
    """``moving`` registered rigidly onto ``reference`` and resampled onto its grid, with how far it moved and
    where it holds no data there (``reference_brain``: see ``unmeasured_onto``)."""
    transform = rigid_transform(reference, moving)
    image = sitk.Resample(moving.to_sitk(), reference.to_sitk(), transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    registered = reference.with_array(sitk.GetArrayFromImage(image), source=f"{moving.source} (registered)")
    return Registration(registered, largest_displacement(transform, reference),
                        unmeasured_onto(reference, moving, transform, reference_brain), transform)


def mask_onto(reference: Volume, mask: Volume, transform: sitk.Transform) -> Volume:
    """A binary ``mask`` drawn on a moving input's anatomy (in scanner coordinates, on any grid), carried through
    that input's ``transform`` (``Registration.transform``) onto ``reference``'s grid, as its anatomy was; 0
    outside the mask's extent. By nearest neighbour, as ``validation.align`` resamples masks: the values stay the
    mask's own (no fractions for ``check_mask`` to refuse, a label of 255 stays 255) and a lesion of a voxel or two
    keeps its voxels, where linear interpolation thresholded at 0.5 drops a single voxel moved by half a voxel
    along each axis (8 neighbours at 1/8); the edge moves by at most half a voxel either way."""
    image = sitk.Resample(mask.to_sitk(), reference.to_sitk(), transform, sitk.sitkNearestNeighbor, 0.0,
                          sitk.sitkFloat32)
    return reference.with_array(sitk.GetArrayFromImage(image), source=mask.source)  # the user's file, in messages
