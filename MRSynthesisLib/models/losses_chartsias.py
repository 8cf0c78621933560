"""The three-part training cost of Chartsias et al. 2018 (Sec. IV-D, eqs. 2-4 and 7).

With n given inputs, targets j = 1..m (the model outputs present in ``references``),
per-input latents Z_i and fused latent Z_a:

- c1 = (1/m) sum_i sum_j MAE(g_j(Z_i), Y_j)  (eq. 2): every output decoded from each input's
  latent alone. Note the sum (not mean) over inputs, as in the paper (ref also sums over
  inputs but leaves out the 1/m).
- c2 = mean over latent channels and pixels of the variance across the n latents (eq. 3):
  the modality-invariance term. Population variance, as ref's ``K.var``; 0 with one input.
  It is taken on the encoders' raw latents (for ``"hemis"`` fusion ref pads them with zero
  variance channels first, which only halves the term).
- c3 = (1/m) sum_j MAE(g_j(fused), Y_j)  (eq. 4): every output from the fused latent (for
  ``"output_mean"`` fusion, the mean of the per-input outputs).

MAE is the mean absolute error over all pixels of an image (eq. 2), then averaged over the
batch (eq. 7 sums over the minibatch; ref's Keras losses average, which keeps the scale
independent of the batch size). A ``mask`` (N, 1, H, W) of pixel weights turns every mean
over pixels (c1, c2 and c3) into a weighted mean pooled over the batch. ``present`` (output ->
(N,) 0/1) says which samples hold that output's reference (a subject of an incomplete cohort may lack
a sequence): c1 and c3 then look at an output only in the samples that hold it, and average over the
outputs that some sample of the batch holds. Every output is still decoded, so every decoder has a
gradient (0 where no sample holds its output) and the parts name the same outputs on every step and
every rank (``training/distributed.py`` all-reduces them as one flat list).
Data-parallel training splits the batch over ranks and averages their gradients, which equals the
global batch's gradient only where each rank's mean has the same denominator. A weighted mean's
has not (the lesion pixels and the samples holding an output differ between shares), so ``pool``,
given, turns each weighted mean's denominator (and whether some sample holds an output) into its
mean over the ranks: every rank then divides by the same number, and the averaged gradients are
those of the global batch's weighted means.
Besides the terms, the parts hold ``active[<output>]``: the fraction of that output's
decoded pixels above 0. It is a health check, not a cost: a decoder whose output ReLU has
died gives exactly 0 there (``training/loop.py`` stops such a run).
The paper's total (eq. 7) is the unweighted sum c1 + c2 + c3: ``PAPER_WEIGHTS``. The Table V
ablations ("no c1", "no c2", "no c3") are the weights with that term set to 0; a term with
zero weight is not computed and is left out of the returned parts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Optional

import torch
from torch import Tensor

from MRSynthesisLib.models.chartsias import ChartsiasMIMO

PAPER_WEIGHTS: tuple[float, float, float] = (1.0, 1.0, 1.0)


Pool = Callable[[Tensor], Tensor]  # a tensor's mean over data-parallel ranks


def _masked_mean(x: Tensor, mask: Optional[Tensor], dims: tuple[int, ...], pool: Optional[Pool] = None) -> Tensor:
    if mask is None:
        return x.mean(dims)
    w = mask.to(x.dtype).expand_as(x)
    denominator = w.sum(dims)
    if pool is not None:
        denominator = pool(denominator.detach())
    return (x * w).sum(dims) / denominator.clamp_min(1e-12)


def _output_mask(mask: Optional[Tensor], present: Tensor) -> Tensor:
    """The pixel weights of one output's cost: ``mask`` (or 1), zero in the samples without its reference."""
    held = present.to(torch.float32).view(-1, 1, 1, 1)
    return held if mask is None else mask * held


def _mean_over_held(values: list[Tensor], held: list[Tensor]) -> Tensor:
    """The mean of per-output terms over the outputs some sample holds; an output none holds adds its
    term (0) times 0, which keeps its decoder in the graph without counting it."""
    weights = torch.stack(held)
    return (torch.stack(values) * weights).sum() / weights.sum().clamp_min(1)


def chartsias_loss(
    model: ChartsiasMIMO,
    inputs: Mapping[str, Tensor],
    references: Mapping[str, Tensor],
    lesion: Optional[Tensor] = None,
    weights: tuple[float, float, float] = PAPER_WEIGHTS,
    mask: Optional[Tensor] = None,
    present: Optional[Mapping[str, Tensor]] = None,
    pool: Optional[Pool] = None,
) -> tuple[Tensor, dict[str, float]]:
    """Total w1*c1 + w2*c2 + w3*c3 (float32 scalar) and the parts {"c1", "c2", "c3", "total",
    "active[<output>]" per decoded output}.

    ``references`` maps model outputs to their ground truth (N, 1, H, W); only those
    outputs are decoded (e.g. just a new decoder's modality in Sec. VI-E training). ``present``
    (output -> (N,) 0/1, for every reference): the samples whose reference is real; ``pool``: the mean over
    data-parallel ranks, for the weighted means' denominators (module docstring).
    """
    w1, w2, w3 = (float(w) for w in weights)
    if min(w1, w2, w3) < 0 or not (w1 or w2 or w3):
        raise ValueError(f"weights must be non-negative and not all zero, got {weights}")
    unknown = [t for t in references if t not in model.decoders]
    if unknown:
        raise ValueError(f"references for modalities the model does not output: {unknown}; "
                         f"outputs are {list(model.outputs)}")
    if not references and (w1 or w3):
        raise ValueError("c1 and c3 need at least one reference output")
    latents = model.encode(inputs, lesion)
    shape = next(iter(inputs.values())).shape
    bad = [t for t, y in references.items() if y.shape != shape]
    if bad or (mask is not None and mask.shape != shape):
        raise ValueError(f"references {bad} and mask must have the inputs' shape {tuple(shape)}")
    if present is not None and (set(present) != set(references)
                                or any(p.shape != shape[:1] for p in present.values())):
        raise ValueError(f"present must give each of the references {sorted(references)} a ({shape[0]},) vector")
    n = len(latents)
    terms: dict[str, Tensor] = {}
    active: dict[str, Tensor] = {}
    if w1 or w3:
        # Batch every latent to decode through one call per decoder: the per-input latents
        # (c1, and c3 for 'output_mean' or a single input), then the fused one when it differs.
        separate_fused = bool(w3) and n > 1 and model.fusion != "output_mean"
        use_singles = bool(w1) or not separate_fused
        zs = [model.fuse({k: z}) for k, z in latents.items()] if use_singles else []
        if separate_fused:
            zs.append(model.fuse(latents))
        targets = [t for t in model.outputs if t in references]
        outs = model.decode(torch.cat(zs), targets)
        c1, c3, held = [], [], []
        for t in targets:
            ref = references[t].float()
            pred = outs[t].float().unflatten(0, (len(zs), -1))
            active[f"active[{t}]"] = (pred.detach() > 0).float().mean()
            weight = mask if present is None else _output_mask(mask, present[t])
            if present is not None:
                held_here = weight.sum().detach()
                held.append(((held_here if pool is None else pool(held_here)) > 0).float())
            if w1:
                c1.append(_masked_mean((pred[:n] - ref).abs(), weight, (1, 2, 3, 4), pool).sum())
            if w3:
                fused = pred[-1] if separate_fused else pred[:n].mean(0)
                c3.append(_masked_mean((fused - ref).abs(), weight, (0, 1, 2, 3), pool))
        for name, values in (("c1", c1), ("c3", c3)):
            if values:
                terms[name] = torch.stack(values).mean() if present is None else _mean_over_held(values, held)
    if w2:
        stack = torch.stack([z.float() for z in latents.values()])
        terms["c2"] = _masked_mean(stack.var(0, correction=0), mask, (0, 1, 2, 3), pool)

    weight = {"c1": w1, "c2": w2, "c3": w3}
    names = [k for k in weight if k in terms]
    total = torch.stack([weight[k] * terms[k] for k in names]).sum()
    values = torch.stack([*(terms[k] for k in names), total, *active.values()]).detach().tolist()  # one device sync
    return total, dict(zip([*names, "total", *active], values))
