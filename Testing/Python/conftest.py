"""Shared fixtures: a tiny generated multi-contrast subject, a tiny Chartsias model folder, and
a helper that runs the ``mrsynthesis`` command line as a real subprocess.

Everything here is generated on the fly (volumes of a few thousand voxels, a model of a few
thousand weights), so the suite passes on a fresh clone without ``/work/shared``. Tests that
use the real data in ``shared/data`` skip with a reason when it is absent (see ``DATA``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # so that `pytest Testing/Python` works from any folder
    sys.path.insert(0, str(REPO))

import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from MRSynthesisLib.cards import ModelCard, save_model  # noqa: E402
from MRSynthesisLib.models.chartsias import ChartsiasMIMO  # noqa: E402

DATA = REPO.parent / "shared" / "data"
NO_DATA = f"real data folder {DATA} is not available (it is not part of the repository)"

# numpy (z, y, x) shape of the tiny subject: ITK size 24 x 28 x 20
SHAPE = (20, 28, 24)
SPACING = (1.0, 1.0, 1.5)
ORIGIN = (-12.0, 14.0, -15.0)
LAS = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
LPS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
MODALITIES = ("T1", "T1c", "T2", "FLAIR")
# Mean intensity per tissue class (background, CSF, grey matter, white matter, lesion):
# each contrast orders the tissues differently, as real T1/T2/FLAIR do.
CONTRASTS = {
    "T1": (0.0, 250.0, 600.0, 850.0, 450.0),
    "T2": (0.0, 1500.0, 900.0, 650.0, 1300.0),
    "FLAIR": (0.0, 80.0, 420.0, 330.0, 700.0),
}


def phantom(shape=SHAPE, seed: int = 0) -> dict[str, np.ndarray]:
    """A brain-like ellipsoid: CSF ventricles inside white matter inside a grey-matter rim, a lesion blob.

    Returns float32 T1/T2/FLAIR (each with a little noise, background exactly 0), and uint8
    ``labels`` (0 background .. 4 lesion), ``brain`` and ``lesion`` masks, all (z, y, x).
    """
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(g ** 2 for g in grid))
    ventricles = np.sqrt((grid[0] / 0.35) ** 2 + (grid[1] / 0.2) ** 2 + (grid[2] / 0.25) ** 2)
    labels = np.zeros(shape, np.uint8)
    labels[r < 0.85] = 2  # grey matter
    labels[r < 0.65] = 3  # white matter
    labels[ventricles < 1.0] = 1  # CSF
    lesion_r = np.sqrt((grid[0] - 0.1) ** 2 + (grid[1] + 0.4) ** 2 + (grid[2] - 0.3) ** 2)
    lesion = (lesion_r < 0.2) & (labels == 3)
    labels[lesion] = 4
    brain = labels > 0
    volumes = {}
    for name, means in CONTRASTS.items():
        image = np.asarray(means, np.float32)[labels]
        image = image * (1.0 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
        volumes[name] = np.where(brain, np.maximum(image, 1.0), 0.0).astype(np.float32)
    volumes.update(labels=labels, brain=brain.astype(np.uint8), lesion=lesion.astype(np.uint8))
    return volumes


def to_image(array: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=LAS) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def write_image(array: np.ndarray, path: Path, **geometry) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(to_image(array, **geometry), str(path))
    return path


@dataclass
class Subject:
    folder: Path
    paths: dict[str, Path]  # T1, T2, FLAIR, lesion_mask, brain_mask
    arrays: dict[str, np.ndarray] = field(repr=False)

    def __getitem__(self, name: str) -> Path:
        return self.paths[name]


def make_subject(folder: Path, shape=SHAPE, seed: int = 0, suffix: str = ".nii.gz", **geometry) -> Subject:
    """Write the phantom's T1/T2/FLAIR (float32) and masks (uint8) to ``folder``."""
    arrays = phantom(shape, seed)
    names = {"T1": "T1", "T2": "T2", "FLAIR": "FLAIR", "lesion_mask": "lesion", "brain_mask": "brain"}
    paths = {key: write_image(arrays[source], folder / f"{key}{suffix}", **geometry) for key, source in names.items()}
    return Subject(folder, paths, arrays)


@pytest.fixture(autouse=True)
def keep_thread_count():
    """Training runs set torch's thread count (config 'threads'); every test gets its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def event_files_in_creation_order(monkeypatch):
    """TensorBoard reads a folder's event files in the order of their names, "events.out.tfevents.<whole seconds>.
    <host>.<pid>.<n>", n counting the writers of the process: a run and its resumption within one second (tests'
    tiny runs) were read in the wrong order once n went from 9 to 10, which a resumption in another process, seconds
    later, never meets. Each new event file here is named a second after the last."""
    try:
        from tensorboard.summary.writer import event_file_writer
    except ImportError:  # tensorboard is optional: no event files are written
        return
    clock = {"last": 0}

    def later() -> float:
        clock["last"] = max(int(time.time()), clock["last"] + 1)
        return float(clock["last"])

    monkeypatch.setattr(event_file_writer, "time", type("Clock", (), {"time": staticmethod(later)}))


@pytest.fixture
def full_disk(tmp_path) -> Iterator[Path]:
    """A folder on a real file system with 4 kB left: a 300 kB tmpfs, filled (root and ``mount`` only)."""
    folder = tmp_path / "full"
    folder.mkdir()
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk needs a tmpfs mount: root on Linux only")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        free = shutil.disk_usage(folder).free
        (folder / ".filler").write_bytes(bytes(free - 4096))
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def read_only(tmp_path) -> Iterator[Path]:
    """A folder nothing can be written into: its mode without write permission, or for root (whom the mode does
    not stop) a read-only tmpfs mounted there."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    mounted = False
    if os.name == "posix" and os.geteuid() == 0:
        if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs",
                                                            str(folder)], capture_output=True).returncode:
            pytest.skip("a read-only folder for root needs a read-only tmpfs mount, which failed here")
        mounted = True
    else:
        folder.chmod(0o555)
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        else:
            folder.chmod(0o755)


@pytest.fixture
def subject(tmp_path) -> Subject:
    """A tiny T1/T2/FLAIR subject with lesion and brain masks, NIfTI, LAS, in ``tmp_path/subject``."""
    return make_subject(tmp_path / "subject")


TINY_PARAMS = {"filters": [4, 8, 8], "latent_channels": 4}


def tiny_card(**changes) -> ModelCard:
    card = dict(
        name="tiny", architecture="chartsias2018", inputs=list(MODALITIES), outputs=list(MODALITIES),
        normalisation={"scheme": "mean_in_brain"}, params=dict(TINY_PARAMS), lesion_input=True, plane="axial",
        output_intensity={m: {"offset": 0.0, "scale": s} for m, s in zip(MODALITIES, (600.0, 700.0, 900.0, 400.0))},
        description="random weights, for tests only",
    )
    card.update(changes)
    return ModelCard(**card)


def make_tiny_model(folder: Path, seed: int = 0, **card_changes) -> Path:
    """Save a random-weight Chartsias model (filters (4, 8, 8), latent 4) with ``cards.save_model``."""
    card = tiny_card(**card_changes)
    torch.manual_seed(seed)
    network = ChartsiasMIMO(card.inputs, card.outputs, lesion_input=card.lesion_input, **card.params)
    return save_model(card, network, folder)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A read-only tiny model folder shared by the session (copy it with ``make_tiny_model`` to change it)."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


# --- the command line as a real subprocess ----------------------------------------------

@pytest.fixture(scope="session")
def cli_home(tmp_path_factory) -> Path:
    """An empty HOME, so that a developer's ~/.mrsynthesis/models does not leak into the tests."""
    return tmp_path_factory.mktemp("home")


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MRSYNTHESIS_MODEL_PATH", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def cli_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "MRSynthesisLib", *map(str, args)]


@pytest.fixture
def run_cli(cli_home):
    """``run_cli(*args, env={...}, timeout=120)`` runs ``python -m MRSynthesisLib`` in the repo root."""

    def run(*args: object, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(cli_command(*args), cwd=REPO, env=cli_env(cli_home, **(env or {})),
                              capture_output=True, text=True, timeout=timeout)

    return run


def run_cli_many(commands: dict[str, list[object]], home: Path, env: dict[str, str] | None = None,
                 parallel: int | None = None, timeout: float = 180) -> dict[str, subprocess.CompletedProcess]:
    """Run several independent command lines as concurrent subprocesses (each is a real, separate run).

    Each starts a fresh Python that imports torch (about 2 s); running them side by side keeps
    the suite fast on a small machine without sharing anything between the runs.
    """
    parallel = parallel or max(2, os.cpu_count() or 2)
    pending = list(commands.items())
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    results: dict[str, subprocess.CompletedProcess] = {}
    while pending or running:
        while pending and len(running) < parallel:
            key, args = pending.pop(0)
            process = subprocess.Popen(cli_command(*args), cwd=REPO, env=cli_env(home, **(env or {})),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            running[key] = (process, time.monotonic())
        key = next(iter(running))
        process, started = running.pop(key)
        try:
            out, err = process.communicate(timeout=max(1.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            err += f"\n[test harness: killed after {timeout} s]"
        results[key] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return results
