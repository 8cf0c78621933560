"""Benchmark: the Chartsias network's replicate padding inside vs outside bf16 autocast, on this CPU.

Run by hand, not by the test suite:

    .venv/bin/python Testing/Benchmarks/benchmark_autocast_padding.py [--repeats 5]

Autocast runs ``replication_pad2d`` in fp32, so padding inside it casts every bf16 activation
up, pads it, and lets the next convolution cast it back down. ``models/chartsias._Conv`` pads
outside autocast (in the activation's own dtype). This script times, in one process and
interleaved (A B A B ...) so that drift of a shared machine hits both alike, the library's
network against the same network with its padding put back inside autocast (the baseline):

- inference: a batch of 4 axial slices of 224x192 (the production path's CPU batch and the
  size of a cropped adult brain slice), 3 inputs -> FLAIR, ``inference_mode``;
- training: one step of the bundled recipe's shape (4 inputs + lesion channel, 4 outputs,
  batch 16 of 64x64 crops, the 3-part cost, backward, Adam), all inputs given.

Both under bf16 autocast with channels_last, as the product runs on CPUs with native bf16.
Reports the median seconds of each, the speed-up (baseline / library), and checks that the
inference outputs are bit-identical (padding only copies values) and the training gradients
equal to bf16 rounding (the padding's backward sums the border gradients in bf16 instead of fp32).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from MRSynthesisLib.models.chartsias import ChartsiasMIMO, _Conv  # noqa: E402
from MRSynthesisLib.models.losses_chartsias import chartsias_loss  # noqa: E402

MODALITIES = ["T1", "T1c", "T2", "FLAIR"]


def _pad_inside_autocast(conv: _Conv, x: torch.Tensor) -> torch.Tensor:
    """The baseline: ``_Conv.forward`` as it was, padding under whatever autocast is active."""
    if conv._pad[0]:
        x = F.pad(x, conv._pad, mode="replicate")
    return conv._conv_forward(x, conv.weight, conv.bias)


def with_padding_inside_autocast(network: torch.nn.Module) -> torch.nn.Module:
    baseline = copy.deepcopy(network)
    for module in baseline.modules():
        if isinstance(module, _Conv):
            module.forward = types.MethodType(_pad_inside_autocast, module)
    return baseline


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    generator = torch.Generator().manual_seed(0)

    torch.manual_seed(0)
    infer = ChartsiasMIMO(MODALITIES[:3], ["FLAIR"]).eval().to(memory_format=torch.channels_last)
    infer_base = with_padding_inside_autocast(infer)
    slices = {m: channels_last(torch.rand(4, 1, 224, 192, generator=generator)) for m in MODALITIES[:3]}

    def inference(net: torch.nn.Module) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        with torch.inference_mode(), autocast():
            out = net(slices, targets=["FLAIR"])["FLAIR"]
        return time.perf_counter() - start, out

    torch.manual_seed(1)
    train = ChartsiasMIMO(MODALITIES, MODALITIES, lesion_input=True).to(memory_format=torch.channels_last)
    train_base = with_padding_inside_autocast(train)
    crops = {m: channels_last(torch.rand(16, 1, 64, 64, generator=generator)) for m in MODALITIES}
    lesion = channels_last((torch.rand(16, 1, 64, 64, generator=generator) > 0.95).float())
    optimisers = {id(n): torch.optim.Adam(n.parameters(), lr=1e-3) for n in (train, train_base)}

    def step(net: torch.nn.Module) -> tuple[float, list[torch.Tensor]]:
        start = time.perf_counter()
        optimisers[id(net)].zero_grad(set_to_none=True)
        with autocast():
            loss, _ = chartsias_loss(net, crops, crops, lesion)
        loss.backward()
        grads = [p.grad.detach().clone() for p in net.parameters()]
        optimisers[id(net)].step()
        return time.perf_counter() - start, grads

    timings: dict[str, list[float]] = {k: [] for k in ("inference", "inference_baseline", "train", "train_baseline")}
    for repeat in range(args.repeats + 1):  # the first round warms up (oneDNN primitive caches) and is not timed
        t_new, out_new = inference(infer)
        t_old, out_old = inference(infer_base)
        if repeat == 0:
            assert torch.equal(out_new, out_old), "padding outside autocast changed the inference output"
            _, g_new = step(train)
            _, g_old = step(train_base)
            worst = max(float((a - b).abs().max() / (b.abs().max() + 1e-12)) for a, b in zip(g_new, g_old))
            continue
        timings["inference"].append(t_new)
        timings["inference_baseline"].append(t_old)
        timings["train"].append(step(train)[0])
        timings["train_baseline"].append(step(train_base)[0])

    median = {k: statistics.median(v) for k, v in timings.items()}
    print(f"threads {args.threads}, {args.repeats} interleaved repeats (medians)")
    print(f"inference, 4 slices 224x192, 3 inputs -> FLAIR: baseline {median['inference_baseline']:.3f} s, "
          f"library {median['inference']:.3f} s, speed-up {median['inference_baseline'] / median['inference']:.2f}x; "
          "outputs bit-identical")
    print(f"training step, batch 16 of 64x64, 4 inputs + lesion -> 4 outputs: baseline "
          f"{median['train_baseline']:.3f} s, library {median['train']:.3f} s, speed-up "
          f"{median['train_baseline'] / median['train']:.2f}x; largest gradient difference of the first step "
          f"{worst:.2e} of the tensor's largest gradient")


if __name__ == "__main__":
    main()
