"""The module panel after a real synthesis, saved as the extension's screenshot (run by hand).

Drives the same panel as ``Testing/Python/test_slicer_panel.py`` (real Qt widgets through
PySide6 offscreen, real MRML classes from ``slicer-core``, the real command line in a
background process), but with the bundled model on a real MS subject: T1 + T2 in, FLAIR out,
the expert lesion mask painted as the lesion segment, P3S saliency and the off-plane check
against the real FLAIR. Writes the PNG that ``EXTENSION_SCREENSHOTURLS`` points to::

    QT_QPA_PLATFORM=offscreen .venv/bin/python Testing/Screenshots/panel_screenshot.py \\
        --case ../shared/data/ms/patient07 --out docs/images/mrsynthesis-panel.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Python"))

from Qt import QtWidgets  # noqa: E402

import slicer_support as support  # noqa: E402  (puts MRSynthesis/ on sys.path)
from MRSynthesisModuleLib.catalog import ModelCatalog  # noqa: E402
from MRSynthesisModuleLib.panel import SynthesisPanel  # noqa: E402
from MRSynthesisModuleLib.process import CliLauncher  # noqa: E402
from MRSynthesisModuleLib.scene import SceneBridge  # noqa: E402
from slicer_widgets import DictSettings, RecordingActions, StandInWidgetFactory  # noqa: E402

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
FILES = {"T1": "T1.nii.gz", "T2": "T2.nii.gz", "FLAIR": "FLAIR.nii.gz", "lesion": "lesion_mask.nii.gz"}


def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The (k, j, i) array and IJK-to-RAS matrix of an image file, as Slicer would load it."""
    image = sitk.ReadImage(str(path))
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image), LPS_TO_RAS @ matrix


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=Path("../shared/data/ms/patient07"),
                        help="a folder in the shared MS naming (T1, T2, FLAIR, lesion_mask .nii.gz)")
    parser.add_argument("--out", type=Path, default=Path("docs/images/mrsynthesis-panel.png"))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the synthesis")
    args = parser.parse_args()
    missing = [n for n in FILES.values() if not (args.case / n).is_file()]
    if missing:
        parser.error(f"{args.case} lacks {', '.join(missing)}")

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    scene = support.new_scene()
    arrays, nodes = {}, {}
    for modality in ("T1", "T2", "FLAIR"):
        arrays[modality], matrix = read(args.case / FILES[modality])
        nodes[modality] = support.add_volume(scene, arrays[modality].astype(np.float32),
                                             f"{args.case.name}_{modality}", matrix)
    lesion = read(args.case / FILES["lesion"])[0] > 0.5

    actions = RecordingActions()
    panel = SynthesisPanel(bridge=SceneBridge(scene), widgets=StandInWidgetFactory(scene), launcher=CliLauncher(),
                           catalog=ModelCatalog(DictSettings()), actions=actions)
    panel.set_parameter_node(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    support.wait_until(lambda: not panel.timer.isActive(), 120, app.processEvents)
    bundled = [m.name for m in panel.catalog.models if m.origin == "bundled"]
    if not bundled:
        raise SystemExit("the command line lists no bundled model")
    panel.ui.modelComboBox.setCurrentIndex([m.name for m in panel.catalog.models].index(bundled[0]))
    panel.ui.addInputButton.click()
    panel.ui.addInputButton.click()
    panel.set_targets(["FLAIR"])
    panel.ui.saliencyCheckBox.setChecked(True)
    panel.ui.paintLesionButton.click()
    segmentation, segment_id = panel.lesion_selector.currentNode(), panel.lesion_selector.currentSegmentID()
    support.paint(scene, segmentation, segment_id, lesion, nodes["T1"])
    panel.reference_selector.setCurrentNode(nodes["FLAIR"])
    if panel.problems():
        raise SystemExit(f"the panel refuses to run: {panel.problems()}")
    panel.ui.applyButton.click()
    support.wait_until(lambda: not panel.running, args.timeout, app.processEvents)
    if panel.ui.errorLabel.text():
        raise SystemExit(f"synthesis failed: {panel.ui.errorLabel.text()}")
    panel.widget.resize(440, max(1020, panel.widget.sizeHint().height()))  # every row visible
    panel.widget.show()
    app.processEvents()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not panel.widget.grab().save(str(args.out)):
        raise SystemExit(f"could not write {args.out}")
    print(f"{panel.ui.statusLabel.text()}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
