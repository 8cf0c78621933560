"""Stage 2 of Qu et al. (Sec. 2.4-2.7): the conditional multimodal generator, its two
discriminators and the lesion label generation components.

``python -m training.qu.train_generator CONFIG.json [--out DIR] [--steps N] [--scheme S] [--max-minutes M]
[--overwrite]`` writes ``<out>/generator`` (networks, loss log, ``generation_check`` figures and
``samples.png``). Each step, on a batch of real slices per modality (drawn
independently: the method does not need registered training data) and a batch of structure
maps from real slices (their own lesion removed) fused with random real lesion labels:

1. the MRI discriminator D: loss_D,assist + loss_D + loss_D,class; in the same step, with
   its own Adam, the MRI code discriminator CD (Sec. 2.4, Fig. 5): ||CD(code_real) - 1||^2 +
   ||CD(code_g)||^2, real = EC(x_i) of the real slices, fake = EC_R(fuse(f, label));
2. the lesion components, on real slices only: loss_sv,l of Sec. 2.4 (Sec. 2.6/2.7: "only
   trained ... in reconstruction and translation training");
3. EC_R, EC and DC with one optimiser: the Sec. 2.4 costs (loss_G,assist, loss_sv,
   loss_cycle, loss_cycle,consistency, loss_code,consistency) plus the Sec. 2.6 costs (loss_G,
   loss_G,class, loss_sv,f, loss_sv,l through the frozen lesion components, loss_trans,
   loss_trans,code) and CD's ||CD(code_g) - 1||^2 ("code_adversarial"), weighted by
   ``generator_weights``.

CD is the paper's "MRI code discriminator", which "guide[s] the consistency of the two
training processes" (Sec. 2.4). Without it nothing tied EC_R's codes to EC's codes of real
MRIs, and a review of the 64-pixel run found EC_R giving EC's code of an all-zero image, which
DC decodes to a blank image (loss_trans and loss_trans,code are exactly zero there). The
paper shows CD (Fig. 5) but writes no cost for it; ours is the least-squares form of its
other discriminators.

Initialisation (Sec. 3.4): mean filter for EC_R, EC and DC; N(0, 0.2) for D, CD and the
lesion components (segmentors, not generator components).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from MRSynthesisLib.errors import InputError
from MRSynthesisLib.models import losses_qu as L
from MRSynthesisLib.models.qu_layers import mean_filter_init_, normal_init_

from .config import QuConfig, adam, load_config
from .data import LabelTransform, SliceSet, draw_label, label_bank
from .folders import GENERATOR, generator_networks, save_folder
from .generation_check import CHECK_KEYS, SAMPLES, generation_check
from .train_structure import load_sources, prepare_out, structure_pool


def _requires_grad(module: torch.nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def train_generator(config: QuConfig, slices: SliceSet, log=print,
                    max_minutes: float | None = None) -> tuple[dict, list[dict], np.ndarray]:
    """Train the generator stage; return its networks, the loss log and the lesion-label bank used.

    ``max_minutes`` ends training after the first step past that budget (logged as the last
    row): a lent GPU or a shared machine gives a time, not a step count.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    init = torch.Generator().manual_seed(config.seed)
    nets = generator_networks(config)
    gen, lesion, disc, code_disc = nets["generator"], nets["lesion"], nets["discriminator"], nets["code_discriminator"]
    # Sec. 3.4: "In generator components, the mean kernel filter parameter is used to initialize
    # the convolution kernel parameter. [...] In discriminator, we use a random normal initializer
    # with mean of 0 and standard deviation of 0.2, and the bias is 0." The lesion components are
    # segmentors, not generator components, so they get the discriminators' initialisation.
    mean_filter_init_(gen, init), normal_init_(lesion, init), normal_init_(disc, init), normal_init_(code_disc, init)
    device = torch.device(config.device)
    for net in nets.values():
        net.to(device)
    opt_g, opt_l, opt_d, opt_cd = adam(config, gen), adam(config, lesion), adam(config, disc), adam(config, code_disc)
    maps, masks = structure_pool(config, slices)
    bank = label_bank(slices)
    transform = LabelTransform()
    n_mod, size, w = len(config.modalities), config.size, config.generator_weights
    images = torch.from_numpy(slices.images)
    labels, labelled = torch.from_numpy(slices.labels.astype(np.int64)), torch.from_numpy(slices.labelled)
    history, started = [], time.time()
    for step in range(1, config.generator_steps + 1):
        indices = [rng.integers(len(slices), size=config.batch_size) for _ in range(n_mod)]
        real = [images[i, idx].unsqueeze(1).to(device) for i, idx in enumerate(indices)]
        real_labels = [labels[idx].to(device) for idx in indices]
        real_labelled = [labelled[idx].to(device) for idx in indices]
        pick = rng.integers(len(maps), size=config.batch_size)
        drawn = [draw_label(bank, masks[p], rng, transform, config.label_attempts) if len(bank) else None for p in pick]
        structure = torch.from_numpy(maps[pick]).unsqueeze(1).to(device)
        label = torch.from_numpy(np.stack([d if d is not None else np.zeros((size, size), np.uint8)
                                           for d in drawn]).astype(np.int64)).to(device)

        assist = L.assist_pass(gen, real)
        generation = L.generation_pass(gen, structure, label)

        d_adv, d_class = L.loss_generation_discriminator(disc, real, generation)
        loss_d = L.loss_assist_discriminator(disc, assist) + d_adv + d_class
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_cd = L.loss_mri_code_discriminator(code_disc, assist, generation)
        opt_cd.zero_grad()
        loss_cd.backward()
        opt_cd.step()

        loss_l = L.loss_lesion(lesion, real, real_labels, real_labelled, config.lesion_loss)
        opt_l.zero_grad()
        if loss_l.requires_grad:
            loss_l.backward()
            opt_l.step()

        _requires_grad(disc, False), _requires_grad(code_disc, False), _requires_grad(lesion, False)
        g_adv, g_class = L.loss_generation_adversarial(disc, generation)
        terms = {
            "assist_adversarial": L.loss_assist_adversarial(disc, assist),
            "reconstruction": L.loss_reconstruction(assist),
            "cycle": L.loss_cycle(assist) if n_mod > 1 else None,
            "cycle_consistency": L.loss_cycle_consistency(assist) if n_mod > 2 else None,
            "code_consistency": L.loss_code_consistency(assist) if n_mod > 1 else None,
            "adversarial": g_adv, "class": g_class,
            "structure": L.loss_structure_consistency(generation, config.beta, config.structure_loss),
            "lesion": L.loss_generated_lesion(lesion, generation, config.lesion_loss),
            "registration": L.loss_registration(generation) if n_mod > 1 else None,
            "semantic_consistency": L.loss_semantic_consistency(generation),
            "code_adversarial": L.loss_mri_code_adversarial(code_disc, generation),
        }
        terms = {k: v for k, v in terms.items() if v is not None}
        loss_g = sum(w[k] * v for k, v in terms.items())
        opt_g.zero_grad()
        loss_g.backward()
        # the norm before clipping is logged either way: a spike in it precedes a collapse
        grad_norm = torch.nn.utils.clip_grad_norm_(gen.parameters(), config.grad_clip or float("inf"))
        opt_g.step()
        _requires_grad(disc, True), _requires_grad(code_disc, True), _requires_grad(lesion, True)

        out_of_time = max_minutes is not None and time.time() - started > 60 * max_minutes
        if step % config.log_every == 0 or step == config.generator_steps or out_of_time:
            check = generation_check(gen, slices, config, count=8)
            row = {"step": step, "seconds": round(time.time() - started, 1), "loss_D_total": loss_d.item(),
                   "loss_CD_total": loss_cd.item(), "grad_norm_generator": grad_norm.item(),
                   "loss_lesion_real": loss_l.item(), **{k: v.item() for k, v in terms.items()},
                   **{f"generated_{k}": float(np.mean([c[k] for c in check.values()])) for k in CHECK_KEYS}}
            history.append(row)
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if out_of_time:
            log(f"time budget of {max_minutes} min reached after step {step}")
            break
    return {name: net.cpu() for name, net in nets.items()}, history, bank


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.qu.train_generator", description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--out", help="run folder (default: the config's 'out'); the model goes to <out>/generator")
    parser.add_argument("--steps", type=int, help="override generator_steps")
    parser.add_argument("--scheme", help="override the lesion scheme (single, shared_encoder, per_modality)")
    parser.add_argument("--max-minutes", type=float, help="stop after the first step past this wall-clock budget")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing <out>/generator")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, {"out": args.out, "generator_steps": args.steps, "scheme": args.scheme})
        folder = Path(config.out) / "generator"
        prepare_out(folder, args.overwrite)
        slices = load_sources(config)
        nets, history, bank = train_generator(config, slices, max_minutes=args.max_minutes)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        samples = Path(scratch) / SAMPLES
        check = generation_check(nets["generator"], slices, config, figure=samples)
        save_folder(folder, GENERATOR, config, nets, {"log": history, "label_bank_size": len(bank),
                                                      "generation_check": check}, files=[samples])
    print("generation check (generated vs real, in the brain): " + json.dumps(check))
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
