"""Stage 1 of Qu et al. (Sec. 2.3): the structure-map VAE-GAN and the mask generator MASK.

``python -m training.qu.train_structure CONFIG.json [--out DIR] [--steps N] [--overwrite]``
writes ``<out>/structure`` (see ``folders``). Each step updates, in this order, the two
discriminators (D_f, FD_f) with their costs, then EC_f + DC_f with loss_G_f + loss_normal +
loss_sv, then MASK with loss_mask; the paper trains them "synchronously" without an order.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from MRSynthesisLib.errors import InputError
from MRSynthesisLib.models import losses_qu as L
from MRSynthesisLib.models.qu_discriminators import (
    CodeDiscriminator,
    PatchDiscriminator,
)
from MRSynthesisLib.models.qu_layers import mean_filter_init_, normal_init_

from .config import QuConfig, adam, load_config
from .data import SliceSet, concatenate, load_subject_slices, structure_maps_of
from .folders import STRUCTURE, save_folder, structure_networks


def load_sources(config: QuConfig) -> SliceSet:
    sets = [load_subject_slices(s.folder, config.modalities, config.size, config.slice_range,
                                config.min_brain_fraction, s.labelled) for s in config.sources]
    slices = concatenate(sets)
    if len(slices) == 0:
        raise InputError(f"no slice of {[s.folder for s in config.sources]} has a brain fraction >= "
                         f"{config.min_brain_fraction} within slice_range {config.slice_range}")
    return slices


def structure_pool(config: QuConfig, slices: SliceSet) -> tuple[np.ndarray, np.ndarray]:
    """Structure maps and background masks of every modality's slices (the paper extracts f from "arbitrary
    modalities")."""
    m, n, h, w = slices.images.shape
    return structure_maps_of(slices.images.reshape(m * n, h, w), np.tile(slices.labels, (m, 1, 1)),
                             config.beta, config.mask_expand)


def _batch(array: np.ndarray, index: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(array[index]).unsqueeze(1).to(device)


def train_structure(config: QuConfig, slices: SliceSet, log=print) -> tuple[dict, list[dict]]:
    """Train EC_f, DC_f, MASK (and D_f, FD_f); return the networks to keep and the loss log."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    init = torch.Generator().manual_seed(config.seed)
    maps, masks = structure_pool(config, slices)
    nets = structure_networks(config)
    vae, mask_net = nets["structure_vae"], nets["mask_generator"]
    d_f = PatchDiscriminator(config.discriminator_width)
    fd_f = CodeDiscriminator(config.structure_code_channels)
    mean_filter_init_(vae, init), mean_filter_init_(mask_net, init)
    normal_init_(d_f, init), normal_init_(fd_f, init)
    device = torch.device(config.device)
    for net in (vae, mask_net, d_f, fd_f):
        net.to(device)
    opt_d, opt_g, opt_m = adam(config, d_f, fd_f), adam(config, vae), adam(config, mask_net)
    w = config.structure_weights
    history, started = [], time.time()
    for step in range(1, config.structure_steps + 1):
        index = rng.integers(len(maps), size=config.batch_size)
        f, background = _batch(maps, index, device), _batch(masks, index, device)
        f_r, code_f, mean, logvar = vae(f)
        code_g = torch.randn_like(code_f)
        f_g = vae.decode(code_g)

        loss_d = (L.loss_structure_discriminator(d_f(f), d_f(f_g.detach()))
                  + L.loss_code_discriminator(fd_f(code_g), fd_f(code_f.detach())))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()

        adversarial = L.loss_structure_adversarial(fd_f(code_f), d_f(f_g))
        normal = L.loss_normal(mean, logvar)
        reconstruction = L.loss_structure_reconstruction(f, f_r, background)
        loss_g = w["adversarial"] * adversarial + w["normal"] * normal + w["reconstruction"] * reconstruction
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()

        f_r, f_g = f_r.detach(), f_g.detach()
        loss_m = L.loss_mask(background, mask_net(f), f, f_r, f_g, mask_net(f_g))
        opt_m.zero_grad()
        loss_m.backward()
        opt_m.step()

        if step % config.log_every == 0 or step == config.structure_steps:
            row = {"step": step, "seconds": round(time.time() - started, 1), "loss_D_f+FD_f": loss_d.item(),
                   "loss_G_f": adversarial.item(), "loss_normal": normal.item(), "loss_sv": reconstruction.item(),
                   "loss_mask": loss_m.item()}
            history.append(row)
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return {name: net.cpu() for name, net in nets.items()}, history


def prepare_out(folder: Path, overwrite: bool) -> None:
    """Refuse an existing model folder without ``overwrite``; with it, ``save_folder`` replaces it once the new one
    is complete."""
    if folder.exists() and not overwrite:
        raise InputError(f"{folder}: already exists; choose another --out or pass --overwrite")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.qu.train_structure", description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--out", help="run folder (default: the config's 'out'); the model goes to <out>/structure")
    parser.add_argument("--steps", type=int, help="override structure_steps")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing <out>/structure")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, {"out": args.out, "structure_steps": args.steps})
        folder = Path(config.out) / "structure"
        prepare_out(folder, args.overwrite)
        nets, history = train_structure(config, load_sources(config))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    save_folder(folder, STRUCTURE, config, nets, {"log": history})
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
