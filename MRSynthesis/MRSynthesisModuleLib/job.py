"""What one synthesis run asks of the command line, and the names of what it returns.

The panel, batch mode and the self-test all describe a run as a ``SynthesisJob`` and
hand its ``arguments()`` to ``python -m MRSynthesisLib``; nothing here computes anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

FILE_FORMAT = ".nrrd"  # what MRML storage nodes write and read without loss of geometry
# The choices of the command line's --device, --precision and --plane, in the order of the panel's combo boxes.
DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PLANES = ("axial", "coronal", "sagittal")


@dataclass
class SynthesisJob:
    """Inputs by modality (the first one's grid is the outputs' grid), targets, and options."""

    inputs: dict[str, str]  # modality -> file
    targets: list[str]
    out_dir: str
    model: Optional[str] = None  # a model folder or name; None: the bundled default
    device: str = "auto"
    lesion_mask: Optional[str] = None
    # the input modality whose scan the lesion mask was drawn on (--lesion-mask-on); None: the first input
    lesion_mask_on: Optional[str] = None
    brain_mask: Optional[str] = None  # None: the command line takes the inputs' foreground
    saliency_dir: Optional[str] = None
    saliency_references: dict[str, str] = field(default_factory=dict)  # target -> a real scan of it (paper's P3S)
    resample_to: Optional[str] = None  # an input modality: the others are resampled onto its grid
    native_spacing: bool = False  # synthesise on the inputs' voxels even where coarser than the model's
    register: bool = False  # register the other inputs rigidly onto the first (the command line's --register)
    precision: str = "auto"
    plane: Optional[str] = None  # 2D models: slice in this plane instead of the card's

    def arguments(self) -> list[str]:
        args = ["synthesize"]
        for modality, path in self.inputs.items():
            args += ["--input", f"{modality}={path}"]
        for target in self.targets:
            args += ["--target", target]
        args += ["--out", self.out_dir, "--format", FILE_FORMAT, "--device", self.device, "--precision",
                 self.precision, "--progress", "json"]
        if self.model:
            args += ["--model", self.model]
        if self.lesion_mask:
            args += ["--lesion-mask", self.lesion_mask]
        if self.lesion_mask_on:  # given without a mask, the command line says so
            args += ["--lesion-mask-on", self.lesion_mask_on]
        if self.brain_mask:
            args += ["--brain-mask", self.brain_mask]
        if self.plane:
            args += ["--plane", self.plane]
        if self.saliency_dir:
            args += ["--saliency-out", self.saliency_dir]
            for target, path in self.saliency_references.items():
                args += ["--saliency-reference", f"{target}={path}"]
        if self.resample_to:
            args += ["--resample-to", self.resample_to]
        if self.native_spacing:
            args.append("--native-spacing")
        if self.register:
            args.append("--register")
        return args

    def output_name(self, target: str) -> str:
        """E.g. "FLAIR synthetic (T1+T2)", or "FLAIR synthetic (T1+T2, lesion)" with a lesion mask."""
        used = "+".join(self.inputs) + (", lesion" if self.lesion_mask else "")
        return f"{target} synthetic ({used})"


def saliency_name(target: str, modality: str) -> str:
    return f"P3S {target} from {modality}"


def evaluate_arguments(synthetic: str, reference: str, plane: str, json_path: str) -> list[str]:
    """``evaluate`` with the off-plane consistency figures for a model that worked in ``plane``."""
    return ["evaluate", "--synthetic", synthetic, "--reference", reference, "--slice-plane", plane,
            "--json", json_path]


@dataclass
class SynthesisResult:
    """The files a finished run wrote, read from its "done" event."""

    outputs: dict[str, str]  # target -> file
    saliency: dict[str, dict[str, str]] = field(default_factory=dict)  # target -> input -> file
    contributions: dict[str, dict[str, float]] = field(default_factory=dict)  # target -> input -> share
    region_contributions: dict[str, dict[str, float]] = field(default_factory=dict)  # the same in the lesion
    device: str = ""
    saliency_objective: str = ""  # what the maps are the gradient of, per target

    @classmethod
    def from_event(cls, done: Mapping[str, object]) -> "SynthesisResult":
        return cls(outputs=dict(done.get("outputs", {})), saliency=dict(done.get("saliency", {})),
                   contributions=dict(done.get("contributions", {})),
                   region_contributions=dict(done.get("region_contributions", {})), device=str(done.get("device", "")),
                   saliency_objective=str(done.get("saliency_objective") or ""))


def off_plane_figures(metrics: Mapping[str, float]) -> dict[str, float]:
    """The ``offplane_*`` figures of ``evaluate --json``, without the prefix."""
    return {key[len("offplane_"):]: value for key, value in metrics.items() if key.startswith("offplane_")}


def input_path(folder: str, modality: str) -> str:
    return str(Path(folder) / f"input_{modality}{FILE_FORMAT}")
