"""MRSynthesis: synthesise missing MR contrasts of a brain from the ones loaded in Slicer.

The module is thin: the panel (MRSynthesisModuleLib.panel) writes the chosen volumes to a
temporary folder and runs the MRSynthesisLib command line in a background PythonSlicer
process, then loads what it wrote as new nodes. Batch mode is ``Scripts/batch.py`` beside this file.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import numpy as np
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MRSynthesisModuleLib import paths, torchsetup, views
from MRSynthesisModuleLib.catalog import ModelCatalog
from MRSynthesisModuleLib.process import CliLauncher
from MRSynthesisModuleLib.scene import SceneBridge
from MRSynthesisModuleLib.synthesis import LoadedResults, synthesize_and_wait
from MRSynthesisModuleLib.widgets import SlicerWidgetFactory

paths.ensure_importable()  # a source checkout keeps MRSynthesisLib one folder up
from MRSynthesisModuleLib.saved_files import SavedFileMarker  # noqa: E402  (imports MRSynthesisLib)


class MRSynthesis(ScriptedLoadableModule):
    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MR Synthesis"
        self.parent.categories = ["Image Synthesis"]
        self.parent.dependencies = []
        self.parent.contributors = ["MRSynthesis contributors"]
        self.parent.helpText = (
            "Synthesise missing MR contrasts (T1, T1c, T2, FLAIR, ...) of a brain from the loaded ones, "
            "optionally with a painted lesion, per-input P3S saliency maps and an off-plane consistency check. "
            "Results are new volumes; inputs are never changed.")
        self.parent.acknowledgementText = (
            "Implements multi-input multi-output synthesis (Chartsias et al.), P3S saliency (Wei et al.) and "
            "lesion-aware synthesis; see the project's README for the papers and licences.")
        icon = paths.resource("Icons/MRSynthesis.png")
        if os.path.isfile(icon):  # Slicer finds it itself only in the installed layout
            self.parent.icon = qt.QIcon(icon)
        # A synthetic node saved with Slicer's own writers (the Save dialog, saveNode) gets the header line and
        # the sidecar the command line writes, whether or not the panel was opened in this session: the scene
        # may come from an earlier one. The module holds the marker so that it lives as long as the connection.
        self.savedFiles = SavedFileMarker(slicer.mrmlScene, logging.warning)
        slicer.app.coreIOManager().fileSaved.connect(self.savedFiles)


class SlicerActions:
    """What the panel asks of the Slicer application (stand-ins replace it in tests)."""

    def missing_packages(self) -> list[str]:
        return torchsetup.missing_packages()

    def install_packages(self, missing: list[str]) -> bool:
        with slicer.util.tryWithErrorDisplay("Installing the Python packages failed.", waitCursor=True):
            return torchsetup.install(missing, lambda text: slicer.util.confirmOkCancelDisplay(
                text, windowTitle="MRSynthesis needs PyTorch"))

    def choose_folder(self) -> str:
        return qt.QFileDialog.getExistingDirectory(None, "Model folder, or a folder of model folders")

    def open_segment_editor(self, segmentation: Any, segment_id: str, volume: Any) -> None:
        if slicer.util.mainWindow() is not None:  # no module switching without a main window
            views.open_segment_editor(segmentation, segment_id, volume)

    def show_result(self, result: Any, lesion: Any) -> None:
        views.show_result(result, lesion)

    def show_saliency(self, result: Any, overlays: list[tuple[Any, Any]]) -> None:
        if slicer.app.layoutManager() is not None:
            views.show_saliency(result, overlays)

    def show_off_plane(self, result: Any, reference: Any) -> None:
        if slicer.app.layoutManager() is not None:
            views.show_off_plane(result, reference)


class MRSynthesisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent: Optional[Any] = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[MRSynthesisLogic] = None
        self.panel = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from MRSynthesisModuleLib.panel import SynthesisPanel  # imports MRSynthesisLib.modalities

        self.logic = MRSynthesisLogic()
        self.panel = SynthesisPanel(bridge=SceneBridge(slicer.mrmlScene), widgets=SlicerWidgetFactory(slicer.mrmlScene),
                                    launcher=CliLauncher(), catalog=ModelCatalog(qt.QSettings()),
                                    actions=SlicerActions())
        self.layout.addWidget(self.panel.widget)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        self.panel.set_parameter_node(self.logic.getParameterNode())

    def cleanup(self) -> None:
        self.removeObservers()
        if self.panel is not None:
            self.panel.shutdown()

    def enter(self) -> None:
        if self.panel.parameters is None:
            self.panel.set_parameter_node(self.logic.getParameterNode())

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        self.panel.scene_closing()

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        # As Slicer's template: a closed scene gets no parameter node until the module is
        # shown again (enter() then makes one).
        if self.parent.isEntered:
            self.panel.set_parameter_node(self.logic.getParameterNode())

    def onSceneEndImport(self, caller: Any, event: Any) -> None:
        """A loaded scene's parameter node replaces the panel's state."""
        self.panel.set_parameter_node(self.logic.getParameterNode())


class MRSynthesisLogic(ScriptedLoadableModuleLogic):
    """Blocking synthesis from nodes to nodes, for batch mode and the self-test (no GUI here)."""

    def synthesize(self, rows: list[tuple[Any, str]], targets: list[str], **options: Any) -> LoadedResults:
        """Run the command line and wait (``options``: model, device, lesion, saliency, ...);
        raises ``SynthesisFailed`` with the command line's message."""
        return synthesize_and_wait(SceneBridge(slicer.mrmlScene), CliLauncher(), rows, targets, **options)


class MRSynthesisTest(ScriptedLoadableModuleTest):
    """Load, synthesise, saliency and lesion painting on a small generated case (inside Slicer)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_module_loads()
        missing = torchsetup.missing_packages()
        if missing:
            self.delayDisplay(f"Synthesis tests skipped: {', '.join(missing)} not installed")
            return
        self.setUp()
        self.test_synthesis_saliency_and_lesion()

    def test_module_loads(self) -> None:
        widget = slicer.modules.mrsynthesis.widgetRepresentation()
        self.assertIsNotNone(widget)
        self.assertIsNotNone(slicer.util.getModuleWidget("MRSynthesis").panel)
        self.delayDisplay("Module panel loaded")

    def test_synthesis_saliency_and_lesion(self) -> None:
        import tempfile

        missing = torchsetup.missing_packages()
        if missing:
            self.skipTest(f"{', '.join(missing)} not installed in Slicer's Python")
        from MRSynthesisLib.cards import ModelCard, build_network, save_model

        card = ModelCard(name="selftest", architecture="chartsias2018", inputs=["T1", "T2", "FLAIR"],
                         outputs=["T1", "T2", "FLAIR"], normalisation={"scheme": "mean_in_brain"},
                         params={"filters": [4, 8, 8], "latent_channels": 4}, lesion_input=True)
        model = save_model(card, build_network(card), os.path.join(tempfile.mkdtemp(), "selftest"))
        shape = (20, 28, 24)
        k, j, i = np.mgrid[:shape[0], :shape[1], :shape[2]]
        brain = ((k - 10) / 8.0) ** 2 + ((j - 14) / 11.0) ** 2 + ((i - 12) / 9.0) ** 2 < 1
        ijk_to_ras = np.array([[-1.0, 0, 0, 10], [0, -1.2, 0, 20], [0, 0, 1.5, -15], [0, 0, 0, 1]])
        t1 = slicer.util.addVolumeFromArray((brain * 800.0).astype(np.float32), ijk_to_ras, "case_T1")
        t2 = slicer.util.addVolumeFromArray((brain * (600.0 + 4 * k)).astype(np.float32), ijk_to_ras, "case_T2")
        self.delayDisplay("Generated T1 and T2")

        logic = MRSynthesisLogic()
        results = logic.synthesize([(t1, "T1"), (t2, "T2")], ["FLAIR"], model=str(model), device="cpu", saliency=True)
        flair = results.outputs["FLAIR"]
        self.assertEqual(flair.GetName(), "FLAIR synthetic (T1+T2)")
        self.assertEqual(flair.GetAttribute("MRSynthesis.Synthetic"), "true")  # the mark a saved scene keeps
        self.assertEqual(slicer.util.arrayFromVolume(flair).shape, shape)
        expected, actual = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        t1.GetIJKToRASMatrix(expected)
        flair.GetIJKToRASMatrix(actual)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(actual), slicer.util.arrayFromVTKMatrix(expected),
                                   atol=1e-5)
        self.assertEqual(sorted(results.saliency["FLAIR"]), ["T1", "T2"])
        self.assertAlmostEqual(sum(results.contributions["FLAIR"].values()), 1.0, places=4)
        self.delayDisplay("Synthesised FLAIR with saliency maps")

        saved = os.path.join(tempfile.mkdtemp(), "flair.nrrd")  # as the Save dialog saves: Slicer's own writer
        self.assertTrue(slicer.util.saveNode(flair, saved))
        with open(saved, "rb") as handle:
            header = handle.read(4096).split(b"\n\n")[0].decode("ascii", "replace")
        self.assertIn("ITK_FileNotes:=MRSynthesis synthetic FLAIR from T1+T2 (selftest)", header.splitlines())
        with open(saved[:-len(".nrrd")] + ".json", encoding="utf-8") as handle:
            self.assertEqual(json.load(handle)["image"], "flair.nrrd")
        self.delayDisplay("Saved FLAIR says it is synthetic")

        bridge = SceneBridge(slicer.mrmlScene)
        segmentation, segment_id = bridge.create_lesion_segment(t1)
        lesion = np.zeros(shape, np.uint8)
        lesion[8:12, 10:14, 8:12] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(lesion, segmentation, segment_id, t1)
        if slicer.util.mainWindow() is not None:
            views.open_segment_editor(segmentation, segment_id, t1)
            slicer.util.selectModule("MRSynthesis")
        lesioned = logic.synthesize([(t1, "T1"), (t2, "T2")], ["FLAIR"], model=str(model), device="cpu",
                                    lesion=(segmentation, segment_id)).outputs["FLAIR"]
        self.assertEqual(lesioned.GetName(), "FLAIR synthetic (T1+T2, lesion)")
        inside = lesion.astype(bool)
        self.assertFalse(np.allclose(slicer.util.arrayFromVolume(lesioned)[inside],
                                     slicer.util.arrayFromVolume(flair)[inside]))
        self.delayDisplay("Synthesised FLAIR with a painted lesion")
