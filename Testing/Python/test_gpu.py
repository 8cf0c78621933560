"""The CUDA paths: inference, saliency, every training loop and the command line on a GPU.

Each test compares the GPU with the CPU on the same generated data, so it checks numbers,
not only that nothing raised. They skip on machines without CUDA (CI and the development
machine); the project runs them on a lent GPU (see docs/results/gpu_checks.md).
TF32 is switched off for these tests (PyTorch lets cuDNN use it for fp32 convolutions by
default, which moved P3S gradients by up to 6 % of their maximum, measured on an H100): the
fp32 comparisons then check the GPU path itself to float32 rounding.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_subject, make_tiny_model
from MRSynthesisLib.cards import load_model
from MRSynthesisLib.logic import SynthesisLogic, SynthesisRequest
from MRSynthesisLib.metrics import ssim
from MRSynthesisLib.volume import read_volume
from test_models_3d import ARCHITECTURES, save_3d_model, volumes
from test_qu_training import tiny_config
from test_training3d import log_rows as rows3d
from test_training3d import run as run3d
from test_training_data import write_dataset
from test_training_run import log_rows as rows2d
from test_training_run import run as run2d
from test_training_run import tensors as tensors2d
from training.qu import train_generator as tg
from training.qu import train_structure as ts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture(autouse=True)
def exact_fp32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _relative_error(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float(np.abs(a[where] - b[where]).max() / (np.abs(b[where]).max() + 1e-12))


def _run(model, request_kwargs: dict, device: str, precision: str):
    return SynthesisLogic(model).run(SynthesisRequest(device=device, precision=precision, **request_kwargs))


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("auto", 2e-2)])
def test_slicewise_synthesis_and_saliency_on_cuda_match_the_cpu(tmp_path, precision, tolerance):
    subject = make_subject(tmp_path / "subject")
    model = load_model(make_tiny_model(tmp_path / "model"))
    inputs = {m: read_volume(subject[m]) for m in ("T1", "T2")}
    request = {"inputs": inputs, "targets": ["FLAIR"], "lesion_mask": read_volume(subject["lesion_mask"]),
               "saliency": True}
    cpu = _run(model, request, "cpu", "fp32")
    gpu = _run(model, request, "cuda", precision)
    assert gpu.device == "cuda" and cpu.device == "cpu"
    assert gpu.precision == ("float32" if precision == "fp32" else "bfloat16")
    brain = subject.arrays["brain"] > 0
    ours, theirs = gpu.outputs["FLAIR"].array, cpu.outputs["FLAIR"].array
    if precision == "fp32":
        assert _relative_error(ours, theirs, brain) < tolerance
    else:  # bf16 keeps 8 bits of mantissa: single voxels move by a few %, the image does not
        assert ssim(ours, theirs, brain) > 0.995
    if precision == "fp32":  # bf16 gradients differ voxel by voxel; their summary must still agree
        for name in inputs:
            ours, theirs = gpu.saliency["FLAIR"][name].array, cpu.saliency["FLAIR"][name].array
            assert _relative_error(ours, theirs, brain) < 10 * tolerance
    for name, share in cpu.contributions["FLAIR"].items():
        assert gpu.contributions["FLAIR"][name] == pytest.approx(share, abs=max(1e-3, tolerance))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_tiled_3d_synthesis_and_saliency_on_cuda_match_the_cpu(tmp_path, name):
    model = save_3d_model(tmp_path, name)
    vols, p = volumes()
    request = {"inputs": {"T1": vols["T1"], "T2": vols["T2"]}, "targets": ["FLAIR"], "saliency": True, "tile": 8}
    cpu = _run(model, request, "cpu", "fp32")
    gpu = _run(model, request, "cuda", "fp32")
    assert gpu.device == "cuda"
    brain = p["brain"] > 0
    assert _relative_error(gpu.outputs["FLAIR"].array, cpu.outputs["FLAIR"].array, brain) < 1e-4
    for n in ("T1", "T2"):
        assert _relative_error(gpu.saliency["FLAIR"][n].array, cpu.saliency["FLAIR"][n].array, brain) < 1e-3
    # a bigger tile (the GPU batches 2 tiles per step) gives the same volume: no seams on the GPU
    whole = _run(model, {**request, "saliency": False, "tile": 64}, "cuda", "fp32")
    assert _relative_error(whole.outputs["FLAIR"].array, gpu.outputs["FLAIR"].array, brain) < 1e-4


def _numbers(rows: list[dict[str, str]]) -> np.ndarray:
    return np.array([[float(v) for k, v in row.items() if k.startswith(("train_", "val_"))] for row in rows])


def test_2d_training_runs_on_cuda_and_follows_the_cpu_run(tmp_path, capsys, monkeypatch):
    sources = write_dataset(tmp_path / "data")
    with monkeypatch.context() as patch:  # the loop takes CUDA whenever it is present
        patch.setattr(torch.cuda, "is_available", lambda: False)
        run2d(sources, tmp_path / "cpu")
    assert "device cpu" in capsys.readouterr().out
    run2d(sources, tmp_path / "gpu")
    assert "device cuda" in capsys.readouterr().out
    first, second = tensors2d(tmp_path / "cpu"), tensors2d(tmp_path / "gpu")
    for key, value in first.items():
        if key.startswith("model."):
            np.testing.assert_allclose(second[key].numpy(), value.numpy(), rtol=0, atol=5e-3, err_msg=key)
    np.testing.assert_allclose(_numbers(rows2d(tmp_path / "gpu")), _numbers(rows2d(tmp_path / "cpu")), rtol=2e-2)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_3d_training_runs_on_cuda_and_follows_the_cpu_run(tmp_path, capsys, monkeypatch, architecture):
    sources = write_dataset(tmp_path / "data")
    with monkeypatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        run3d(sources, tmp_path / "cpu", architecture=architecture)
    assert "device cpu" in capsys.readouterr().out
    folder = run3d(sources, tmp_path / "gpu", architecture=architecture)
    assert "device cuda" in capsys.readouterr().out
    assert all(torch.isfinite(t).all() for t in load_model(folder).network.state_dict().values())
    np.testing.assert_allclose(_numbers(rows3d(tmp_path / "gpu")), _numbers(rows3d(tmp_path / "cpu")), rtol=2e-2)


def test_qu_training_stages_run_on_cuda(tmp_path):
    config = tiny_config(tmp_path, device="cuda")
    slices = ts.load_sources(config)
    structure, structure_log = ts.train_structure(config, slices, log=lambda line: None)
    generator, generator_log, _ = tg.train_generator(config, slices, log=lambda line: None)
    for nets in (structure, generator):
        for net in nets.values():
            assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in net.parameters())
    assert all(np.isfinite(v) for row in generator_log for v in row.values())


def test_cli_synthesises_on_cuda(tmp_path, run_cli):
    subject = make_subject(tmp_path / "subject")
    model = make_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    result = run_cli("synthesize", "--model", model, "--input", f"T1={subject['T1']}", "--input",
                     f"T2={subject['T2']}", "--target", "FLAIR", "--out", out, "--device", "cuda", "--progress", "json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert any('"device": "cuda"' in json.dumps(e) for e in events), events[-3:]
    assert read_volume(out / "FLAIR_synthetic.nii.gz").array.max() > 0
