"""The real Qt panel (PySide6, offscreen) on a real MRML scene, running the real command line.

Only what the Slicer application alone provides is replaced (node selectors, Segment Editor,
layouts, package installs: see slicer_widgets). The model list is taken once from the real
``models --json`` and replayed to the panels that do not test listing itself.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

pytest.importorskip("slicer", reason="the PyPI package slicer-core (real MRML classes) is not installed")
pytest.importorskip("PySide6", reason="PySide6 (real Qt widgets outside Slicer) is not installed")

import slicer  # noqa: E402
from Qt import QtCore, QtWidgets  # noqa: E402

import slicer_support as support  # noqa: E402
from conftest import cli_env, make_tiny_model, phantom  # noqa: E402
from MRSynthesisLib.cards import ModelCard, save_model  # noqa: E402
from MRSynthesisLib.models import build  # noqa: E402
from MRSynthesisModuleLib.catalog import ModelCatalog  # noqa: E402
from MRSynthesisModuleLib.panel import SynthesisPanel  # noqa: E402
from MRSynthesisModuleLib.process import CliLauncher, Outcome  # noqa: E402
from MRSynthesisModuleLib.scene import SALIENCY_COLOR_NODE_ID, SceneBridge  # noqa: E402
from slicer_widgets import DictSettings, RecordingActions, ReplayLauncher, StandInWidgetFactory  # noqa: E402

SCREENSHOT = support.REPO / "build" / "screenshots" / "mrsynthesis-panel.png"


@pytest.fixture(scope="module")
def app():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A folder of two models: "tiny" (4 in, 4 out, lesion channel) and "t1t2" (T1+T2 -> FLAIR)."""
    folder = tmp_path_factory.mktemp("panel-models")
    make_tiny_model(folder / "tiny")
    make_tiny_model(folder / "t1t2", name="t1t2", inputs=["T1", "T2"], outputs=["FLAIR"], lesion_input=False,
                    output_intensity={"FLAIR": {"offset": 0.0, "scale": 400.0}})
    return folder


@pytest.fixture(scope="module")
def launcher(cli_home) -> CliLauncher:
    return CliLauncher(base_env=cli_env(cli_home))  # no ~/.mrsynthesis models of the developer's


@pytest.fixture(scope="module")
def listing(launcher, models):
    """The real `models --json` of the models folder, as the panel runs it once the folder is added."""
    outcome = launcher.run(["models", "--json"], [str(models)]).wait()
    assert outcome.status == "done", outcome.message
    return outcome


class ListedLauncher:
    """The real launcher, except that `models` answers with the listing recorded once."""

    def __init__(self, real: CliLauncher, listing) -> None:
        self.real, self.replay = real, ReplayLauncher(listing)

    def run(self, arguments, model_folders=(), **callbacks):
        target = self.replay if arguments[0] == "models" else self.real
        return target.run(arguments, model_folders, **callbacks)


def make_panel(app, scene, launcher, actions=None, settings=None) -> SynthesisPanel:
    panel = SynthesisPanel(bridge=SceneBridge(scene), widgets=StandInWidgetFactory(scene), launcher=launcher,
                           catalog=ModelCatalog(settings or DictSettings()), actions=actions or RecordingActions())
    panel.set_parameter_node(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    support.wait_until(lambda: not panel.timer.isActive(), 60, app.processEvents)
    return panel


def choose_model(panel, name: str) -> None:
    panel.ui.modelComboBox.setCurrentIndex([m.name for m in panel.catalog.models].index(name))


def subject_scene(shape=(20, 28, 24)):
    scene = support.new_scene()
    arrays = phantom(shape)
    nodes = {m: support.add_volume(scene, arrays[m], f"sub-01_{m}") for m in ("T1", "T2", "FLAIR")}
    return scene, nodes, arrays


def test_apply_synthesises_a_lesioned_flair_with_saliency_and_off_plane_figures(app, launcher, listing, models):
    scene, nodes, arrays = subject_scene()
    settings = DictSettings()
    actions = RecordingActions()
    listed = ListedLauncher(launcher, listing)
    panel = make_panel(app, scene, listed, actions, settings)
    panel.add_model_folder(str(models))
    support.wait_until(lambda: not panel.timer.isActive(), 60, app.processEvents)
    assert json.loads(settings.value("MRSynthesis/ModelFolders")) == [str(models)]  # remembered
    assert listed.replay.arguments == [["models", "--json"]] * 2 and panel.catalog.search_folders() == [str(models)]
    assert sorted(m.name for m in panel.catalog.models if m.origin != "bundled") == ["t1t2", "tiny"]
    choose_model(panel, "tiny")

    panel.ui.addInputButton.click()
    panel.ui.addInputButton.click()
    assert [(n.GetName(), m) for n, m in panel.inputs] == [("sub-01_T1", "T1"), ("sub-01_T2", "T2")]  # guessed
    panel.set_targets(["FLAIR"])
    panel.ui.deviceComboBox.setCurrentIndex(1)  # CUDA: falls back to the CPU where there is none
    panel.ui.saliencyCheckBox.setChecked(True)
    panel.ui.paintLesionButton.click()
    segmentation, segment_id = panel.lesion_selector.currentNode(), panel.lesion_selector.currentSegmentID()
    assert actions.called("open_segment_editor") == [(segmentation, segment_id, nodes["T1"])]
    support.paint(scene, segmentation, segment_id, arrays["lesion"], nodes["T1"])
    panel.reference_selector.setCurrentNode(nodes["FLAIR"])
    assert panel.problems() == [] and panel.ui.applyButton.isEnabled()
    inputs_before = {m: slicer.util.arrayFromVolume(n).copy() for m, n in nodes.items()}
    ids_before = support.node_ids(scene)

    ticks = []
    heartbeat = QtCore.QTimer()
    heartbeat.timeout.connect(lambda: ticks.append(time.monotonic()))
    heartbeat.start(20)
    progress = []
    panel.ui.progressBar.valueChanged.connect(progress.append)
    panel.ui.applyButton.click()
    assert panel.ui.applyButton.text() == "Cancel"
    support.wait_until(lambda: not panel.running, 120, app.processEvents)
    heartbeat.stop()

    assert panel.ui.errorLabel.text() == "", panel.ui.errorLabel.text()
    assert panel.ui.applyButton.text() == "Apply"
    if torch.cuda.is_available():
        assert panel.ui.statusLabel.text().startswith("Done on cuda")
    else:
        assert panel.ui.statusLabel.text().startswith("Done on cpu")
        assert "CUDA is not available" in panel.ui.notesLabel.text()  # the reason is shown
    assert progress and progress[-1] == 100  # (intermediate values: see the cancel test's larger case)
    assert max(np.diff(ticks)) < 0.5  # the GUI thread never waited on the process
    output = panel.results.outputs["FLAIR"]
    assert output.GetName() == "FLAIR synthetic (T1+T2, lesion)"
    assert output.GetAttribute("MRSynthesis.Synthetic") == "true"  # saved with the scene, whatever its name
    record = json.loads(output.GetAttribute("MRSynthesis.Provenance"))
    assert record["inputs"] == {"T1": '"sub-01_T1"', "T2": '"sub-01_T2"'}  # the nodes, not the temporary files
    assert record["modality"] == "FLAIR"
    assert record["lesion_mask"].startswith("the lesion segment of ")
    assert record["description"].endswith("+lesion (tiny)")
    np.testing.assert_allclose(support.ijk_to_ras(output), support.ijk_to_ras(nodes["T1"]), atol=1e-6)
    assert slicer.util.arrayFromVolume(output).shape == arrays["T1"].shape
    saliency = panel.results.saliency["FLAIR"]
    assert {m: n.GetName() for m, n in saliency.items()} == {"T1": "P3S FLAIR from T1", "T2": "P3S FLAIR from T2"}
    # the real FLAIR was given: the paper's P3S, the gradient of the error against it
    assert "(P3S, Wei et al. 2019 eq. 3)" in panel.ui.saliencyObjectiveLabel.text()
    assert saliency["T1"].GetDisplayNode().GetColorNodeID() == SALIENCY_COLOR_NODE_ID
    added = {output.GetID(), *(n.GetID() for n in saliency.values())}
    assert added <= support.node_ids(scene) - ids_before
    for modality, node in nodes.items():  # inputs never change
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), inputs_before[modality])

    table = panel.ui.contributionsTable
    assert [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())] == ["FLAIR", "FLAIR in lesion"]
    for column in range(2):  # shares in the brain, then in the painted lesion
        shares = [float(table.item(r, column).text().rstrip(" %")) for r in range(table.rowCount())]
        assert table.rowCount() == 2 and abs(sum(shares) - 100.0) < 0.2
    figures = {panel.ui.offPlaneTable.verticalHeaderItem(r).text() for r in range(panel.ui.offPlaneTable.rowCount())}
    assert {"roughness_ratio", "profile_correlation", "ssim_sagittal", "ssim_coronal"} <= figures
    assert actions.called("show_result") == [(output, segmentation)]  # the painted lesion overlaid
    assert actions.called("show_off_plane") == [(output, nodes["FLAIR"])]
    panel.ui.showSaliencyButton.click()
    assert actions.called("show_saliency") == [(output, [(nodes["T1"], saliency["T1"]), (nodes["T2"], saliency["T2"])])]

    panel.widget.resize(440, 1020)
    panel.widget.show()
    app.processEvents()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert panel.widget.grab().save(str(SCREENSHOT))


def test_cancel_stops_within_two_seconds_and_leaves_the_scene_as_it_was(app, launcher, listing):
    scene, nodes, _ = subject_scene(shape=(64, 80, 80))
    panel = make_panel(app, scene, ListedLauncher(launcher, listing))
    choose_model(panel, "tiny")
    panel.add_input_row(nodes["T1"])
    panel.add_input_row(nodes["T2"])
    panel.set_targets(["FLAIR", "T1c"])
    panel.ui.deviceComboBox.setCurrentIndex(3)
    panel.ui.saliencyCheckBox.setChecked(True)
    ids_before = support.node_ids(scene)

    panel.ui.applyButton.click()
    folder = panel._prepared.folder
    support.wait_until(lambda: panel.ui.progressBar.value() > 0 or not panel.running, 120, app.processEvents)
    assert panel.running, "the run ended before it could be cancelled"
    assert 0 < panel.ui.progressBar.value() < 100  # from the command line's JSON progress lines
    panel.ui.applyButton.click()  # now "Cancel"
    took = support.wait_until(lambda: not panel.running, 5, app.processEvents)

    assert took < 2.0
    assert panel.ui.statusLabel.text().startswith("Cancelled")
    assert panel.ui.applyButton.text() == "Apply" and panel.ui.applyButton.isEnabled()
    assert support.node_ids(scene) == ids_before
    assert panel.results is None and not os.path.exists(folder)


class RecordingLauncher:
    """A launcher that passes every run on and keeps the arguments it was given."""

    def __init__(self, real) -> None:
        self.real, self.arguments = real, []

    def run(self, arguments, model_folders=(), **callbacks):
        self.arguments.append(list(arguments))
        return self.real.run(arguments, model_folders, **callbacks)


def test_inputs_on_different_grids_are_refused_unless_the_user_asks_to_resample_them(app, launcher, listing):
    scene, nodes, arrays = subject_scene()
    elsewhere = support.OBLIQUE.copy()
    elsewhere[:3, 3] += 7.0
    shifted = support.add_volume(scene, arrays["T2"], "shifted_T2", elsewhere)
    recording = RecordingLauncher(ListedLauncher(launcher, listing))
    panel = make_panel(app, scene, recording)
    choose_model(panel, "tiny")
    panel.add_input_row(shifted)  # the first input: its grid is the outputs' grid
    panel.add_input_row(nodes["T1"])
    assert [m for _, m in panel.inputs] == ["T2", "T1"]
    panel.set_targets(["FLAIR"])
    assert not panel.ui.resampleCheckBox.isChecked()  # resampling changes data: never by default
    assert not panel.ui.nativeSpacingCheckBox.isChecked()  # coarse voxels go on the model's spacing by default
    assert not panel.ui.registerCheckBox.isChecked()  # registration moves data: only when asked
    ids_before = support.node_ids(scene)

    panel.ui.applyButton.click()
    support.wait_until(lambda: not panel.running, 120, app.processEvents)

    assert "--resample-to" not in recording.arguments[-1] and "--native-spacing" not in recording.arguments[-1]
    assert "--register" not in recording.arguments[-1]
    message = panel.ui.errorLabel.text()
    assert "different grids" in message and "Traceback" not in message
    # the volumes as the user knows them, not the run's temporary files
    assert f'"{nodes["T1"].GetName()}" and "{shifted.GetName()}" are on different grids' in message
    assert "MRSynthesis-" not in message
    assert f'tick "{panel.ui.resampleCheckBox.text()}"' in message  # points at the checkbox
    assert panel.ui.statusLabel.text() == "Failed."
    assert support.node_ids(scene) == ids_before
    assert panel.ui.applyButton.isEnabled()

    panel.ui.resampleCheckBox.setChecked(True)
    assert panel.parameters.resample
    panel.ui.saliencyCheckBox.setChecked(True)  # no real volume of the target: the target-free variant, said
    panel.ui.applyButton.click()
    assert not panel.ui.resampleCheckBox.isEnabled()  # (its group box) while running
    support.wait_until(lambda: not panel.running, 120, app.processEvents)

    arguments = recording.arguments[-1]
    assert arguments[arguments.index("--resample-to") + 1] == "T2"  # the first row's modality
    assert panel.ui.errorLabel.text() == "", panel.ui.errorLabel.text()
    assert panel.ui.statusLabel.text().startswith("Done")
    notes = panel.ui.notesLabel.text()  # resampled by scanner coordinates: the advice names the panel's box
    assert "--register aligns it first" in notes
    assert notes.endswith(f'In this panel (under Inputs): --register is the "{panel.ui.registerCheckBox.text()}" box.')
    objective = panel.ui.saliencyObjectiveLabel.text()
    assert "target-free P3S variant" in objective and "A real volume of the target (below)" in objective
    output = panel.results.outputs["FLAIR"]
    assert output.GetName() == "FLAIR synthetic (T2+T1)"
    np.testing.assert_allclose(support.ijk_to_ras(output), elsewhere, atol=1e-6)  # the first input's grid
    assert slicer.util.arrayFromVolume(output).shape == arrays["T2"].shape
    assert np.isfinite(slicer.util.arrayFromVolume(output)).all()


def test_a_brain_segment_precision_and_slice_plane_reach_the_command_line(app, launcher, listing):
    """A scan with its skull on and a brain segment (as HD Brain Extraction makes): the brain mask, the
    precision and the view-transfer plane go to the command line, and the off-plane figures use that plane."""
    scene, nodes, arrays = subject_scene()
    shell = ndimage.binary_dilation(arrays["brain"], iterations=2) & ~arrays["brain"].astype(bool)
    for modality in ("T1", "T2"):  # a bright skull around the brain
        slicer.util.updateVolumeFromArray(nodes[modality], np.where(shell, 900.0, arrays[modality]).astype(np.float32))
    brain = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "sub-01 brain")
    brain.CreateDefaultDisplayNodes()  # as every segmentation in Slicer has
    brain_id = brain.GetSegmentation().AddEmptySegment("", "brain")
    recording = RecordingLauncher(ListedLauncher(launcher, listing))
    panel = make_panel(app, scene, recording)
    choose_model(panel, "tiny")
    panel.add_input_row(nodes["T1"])
    panel.add_input_row(nodes["T2"])
    panel.set_targets(["FLAIR"])
    panel.brain_selector.setCurrentNode(brain)
    panel.brain_selector.setCurrentSegmentID(brain_id)
    panel.ui.precisionComboBox.setCurrentIndex(1)
    panel.ui.planeComboBox.setCurrentIndex(2)
    panel.reference_selector.setCurrentNode(nodes["FLAIR"])
    assert (panel.precision, panel.plane) == ("fp32", "coronal")
    assert panel.parameters.brain == (brain, brain_id) and panel.parameters.plane == "coronal"
    ids_before = support.node_ids(scene)

    panel.ui.applyButton.click()  # the segment is still empty
    support.wait_until(lambda: not panel.running, 120, app.processEvents)
    assert f'the brain segment of "{brain.GetName()}": the brain mask is empty' in panel.ui.errorLabel.text()
    assert support.node_ids(scene) == ids_before

    support.paint(scene, brain, brain_id, arrays["brain"], nodes["T1"])
    panel.ui.applyButton.click()
    assert not panel.ui.planeComboBox.isEnabled() and not panel.ui.precisionComboBox.isEnabled()  # while running
    support.wait_until(lambda: not panel.running, 120, app.processEvents)

    assert panel.ui.errorLabel.text() == "", panel.ui.errorLabel.text()
    synthesis, evaluation = recording.arguments[-2:]
    assert os.path.basename(synthesis[synthesis.index("--brain-mask") + 1]) == "brain.nrrd"
    assert synthesis[synthesis.index("--precision") + 1] == "fp32"
    assert synthesis[synthesis.index("--plane") + 1] == "coronal"
    assert evaluation[0] == "evaluate" and evaluation[evaluation.index("--slice-plane") + 1] == "coronal"
    flair = slicer.util.arrayFromVolume(panel.results.outputs["FLAIR"])
    assert np.isfinite(flair).all() and not flair[shell].any()  # the skull is outside the brain segment
    assert "skull-stripped brain" not in panel.ui.notesLabel.text()


def test_a_3d_model_takes_no_plane_and_its_saliency_uses_the_real_volume(app, launcher, tmp_path):
    """A 3D model (Wei's FCN, the P3S paper's own) is offered no slice plane and no off-plane figures, but a
    real volume of the target still makes its maps the paper's P3S (they were always the target-free variant)."""
    save_model(ModelCard(name="tiny-3d", architecture="wei2019_fcn3d", inputs=["T1", "T2"], outputs=["FLAIR"],
                         spatial_dims=3, plane=None, missing_inputs="all_required", normalisation={"scheme": "zscore"},
                         params={"filters": 4}, output_intensity={"FLAIR": {"offset": 0.0, "scale": 400.0}}),
               build("wei2019_fcn3d", ["T1", "T2"], ["FLAIR"], False, {"filters": 4}), tmp_path / "tiny-3d")
    scene, nodes, _ = subject_scene()
    recording = RecordingLauncher(launcher)
    panel = make_panel(app, scene, recording)
    panel.add_model_folder(str(tmp_path))
    support.wait_until(lambda: not panel.timer.isActive(), 60, app.processEvents)
    panel.ui.planeComboBox.setCurrentIndex(2)
    choose_model(panel, "tiny-3d")
    assert not panel.ui.planeComboBox.isEnabled() and panel.ui.offPlaneGroupBox.isEnabled()
    panel.add_input_row(nodes["T1"])
    panel.add_input_row(nodes["T2"])
    panel.set_targets(["FLAIR"])
    panel.ui.saliencyCheckBox.setChecked(True)
    panel.reference_selector.setCurrentNode(nodes["FLAIR"])
    panel.ui.applyButton.click()
    support.wait_until(lambda: not panel.running, 120, app.processEvents)

    assert panel.ui.errorLabel.text() == "", panel.ui.errorLabel.text()
    arguments = recording.arguments[-1]
    assert arguments[0] == "synthesize"  # no off-plane measurement for a 3D model
    assert arguments[arguments.index("--saliency-reference") + 1].startswith("FLAIR=")
    assert "--plane" not in arguments
    assert "Wei et al. 2019 eq. 3" in panel.ui.saliencyObjectiveLabel.text()
    assert set(panel.results.saliency["FLAIR"]) == {"T1", "T2"} and not panel.results.off_plane
    choose_model(panel, "chartsias-mimo-shared")  # the bundled 2D model: the plane chosen before was kept
    assert panel.ui.planeComboBox.isEnabled() and panel.plane == "coronal"


def test_the_model_card_constrains_modalities_targets_and_the_lesion(app, listing):
    scene, nodes, _ = subject_scene()
    panel = make_panel(app, scene, ReplayLauncher(listing))
    choose_model(panel, "t1t2")
    row = panel.add_input_row(nodes["FLAIR"])

    assert [row.modality.itemText(i) for i in range(row.modality.count())] == ["T1", "T2"]
    assert list(panel.target_boxes) == ["FLAIR"]
    assert "Inputs: T1, T2" in panel.ui.modelInfoLabel.text() and "Outputs: FLAIR" in panel.ui.modelInfoLabel.text()
    assert not panel.ui.lesionGroupBox.isEnabled()
    panel.set_targets(["FLAIR"])
    row.modality.setCurrentIndex(0)
    panel.add_input_row(nodes["T1"]).modality.setCurrentIndex(0)
    assert "give each input a different modality" in panel.problems()
    assert not panel.ui.applyButton.isEnabled()
    assert "different modality" in panel.ui.statusLabel.text()

    choose_model(panel, "tiny")
    assert [row.modality.itemText(i) for i in range(row.modality.count())] == ["T1", "T1c", "T2", "FLAIR"]
    assert panel.ui.lesionGroupBox.isEnabled()
    assert panel.targets == ["FLAIR"]  # kept: the new model has it too


def test_a_saved_scene_restores_the_panel(app, listing):
    scene, nodes, _ = subject_scene()
    panel = make_panel(app, scene, ReplayLauncher(listing))
    choose_model(panel, "tiny")
    panel.add_input_row(nodes["T2"])
    panel.add_input_row(nodes["T1"])
    panel.set_targets(["FLAIR", "T1c"])
    panel.ui.deviceComboBox.setCurrentIndex(3)
    panel.ui.saliencyCheckBox.setChecked(True)
    panel.ui.resampleCheckBox.setChecked(True)
    panel.ui.nativeSpacingCheckBox.setChecked(True)
    panel.ui.registerCheckBox.setChecked(True)
    panel.ui.precisionComboBox.setCurrentIndex(2)  # bf16
    panel.ui.planeComboBox.setCurrentIndex(3)  # sagittal
    segmentation, segment_id = panel.paint_lesion()
    panel.brain_selector.setCurrentNode(segmentation)  # (any segment will do for the round trip)
    panel.brain_selector.setCurrentSegmentID(segment_id)
    panel.reference_selector.setCurrentNode(nodes["FLAIR"])
    panel.ui.offPlaneTargetComboBox.setCurrentIndex(1)  # T1c

    scene.SetSaveToXMLString(1)
    scene.Commit()
    loaded = support.new_scene()
    loaded.SetLoadFromXMLString(1)
    loaded.SetSceneXMLString(scene.GetSceneXMLString())
    loaded.Import()
    # Segments live in the segmentation's own file, which an XML-only save does not write:
    # put the segment back as loading that file would.
    loaded.GetFirstNodeByName(segmentation.GetName()).GetSegmentation().AddEmptySegment(segment_id, "lesion")
    restored = SynthesisPanel(bridge=SceneBridge(loaded), widgets=StandInWidgetFactory(loaded),
                              launcher=ReplayLauncher(listing), catalog=ModelCatalog(DictSettings()),
                              actions=RecordingActions())
    restored.set_parameter_node(loaded.GetFirstNodeByClass("vtkMRMLScriptedModuleNode"))
    support.wait_until(lambda: not restored.timer.isActive(), 10, app.processEvents)

    assert restored.model.name == "tiny"
    assert [(n.GetName(), m) for n, m in restored.inputs] == [("sub-01_T2", "T2"), ("sub-01_T1", "T1")]
    assert restored.targets == ["T1c", "FLAIR"]  # in the card's order
    assert restored.ui.deviceComboBox.currentText() == "CPU" and restored.ui.saliencyCheckBox.isChecked()
    assert restored.ui.resampleCheckBox.isChecked() and restored.ui.nativeSpacingCheckBox.isChecked()
    assert restored.ui.registerCheckBox.isChecked()
    assert restored.lesion_selector.currentNode().GetName() == segmentation.GetName()
    assert restored.lesion_selector.currentSegmentID() == segment_id
    assert restored.brain_selector.currentNode().GetName() == segmentation.GetName()
    assert restored.brain_selector.currentSegmentID() == segment_id
    assert (restored.precision, restored.plane) == ("bf16", "sagittal")
    assert restored.reference_selector.currentNode().GetName() == "sub-01_FLAIR"
    assert restored.ui.offPlaneTargetComboBox.currentText() == "T1c"


def test_without_pytorch_the_panel_says_so_and_installs_only_with_consent(app, listing):
    scene, _, _ = subject_scene()
    actions = RecordingActions(missing=["torch", "safetensors"], consent=False)
    replay = ReplayLauncher(listing)
    panel = make_panel(app, scene, replay, actions)

    assert not panel.ui.torchFrame.isHidden()
    assert "torch and safetensors not installed" in panel.ui.torchLabel.text()
    assert replay.arguments == []  # listing models needs PyTorch in the subprocess
    assert "install torch and safetensors first" in panel.problems() and not panel.ui.applyButton.isEnabled()

    panel.ui.installTorchButton.click()  # declined
    assert actions.called("install_packages") == [(("torch", "safetensors"),)]
    assert not panel.ui.torchFrame.isHidden() and replay.arguments == []

    actions.consent = True
    panel.ui.installTorchButton.click()
    support.wait_until(lambda: not panel.timer.isActive(), 10, app.processEvents)
    assert panel.ui.torchFrame.isHidden()
    assert replay.arguments == [["models", "--json"]] and panel.catalog.models


def test_an_added_model_folder_lists_that_model_only(launcher, models):
    settings = DictSettings()
    catalog = ModelCatalog(settings)
    catalog.add_folder(str(models / "tiny"))
    catalog.add_folder(str(models / "tiny"))
    assert catalog.user_folders == [str(models / "tiny")]
    outcome = launcher.run(["models", "--json"], catalog.search_folders()).wait()
    assert outcome.status == "done", outcome.message
    listed = catalog.update(outcome.stdout)
    assert [m.name for m in listed if m.origin != "bundled"] == ["tiny"]  # not its sibling t1t2
    assert next(m for m in listed if m.name == "tiny").summary().startswith("Inputs: T1, T1c, T2, FLAIR")
    bundled = next(m for m in listed if m.origin == "bundled").summary()  # its card: 1 mm voxels
    assert "2D, slice by slice (axial), trained on 1 x 1 x 1 mm voxels; takes a lesion mask" in bundled


class EndingLauncher:
    """Lists the recorded models; every other run is recorded and ends at once as ``outcome`` says."""

    def __init__(self, listing, outcome=Outcome("cancelled", exit_code=130)) -> None:
        self.listing, self.outcome, self.arguments = listing, outcome, []

    def run(self, arguments, model_folders=(), **callbacks):
        self.arguments.append(list(arguments))
        return ReplayLauncher(self.listing if arguments[0] == "models" else self.outcome).run(arguments)


def two_input_panel(app, scene, nodes, launcher, model="tiny"):
    panel = make_panel(app, scene, launcher)
    choose_model(panel, model)
    panel.add_input_row(nodes["T1"])
    panel.add_input_row(nodes["T2"])
    panel.set_targets(["FLAIR"])
    return panel


def apply_and_wait(app, panel) -> None:
    panel.ui.applyButton.click()
    support.wait_until(lambda: not panel.running, 120, app.processEvents)


def test_a_model_without_a_lesion_input_runs_without_the_chosen_lesion_segment(app, listing):
    scene, nodes, _ = subject_scene()
    launcher = EndingLauncher(listing)
    panel = two_input_panel(app, scene, nodes, launcher)
    segmentation, segment_id = panel.paint_lesion()

    choose_model(panel, "t1t2")  # takes no lesion mask: the segment is left out, not a reason to refuse
    assert not panel.ui.lesionGroupBox.isEnabled()
    assert panel.problems() == [] and panel.ui.applyButton.isEnabled()
    said = "model t1t2 takes no lesion mask: the lesion segment is not used"
    assert panel.ui.statusLabel.text() == f"Ready ({said})."
    assert panel.ui.lesionGroupBox.toolTip() == said.capitalize()
    apply_and_wait(app, panel)
    assert launcher.arguments[-1][0] == "synthesize" and "--lesion-mask" not in launcher.arguments[-1]

    choose_model(panel, "tiny")  # the choice was kept for a model that takes it
    assert (panel.lesion_selector.currentNode(), panel.lesion_selector.currentSegmentID()) == (segmentation,
                                                                                                segment_id)
    assert panel.ui.lesionGroupBox.toolTip() == ""
    apply_and_wait(app, panel)
    assert "--lesion-mask" in launcher.arguments[-1]


def test_the_lesion_goes_with_the_input_it_was_painted_on(app, listing):
    """The command line is told which input the lesion segment was painted on (its segmentation's reference geometry
    volume, the "paint on" choice), so that with "Register other inputs" the lesion moves with that input's anatomy;
    a segmentation drawn on a volume that is not an input says nothing (the first input is assumed)."""
    scene, nodes, _ = subject_scene()
    launcher = EndingLauncher(listing)
    panel = two_input_panel(app, scene, nodes, launcher)
    panel.ui.registerCheckBox.setChecked(True)
    assert [panel.ui.paintVolumeComboBox.itemText(i) for i in range(2)] == ["T1: sub-01_T1", "T2: sub-01_T2"]
    panel.ui.paintVolumeComboBox.setCurrentIndex(1)
    segmentation, segment_id = panel.paint_lesion()
    assert panel.bridge.segment_drawn_on(segmentation) is nodes["T2"]
    apply_and_wait(app, panel)
    arguments = launcher.arguments[-1]
    assert arguments[arguments.index("--lesion-mask-on") + 1] == "T2" and "--register" in arguments
    assert "--lesion-mask" in arguments

    panel.ui.paintVolumeComboBox.setCurrentIndex(0)
    panel.lesion_selector.setCurrentNode(None)
    panel.paint_lesion()  # a new segmentation on the T1
    apply_and_wait(app, panel)
    arguments = launcher.arguments[-1]
    assert arguments[arguments.index("--lesion-mask-on") + 1] == "T1"

    elsewhere, flair_id = panel.bridge.create_lesion_segment(nodes["FLAIR"])  # the FLAIR is no input
    panel.lesion_selector.setCurrentNode(elsewhere)
    panel.lesion_selector.setCurrentSegmentID(flair_id)
    apply_and_wait(app, panel)
    assert "--lesion-mask" in launcher.arguments[-1] and "--lesion-mask-on" not in launcher.arguments[-1]


def test_a_removed_segmentation_or_segment_is_no_longer_the_lesion(app, listing):
    """qMRMLSegmentSelectorWidget keeps its segment ID when its segmentation goes (the stand-in does too), and
    on its own would move on to the next segmentation and take its first segment."""
    scene, nodes, _ = subject_scene()
    launcher = EndingLauncher(listing)
    panel = two_input_panel(app, scene, nodes, launcher)
    segmentation, segment_id = panel.paint_lesion()
    brain = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "sub-01 brain")
    brain.GetSegmentation().AddEmptySegment("", "brain")

    scene.RemoveNode(segmentation)
    assert panel.lesion_selector.currentNode() is None
    assert panel.lesion_selector.currentSegmentID() == segment_id  # stale, as in Slicer
    assert panel.parameters.lesion == (None, "")
    apply_and_wait(app, panel)
    assert "--lesion-mask" not in launcher.arguments[-1] and panel.ui.errorLabel.text() == ""

    segmentation, segment_id = panel.paint_lesion()
    segmentation.GetSegmentation().RemoveSegment(segment_id)  # its only segment: the selector keeps the ID
    assert panel.lesion_selector.currentSegmentID() == segment_id
    apply_and_wait(app, panel)
    assert "--lesion-mask" not in launcher.arguments[-1] and panel.ui.errorLabel.text() == ""

    segmentation, segment_id = panel.paint_lesion()
    other = segmentation.GetSegmentation().AddEmptySegment("", "ventricles")  # which Slicer's selector would move to
    segmentation.GetSegmentation().RemoveSegment(segment_id)
    assert panel.lesion_selector.currentSegmentID() == "" and panel.parameters.lesion == (segmentation, "")
    apply_and_wait(app, panel)
    assert "--lesion-mask" not in launcher.arguments[-1] and panel.ui.errorLabel.text() == ""
    panel.lesion_selector.setCurrentSegmentID(other)  # chosen by the user: kept
    assert panel.parameters.lesion == (segmentation, other)


def test_the_stand_in_selector_moves_on_when_its_node_goes_as_qcombobox_does(app):
    scene, nodes, _ = subject_scene()
    selector = StandInWidgetFactory(scene).volume_selector(none_enabled=True)
    selector.setCurrentNode(nodes["T1"])
    seen = []
    selector.currentNodeChanged.connect(seen.append)
    scene.RemoveNode(nodes["T1"])
    assert seen == [nodes["T2"]] and selector.currentNode() is nodes["T2"]  # the row now in its place
    scene.RemoveNode(nodes["FLAIR"])
    scene.RemoveNode(nodes["T2"])
    assert seen == [nodes["T2"], None]


def test_a_removed_volume_empties_its_input_row_and_the_real_volume(app, listing):
    scene, nodes, _ = subject_scene()
    panel = two_input_panel(app, scene, nodes, EndingLauncher(listing))
    panel.reference_selector.setCurrentNode(nodes["FLAIR"])
    assert panel.problems() == []

    scene.RemoveNode(nodes["T1"])  # the selector alone would now show T2 in the first row
    assert [n for n, _ in panel.inputs] == [None, nodes["T2"]]
    assert panel.parameters.inputs[0][0] is None
    assert "choose a volume in every input row" in panel.problems() and not panel.ui.applyButton.isEnabled()
    scene.RemoveNode(nodes["FLAIR"])  # not another volume as the real FLAIR
    assert panel.reference_selector.currentNode() is None and panel.parameters.reference[0] is None


def test_vector_and_diffusion_volumes_are_not_offered_as_inputs(app, listing):
    scene = support.new_scene()
    for node_class in ("vtkMRMLVectorVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode"):
        scene.AddNewNodeByClass(node_class, node_class)
    t1 = support.add_volume(scene, phantom((20, 28, 24))["T1"], "sub-01_T1")
    panel = make_panel(app, scene, ReplayLauncher(listing))
    assert panel.bridge.scalar_volumes() == [t1]
    assert panel.add_input_row().selector.currentNode() is t1  # the unused scalar volume, not the RGB one


def test_a_command_line_that_cannot_start_is_said_and_leaves_no_folder(app, listing, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    missing = CliLauncher(python=str(tmp_path / "no-python"))
    scene, nodes, _ = subject_scene()
    unlisted = make_panel(app, scene, missing)  # built all the same
    assert unlisted.ui.modelInfoLabel.text().startswith("Could not list the models: the MRSynthesis command line "
                                                        "could not be started: ")

    panel = two_input_panel(app, scene, nodes, ListedLauncher(missing, listing))
    panel.ui.applyButton.click()
    assert "could not be started" in panel.ui.errorLabel.text() and panel.ui.statusLabel.text() == "Failed."
    assert not panel.running and panel.ui.applyButton.text() == "Apply" and panel.ui.applyButton.isEnabled()
    assert list(tmp_path.glob("MRSynthesis-*")) == []


class EndlessLauncher(EndingLauncher):
    """Runs that never end until cancelled."""

    def run(self, arguments, model_folders=(), **callbacks):
        if arguments[0] == "models":
            return super().run(arguments, model_folders, **callbacks)
        run = ReplayLauncher(None).run(arguments)
        run.cancel = lambda: self.arguments.append(["cancelled"])
        return run


def test_shutdown_cancels_the_run_and_removes_its_folder(app, listing):
    scene, nodes, _ = subject_scene()
    launcher = EndlessLauncher(listing)
    panel = two_input_panel(app, scene, nodes, launcher)
    panel.ui.applyButton.click()
    folder = panel._prepared.folder
    node = panel.parameters.node
    assert panel.running and os.path.isdir(folder)
    panel.shutdown()
    assert launcher.arguments[-1] == ["cancelled"] and not os.path.exists(folder)
    saved = [node.GetParameter(name) for name in node.GetParameterNames()]
    panel.ui.saliencyCheckBox.setChecked(not panel.ui.saliencyCheckBox.isChecked())  # a reloaded module's old widgets
    panel.set_targets(["T1c"])
    assert [node.GetParameter(name) for name in node.GetParameterNames()] == saved


def test_nodes_removed_during_a_run_and_a_closed_scene_leave_nothing_stale(app, launcher, listing):
    scene, nodes, arrays = subject_scene()
    actions = RecordingActions()
    panel = make_panel(app, scene, ListedLauncher(launcher, listing), actions)
    choose_model(panel, "tiny")
    panel.add_input_row(nodes["T1"])
    panel.add_input_row(nodes["T2"])
    panel.set_targets(["FLAIR"])
    panel.ui.saliencyCheckBox.setChecked(True)
    segmentation, segment_id = panel.paint_lesion()
    support.paint(scene, segmentation, segment_id, arrays["lesion"], nodes["T1"])
    panel.ui.applyButton.click()
    scene.RemoveNode(segmentation)  # while the command line runs
    scene.RemoveNode(nodes["T2"])
    support.wait_until(lambda: not panel.running, 120, app.processEvents)

    assert panel.ui.errorLabel.text() == "", panel.ui.errorLabel.text()
    output, saliency = panel.results.outputs["FLAIR"], panel.results.saliency["FLAIR"]
    assert actions.called("show_result") == [(output, None)]  # not the removed segmentation
    assert actions.called("show_saliency") == [(output, [(nodes["T1"], saliency["T1"])])]
    assert panel.ui.showSaliencyButton.isEnabled() and not panel.ui.contributionsTable.isHidden()

    panel.scene_closing()  # Slicer's StartCloseEvent: the results' nodes are about to go
    assert panel.results is None and panel.parameters is None
    assert not panel.ui.showSaliencyButton.isEnabled() and not panel.ui.showOffPlaneButton.isEnabled()
    assert panel.ui.contributionsTable.isHidden() and panel.ui.notesLabel.text() == ""
