"""Structure maps, brain masks and the two sample filters of Qu et al. (numpy/scipy, no torch).

Y. Qu, W. Su, C. Deng, Y. Wang, Y. Lu, N. Xiao, Z. Chen, "Registered Multimodal MRI with
Lesion Label" (Sun Yat-sen University). Algorithm 1 turns a 2D slice into a binary
"structural feature map" (its anatomical edges); Algorithm 2 gives the region *outside* the
brain; Algorithm 3 rejects generated structure maps whose brain outline is not closed; the
Dice filter rejects generated samples whose lesion a segmentor cannot find again.

Conventions used everywhere in the Qu code: 2D arrays are (H, W); intensities are scaled so
that the background is exactly 0 and the brain is roughly [0, 1] (``training.qu.data``);
a "background mask" is the paper's ``mask`` (1 outside the brain, 0 inside), because every
loss and test in the paper multiplies by it to find what lies outside the brain.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Algorithm 1's pixel threshold. The paper gives no value; on slices scaled to [0, 1] a
# Sobel response of 0.5 is a step of 1/8 of the brain's intensity range (the kernel's
# weights sum to 4 per side), which keeps tissue boundaries and drops noise (checked on
# the MS and BraTS development slices at 64-192 pixels).
DEFAULT_BETA = 0.5
# Algorithm 3's MAE threshold is the paper's (``mae = 0.05``); its Gaussian blur width is not
# given: 1 pixel closes one-pixel gaps in an outline without merging neighbouring sulci.
DEFAULT_MAE_THRESHOLD = 0.05
DEFAULT_BLUR_SIGMA = 1.0
# Section 2.8: "filtered ... the sample with the score above the set threshold (default 0.95)".
DEFAULT_DICE_THRESHOLD = 0.95


def _image(x: np.ndarray, name: str = "image") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return x


def sobel(x: np.ndarray) -> np.ndarray:
    """The vertical and horizontal Sobel responses, stacked last: (H, W, 2), like ``tf.image.sobel_edges``.

    Borders are mirrored without repeating the edge pixel (TensorFlow's REFLECT padding, which the
    paper's ``sobel`` uses), so a constant image gives exactly 0.
    """
    x = _image(x)
    return np.stack([ndimage.sobel(x, axis=0, mode="mirror"), ndimage.sobel(x, axis=1, mode="mirror")], axis=-1)


def structure_map(x: np.ndarray, beta: float = DEFAULT_BETA) -> np.ndarray:
    """Algorithm 1: the binary structural feature map of a slice (float32 of 0/1).

    ``reduce_min`` / ``reduce_max`` run over the two Sobel directions (the last axis), so f1
    holds the strongest falling edge and f2 the strongest rising edge at each pixel; each is
    compared with its own image mean before thresholding, then the two are OR-ed.
    """
    edges = sobel(x)
    f1 = edges.min(axis=-1)
    f2 = edges.max(axis=-1)
    f1 = f1.mean() - f1
    f2 = f2 - f2.mean()
    f = (f1 > beta).astype(np.float32) + (f2 > beta).astype(np.float32)
    return (f > 0.0).astype(np.float32)


def _resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = np.minimum((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0], mask.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1], mask.shape[1] - 1).astype(int)
    return mask[np.ix_(rows, cols)]


def background_mask(x: np.ndarray, expand: int = 0) -> np.ndarray:
    """Algorithm 2: 1 outside the brain (``x <= 0``), 0 inside, with the brain grown by ``expand`` pixels.

    The paper enlarges the mask to (H + p, W + p) and crops the centre back to (H, W): the
    brain (the mask's hole) is scaled up about the image centre, i.e. grown by about p/2
    pixels on each side of a centred brain. Nearest-neighbour resizing keeps it binary (the
    paper does not say which interpolation); an odd ``expand`` crops the extra pixel from
    the bottom/right. ``expand=0`` is the "mask without boundary expansion" of Section 2.5,
    used on lesion labels to cut a source scan's own lesion out of its structure map.
    """
    x = _image(x)
    if expand < 0:
        raise ValueError(f"expand must be >= 0, got {expand}")
    mask = 1.0 - (x > 0.0).astype(np.float32)
    if expand == 0:
        return mask.astype(np.float32)
    h, w = mask.shape
    big = _resize_nearest(mask, (h + expand, w + expand))
    top, left = expand // 2, expand // 2
    return big[top:top + h, left:left + w].astype(np.float32)


def brain_mask(x: np.ndarray, expand: int = 0) -> np.ndarray:
    """1 inside the (grown) brain: the complement of ``background_mask``."""
    return 1.0 - background_mask(x, expand)


def remove_lesion(structure: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """Section 2.5: ``f = mask_{l,x} * f'``, i.e. drop a source scan's own lesion from its structure map.

    ``mask_{l,x}`` is Algorithm 2 on the lesion label without expansion (1 where there is no lesion).
    """
    structure = _image(structure, "structure map")
    return (background_mask(_image(lesion, "lesion label")) * structure).astype(np.float32)


def contour_fill_mask(structure: np.ndarray, sigma: float = DEFAULT_BLUR_SIGMA) -> np.ndarray:
    """Algorithm 3's ``GetMaskFromF`` as a background mask: blur, fill every closed contour, invert.

    The paper uses OpenCV's ``findContours`` + ``drawContours`` (filled) on the Gaussian-blurred
    map; filling the holes of the blurred map's support (``binary_fill_holes``) fills exactly
    the regions enclosed by a closed contour, without OpenCV. The blurred map is binarised at
    half its maximum for a unit-height edge (a blurred one-pixel line peaks near
    ``1 / (sqrt(2 pi) sigma)``; we keep everything above a quarter of that so a thin outline
    stays connected).
    """
    structure = _image(structure, "structure map")
    if sigma > 0:
        blurred = ndimage.gaussian_filter(structure, sigma)
        level = 0.25 / (np.sqrt(2 * np.pi) * sigma)
    else:
        blurred, level = structure, 0.5
    filled = ndimage.binary_fill_holes(blurred > level)
    return (1.0 - filled).astype(np.float32)


def mae(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.abs(a - b).mean())


def passes_structure_filter(structure: np.ndarray, generated_background: np.ndarray,
                            threshold: float = DEFAULT_MAE_THRESHOLD,
                            sigma: float = DEFAULT_BLUR_SIGMA) -> tuple[bool, float]:
    """Algorithm 3: keep a generated structure map when MAE(contour-filled mask, MASK's mask) <= threshold.

    Returns (keep, mae). The paper's pseudo-code loops ``while MAE <= mae`` (regenerating the
    good maps), contradicting its own text ("If the MAE is lower than the threshold ... the
    feature map can be used; otherwise ... it needs to be regenerated"); we follow the text.
    ``generated_background`` is MASK's output in the background convention, binarised.
    """
    error = mae(contour_fill_mask(structure, sigma), generated_background)
    return error <= threshold, error


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Mean Dice over the lesion classes (labels > 0) present in either array; 1.0 when both are empty.

    Both empty is a perfect answer (no lesion asked, none found), so it must not be rejected.
    """
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"shapes differ: {prediction.shape} vs {reference.shape}")
    classes = np.union1d(np.unique(prediction), np.unique(reference))
    classes = classes[classes > 0]
    if classes.size == 0:
        return 1.0
    scores = []
    for c in classes:
        p, r = prediction == c, reference == c
        scores.append(2.0 * np.logical_and(p, r).sum() / (p.sum() + r.sum()))
    return float(np.mean(scores))


def passes_dice_filter(segmentation: np.ndarray, label: np.ndarray,
                       threshold: float = DEFAULT_DICE_THRESHOLD) -> tuple[bool, float]:
    """Section 2.8's segmentor filter: keep a sample whose segmented lesion matches its input label.

    Returns (keep, dice). The paper keeps scores "above" the threshold; we keep ``>=`` so a
    threshold of 1.0 still admits a perfect segmentation.
    """
    score = dice(segmentation, label)
    return score >= threshold, score


def label_inside_brain(label: np.ndarray, background: np.ndarray) -> bool:
    """Section 2.5: a lesion label may be used only when ``mask * label`` is 0 everywhere."""
    label, background = np.asarray(label), np.asarray(background)
    if label.shape != background.shape:
        raise ValueError(f"label and brain mask shapes differ: {label.shape} vs {background.shape}")
    return not bool(np.any((label > 0) & (background > 0.5)))
