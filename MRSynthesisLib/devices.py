"""Which device and precision a run uses; torch is imported only when a choice is made.

Kept apart from the runners so that the command line can offer the choices (``--help``,
argument checking) without the cost of importing torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _mps_available() -> bool:
    import torch

    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def choose_device(requested: str) -> tuple[torch.device, str | None]:
    """The device to run on, and why it differs from ``requested`` (None when it does not).

    ``auto`` prefers CUDA, then Apple's MPS, then the CPU. An explicit choice that is not
    available falls back to the CPU with the reason, rather than failing the run.
    """
    import torch

    if requested not in DEVICES:
        raise InputError(f"unknown device {requested!r}; choose one of {', '.join(DEVICES)}")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda"), None
    if requested in ("auto", "mps") and _mps_available():
        return torch.device("mps"), None
    if requested in ("cuda", "mps"):
        return torch.device("cpu"), (f"{requested.upper()} is not available in this PyTorch build or machine; "
                                     "using the CPU")
    return torch.device("cpu"), None


def _cpuinfo_words() -> set[str]:
    """The words of /proc/cpuinfo (flags, vendor); empty where it is absent (macOS, Windows)."""
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def cpu_bf16_flags() -> set[str]:
    """The CPU's bf16 features as Linux lists them: ``avx512_bf16`` (a bf16 dot product in the
    vector unit) and ``amx_bf16`` (AMX matrix tiles); empty where /proc/cpuinfo is absent."""
    return _cpuinfo_words() & {"avx512_bf16", "amx_bf16"}


def cpu_is_amd() -> bool:
    """True on an AMD CPU (``vendor_id: AuthenticAMD``), where AVX512-BF16 alone makes bf16 fast."""
    return "AuthenticAMD" in _cpuinfo_words()


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX): where training takes bf16 (a
    Chartsias step measured 1.37x faster with AVX512-BF16 alone on an Intel CPU, 2.7-2.8x on an AMD Zen 4,
    Testing/Benchmarks/benchmark_cpu_precision.py)."""
    return bool(cpu_bf16_flags())


def cpu_bf16_inference_is_faster() -> bool:
    """True on the CPUs where bf16 inference was measured faster than fp32 for every network
    (docs/results/benchmark_cpu_precision.md): those with AMX bf16 tiles (1.8-3.2x), and AMD CPUs
    with AVX512-BF16 (a Zen 4: 1.8-2.0x; a bf16 matrix multiply there ran 2.2-3.7x as fast as fp32). Not
    an Intel CPU with AVX512-BF16 but no AMX (measured in a virtual machine that hides AMX; Cooper
    Lake was not measured): there every network's inference was 0.85-0.98x in bf16, a bf16 matrix
    multiply 0.56x as fast as fp32."""
    flags = cpu_bf16_flags()
    return "amx_bf16" in flags or ("avx512_bf16" in flags and cpu_is_amd())


def choose_precision(requested: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = plain fp32).

    ``auto`` is fp16 on CUDA (bf16 where the GPU supports it, which avoids fp16 overflow),
    fp16 on MPS, and on a CPU bf16 where it was measured faster than fp32 (AMX, or AMD's
    AVX512-BF16; ``cpu_bf16_inference_is_faster``), else fp32. bf16 training steps are taken on
    more CPUs (``training.loop.autocast_dtype``): Intel's AVX512-BF16 alone made the Chartsias step
    faster but no inference.
    """
    import torch

    if requested not in PRECISIONS:
        raise InputError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return None
    if requested == "bf16":
        return torch.bfloat16
    if requested == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_bf16_inference_is_faster() else None
