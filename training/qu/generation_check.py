"""Does the generator stage generate? Its images from real structure maps against the real slices.

The generator's training costs can all fall while generation (fuse(f, label) -> EC_R -> DC)
stays blank: the first 64-pixel CPU run did exactly that (EC_R settled on EC's code of an
empty image). This check is what tells: for fixed real slices, Algorithm 1's structure map of
modality i's slice (its own lesion removed) is fused with the slice's own lesion label, and
the generated modality i is compared, inside the brain, with that real slice, which has the
same anatomy. Per modality:

- ``brain_mean_ratio``: mean generated / mean real intensity (0 for a blank image, ~1 when
  the intensity level is right);
- ``correlation``: Pearson correlation of generated and real pixels (0 when unrelated);
- ``mae_over_blank``: the generated image's MAE over a blank image's (below 1 = better than
  blank; the paper's Algorithm 3 and Dice filters sit on top of this);
- ``structure_cost``: the training's structure-consistency cost (loss_sv,f of one modality:
  mean squared difference of the map and the soft map of the generated image, clipped to
  [0, 1] as generated data are, or its class-balanced form when the config's
  ``structure_loss`` is "balanced"), with three levels to read it against, computed on the same
  maps: ``structure_cost_real`` (the real slice itself: what following the map reaches),
  ``structure_cost_other_anatomy`` (a real slice of other anatomy from the same set: a
  plausible brain that ignores the map) and ``structure_cost_blank`` (a blank image). A
  generator whose cost sits near the other-anatomy level draws brains, not the given one.

``train_generator`` logs the means over modalities at every log row (``generated_*``: a
collapse shows as the ratio falling to 0), runs it at the end and writes the figures into the
folder's manifest and ``samples.png`` (structure map with the label, then real and generated rows per modality).
``python -m training.qu.generation_check GENERATOR_FOLDER [--config CONFIG.json]`` reruns it
(on the folder's own training slices, or on another config's sources).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from MRSynthesisLib.errors import InputError
from MRSynthesisLib.models.losses_qu import structure_map_cost, structure_map_soft
from MRSynthesisLib.report import save_figure

from .config import QuConfig, load_config
from .data import SliceSet, structure_maps_of
from .folders import GENERATOR, load_folder
from .train_structure import load_sources

SAMPLES = "samples.png"
CHECK_KEYS = ("brain_mean_ratio", "correlation", "mae_over_blank", "structure_cost")


def pick_slices(slices: SliceSet, count: int, seed: int) -> np.ndarray:
    """``count`` slice indices, lesion slices first (the label channel should show), fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    has_lesion = slices.labelled & (slices.labels.reshape(len(slices), -1).max(axis=1) > 0)
    ordered = np.concatenate([rng.permutation(np.flatnonzero(has_lesion)),
                              rng.permutation(np.flatnonzero(~has_lesion))])
    return np.sort(ordered[:count])


@torch.no_grad()
def generate_from_real(generator: torch.nn.Module, slices: SliceSet, config: QuConfig,
                       index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(structure maps (M, K, H, W), generated (M, K, H, W)): modality i generated from the map of its own slice."""
    device = next(generator.parameters()).device
    n_mod = len(config.modalities)
    maps = np.stack([structure_maps_of(slices.images[i, index], slices.labels[index], config.beta,
                                       config.mask_expand)[0] for i in range(n_mod)])
    label = torch.from_numpy(slices.labels[index].astype(np.int64)).to(device)
    generated = []
    for i in range(n_mod):
        code = generator.encode_fused(torch.from_numpy(maps[i][:, None]).to(device), label)
        generated.append(generator.decode(code, i)[:, 0].clamp(0.0, 1.0).float().cpu().numpy())
    return maps, np.stack(generated)


def generation_check(generator: torch.nn.Module, slices: SliceSet, config: QuConfig, *, count: int = 16,
                     seed: int = 0, figure: Path | None = None) -> dict[str, dict[str, float]]:
    """The per-modality figures of the module docstring; with ``figure``, also the samples PNG."""
    was_training = generator.training
    generator.eval()
    index = pick_slices(slices, count, seed)
    maps, generated = generate_from_real(generator, slices, config, index)
    generator.train(was_training)
    brain = slices.brain[index] > 0
    other = np.roll(index, len(index) // 2)  # the same slices paired with other anatomy
    results = {}
    for i, name in enumerate(config.modalities):
        real, fake = slices.images[i, index][brain], generated[i][brain]
        blank = float(np.abs(real).mean())
        correlation = float(np.corrcoef(real, fake)[0, 1]) if fake.std() > 0 and real.std() > 0 else 0.0
        cost = lambda images: round(structure_cost(maps[i], images, config.beta, config.structure_loss), 4)  # noqa: E731
        results[name] = {"brain_mean_ratio": round(float(fake.mean() / max(real.mean(), 1e-12)), 4),
                         "correlation": round(correlation, 4),
                         "mae_over_blank": round(float(np.abs(real - fake).mean() / max(blank, 1e-12)), 4),
                         "structure_cost": cost(generated[i]), "structure_cost_real": cost(slices.images[i, index]),
                         "structure_cost_other_anatomy": cost(slices.images[i, other]),
                         "structure_cost_blank": cost(np.zeros_like(generated[i]))}
    if figure is not None:
        _samples_figure(slices, config, index, maps, generated, figure)
    return results


def structure_cost(maps: np.ndarray, images: np.ndarray, beta: float, kind: str = "l2") -> float:
    """loss_sv,f of one modality for (K, H, W) structure maps and images, as training computes it."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    target = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    return float(structure_map_cost(target, structure_map_soft(x, beta), kind))


def _samples_figure(slices: SliceSet, config: QuConfig, index: np.ndarray, maps: np.ndarray, generated: np.ndarray,
                    path: Path, columns: int = 6) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = index[:columns]
    rows = 1 + 2 * len(config.modalities)
    figure, axes = plt.subplots(rows, len(shown), figsize=(1.2 * len(shown), 1.35 * rows), squeeze=False)
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.01, top=0.95, wspace=0.03, hspace=0.3)
    figure.patch.set_facecolor("black")
    for c in range(len(shown)):
        axes[0][c].imshow(maps[0, c], cmap="gray", vmin=0, vmax=1)
        label = np.ma.masked_equal(slices.labels[shown[c]], 0)
        axes[0][c].imshow(label, cmap="autumn", alpha=0.8, vmin=0, vmax=max(1, config.n_classes - 1))
        for i, name in enumerate(config.modalities):
            axes[1 + 2 * i][c].imshow(slices.images[i, shown[c]], cmap="gray", vmin=0, vmax=1)
            axes[2 + 2 * i][c].imshow(generated[i, c], cmap="gray", vmin=0, vmax=1)
    titles = ["structure map (of the first modality) + label"] + [
        t for name in config.modalities for t in (f"real {name}", f"generated {name}")]
    for r, title in enumerate(titles):
        axes[r][0].set_title(title, color="white", fontsize=6, loc="left")
        for c in range(len(shown)):
            axes[r][c].set_axis_off()
    figure.suptitle("Qu generator: generated from the real slice's structure map and lesion label",
                    color="white", fontsize=7)
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.qu.generation_check", description=__doc__.splitlines()[0])
    parser.add_argument("generator", help="a generator model folder (RUN/generator)")
    parser.add_argument("--config", help="take the real slices from this config's sources (default: the folder's own)")
    parser.add_argument("--count", type=int, default=16, help="slices compared (lesion slices first)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", help="write the samples PNG here")
    args = parser.parse_args(argv)
    try:
        config, networks, _ = load_folder(args.generator, GENERATOR)
        if args.config:
            other = load_config(args.config)
            if other.size != config.size or other.modalities != config.modalities:
                raise InputError(f"{args.config}: its slices ({other.size} px, {other.modalities}) are not the "
                                 f"generator's ({config.size} px, {config.modalities})")
            config = replace(config, sources=other.sources)
        results = generation_check(networks["generator"], load_sources(config), config, count=args.count,
                                   seed=args.seed, figure=Path(args.figure) if args.figure else None)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
