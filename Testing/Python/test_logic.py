"""SynthesisLogic in-process: validation, the slice-wise runner's exactness, lesion and brain masks,
progress and cancel, P3S saliency, device fallback and the out-of-memory fallback."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from torch import nn

from conftest import LAS, phantom
from MRSynthesisLib import devices, models
from MRSynthesisLib.cards import ModelCard, load_model, save_model
from MRSynthesisLib.devices import choose_device, choose_precision
from MRSynthesisLib.errors import Cancelled, InputError
from MRSynthesisLib.inference import RunSettings, _run_in_batches
from MRSynthesisLib.logic import SynthesisLogic, SynthesisRequest, model_grid
from MRSynthesisLib.preprocessing import foreground_mask
from MRSynthesisLib.volume import (
    Geometry,
    Volume,
    reordered,
    reoriented_onto,
    resample_to,
    training_axis_order,
)

# An asymmetric 3x3 kernel: a transposed or flipped slice gives a different result.
KERNEL = torch.tensor([[0.0, 1.0, 0.5], [2.0, -1.0, 0.0], [0.25, 0.0, 3.0]])
SAGITTAL = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # voxel i: P, j: I, k: L (orientation PIL)
# numpy axis to slice along, per plane, for each direction used below (see test_volume_io.test_axis_for)
PLANE_AXES = {LAS: {"axial": 0, "coronal": 1, "sagittal": 2}, SAGITTAL: {"axial": 1, "coronal": 2, "sagittal": 0}}


class Probe(nn.Module):
    """A test architecture whose outputs are known functions of its inputs.

    ``mode``: "copy" (every target = input ``source``), "copy_plus_zero" (the same, plus 0 x the
    other inputs, which stay in the autograd graph), "kernel" (``source`` correlated with
    ``KERNEL``, zero padding) or "lesion" (the lesion channel it receives). It records the batch
    shapes and lesion tensors it sees.
    """

    SIZE_MULTIPLE = 4

    def __init__(self, inputs, outputs, lesion_input=False, mode="copy", source="T1"):
        super().__init__()
        self.inputs, self.outputs, self.lesion_input = list(inputs), list(outputs), lesion_input
        self.mode, self.source = mode, source
        self.gain = nn.Parameter(torch.ones(1))
        self.calls: list[tuple[int, ...]] = []
        self.lesions: list[torch.Tensor | None] = []

    def forward(self, x, lesion=None, targets=None):
        first = next(iter(x.values()))
        self.calls.append(tuple(first.shape))
        self.lesions.append(lesion)
        assert first.shape[2] % self.SIZE_MULTIPLE == 0 and first.shape[3] % self.SIZE_MULTIPLE == 0
        if self.mode == "copy":
            y = x[self.source] * self.gain
        elif self.mode == "copy_plus_zero":
            y = x[self.source] * self.gain + 0.0 * sum(v for k, v in x.items() if k != self.source)
        elif self.mode == "kernel":
            y = F.conv2d(x[self.source], KERNEL.to(first)[None, None], padding=1) * self.gain
        elif self.mode == "lesion":
            y = (torch.zeros_like(first) if lesion is None else lesion) * self.gain
        else:
            raise ValueError(self.mode)
        return {t: y for t in (targets or self.outputs)}


@pytest.fixture(autouse=True, scope="module")
def probe_architecture():
    models.register("test_probe", Probe)
    yield
    models.ARCHITECTURES.pop("test_probe", None)


def probe(tmp_path: Path, mode="copy", source="T1", inputs=("T1", "T2", "FLAIR"), outputs=("T1c", "T2", "FLAIR"),
          scales=None, **card):
    scales = {"T1c": 500.0, "T2": 700.0, "FLAIR": 300.0} if scales is None else scales
    fields = dict(name=f"probe-{mode}", architecture="test_probe", inputs=list(inputs), outputs=list(outputs),
                  normalisation={"scheme": "mean_in_brain"}, params={"mode": mode, "source": source},
                  output_intensity={t: {"offset": 0.0, "scale": s} for t, s in scales.items() if t in outputs})
    fields.update(card)
    c = ModelCard(**fields)
    folder = save_model(c, models.build("test_probe", c.inputs, c.outputs, c.lesion_input, c.params),
                        tmp_path / f"probe-{mode}-{len(list(tmp_path.iterdir()))}")
    return load_model(folder)


def volumes(shape=(20, 28, 24), direction=LAS, pad=None, seed=0, sources=None):
    """The phantom as Volumes (optionally zero-padded so that the brain is off-centre in a larger grid)."""
    p = phantom(shape, seed)
    if pad is not None:
        p = {k: np.pad(v, pad) for k, v in p.items()}
    geometry = Geometry(tuple(reversed(p["T1"].shape)), (1.0, 1.2, 0.9), (5.0, -3.0, 8.0), direction)
    names = sources or {}
    vols = {k: Volume(p[k].astype(np.float32), geometry, names.get(k, f"/data/{k}.nii.gz"))
            for k in ("T1", "T2", "FLAIR", "lesion", "brain")}
    return vols, p


def expected_copy(array: np.ndarray, brain: np.ndarray, scale: float) -> np.ndarray:
    a = array.astype(np.float64)
    return np.where(brain, a / a[brain].mean() * scale, 0.0)


def run(model, inputs, targets, **options):
    options.setdefault("precision", "fp32")
    options.setdefault("device", "cpu")
    return SynthesisLogic(model).run(SynthesisRequest(inputs=inputs, targets=targets, **options))


# --- with the tiny Chartsias model --------------------------------------------------------

@pytest.fixture(scope="module")
def chartsias(tiny_model):
    return load_model(tiny_model)


def test_outputs_on_the_reference_grid_and_inputs_unchanged(chartsias):
    vols, p = volumes()
    inputs = {"T1": vols["T1"], "T2": vols["T2"], "FLAIR": vols["FLAIR"]}
    before = {k: v.array.copy() for k, v in vols.items()}
    result = run(chartsias, inputs, ["T1c", "T2"], lesion_mask=vols["lesion"], brain_mask=vols["brain"])
    assert list(result.outputs) == ["T1c", "T2"]
    for volume in result.outputs.values():
        assert volume.geometry == vols["T1"].geometry and volume.array.dtype == np.float32
        assert np.isfinite(volume.array).all()
        assert not np.shares_memory(volume.array, vols["T1"].array)
    for k, v in vols.items():
        np.testing.assert_array_equal(v.array, before[k])  # nothing was modified in place
    assert result.device == "cpu" and result.precision == "float32"
    assert result.saliency == {} and result.contributions == {} and result.saliency_objective is None


@pytest.mark.parametrize("order", ["ALS", "SLA", "ASL"])
def test_voxel_axes_stored_in_another_order_give_the_same_result(chartsias, order):
    """The models were trained on files whose axes run left-right, anterior-posterior, inferior-superior (LAS, LPS);
    one stored in another order (a sagittal acquisition's) is run in that order and its results put back, so a
    2D model no longer sees its slices turned (or, in the axial plane, slices cut across the head)."""
    vols, _ = volumes()
    inputs = {"T1": vols["T1"], "T2": vols["T2"]}
    stored = {n: reordered(v, order) for n, v in inputs.items()}
    assert stored["T1"].geometry.orientation() == order
    lesion = reordered(vols["lesion"], order)
    plain = run(chartsias, inputs, ["FLAIR"], lesion_mask=vols["lesion"], saliency=True)
    other = run(chartsias, stored, ["FLAIR"], lesion_mask=lesion, saliency=True)
    assert other.outputs["FLAIR"].geometry == stored["T1"].geometry  # the result is on the input's grid
    back = reoriented_onto(other.outputs["FLAIR"], vols["T1"].geometry)
    np.testing.assert_allclose(back.array, plain.outputs["FLAIR"].array, rtol=1e-5, atol=1e-5)
    for n in inputs:
        np.testing.assert_allclose(reoriented_onto(other.saliency["FLAIR"][n], vols["T1"].geometry).array,
                                   plain.saliency["FLAIR"][n].array, rtol=1e-4, atol=1e-6)


def test_an_input_with_data_over_part_of_the_brain_is_left_out_where_it_has_none(chartsias):
    """A slab or a smaller field of view is 0 outside it: fed as it was, those zeros read as a black brain."""
    vols, p = volumes()
    cut = p["T2"].copy()
    cut[12:] = 0  # no T2 above slice 11 (the axial slices the model runs on)
    partial = run(chartsias, {"T1": vols["T1"], "T2": vols["T2"].with_array(cut)}, ["FLAIR"])
    alone = run(chartsias, {"T1": vols["T1"]}, ["FLAIR"]).outputs["FLAIR"].array
    both = run(chartsias, {"T1": vols["T1"], "T2": vols["T2"]}, ["FLAIR"]).outputs["FLAIR"].array
    out = partial.outputs["FLAIR"].array
    np.testing.assert_allclose(out[12:], alone[12:], rtol=1e-5, atol=1e-5)  # T1's result where T2 has no data
    assert not np.allclose(out[:12], alone[:12]) and np.abs(out[12:] - both[12:]).max() > 1e-3
    brain = foreground_mask([p["T1"]])
    share = round(100 * np.count_nonzero(brain[12:]) / brain.sum())
    assert partial.notes == [f"/data/T2.nii.gz: holds no data (zeros) in {share} % of the brain, outside its field "
                             "of view or slab; synthesised there from T1 alone"]


def test_where_no_input_holds_data_nothing_is_synthesised(chartsias):
    vols, p = volumes()
    cut = p["T1"].copy()
    cut[12:] = 0
    result = run(chartsias, {"T1": vols["T1"].with_array(cut)}, ["FLAIR"], brain_mask=vols["brain"])
    assert not result.outputs["FLAIR"].array[12:].any() and result.outputs["FLAIR"].array[:12].any()
    assert result.notes[0].startswith("/data/T1.nii.gz: holds no data (zeros) in ")
    assert result.notes[0].endswith("nothing is synthesised there")


def test_a_model_that_cannot_leave_an_input_out_says_so(tmp_path):
    model = probe(tmp_path, "copy", source="T1")
    vols, p = volumes()
    cut = p["T2"].copy()
    cut[12:] = 0
    result = run(model, {"T1": vols["T1"], "T2": vols["T2"].with_array(cut)}, ["FLAIR"])
    assert result.notes == ["/data/T2.nii.gz: holds no data (zeros) in part of the brain; probe-copy cannot leave an "
                            "input out where it holds none, so the result there is unreliable (leave this input out, "
                            "or use a Chartsias model)"]


@pytest.mark.parametrize("subset", [s for r in (1, 2, 3) for s in itertools.combinations(("T1", "T2", "FLAIR"), r)])
def test_any_subset_of_inputs(chartsias, subset):
    vols, p = volumes()
    result = run(chartsias, {n: vols[n] for n in subset}, ["T1c"], precision="auto")
    out = result.outputs["T1c"]
    assert out.geometry == vols[subset[0]].geometry
    assert np.isfinite(out.array).all()
    assert (out.array[p["brain"] == 0] == 0).all()  # background zero
    assert "+".join(subset) in out.source


def test_subsets_give_different_outputs(chartsias):
    vols, _ = volumes()
    a = run(chartsias, {"T1": vols["T1"]}, ["FLAIR"]).outputs["FLAIR"].array
    b = run(chartsias, {"T1": vols["T1"], "T2": vols["T2"]}, ["FLAIR"]).outputs["FLAIR"].array
    assert not np.allclose(a, b)


def test_aliases_accepted(chartsias):
    vols, _ = volumes()
    canonical = run(chartsias, {"T1": vols["T1"], "T2": vols["T2"]}, ["FLAIR", "T1c"])
    aliased = run(chartsias, {"t1n": vols["T1"], "t2w": vols["T2"]}, ["t2f", "T1POST"])
    assert list(aliased.outputs) == ["FLAIR", "T1c"]
    for t in ("FLAIR", "T1c"):
        np.testing.assert_array_equal(aliased.outputs[t].array, canonical.outputs[t].array)


def test_background_is_zero_and_output_scale_follows_the_card(chartsias):
    vols, p = volumes()
    out = run(chartsias, {"T1": vols["T1"], "FLAIR": vols["FLAIR"]}, ["T2"]).outputs["T2"].array
    assert (out[p["brain"] == 0] == 0).all()
    assert (out >= 0).all()  # Chartsias decoders end in ReLU; the card's offset is 0


@pytest.mark.parametrize("device, word", [("cuda", "CUDA"), ("mps", "MPS")])
def test_unavailable_device_falls_back_to_cpu_with_a_note(chartsias, device, word):
    if device == "cuda" and torch.cuda.is_available() or device == "mps" and devices._mps_available():
        pytest.skip(f"{device} is available here")
    vols, _ = volumes()
    result = run(chartsias, {"T1": vols["T1"]}, ["T2"], device=device)
    assert result.device == "cpu"
    assert any(f"{word} is not available" in note and "using the CPU" in note for note in result.notes)


def test_device_and_precision_choices():
    assert choose_device("cpu") == (torch.device("cpu"), None)
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        choose_device("tpu")
    with pytest.raises(InputError, match="unknown precision 'int8'"):
        choose_precision("int8", torch.device("cpu"))
    assert choose_precision("fp32", torch.device("cpu")) is None
    assert choose_precision("bf16", torch.device("cpu")) is torch.bfloat16
    assert choose_precision("auto", torch.device("cpu")) is (
        torch.bfloat16 if devices.cpu_bf16_inference_is_faster() else None)


@pytest.mark.parametrize("flags, amd, inference, training", [
    (set(), False, None, None),
    (set(), True, None, None),  # an AMD CPU without bf16 (Zen 3)
    ({"avx512_bf16"}, False, None, torch.bfloat16),  # Intel: bf16 inference measured slower there, training faster
    ({"avx512_bf16"}, True, torch.bfloat16, torch.bfloat16),  # AMD Zen 4: both measured faster
    ({"avx512_bf16", "amx_bf16"}, False, torch.bfloat16, torch.bfloat16),
])
def test_auto_precision_on_cpu_follows_the_measured_bf16_features(monkeypatch, flags, amd, inference, training):
    from training.loop import autocast_dtype

    monkeypatch.setattr(devices, "cpu_bf16_flags", lambda: set(flags))
    monkeypatch.setattr(devices, "cpu_is_amd", lambda: amd)
    cpu = torch.device("cpu")
    assert choose_precision("auto", cpu) is inference
    assert autocast_dtype("auto", cpu) is training
    assert choose_precision("bf16", cpu) is torch.bfloat16 and autocast_dtype("fp32", cpu) is None  # asked: obeyed


def test_cpu_bf16_flags_and_vendor_read_whole_words(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("vendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) AuthenticAMDish\n"
                       "flags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16x avx512_fp16\n")
    real = devices.Path
    monkeypatch.setattr(devices, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real(p))
    assert devices.cpu_bf16_flags() == {"avx512_bf16"}  # a longer name that contains amx_bf16 is not it
    assert not devices.cpu_is_amd() and not devices.cpu_bf16_inference_is_faster()
    cpuinfo.write_text("vendor_id\t: AuthenticAMD\ncpu family\t: 25\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert devices.cpu_is_amd() and devices.cpu_bf16_inference_is_faster()
    monkeypatch.setattr(devices, "Path", lambda p: tmp_path / "absent")
    assert devices.cpu_bf16_flags() == set() and not devices.cpu_is_amd()


# --- exactness of the slice-wise runner, with test architectures ----------------------------

# Brain off-centre in a larger grid with odd sizes: the runner must crop, pad to multiples of 4,
# batch (3 slices, the last batch short) and undo all of it exactly.
PAD = ((3, 8), (9, 2), (7, 4))


@pytest.mark.parametrize("direction", [LAS, SAGITTAL], ids=["LAS", "sagittal-acquired"])
@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_identity_model_returns_the_normalised_then_denormalised_input(tmp_path, plane, direction):
    model = probe(tmp_path, "copy", source="T2")
    vols, p = volumes(shape=(17, 21, 19), direction=direction, pad=PAD)
    brain = p["brain"] > 0
    assert np.array_equal(foreground_mask([p["T1"], p["T2"], p["FLAIR"]]), brain)
    result = run(model, {"T1": vols["T1"], "T2": vols["T2"], "FLAIR": vols["FLAIR"]}, ["FLAIR", "T1c"],
                 plane=plane, batch_size=3)
    for target, scale in (("FLAIR", 300.0), ("T1c", 500.0)):
        np.testing.assert_allclose(result.outputs[target].array, expected_copy(p["T2"], brain, scale),
                                   rtol=1e-6, atol=1e-4)
    axis = PLANE_AXES[direction][plane]
    calls = model.network.calls
    slices_with_brain = int(np.count_nonzero(brain.any(axis=tuple(a for a in range(3) if a != axis))))
    assert sum(n for n, *_ in calls) == slices_with_brain  # only slices with brain were run
    assert all(n <= 3 for n, *_ in calls) and len(calls) == -(-slices_with_brain // 3)


@pytest.mark.parametrize("direction", [LAS, SAGITTAL], ids=["LAS", "sagittal-acquired"])
@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_slicewise_runner_is_exact_in_every_plane(tmp_path, plane, direction):
    """A 2D correlation with an asymmetric kernel, applied slice by slice along the plane's axis, to slices whose
    rows and columns are in the training data's axis order (a sagittal acquisition's axes are reordered first)."""
    model = probe(tmp_path, "kernel", source="T1")
    vols, p = volumes(shape=(17, 21, 19), direction=direction, pad=PAD)
    brain = p["brain"] > 0
    result = run(model, {"T1": vols["T1"], "T2": vols["T2"]}, ["FLAIR"], plane=plane, batch_size=3)
    normalised = vols["T1"].with_array(np.where(brain, p["T1"] / p["T1"][brain].astype(np.float64).mean(), 0.0))
    order = training_axis_order(vols["T1"].geometry)
    assert (order is None) == (direction == LAS)
    frame = normalised if order is None else reordered(normalised, order)  # the order the network sees
    axis = frame.geometry.axis_for(plane)
    filtered = ndi.correlate(np.moveaxis(frame.array, axis, 0), KERNEL.double().numpy()[None], mode="constant",
                             cval=0.0)
    back = reoriented_onto(frame.with_array(np.moveaxis(filtered, 0, axis)), vols["T1"].geometry).array
    np.testing.assert_allclose(result.outputs["FLAIR"].array, np.where(brain, back * 300.0, 0.0),
                               rtol=1e-5, atol=1e-3)
    # the network saw in-plane slices: (N, 1, H, W) with H, W from the two other axes (cropped, padded)
    in_plane = [frame.array.shape[a] for a in range(3) if a != axis]
    for _, channels, h, w in model.network.calls:
        assert channels == 1 and h % 4 == 0 and w % 4 == 0
        assert h <= in_plane[0] + 3 and w <= in_plane[1] + 3


def test_each_batch_runs_on_its_own_slices_brain(tmp_path):
    """Batches near the ends of the head run on smaller windows than the volume's box, on one grid."""
    model = probe(tmp_path, "kernel", source="T1")
    vols, p = volumes(shape=(40, 48, 44), pad=PAD)
    brain = p["brain"] > 0
    result = run(model, {"T1": vols["T1"], "T2": vols["T2"]}, ["FLAIR"], plane="axial", batch_size=4)
    normalised = np.where(brain, p["T1"] / p["T1"][brain].astype(np.float64).mean(), 0.0)
    filtered = ndi.correlate(normalised, KERNEL.double().numpy()[None], mode="constant", cval=0.0)
    np.testing.assert_allclose(result.outputs["FLAIR"].array, np.where(brain, filtered * 300.0, 0.0),
                               rtol=1e-5, atol=1e-3)
    active = [k for k in range(brain.shape[0]) if brain[k].any()]
    areas = [h * w for _, _, h, w in model.network.calls]
    for (n, _, h, w), start in zip(model.network.calls, range(0, len(active), 4)):
        rows, cols = np.nonzero(brain[active[start:start + n]].any(axis=0))
        # the batch's own brain plus the 8-voxel margin, snapped outwards to the multiple of 4
        assert np.ptp(rows) + 1 + 16 <= h <= np.ptp(rows) + 1 + 16 + 6
        assert np.ptp(cols) + 1 + 16 <= w <= np.ptp(cols) + 1 + 16 + 6
    assert areas[0] < 0.75 * max(areas) and areas[-1] < 0.75 * max(areas)


def test_card_plane_is_the_default(tmp_path):
    vols, p = volumes(shape=(17, 21, 19), pad=PAD)
    inputs = {"T1": vols["T1"]}
    coronal_card = probe(tmp_path, "kernel", plane="coronal")
    by_card = run(coronal_card, inputs, ["FLAIR"]).outputs["FLAIR"].array
    by_request = run(probe(tmp_path, "kernel"), inputs, ["FLAIR"], plane="coronal").outputs["FLAIR"].array
    axial = run(probe(tmp_path, "kernel"), inputs, ["FLAIR"]).outputs["FLAIR"].array
    np.testing.assert_array_equal(by_card, by_request)
    assert not np.allclose(by_card, axial)


def test_output_without_intensity_statistics_stays_normalised(tmp_path):
    model = probe(tmp_path, "copy", scales={})
    vols, p = volumes()
    brain = p["brain"] > 0
    out = run(model, {"T1": vols["T1"]}, ["T2"]).outputs["T2"].array
    np.testing.assert_allclose(out, expected_copy(p["T1"], brain, 1.0), rtol=1e-6, atol=1e-6)


def test_spikes_in_an_input_are_replaced_before_its_normalisation(tmp_path):
    """200 hot voxels of a real T2 took FLAIR's SSIM from 0.69 to 0.20 (spikes.py): the network sees the
    input with its spikes replaced by their neighbours' median, and a note says so."""
    model = probe(tmp_path, "copy", source="T2")
    vols, p = volumes()
    brain = p["brain"] > 0
    bad = p["T2"].copy()
    points = [(10, 14, 12), (6, 9, 15)]
    bad[points[0]], bad[points[1]] = 1e8, -1e8  # the negative one alone would read as a shifted image
    half = 2
    expected = bad.copy()
    for point in points:
        window = tuple(slice(c - half, c + half + 1) for c in point)
        expected[point] = np.median([v for v in bad[window].ravel() if abs(v) < 1e7])
    result = run(model, {"T1": vols["T1"], "T2": vols["T2"].with_array(bad)}, ["FLAIR"])
    np.testing.assert_allclose(result.outputs["FLAIR"].array, expected_copy(expected, brain, 300.0),
                               rtol=1e-5, atol=1e-3)
    assert any(n.startswith("/data/T2.nii.gz: 2 isolated voxels far outside its range") for n in result.notes)


# --- lesion and brain masks -----------------------------------------------------------------

@pytest.mark.parametrize("plane", ["axial", "sagittal"])
def test_lesion_mask_reaches_the_network(tmp_path, plane):
    model = probe(tmp_path, "lesion", lesion_input=True, scales={})
    vols, p = volumes(shape=(17, 21, 19), pad=PAD)
    result = run(model, {"T1": vols["T1"], "FLAIR": vols["FLAIR"]}, ["T2"], lesion_mask=vols["lesion"], plane=plane)
    assert p["lesion"].sum() > 10
    np.testing.assert_array_equal(result.outputs["T2"].array, p["lesion"].astype(np.float32))
    without = probe(tmp_path, "lesion", lesion_input=True, scales={})
    out = run(without, {"T1": vols["T1"]}, ["T2"]).outputs["T2"].array
    assert not out.any() and all(les is None for les in without.network.lesions)


def test_lesion_outside_the_brain_is_dropped(tmp_path):
    model = probe(tmp_path, "lesion", lesion_input=True, scales={})
    vols, p = volumes()
    lesion = p["lesion"].copy()
    lesion[0, 0, 0] = 1  # background corner
    out = run(model, {"T1": vols["T1"]}, ["T2"], lesion_mask=vols["lesion"].with_array(lesion.astype(np.float32)))
    np.testing.assert_array_equal(out.outputs["T2"].array, p["lesion"].astype(np.float32))
    total = int(lesion.sum())
    assert any(f"1 of its {total} voxels lie outside the brain" in n for n in out.notes), out.notes  # said
    corner = np.zeros_like(lesion)
    corner[0, 0, 0] = 1  # painted off the brain altogether
    none = run(model, {"T1": vols["T1"]}, ["T2"], lesion_mask=vols["lesion"].with_array(corner.astype(np.float32)))
    assert not none.outputs["T2"].array.any()
    assert any("1 of its 1 voxels lie outside the brain" in n and "the result has no lesion" in n for n in none.notes)
    empty = run(model, {"T1": vols["T1"]}, ["T2"], lesion_mask=vols["lesion"].with_array(np.zeros_like(corner, float)))
    assert not empty.outputs["T2"].array.any()  # a wrong file or label went unseen before
    assert [n for n in empty.notes if "lesion" in n] == [f"lesion mask {vols['lesion'].source}: is empty; the result "
                                                         "has no lesion"]
    assert not [n for n in out.notes if "is empty" in n]
    # on the user's voxels even where the network runs on finer ones (here 2 x 2 of them per input voxel)
    fine = probe(tmp_path, "lesion", lesion_input=True, scales={}, spacing_mm=[0.5, 0.6, 0.9])
    coarse = run(fine, {"T1": vols["T1"]}, ["T2"], lesion_mask=vols["lesion"].with_array(lesion.astype(np.float32)))
    assert any(f"1 of its {total} voxels lie outside the brain" in n for n in coarse.notes), coarse.notes


def test_an_oblique_grid_is_said_beyond_the_checked_tilt(tmp_path):
    model = probe(tmp_path)

    def notes(degrees: float) -> list[str]:
        c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        nod = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ np.reshape(LAS, (3, 3))  # tilts the slices out of axial
        vols, _ = volumes(direction=tuple(float(v) for v in nod.ravel()))
        return run(model, {"T1": vols["T1"]}, ["T2"]).notes

    assert not any("oblique" in n for n in notes(15))
    assert any("/data/T1.nii.gz: its grid is oblique, its slices lie 30 degrees from the axial plane" in n
               for n in notes(30))


def test_lesion_mask_needs_a_model_with_a_lesion_channel(tmp_path):
    model = probe(tmp_path, "copy", lesion_input=False)
    vols, _ = volumes()
    with pytest.raises(InputError, match="not trained with a lesion channel"):
        run(model, {"T1": vols["T1"]}, ["T2"], lesion_mask=vols["lesion"])
    assert model.network.calls == []


def test_lesion_mask_must_be_binary(tmp_path):
    model = probe(tmp_path, "lesion", lesion_input=True)
    vols, p = volumes()
    labels = vols["lesion"].with_array(p["labels"].astype(np.float32), source="/data/aseg.nii.gz")
    with pytest.raises(InputError, match="aseg.nii.gz: a mask must hold 0 and one whole positive value"):
        run(model, {"T1": vols["T1"]}, ["T2"], lesion_mask=labels)


def test_brain_mask_option(tmp_path):
    model = probe(tmp_path, "copy", source="T1")
    vols, p = volumes()
    box = np.zeros(p["T1"].shape, bool)
    box[6:14, 8:20, 5:17] = True
    assert (p["brain"][box] > 0).all()
    out = run(model, {"T1": vols["T1"], "T2": vols["T2"]}, ["FLAIR"],
              brain_mask=vols["brain"].with_array(box.astype(np.float32))).outputs["FLAIR"].array
    np.testing.assert_allclose(out, expected_copy(p["T1"], box, 300.0), rtol=1e-6, atol=1e-4)
    assert not out[~box].any()


def test_a_brain_mask_far_smaller_than_the_foreground_is_said(tmp_path):
    """A lesion mask given as the brain mask normalises the inputs by their mean in the lesion: said."""
    model = probe(tmp_path, "copy", source="T1")
    vols, p = volumes()
    inputs = {"T1": vols["T1"], "T2": vols["T2"]}
    lesion = vols["lesion"].with_array(p["lesion"].astype(np.float32), source="/data/lesion.nii.gz")
    share = np.count_nonzero(p["lesion"]) / np.count_nonzero(p["brain"])
    assert share < 0.2
    notes = run(model, inputs, ["FLAIR"], brain_mask=lesion).notes
    assert notes == [f"brain mask /data/lesion.nii.gz: covers {100 * share:.0f} % of the inputs' foreground, less "
                     "than any brain does: only its voxels are synthesised, with the inputs normalised by their mean "
                     "there; if it is a lesion or region mask, give it as --lesion-mask or --saliency-region"]
    assert run(model, inputs, ["FLAIR"], brain_mask=vols["brain"]).notes == []  # the brain itself
    half = vols["brain"].with_array(np.where(np.arange(p["T1"].shape[0])[:, None, None] < 10, p["brain"], 0))
    assert run(model, inputs, ["FLAIR"], brain_mask=half).notes == []  # a brain inside a head with its skull on


def test_brain_mask_errors(tmp_path):
    model = probe(tmp_path)
    vols, p = volumes()
    empty = vols["brain"].with_array(np.zeros(p["T1"].shape, np.float32), source="/data/empty_brain.nii.gz")
    with pytest.raises(InputError, match="empty_brain.nii.gz: the brain mask is empty"):
        run(model, {"T1": vols["T1"]}, ["T2"], brain_mask=empty)
    soft = vols["brain"].with_array(p["brain"] * 0.5, source="/data/soft.nii.gz")
    with pytest.raises(InputError, match="soft.nii.gz: a mask must hold 0 and one whole positive value"):
        run(model, {"T1": vols["T1"]}, ["T2"], brain_mask=soft)


# --- refusals ---------------------------------------------------------------------------------

def test_one_scan_given_as_two_modalities_is_refused(tmp_path):
    """A T2 file copied over the FLAIR's name: other paths, the same voxels."""
    model = probe(tmp_path)
    vols, p = volumes()
    copy = vols["T2"].with_array(p["T2"].astype(np.float32).copy(), source="/data/FLAIR.nii.gz")
    with pytest.raises(InputError) as error:
        run(model, {"T1": vols["T1"], "T2": vols["T2"], "FLAIR": copy}, ["T1c"])
    assert str(error.value) == ("/data/FLAIR.nii.gz (given as FLAIR) holds the same voxels as /data/T2.nii.gz "
                                "(given as T2): one of them is the wrong file")
    run(model, {"T1": vols["T1"], "T2": vols["T2"], "FLAIR": vols["FLAIR"]}, ["T1c"])


def test_an_input_whose_header_says_it_is_an_mrsynthesis_output_is_said(tmp_path):
    """A synthetic T2 taken for an acquired one (e.g. a panel output chosen as the next run's input)."""
    model = probe(tmp_path)
    vols, _ = volumes()
    synthetic = dataclasses.replace(vols["T2"], description="MRSynthesis synthetic T2 from T1 (tiny)")
    notes = run(model, {"T1": vols["T1"], "T2": synthetic}, ["FLAIR"]).notes
    said = [n for n in notes if "its header says" in n]
    assert said == ['/data/T2.nii.gz: its header says "MRSynthesis synthetic T2 from T1 (tiny)": not an acquired '
                    "scan but made from others, so it holds nothing they do not and weighs on the result as if it "
                    "did (a T2 synthesised from T1, given with that T1, lowered the synthetic FLAIR's SSIM from "
                    "0.685 / 0.630 to 0.676 / 0.608 on the shared MS subjects, the bundled model); give the "
                    "acquired scan, or leave it out"]
    other = dataclasses.replace(vols["T2"], description="FSL5.0")  # another tool's header line says nothing
    assert not any("its header says" in n for n in run(model, {"T1": vols["T1"], "T2": other}, ["FLAIR"]).notes)


def test_all_required_refuses_a_subset(tmp_path):
    model = probe(tmp_path, missing_inputs="all_required")
    vols, _ = volumes()
    with pytest.raises(InputError, match="needs every input it was trained with; missing FLAIR"):
        run(model, {"T1": vols["T1"], "T2": vols["T2"]}, ["T1c"])
    run(model, {"T1": vols["T1"], "T2": vols["T2"], "FLAIR": vols["FLAIR"]}, ["T1c"])


@pytest.mark.parametrize("inputs, targets, words", [
    ({"T1": "T1"}, ["T3"], "target: unknown modality 'T3'"),
    ({"T1": "T1"}, ["DWI"], "cannot produce DWI; it produces T1c, T2, FLAIR"),
    ({"T1": "T1"}, [], "no target given"),
    ({"T1": "T1"}, ["T2", "t2w"], "a target is repeated"),
    ({"T1": "T1", "DWI": "T2"}, ["FLAIR"], "does not accept DWI (/data/T2.nii.gz); it accepts T1, T2, FLAIR"),
    ({"T1": "T1", "PDW": "T2"}, ["FLAIR"], "does not accept PD"),
    ({"XYZ": "T1"}, ["FLAIR"], "input /data/T1.nii.gz: unknown modality 'XYZ'"),
    ({"T1": "T1", "t1n": "T2"}, ["FLAIR"], "are both T1; give each modality once"),
    ({}, ["FLAIR"], "no inputs given"),
])
def test_modality_errors(tmp_path, inputs, targets, words):
    model = probe(tmp_path)
    vols, _ = volumes()
    with pytest.raises(InputError) as error:
        run(model, {name: vols[source] for name, source in inputs.items()}, targets)
    assert words in str(error.value)


@pytest.mark.parametrize("fill, words", [(0.0, "is empty"), (3.0, "is constant"), (np.nan, "NaN")])
def test_bad_values_are_refused_naming_the_file(tmp_path, fill, words):
    model = probe(tmp_path)
    vols, p = volumes()
    bad = vols["T2"].with_array(np.full(p["T2"].shape, fill, np.float32), source="/data/bad_T2.nii.gz")
    with pytest.raises(InputError, match=words) as error:
        run(model, {"T1": vols["T1"], "T2": bad}, ["FLAIR"])
    assert "/data/bad_T2.nii.gz" in str(error.value)


def test_nan_where_an_input_holds_no_data_is_taken_as_no_data(chartsias):
    """SPM's reslicing writes NaN outside an image's field of view: as 0 it is what coverage leaves the input out
    of, and the run says so (NaN was refused before; ITK alone reads it as 0 without a word)."""
    vols, p = volumes()
    t2 = p["T2"].astype(np.float32).copy()
    t2[14:] = np.nan  # beyond the field of view of a resliced T2: the top of the brain
    given = vols["T2"].with_array(t2, source="/data/rT2.nii.gz")
    result = run(chartsias, {"T1": vols["T1"], "T2": given}, ["FLAIR"])
    count = int(np.count_nonzero(np.isnan(t2)))
    assert result.notes[0] == (f"/data/rT2.nii.gz: {count} voxels ({100 * count / t2.size:.2g} % of the image) are "
                               "NaN (no value), as some tools (SPM's reslicing, for one) write where an image holds "
                               "no data; taken as 0, no data")
    assert any(n.startswith("/data/rT2.nii.gz: holds no data (zeros) in ") for n in result.notes)
    zeroed = run(chartsias, {"T1": vols["T1"], "T2": given.with_array(np.nan_to_num(t2))}, ["FLAIR"])
    np.testing.assert_array_equal(result.outputs["FLAIR"].array, zeroed.outputs["FLAIR"].array)


def test_grid_mismatch_names_both_files_and_resample_fixes_it(tmp_path):
    model = probe(tmp_path, "copy", source="T1")
    vols, p = volumes()
    g = vols["T2"].geometry
    moved = Geometry(g.size, g.spacing, (g.origin[0] + 2.0, g.origin[1], g.origin[2]), g.direction)
    t2 = Volume(vols["T2"].array, moved, "/data/T2_moved.nii.gz")
    with pytest.raises(InputError) as error:
        run(model, {"T1": vols["T1"], "T2": t2}, ["FLAIR"])
    message = str(error.value)
    assert "/data/T2_moved.nii.gz" in message and "/data/T1.nii.gz" in message and "origin" in message
    result = run(model, {"T1": vols["T1"], "T2": t2}, ["FLAIR"], resample=True)
    assert result.outputs["FLAIR"].geometry == vols["T1"].geometry
    # scanner coordinates carry no correction for motion between the scans: said, with what corrects it
    assert ("/data/T2_moved.nii.gz: resampled onto the grid of /data/T1.nii.gz by scanner coordinates only, so any "
            "motion of the patient between the two scans stays in it") in " ".join(result.notes)
    assert not [n for n in run(model, {"T1": vols["T1"], "T2": t2}, ["FLAIR"], resample=True, register=True).notes
                if "by scanner coordinates" in n]
    same = run(model, {"T1": vols["T1"], "T2": vols["T2"]}, ["FLAIR"], resample=True).notes
    assert not [n for n in same if "by scanner coordinates" in n]  # nothing to resample: nothing said
    onto_t2 = run(model, {"T1": vols["T1"], "T2": t2}, ["FLAIR"], resample=True, reference="t2w")
    assert onto_t2.outputs["FLAIR"].geometry == moved


# --- progress and cancel ----------------------------------------------------------------------

def test_progress_is_monotone_and_ends_at_one(tmp_path):
    model = probe(tmp_path)
    vols, _ = volumes()
    seen = []
    SynthesisLogic(model, progress=lambda f, m: seen.append((f, m))).run(
        SynthesisRequest({"T1": vols["T1"]}, ["T2"], batch_size=4, precision="fp32"))
    fractions = [f for f, _ in seen]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and len(fractions) >= 5
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))
    assert all(0.0 <= f <= 1.0 for f in fractions) and all(isinstance(m, str) and m for _, m in seen)


def test_cancel_stops_before_the_next_batch(tmp_path):
    model = probe(tmp_path)
    vols, _ = volumes()
    state = {"cancel": False}

    def progress(fraction, message):
        if fraction > 0:
            state["cancel"] = True  # the user presses Cancel after the first batch

    logic = SynthesisLogic(model, progress=progress, cancelled=lambda: state["cancel"])
    with pytest.raises(Cancelled):
        logic.run(SynthesisRequest({"T1": vols["T1"]}, ["T2"], batch_size=2, precision="fp32"))
    assert len(model.network.calls) == 1  # no further batch ran


def test_cancel_before_start_runs_nothing(tmp_path):
    model = probe(tmp_path)
    vols, _ = volumes()
    with pytest.raises(Cancelled):
        SynthesisLogic(model, cancelled=lambda: True).run(SynthesisRequest({"T1": vols["T1"]}, ["T2"]))
    assert model.network.calls == []


# --- saliency ---------------------------------------------------------------------------------

def test_saliency_maps_with_chartsias(chartsias):
    vols, p = volumes()
    brain = p["brain"] > 0
    inputs = {"T1": vols["T1"], "T2": vols["T2"], "FLAIR": vols["FLAIR"]}
    result = run(chartsias, inputs, ["T1c", "T2"], saliency=True)
    assert list(result.saliency) == ["T1c", "T2"]
    for target in ("T1c", "T2"):
        maps = result.saliency[target]
        assert list(maps) == ["T1", "T2", "FLAIR"]
        for volume in maps.values():
            assert volume.geometry == vols["T1"].geometry
            assert (volume.array >= 0).all() and not volume.array[~brain].any()
        assert any(v.array.any() for v in maps.values())
        shares = result.contributions[target]
        assert set(shares) == {"T1", "T2", "FLAIR"} and all(s >= 0 for s in shares.values())
        assert sum(shares.values()) == pytest.approx(1.0)
    assert "target-free" in result.saliency_objective
    plain = run(chartsias, inputs, ["T1c", "T2"])
    for t in plain.outputs:  # asking for saliency does not change the outputs
        np.testing.assert_allclose(result.outputs[t].array, plain.outputs[t].array, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["copy_plus_zero", "copy"])
def test_saliency_of_an_unused_input_is_zero(tmp_path, mode):
    """Output depends on T1 only: T2's map is 0 (whether or not T2 is in the autograd graph)."""
    model = probe(tmp_path, mode, source="T1")
    vols, p = volumes()
    brain = p["brain"] > 0
    result = run(model, {"T1": vols["T1"], "T2": vols["T2"]}, ["FLAIR"], saliency=True)
    maps = result.saliency["FLAIR"]
    assert not maps["T2"].array.any()
    # d sum(T1n in brain) / d T1n = 1 in the brain, 0 outside
    np.testing.assert_array_equal(maps["T1"].array, brain.astype(np.float32))
    assert result.contributions["FLAIR"] == {"T1": 1.0, "T2": 0.0}


def test_saliency_with_a_reference_uses_the_prediction_error(tmp_path):
    model = probe(tmp_path, "copy", source="T1")
    vols, p = volumes()
    brain = p["brain"] > 0
    inputs = {"T1": vols["T1"], "T2": vols["T2"]}
    result = run(model, inputs, ["FLAIR"], saliency=True, saliency_references={"t2f": vols["FLAIR"]})
    assert "reference" in result.saliency_objective and "Wei" in result.saliency_objective
    norm = {k: np.where(brain, p[k] / p[k][brain].astype(np.float64).mean(), 0.0) for k in ("T1", "FLAIR")}
    # eq. 3: d ||T1n - FLAIRn||_2 (in brain) / d T1n = (T1n - FLAIRn) / ||T1n - FLAIRn|| in the brain
    error = norm["T1"] - norm["FLAIR"]
    np.testing.assert_allclose(result.saliency["FLAIR"]["T1"].array, np.abs(error) / np.sqrt((error ** 2).sum()),
                               rtol=1e-4, atol=1e-7)
    assert not result.saliency["FLAIR"]["T2"].array.any()
    # when the reference equals the prediction the error gradient vanishes
    perfect = run(model, inputs, ["FLAIR"], saliency=True, saliency_references={"FLAIR": vols["T1"]})
    assert not perfect.saliency["FLAIR"]["T1"].array.any()


def test_saliency_reference_on_another_grid_is_refused(tmp_path):
    model = probe(tmp_path)
    vols, _ = volumes()
    g = vols["FLAIR"].geometry
    ref = Volume(vols["FLAIR"].array, Geometry(g.size, (2.0, 2.0, 2.0), g.origin, g.direction), "/data/ref.nii.gz")
    with pytest.raises(InputError, match="ref.nii.gz and /data/T1.nii.gz are on different grids"):
        run(model, {"T1": vols["T1"]}, ["FLAIR"], saliency=True, saliency_references={"FLAIR": ref})


# --- out-of-memory fallback (unit test of the batch loop) ----------------------------------------

class OomOnBigBatches:
    """Stands in for ``run_batch``: raises torch.OutOfMemoryError like a GPU would for big batches."""

    def __init__(self, limit, settings, message_only=False):
        self.limit, self.settings, self.message_only = limit, settings, message_only
        self.attempts, self.done = [], []

    def __call__(self, index):
        self.attempts.append((list(index), self.settings.device.type))
        if self.settings.device.type != "cpu" and len(index) > self.limit:
            if self.message_only:  # some back ends raise a plain RuntimeError
                raise RuntimeError("MPS backend out of memory (MPS allocated: 10 GB)")
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.done.extend(index)


def fake_gpu_settings(batch_size, progress=None):
    # The device is only a label here: the network has no parameters and run_batch is fake, so no
    # CUDA call is made; what is tested is the loop's reaction to out-of-memory on a non-CPU device.
    return RunSettings(torch.device("cuda"), torch.float16, batch_size, progress or (lambda f, m: None))


@pytest.mark.parametrize("message_only", [False, True])
def test_out_of_memory_halves_the_batch_and_notes_it(message_only):
    seen = []
    settings = fake_gpu_settings(8, progress=lambda f, m: seen.append(f))
    runner = OomOnBigBatches(2, settings, message_only)
    _run_in_batches(nn.Identity(), list(range(11)), runner, settings, "slices")
    assert runner.done == list(range(11))  # every slice exactly once, in order
    assert [len(i) for i, _ in runner.attempts[:3]] == [8, 4, 2]
    assert settings.notes == ["out of memory on cuda: batch size lowered to 4",
                              "out of memory on cuda: batch size lowered to 2"]
    assert settings.device.type == "cuda" and settings.dtype is torch.float16
    assert all(b >= a for a, b in zip(seen, seen[1:])) and seen[-1] == 1.0


def test_out_of_memory_at_batch_one_continues_on_the_cpu():
    settings = fake_gpu_settings(2)
    runner = OomOnBigBatches(0, settings)
    network = nn.Identity()
    _run_in_batches(network, list(range(5)), runner, settings, "slices")
    assert runner.done == list(range(5))
    assert settings.notes[-1] == "out of memory on cuda even one slice at a time: continuing on the CPU"
    assert settings.device == torch.device("cpu") and settings.dtype is None
    assert all(device == "cpu" for _, device in runner.attempts[-3:])


class OomInSecondTargetsGradient(nn.Module):
    """A network that, on one forward call, makes the backward pass of its second target run out of GPU memory:
    the first target's gradients and squared error are computed by then."""

    def __init__(self, network: nn.Module, failing_call: int) -> None:
        super().__init__()
        self.network, self.failing_call, self.calls = network, failing_call, 0
        for name in ("HALO", "CROP", "SIZE_MULTIPLE"):
            if hasattr(network, name):
                setattr(self, name, getattr(network, name))

    def forward(self, *args, **kwargs):
        self.calls += 1
        out = self.network(*args, **kwargs)
        if self.calls == self.failing_call:
            second = list(out)[1]
            out[second] = out[second] + 0.0

            def out_of_memory(gradient):
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

            out[second].register_hook(out_of_memory)
        return out


class LabelledCuda(str):
    """A CPU device whose ``type`` says cuda: the batch loop then takes out-of-memory as a GPU's and retries."""
    type = "cuda"


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_batch_run_again_after_out_of_memory_adds_its_saliency_once(spatial_dims):
    """P3S gradients and squared errors are sums over batches (and, in 3D, over tiles): a batch that ran out of
    memory part way used to add its finished part twice (maps 11 % off in 3D, squared error x1.3 in 2D)."""
    from MRSynthesisLib.inference import run_slicewise
    from MRSynthesisLib.models.chartsias import ChartsiasMIMO
    from MRSynthesisLib.models.wei_fcn3d import WeiFCN3D
    from MRSynthesisLib.tiling import run_tiled

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    shape = (8, 24, 20)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    mask = zz ** 2 + yy ** 2 + xx ** 2 < 0.9
    inputs = {n: rng.standard_normal(shape).astype(np.float32) * mask for n in ("T1", "T2")}
    references = {t: rng.standard_normal(shape).astype(np.float32) for t in ("FLAIR", "T1c")}
    if spatial_dims == 2:
        network = ChartsiasMIMO(["T1", "T2"], ["FLAIR", "T1c"], latent_channels=4, filters=(4, 8, 8)).eval()
    else:
        network = WeiFCN3D(["T1", "T2"], ["FLAIR", "T1c"]).eval()

    def synthesise(net, device):
        settings = RunSettings(device, None, 4)
        run = dict(axis=0) if spatial_dims == 2 else dict(tile=(4, 10, 10))
        runner = run_slicewise if spatial_dims == 2 else run_tiled
        return runner(net, inputs, ["FLAIR", "T1c"], mask=mask, settings=settings, saliency=True,
                      saliency_references=references, **run), settings.notes

    whole, _ = synthesise(network, torch.device("cpu"))
    retried, notes = synthesise(OomInSecondTargetsGradient(network, failing_call=2), LabelledCuda("cpu"))
    assert notes == ["out of memory on cuda: batch size lowered to 2"]
    for t in ("FLAIR", "T1c"):
        assert retried.squared_error[t] == pytest.approx(whole.squared_error[t], rel=1e-6)
        for n in inputs:
            assert np.allclose(retried.saliency[t][n], whole.saliency[t][n], rtol=1e-5, atol=1e-7)


def test_out_of_memory_on_the_cpu_and_other_errors_propagate():
    settings = RunSettings(torch.device("cpu"), None, 4)
    with pytest.raises(torch.OutOfMemoryError):
        _run_in_batches(nn.Identity(), [0, 1, 2, 3, 4], OomOnBigBatches(-1, fake_gpu_settings(4)), settings, "slices")

    def broken(index):
        raise RuntimeError("shape mismatch in conv2d")

    gpu = fake_gpu_settings(4)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _run_in_batches(nn.Identity(), [0, 1], broken, gpu, "slices")
    assert gpu.notes == []


# --- inputs with coarser voxels than the model's ----------------------------------------------

def test_model_grid_resamples_only_the_coarse_axes_the_model_convolves_over():
    def grid(spacing, direction=LAS):
        return Geometry((24, 28, 20), spacing, (5.0, -3.0, 8.0), direction)

    ones = [1.0, 1.0, 1.0]
    assert model_grid(grid((2.0, 2.0, 3.0)), None, "axial") is None  # a card without spacing_mm
    assert model_grid(grid((2.0, 2.0, 3.0)), ones, "axial").spacing == (1.0, 1.0, 3.0)  # slice axis left
    assert model_grid(grid((2.0, 2.0, 3.0)), ones, "coronal").spacing == (1.0, 2.0, 1.0)
    assert model_grid(grid((2.0, 2.0, 3.0)), ones, None).spacing == (1.0, 1.0, 1.0)  # a 3D model: every axis
    assert model_grid(grid((1.15, 1.15, 1.0)), ones, "axial") is None  # within COARSER_THAN_MODEL
    assert model_grid(grid((0.5, 0.5, 0.5)), ones, None) is None  # finer voxels stay
    # ... except in training (finer=True), which puts every subject on one scale
    assert model_grid(grid((0.5, 0.9, 0.5)), ones, "axial", finer=True).spacing == (1.0, 0.9, 0.5)
    assert model_grid(grid((0.5, 0.9, 0.5)), ones, None, finer=True).spacing == (1.0, 0.9, 1.0)
    assert model_grid(grid((0.9, 1.1, 1.0)), ones, None, finer=True) is None
    assert model_grid(grid((2.0, 2.0, 3.0)), ones, None, finer=True) is None  # coarser axes are left then
    assert model_grid(grid((2.0, 0.5, 1.0)), ones, "axial", finer=True).spacing == (2.0, 1.0, 1.0)
    assert model_grid(grid((1.5, 1.0, 1.0)), ones, "axial").spacing == (1.0, 1.0, 1.0)  # one coarse axis
    # voxel i runs A-P, j I-S, k L-R: the card's (left-right, ant.-post., sup.-inf.) sizes go to k, i, j
    assert model_grid(grid((2.0, 2.0, 2.0), SAGITTAL), [1.0, 0.8, 1.5], "axial").spacing == (0.8, 2.0, 1.0)


def test_coarse_inputs_are_synthesised_on_the_model_spacing_and_returned_on_their_grid(tmp_path):
    vols, _ = volumes()  # voxels of 1 x 1.2 x 0.9 mm
    half = [0.5, 0.6, 0.45]  # the model was trained on voxels half that size
    model = probe(tmp_path, "copy", spacing_mm=half)
    result = run(model, {"T1": vols["T1"]}, ["T2"], saliency=True)
    out = result.outputs["T2"]
    assert out.geometry == vols["T1"].geometry
    assert any("/data/T1.nii.gz: voxels of 1 x 1.2 x 0.9 mm, coarser than the 0.5 x 0.6 x 0.45 mm" in n
               and "synthesised on voxels of 0.5 x 0.6 x 0.9 mm and resampled back" in n for n in result.notes)
    resampled_slices = {c[2:] for c in model.network.calls}
    brain = foreground_mask([vols["T1"].array])
    assert not out.array[~brain].any() and not result.saliency["T2"]["T1"].array[~brain].any()

    native = probe(tmp_path, "copy")  # the same network, its card without spacing_mm
    plain = run(native, {"T1": vols["T1"]}, ["T2"])
    native_slices = {c[2:] for c in native.network.calls}
    assert max(h for h, _ in resampled_slices) >= 1.8 * max(h for h, _ in native_slices)  # twice the voxels
    assert max(w for _, w in resampled_slices) >= 1.8 * max(w for _, w in native_slices)
    # a copy of T1 through a round trip of linear resampling: the same image, smoothed at the brain's edge
    inner = ndi.binary_erosion(brain, iterations=2)
    assert np.corrcoef(out.array[inner], plain.outputs["T2"].array[inner])[0, 1] > 0.95

    asked = probe(tmp_path, "copy", spacing_mm=half)
    kept = run(asked, {"T1": vols["T1"]}, ["T2"], native_spacing=True)
    assert {c[2:] for c in asked.network.calls} == native_slices
    np.testing.assert_array_equal(kept.outputs["T2"].array, plain.outputs["T2"].array)
    assert any("coarser than the 0.5 x 0.6 x 0.45 mm" in n and "synthesised on them as asked (--native-spacing)" in n
               for n in kept.notes)


def test_an_input_resampled_from_thick_slices_is_said(tmp_path):
    """A 2D acquisition's thick slices resampled onto a 3D scan's grid hold no detail across them; the note
    says whether the model was trained on such inputs (its recipe's augment.thick_slice_mm)."""
    vols, _ = volumes()  # voxels of 1 x 1.2 x 0.9 mm, LAS: ITK z runs inferior-superior

    def acquired(spacing: tuple[float, float, float]) -> Volume:
        moved = resample_to(vols["T2"], vols["T2"].geometry.respaced(spacing))
        return moved.with_array(moved.array, "/data/T2_2d.nii.gz")

    def thick_notes(model, t2: Volume, **options) -> list[str]:
        notes = run(model, {"T1": vols["T1"], "T2": t2}, ["FLAIR"], resample=True, **options).notes
        return [n for n in notes if "holds no detail finer" in n]

    plain = probe(tmp_path, "copy")
    said = thick_notes(plain, acquired((1.0, 1.2, 2.7)))
    assert said == ["/data/T2_2d.nii.gz: voxels of 1 x 1.2 x 2.7 mm, resampled onto the 1 x 1.2 x 0.9 mm grid of "
                    "/data/T1.nii.gz: along the inferior-superior axis it holds no detail finer than its 2.7 mm; "
                    f"{plain.card.name} was not trained on inputs so coarse (the bundled model with a 5 mm T2 beside "
                    "a 1 mm T1 scored below T1 alone on both shared MS subjects: docs/results/thick_slices): compare "
                    "with the result without this input; the brain is taken from the foreground of /data/T1.nii.gz "
                    "alone, since interpolation across its thick voxels spreads it past the brain's edge"]
    assert thick_notes(plain, acquired((1.0, 1.2, 1.5))) == []  # 1.7 times the grid's: not said
    assert thick_notes(plain, acquired((2.4, 1.2, 0.9)))[0].count("along the left-right axis") == 1
    on_its_grid = run(plain, {"T2": acquired((1.0, 1.2, 2.7)), "T1": vols["T1"]}, ["FLAIR"], resample=True).notes
    assert not [n for n in on_its_grid if "holds no detail finer" in n]  # the outputs take the thick grid
    recipe = {"recipe": {"config": {"augment": {"thick_slice_mm": 6.0}}}}
    trained = probe(tmp_path, "copy", training=recipe)
    assert thick_notes(trained, acquired((1.0, 1.2, 2.7)))[0].endswith(
        "no detail finer than its 2.7 mm; the brain is taken from the foreground of /data/T1.nii.gz alone, since "
        "interpolation across its thick voxels spreads it past the brain's edge")
    assert "was not trained on inputs so coarse" in thick_notes(trained, acquired((1.0, 1.2, 7.2)))[0]


def test_the_brain_comes_from_the_sharp_inputs_not_a_thick_inputs_smear(tmp_path, chartsias):
    """Linear interpolation from thick slices spreads an input past the brain's edge; in the union of the inputs'
    foregrounds that smear became brain, the result held tissue outside the sharp T1's brain, and the coverage rule
    said the T1 was stripped too tightly. The default brain is the sharp inputs' foreground now."""
    vols, _ = volumes()
    thick = resample_to(vols["T2"], vols["T2"].geometry.respaced((1.0, 1.2, 2.7)))
    t2 = thick.with_array(thick.array, "/data/T2_2d.nii.gz")
    t1_brain = foreground_mask([vols["T1"].array])
    assert (resample_to(t2, vols["T1"].geometry).array[~t1_brain] > 0).sum() > 100  # the smear is there
    result = run(probe(tmp_path, "copy", source="T2"), {"T1": vols["T1"], "T2": t2}, ["FLAIR"], resample=True)
    synthetic = result.outputs["FLAIR"].array != 0
    assert synthetic.any() and not (synthetic & ~t1_brain).any()
    notes = run(chartsias, {"T1": vols["T1"], "T2": t2}, ["FLAIR"], resample=True).notes
    assert not [n for n in notes if "tighter mask" in n or n.startswith("/data/T1.nii.gz: holds no data")], notes
    # with nothing sharp beside it, a thick input's foreground is still the brain
    alone = run(probe(tmp_path, "copy", source="T2"), {"T2": t2}, ["FLAIR"])
    assert (alone.outputs["FLAIR"].array != 0).sum() == foreground_mask([t2.array]).sum()


def test_masks_resampled_onto_another_grid_are_said(tmp_path):
    """Every change of grid is said: inputs resampled by --resample-to had a note, masks and saliency references
    resampled with them had none."""
    model = probe(tmp_path, "copy", lesion_input=True)
    vols, _ = volumes()
    grid = vols["T1"].geometry
    moved = dataclasses.replace(grid, origin=(grid.origin[0] + 1.0, *grid.origin[1:]))
    lesion = Volume(vols["lesion"].array, moved, "/data/lesion_other.nii.gz")
    region = Volume(vols["brain"].array, moved, "/data/region_other.nii.gz")
    notes = run(model, {"T1": vols["T1"]}, ["FLAIR"], lesion_mask=lesion, saliency_region=region, saliency=True,
                resample=True, reference="T1").notes
    said = [n for n in notes if "resampled by nearest neighbour onto the grid of /data/T1.nii.gz" in n]
    assert len(said) == 2 and said[0].startswith("lesion mask /data/lesion_other.nii.gz: on another grid (origin")
    assert said[1].startswith("saliency region /data/region_other.nii.gz")
    same = run(model, {"T1": vols["T1"]}, ["FLAIR"], lesion_mask=vols["lesion"], resample=True).notes
    assert not [n for n in same if "onto the grid of" in n]


def test_a_foreground_the_size_of_a_head_is_said(tmp_path):
    """The default brain mask is the inputs' foreground: with the skull on it is the whole head."""
    model = probe(tmp_path)
    vols, p = volumes()
    voxels = int(foreground_mask([p["T1"]]).sum())

    def notes(spacing: float, **options) -> list[str]:
        geometry = Geometry(vols["T1"].geometry.size, (spacing,) * 3, (0.0,) * 3, LAS)
        inputs = {"T1": Volume(vols["T1"].array, geometry, "/data/T1.nii.gz")}
        if "brain_mask" in options:
            options["brain_mask"] = Volume(options["brain_mask"].array, geometry, "/data/brain.nii.gz")
        return run(model, inputs, ["T2"], **options).notes

    big = (2.6e6 / voxels) ** (1 / 3)  # voxel edge (mm) that makes the foreground 2.6 L
    said = [n for n in notes(big) if "foreground, taken as the brain, is 2.6 L" in n]
    assert said and "if the skull is still on, strip it first" in said[0]
    assert not any("skull" in n for n in notes((2.4e6 / voxels) ** (1 / 3)))
    assert not any("skull" in n for n in notes(big, brain_mask=vols["brain"]))  # a given mask is the user's word


def test_a_target_that_is_also_an_input_is_said(chartsias):
    """``--target T1`` beside a T1 input returned a "synthetic" T1 without a word: it is the model's
    reconstruction of the input, which is worth having (how the model does on this scan) but must be said."""
    vols, _ = volumes()
    notes = run(chartsias, {"T1": vols["T1"], "T2": vols["T2"]}, ["T1", "FLAIR"]).notes
    said = [n for n in notes if "is also an input" in n]
    assert len(said) == 1 and said[0].startswith(f"T1 is also an input ({vols['T1'].source}): the synthetic T1 is")
    assert not any("is also an input" in n for n in run(chartsias, {"T1": vols["T1"]}, ["FLAIR"]).notes)
