"""The Qu et al. training recipe: one JSON file for both stages, every key checked.

Unknown keys are errors (a misspelt key silently falling back to a default would train a
different model). Relative source folders are taken relative to the config file, ``out`` relative to the
working directory (as in ``training/config.py``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from MRSynthesisLib import modalities
from MRSynthesisLib.models.losses_qu import LESION_LOSSES, STRUCTURE_LOSSES
from MRSynthesisLib.models.qu_segmentors import SCHEMES
from MRSynthesisLib.models.qu_structure_vaegan import StructureVAE
from MRSynthesisLib.structure_maps import DEFAULT_BETA

from ..config_io import check_keys, load_config_file

# omega_{i,j} of Sec. 2.3 and 2.4-2.6: the paper names them and gives no values. All 1
# (an unweighted sum, the paper's default reading) except the two self-supervised
# reconstruction costs, which carry the content and are ~10x smaller than the adversarial
# ones at the start of training (measured on the MS slices at 64 pixels), so weight 10.
STRUCTURE_WEIGHTS = {"adversarial": 1.0, "normal": 1.0, "reconstruction": 10.0}
GENERATOR_WEIGHTS = {
    "assist_adversarial": 1.0, "reconstruction": 10.0, "cycle": 1.0, "cycle_consistency": 1.0,
    "code_consistency": 1.0, "adversarial": 1.0, "class": 1.0, "structure": 1.0, "lesion": 1.0,
    "registration": 1.0, "semantic_consistency": 1.0,
    # ||CD(code_g) - 1||^2, the MRI code discriminator's adversarial cost (Sec. 2.4, Fig. 5)
    "code_adversarial": 1.0,
}


@dataclass
class Source:
    """A folder of one subject's co-registered volumes; ``labelled``: its lesion mask is complete.

    Unlabelled sources (BraTS here has no tumour label) feed the structure maps and the MRI
    reconstruction/translation, never the lesion costs.
    """

    folder: str
    labelled: bool = True


@dataclass
class QuConfig:
    name: str
    sources: list[Source]
    modalities: list[str] = field(default_factory=lambda: ["T1", "T1c", "T2", "FLAIR"])
    out: str = "runs/qu"
    # data: axial slices resampled to size x size. The paper keeps BraTS slices 55-105 of 155
    # (the middle third, where the brain is large); we keep the same fraction of each volume's
    # axial extent, and drop slices whose brain covers less than min_brain_fraction.
    size: int = 64
    slice_range: list[float] = field(default_factory=lambda: [0.35, 0.68])
    min_brain_fraction: float = 0.1
    n_classes: int = 2  # lesion classes including background
    beta: float = DEFAULT_BETA
    # Algorithm 2's p: not given in the paper; ~6% of the image grows the mask ~2 pixels per side
    # at 64 pixels, so MASK's brain covers the outermost edge of Algorithm 1's map.
    mask_expand: int = 4
    # networks
    structure_width: int = 16
    structure_code_channels: int = 4
    mask_width: int = 16
    generator_width: int = 16
    generator_code_channels: int = 32
    discriminator_width: int = 16
    segmentor_width: int = 16
    scheme: str = "per_modality"  # Sec. 2.7; the paper's best (Table 1)
    lesion_loss: str = "l2"  # the paper's; "soft_dice" for rare lesions (see losses_qu.LESION_LOSSES)
    structure_loss: str = "l2"  # the paper's; "balanced" for sparse maps (see losses_qu.STRUCTURE_LOSSES)
    # optimisation (Sec. 3.4: Adam, lr 1e-4, beta1 0.5, no weight decay; batch 1)
    learning_rate: float = 1e-4
    beta1: float = 0.5
    # Not in the paper: clip the global gradient norm of EC_R, EC and DC (None = off). The
    # 64-pixel GPU runs collapsed to a constant output after a few hundred steps at lr 1e-4
    # to 2e-4 (docs/results/qu_generator_gpu); clipping is the usual guard for such a jump.
    grad_clip: float | None = None
    batch_size: int = 1
    structure_steps: int = 1000
    generator_steps: int = 1000
    structure_weights: dict[str, float] = field(default_factory=lambda: dict(STRUCTURE_WEIGHTS))
    generator_weights: dict[str, float] = field(default_factory=lambda: dict(GENERATOR_WEIGHTS))
    # Random lesion labels for training (Sec. 2.6 "randomly select the real lesion label"): a
    # drawn label outside the structure map's brain is redrawn up to this many times, then the
    # sample gets an empty label (no lesion), which is always inside.
    label_attempts: int = 10
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N": the full-resolution recipe needs a GPU
    threads: int | None = 1
    log_every: int = 50

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a non-empty folder name, got {self.name!r}")
        if not self.sources:
            raise ValueError("sources must list at least one subject folder")
        names = [modalities.canonical(n) for n in self.modalities]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"modalities must list distinct modalities, got {self.modalities}")
        self.modalities = names
        if self.size < StructureVAE.SIZE_MULTIPLE or self.size % StructureVAE.SIZE_MULTIPLE:
            raise ValueError(f"size must be a positive multiple of {StructureVAE.SIZE_MULTIPLE}")
        low, high = self.slice_range
        if not 0 <= low < high <= 1:
            raise ValueError(f"slice_range must be [low, high] with 0 <= low < high <= 1, got {self.slice_range}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.lesion_loss not in LESION_LOSSES:
            raise ValueError(f"lesion_loss must be one of {LESION_LOSSES}, got {self.lesion_loss!r}")
        if self.structure_loss not in STRUCTURE_LOSSES:
            raise ValueError(f"structure_loss must be one of {STRUCTURE_LOSSES}, got {self.structure_loss!r}")
        if self.n_classes < 2:
            raise ValueError("n_classes counts the background too and must be >= 2")
        for label, given, known in (("structure_weights", self.structure_weights, STRUCTURE_WEIGHTS),
                                    ("generator_weights", self.generator_weights, GENERATOR_WEIGHTS)):
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise ValueError(f"unknown {label} {unknown}; known: {sorted(known)}")
            setattr(self, label, {**known, **given})
        for name in ("batch_size", "structure_steps", "generator_steps", "label_attempts", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError("grad_clip must be > 0 (or null for no clipping)")
        if self.mask_expand < 0:
            raise ValueError("mask_expand must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path | None = None) -> QuConfig:
        check_keys(cls, data, custom=("sources",))
        values = dict(data)
        if not isinstance(values["sources"], list):  # a string would be read letter by letter
            raise ValueError(f"sources must be a list of folders or objects of keys, got {values['sources']!r}")
        sources = []
        for item in values.pop("sources"):
            if not isinstance(item, (str, dict)):
                raise ValueError(f"a source is a folder or an object of keys, got {item!r}")
            item = {"folder": item} if isinstance(item, str) else dict(item)
            check_keys(Source, item, "source")
            if base is not None and not os.path.isabs(item["folder"]):
                item["folder"] = str((base / item["folder"]).resolve())
            sources.append(Source(**item))
        config = cls(sources=sources, **values)
        config.validate()
        return config


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> QuConfig:
    """Read a JSON config; ``overrides`` (command-line options) replace top-level keys.

    Any problem is an ``InputError`` naming the file.
    """
    return load_config_file(path, overrides, lambda data, base: QuConfig.from_dict(data, base=base))


def adam(config: QuConfig, *modules: torch.nn.Module) -> torch.optim.Adam:
    """Sec. 3.4's optimiser: Adam, the config's learning rate (paper 1e-4), beta1 (paper 0.5), no weight decay."""
    params = [p for m in modules for p in m.parameters()]
    return torch.optim.Adam(params, lr=config.learning_rate, betas=(config.beta1, 0.999))
