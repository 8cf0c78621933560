"""The module panel: widgets from the .ui file wired to the parameter node and to runs.

Everything it works with is handed in: the MRML bridge, the node-selector factory, the
command-line launcher, the model catalog and ``actions`` (what only the Slicer
application can do: install packages, pick a folder, switch modules, arrange views).
So the same panel runs inside Slicer and, on real Qt widgets and real processes, in tests.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

from MRSynthesisLib import modalities
from MRSynthesisLib.errors import EXIT_BAD_INPUT

from . import paths
from .catalog import ModelCatalog, ModelInfo
from .job import DEVICES, PLANES, PRECISIONS
from .parameters import SynthesisParameters
from .process import CliLauncher, CliRun, Outcome
from .qtcompat import child, load_ui, prop, qt
from .scene import SceneBridge
from .synthesis import LoadedResults, PreparedRun

POLL_MS = 100


@dataclass
class InputRow:
    widget: Any
    selector: Any  # volume node selector
    modality: Any  # QComboBox


class SynthesisPanel:
    """Wiring only: what to run is decided here, how to run it lives in the injected objects."""

    def __init__(self, *, bridge: SceneBridge, widgets: Any, launcher: CliLauncher, catalog: ModelCatalog,
                 actions: Any) -> None:
        self.bridge, self.widgets, self.launcher = bridge, widgets, launcher
        self.catalog, self.actions = catalog, actions
        self.widget = load_ui(paths.resource("UI/MRSynthesis.ui"))
        self.ui = _Children(self.widget)
        self._status_is_hint = False
        self.parameters: Optional[SynthesisParameters] = None
        self.rows: list[InputRow] = []
        self.target_boxes: dict[str, Any] = {}
        self.results: Optional[LoadedResults] = None
        self._filling_widgets = False
        self.missing: list[str] = []  # Python packages the command line needs but cannot import
        self._models_run: Optional[CliRun] = None
        self._run: Optional[CliRun] = None
        self._prepared: Optional[PreparedRun] = None
        self._synthesis: Optional[Outcome] = None

        self.lesion_selector = widgets.segment_selector()
        self.ui.lesionSelectorContainer.layout().addWidget(self.lesion_selector)
        self.brain_selector = widgets.segment_selector()
        self.ui.brainSelectorContainer.layout().addWidget(self.brain_selector)
        self.reference_selector = widgets.volume_selector(none_enabled=True)
        self.ui.referenceSelectorContainer.layout().addWidget(self.reference_selector)
        self.reference_selector.setCurrentNode(None)
        self._removals = bridge.observe_removals(self._on_node_about_to_be_removed)
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self._poll)

        self.ui.applyButton.clicked.connect(self._on_apply)
        self.ui.addInputButton.clicked.connect(lambda *_: self.add_input_row())
        self.ui.addModelFolderButton.clicked.connect(self._on_add_model_folder)
        self.ui.installTorchButton.clicked.connect(self._on_install_packages)
        self.ui.paintLesionButton.clicked.connect(lambda *_: self.paint_lesion())
        self.ui.showSaliencyButton.clicked.connect(lambda *_: self._show_saliency())
        self.ui.showOffPlaneButton.clicked.connect(lambda *_: self._show_off_plane())
        self.ui.modelComboBox.currentIndexChanged.connect(lambda *_: self._on_model_changed())
        for combo in (self.ui.deviceComboBox, self.ui.precisionComboBox, self.ui.planeComboBox):
            combo.currentIndexChanged.connect(lambda *_: self._changed())
        self.ui.resampleCheckBox.toggled.connect(lambda *_: self._changed())
        self.ui.nativeSpacingCheckBox.toggled.connect(lambda *_: self._changed())
        self.ui.registerCheckBox.toggled.connect(lambda *_: self._changed())
        self.ui.saliencyCheckBox.toggled.connect(lambda *_: self._changed())
        self.ui.offPlaneTargetComboBox.currentIndexChanged.connect(lambda *_: self._changed())
        self._held_segments: dict[str, tuple[Any, str]] = {}  # per segment selector: what it held last
        for name, selector in (("lesion", self.lesion_selector), ("brain", self.brain_selector)):
            selector.currentNodeChanged.connect(lambda *_: self._changed())
            selector.currentSegmentChanged.connect(lambda *_, n=name, s=selector: self._on_segment_changed(n, s))
        self.reference_selector.currentNodeChanged.connect(lambda *_: self._changed())
        self._set_table(self.ui.contributionsTable, [], [], [])
        self._set_table(self.ui.offPlaneTable, [], [], [])
        self.refresh_packages()

    # -- parameter node ------------------------------------------------------------------

    def set_parameter_node(self, node: Any) -> None:
        """Show the state saved in ``node`` (None while the scene closes)."""
        self.parameters = SynthesisParameters(node) if node is not None else None
        if self.parameters is not None:
            self._restore()

    @contextlib.contextmanager
    def _filling(self) -> Iterator[None]:
        """While the panel fills its own widgets, their change signals neither save nor update."""
        outer, self._filling_widgets = self._filling_widgets, True
        try:
            yield
        finally:
            self._filling_widgets = outer

    def _restore(self) -> None:
        params = self.parameters
        with self._filling():
            for row in list(self.rows):
                self._remove_row_widgets(row)
            for node, modality in params.inputs:
                self.add_input_row(node, modality)
            self._select_model(*params.model)
            self.ui.deviceComboBox.setCurrentIndex(DEVICES.index(params.device) if params.device in DEVICES else 0)
            precision = PRECISIONS.index(params.precision) if params.precision in PRECISIONS else 0
            self.ui.precisionComboBox.setCurrentIndex(precision)
            self.ui.planeComboBox.setCurrentIndex(PLANES.index(params.plane) + 1 if params.plane in PLANES else 0)
            self.ui.resampleCheckBox.setChecked(params.resample)
            self.ui.nativeSpacingCheckBox.setChecked(params.native_spacing)
            self.ui.registerCheckBox.setChecked(params.register)
            self.ui.saliencyCheckBox.setChecked(params.saliency)
            for selector, (segmentation, segment_id) in ((self.lesion_selector, params.lesion),
                                                         (self.brain_selector, params.brain)):
                selector.setCurrentNode(segmentation)
                if segmentation is not None and segment_id:
                    selector.setCurrentSegmentID(segment_id)
            reference, target = params.reference
            self.reference_selector.setCurrentNode(reference)
            self._set_combo_text(self.ui.offPlaneTargetComboBox, target)
        self._update_state()

    def _save(self) -> None:
        if self.parameters is None:
            return
        params = self.parameters
        params.inputs = [(row.selector.currentNode(), prop(row.modality, "currentText")) for row in self.rows]
        model = self.model
        if model is not None:
            params.model = (model.name, model.folder)
        params.targets = self.targets
        params.device = DEVICES[prop(self.ui.deviceComboBox, "currentIndex")]
        params.precision = self.precision
        params.plane = self.plane or ""
        params.resample = self.ui.resampleCheckBox.isChecked()
        params.native_spacing = self.ui.nativeSpacingCheckBox.isChecked()
        params.register = self.ui.registerCheckBox.isChecked()
        params.saliency = self.ui.saliencyCheckBox.isChecked()
        for name, selector in (("lesion", self.lesion_selector), ("brain", self.brain_selector)):
            setattr(params, name, self._segment(selector) or (selector.currentNode(), ""))
        params.reference = (self.reference_selector.currentNode(), prop(self.ui.offPlaneTargetComboBox, "currentText"))

    def _changed(self) -> None:
        """A widget changed: save the state and update what depends on it (not while the panel
        itself is filling widgets, which would save half a state and recurse)."""
        if self._filling_widgets:
            return
        self._save()
        self._update_state()

    # -- packages and models -------------------------------------------------------------

    def refresh_packages(self) -> None:
        """Say what is missing, or list the models (which needs PyTorch in the subprocess)."""
        self.missing = missing = self.actions.missing_packages()
        self.ui.torchFrame.setVisible(bool(missing))
        if missing:
            self.ui.torchLabel.setText(f"{' and '.join(missing)} not installed in Slicer's Python: "
                                       "synthesis needs them.")
        else:
            self.load_models()
        self._update_state()

    def _on_install_packages(self, *_: Any) -> None:
        if self.actions.install_packages(self.missing):
            self.refresh_packages()

    def load_models(self) -> None:
        """List the models in the background; the combo box fills when the list arrives."""
        self.ui.modelInfoLabel.setText("Looking for models...")
        try:
            self._models_run = self.launcher.run(["models", "--json"], self.catalog.search_folders(), on_log=_log)
        except (OSError, ValueError) as error:  # Popen's: no interpreter, no permission, no memory
            self.ui.modelInfoLabel.setText(f"Could not list the models: {_cannot_start(error)}")
            return
        self.timer.start()

    def _on_models_listed(self, outcome: Outcome) -> None:
        self._models_run = None
        if outcome.status != "done":
            self.ui.modelInfoLabel.setText(f"Could not list the models: {outcome.message}")
            return
        self.catalog.update(outcome.stdout)
        with self._filling():
            self.ui.modelComboBox.clear()
            for model in self.catalog.models:
                self.ui.modelComboBox.addItem(model.label)
        if not self.catalog.models:
            self.ui.modelInfoLabel.setText("No model found: add a model folder.")
        remembered = self.parameters.model if self.parameters is not None else ("", "")
        self._select_model(*remembered)

    def _select_model(self, name: str, folder: str) -> None:
        models = self.catalog.models
        index = next((i for i, m in enumerate(models) if folder and m.folder == folder), None)
        if index is None:
            index = next((i for i, m in enumerate(models) if m.name == name), 0 if models else -1)
        self.ui.modelComboBox.setCurrentIndex(index)
        self._on_model_changed()

    def _on_add_model_folder(self, *_: Any) -> None:
        folder = self.actions.choose_folder()
        if folder:
            self.add_model_folder(folder)

    def add_model_folder(self, folder: str) -> None:
        self.catalog.add_folder(folder)
        self.load_models()

    @property
    def model(self) -> Optional[ModelInfo]:
        index = prop(self.ui.modelComboBox, "currentIndex")
        return self.catalog.models[index] if 0 <= index < len(self.catalog.models) else None

    def _on_model_changed(self) -> None:
        """The card constrains the modality choices and the targets, and is shown."""
        model = self.model
        if model is not None:
            self.ui.modelInfoLabel.setText(model.summary())
        with self._filling():
            for row in self.rows:
                self._fill_modalities(row, prop(row.modality, "currentText"))
            self._fill_targets(model)
        self._changed()

    def _fill_targets(self, model: Optional[ModelInfo]) -> None:
        wanted = set(self.parameters.targets) if self.parameters is not None else set(self.targets)
        for box in self.target_boxes.values():
            self.ui.targetsGroupBox.layout().removeWidget(box)
            box.deleteLater()
        self.target_boxes = {}
        for output in (model.outputs if model is not None else []):
            box = qt.QCheckBox(output)
            box.setChecked(output in wanted)
            box.toggled.connect(lambda *_: self._changed())
            self.ui.targetsGroupBox.layout().addWidget(box)
            self.target_boxes[output] = box

    @property
    def targets(self) -> list[str]:
        return [name for name, box in self.target_boxes.items() if box.isChecked()]

    def set_targets(self, targets: list[str]) -> None:
        for name, box in self.target_boxes.items():
            box.setChecked(name in targets)

    # -- inputs --------------------------------------------------------------------------

    def add_input_row(self, node: Any = None, modality: str = "") -> InputRow:
        """A row with a volume selector, its modality and a remove button."""
        widget = qt.QWidget()
        layout = qt.QHBoxLayout(widget)
        layout.setContentsMargins(0, 0, 0, 0)
        selector = self.widgets.volume_selector()
        combo = qt.QComboBox()
        combo.setToolTip("Modality of this input (guessed from the volume's name)")
        remove = qt.QPushButton("Remove")
        layout.addWidget(selector, 1)
        layout.addWidget(combo)
        layout.addWidget(remove)
        self.ui.inputsContainer.layout().addWidget(widget)
        row = InputRow(widget, selector, combo)
        self.rows.append(row)
        self._fill_modalities(row, modality)
        with self._filling():
            selector.setCurrentNode(node if node is not None else self._unused_volume())
            if not modality:
                self._guess_modality(row)
        selector.currentNodeChanged.connect(lambda *_: self._on_row_volume_changed(row))
        combo.currentIndexChanged.connect(lambda *_: self._changed())
        remove.clicked.connect(lambda *_: self.remove_input_row(row))
        self._changed()
        return row

    def remove_input_row(self, row: InputRow) -> None:
        self._remove_row_widgets(row)
        self._changed()

    def _remove_row_widgets(self, row: InputRow) -> None:
        self.rows.remove(row)
        self.ui.inputsContainer.layout().removeWidget(row.widget)
        row.widget.deleteLater()

    def _unused_volume(self) -> Any:
        used = {row.selector.currentNode() for row in self.rows}
        return next((v for v in self.bridge.scalar_volumes() if v not in used), None)

    def _on_node_about_to_be_removed(self, node: Any) -> None:
        """A chosen node is leaving the scene: its selector is emptied. Left alone, a node selector (a QComboBox)
        moves on to the node next in its list, making another volume this input or the real volume, another
        segmentation's first segment the lesion, without a word."""
        selectors = [row.selector for row in self.rows]
        for selector in (*selectors, self.reference_selector, self.lesion_selector, self.brain_selector):
            if selector.currentNode() is node:
                selector.setCurrentNode(None)

    def _on_segment_changed(self, name: str, selector: Any) -> None:
        """A segment selector whose segment was deleted moves on to its segmentation's first segment
        (qMRMLSegmentSelectorWidget::populateSegmentCombobox): that move is undone, to no segment, so that another
        segment never becomes the lesion or the brain without a word. A segment the user picks stays."""
        node, segment_id = selector.currentNode(), selector.currentSegmentID()
        held_node, held_id = self._held_segments.get(name, (None, ""))
        if (node is not None and node is held_node and held_id and segment_id != held_id
                and node.GetSegmentation().GetSegment(held_id) is None):
            self._held_segments[name] = (node, "")
            selector.setCurrentSegmentID("")  # "None": signals back here with no segment, which is then saved
            return
        self._held_segments[name] = (node, segment_id)
        self._changed()

    def _on_row_volume_changed(self, row: InputRow) -> None:
        self._guess_modality(row)
        self._changed()

    def _guess_modality(self, row: InputRow) -> None:
        node = row.selector.currentNode()
        guess = modalities.guess(node.GetName()) if node is not None else None
        if guess:
            self._set_combo_text(row.modality, guess)

    def _fill_modalities(self, row: InputRow, keep: str) -> None:
        allowed = self.model.inputs if self.model is not None else list(modalities.CANONICAL)
        with self._filling():
            row.modality.clear()
            for name in allowed:
                row.modality.addItem(name)
            self._set_combo_text(row.modality, keep)

    def _set_status(self, text: str, hint: bool = False) -> None:
        """The status line; a hint (why Apply is off, or "Ready.") gives way to the next state."""
        self._status_is_hint = hint
        self.ui.statusLabel.setText(text)

    @staticmethod
    def _set_combo_text(combo: Any, text: str) -> None:
        index = combo.findText(text)
        if index >= 0:
            combo.setCurrentIndex(index)

    @property
    def inputs(self) -> list[tuple[Any, str]]:
        return [(row.selector.currentNode(), prop(row.modality, "currentText")) for row in self.rows]

    @property
    def precision(self) -> str:
        return PRECISIONS[prop(self.ui.precisionComboBox, "currentIndex")]

    @property
    def plane(self) -> Optional[str]:
        """The plane chosen for 2D models; None: the card's."""
        index = prop(self.ui.planeComboBox, "currentIndex")
        return PLANES[index - 1] if index > 0 else None

    @staticmethod
    def _segment(selector: Any) -> Optional[tuple[Any, str]]:
        """(segmentation, segment ID) chosen in a segment selector; None unless a segmentation is selected and
        holds that segment: qMRMLSegmentSelectorWidget keeps its last ID when its segmentation is unselected or
        removed, or loses that segment."""
        node, segment_id = selector.currentNode(), selector.currentSegmentID()
        if node is None or not segment_id or node.GetSegmentation().GetSegment(segment_id) is None:
            return None
        return node, segment_id

    def _lesion(self) -> Optional[tuple[Any, str]]:
        """The lesion segment a run uses: none with a model that takes no lesion mask, whose choice is kept
        for a model that does."""
        model = self.model
        return self._segment(self.lesion_selector) if model is not None and model.lesion_input else None

    def _unused_lesion_note(self) -> str:
        model = self.model
        if model is None or model.lesion_input or self._segment(self.lesion_selector) is None:
            return ""
        return f"model {model.name} takes no lesion mask: the lesion segment is not used"

    # -- lesion --------------------------------------------------------------------------

    def paint_lesion(self) -> tuple[Any, str]:
        """Add a "lesion" segment on the chosen input, select it, and open Segment Editor on it."""
        volume = self.inputs[prop(self.ui.paintVolumeComboBox, "currentIndex")][0]
        current = self.lesion_selector.currentNode()
        segmentation, segment_id = self.bridge.create_lesion_segment(volume, current)
        self.lesion_selector.setCurrentNode(segmentation)
        self.lesion_selector.setCurrentSegmentID(segment_id)
        self._changed()
        self.actions.open_segment_editor(segmentation, segment_id, volume)
        return segmentation, segment_id

    # -- state ---------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Why Apply cannot run now; empty when it can."""
        found = []
        missing = self.missing
        model = self.model
        inputs = self.inputs
        chosen = [m for _, m in inputs]
        if missing:
            found.append(f"install {' and '.join(missing)} first")
        if model is None:
            found.append("choose a model")
        elif model.problem:
            found.append(f"model {model.name} is unusable")
        if not inputs:
            found.append("add at least one input")
        if any(node is None for node, _ in inputs):
            found.append("choose a volume in every input row")
        if any(not m for m in chosen) or len(set(chosen)) != len(chosen):
            found.append("give each input a different modality")
        if len({node for node, _ in inputs}) != len(inputs):
            found.append("use each volume once")
        if not self.targets:
            found.append("choose at least one target")
        return found

    def _update_state(self) -> None:
        running = self._run is not None
        model = self.model
        self._fill_paint_choices()
        self._fill_off_plane_targets()
        slicewise = model is not None and model.spatial_dims == 2
        self.ui.lesionGroupBox.setEnabled(not running and model is not None and model.lesion_input)
        self.ui.saliencyCheckBox.setEnabled(not running and model is not None)  # P3S for 2D and 3D models
        self.ui.offPlaneGroupBox.setEnabled(not running)  # the real volume serves saliency for 3D models too
        self.ui.showSaliencyButton.setEnabled(bool(self.results and self.results.saliency))
        self.ui.showOffPlaneButton.setEnabled(bool(self.results and self.results.off_plane))
        self.ui.planeComboBox.setEnabled(not running and slicewise)
        for name in ("modelGroupBox", "inputsGroupBox", "targetsGroupBox", "deviceComboBox", "precisionComboBox"):
            getattr(self.ui, name).setEnabled(not running)
        if running:
            return
        problems = self.problems()
        self.ui.applyButton.setEnabled(not problems)
        self.ui.applyButton.setToolTip("; ".join(problems).capitalize())
        note = self._unused_lesion_note()
        self.ui.lesionGroupBox.setToolTip(note[:1].upper() + note[1:])  # the model's name as it is
        if problems or self._status_is_hint:
            ready = f"Ready ({note})." if note else "Ready."
            self._set_status(f"To synthesise: {'; '.join(problems)}." if problems else ready, hint=True)

    def _fill_paint_choices(self) -> None:
        combo = self.ui.paintVolumeComboBox
        labels = [f"{m}: {n.GetName()}" if n is not None else m for n, m in self.inputs]
        if [combo.itemText(i) for i in range(prop(combo, "count"))] != labels:
            combo.clear()
            for label in labels:
                combo.addItem(label)
        self.ui.paintLesionButton.setEnabled(bool(labels) and all(n is not None for n, _ in self.inputs))

    def _fill_off_plane_targets(self) -> None:
        combo = self.ui.offPlaneTargetComboBox
        targets = self.targets
        if [combo.itemText(i) for i in range(prop(combo, "count"))] == targets:
            return
        keep = prop(combo, "currentText") or (self.parameters.reference[1] if self.parameters is not None else "")
        with self._filling():
            combo.clear()
            for target in targets:
                combo.addItem(target)
            self._set_combo_text(combo, keep)

    # -- running -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._run is not None

    def _on_apply(self, *_: Any) -> None:
        if self.running:
            self.cancel()
        else:
            self.apply()

    def apply(self) -> None:
        """Write the inputs, start the command line, and turn Apply into Cancel."""
        model = self.model
        slicewise = model.spatial_dims == 2
        plane = self.plane if slicewise else None
        reference = self.reference_selector.currentNode()
        target = prop(self.ui.offPlaneTargetComboBox, "currentText")
        measured_in = (plane or model.plane) if slicewise else None  # off-plane consistency: 2D models only
        self.ui.errorLabel.setText("")
        self.ui.notesLabel.setText("")
        self.ui.saliencyObjectiveLabel.setText("")
        try:
            self._prepared = PreparedRun(
                self.bridge, self.inputs, self.targets, model=model.folder,
                device=DEVICES[prop(self.ui.deviceComboBox, "currentIndex")],
                lesion=self._lesion(), brain=self._segment(self.brain_selector),
                saliency=self.ui.saliencyCheckBox.isChecked(),
                reference=(reference, target, measured_in) if reference is not None and target else None,
                resample=self.ui.resampleCheckBox.isChecked(),
                native_spacing=self.ui.nativeSpacingCheckBox.isChecked(),
                register=self.ui.registerCheckBox.isChecked(), precision=self.precision, plane=plane)
        except (OSError, ValueError) as error:
            self.ui.errorLabel.setText(f"Could not write the inputs: {error}")
            return
        self._synthesis = None
        self._start(self._prepared.job.arguments(), "Starting...")

    def _start(self, arguments: list[str], status: str) -> None:
        """Start the command line; one that cannot start ends the run here, its folder removed."""
        try:
            self._run = self.launcher.run(arguments, self.catalog.search_folders(), on_progress=self._on_progress,
                                          on_log=_log)
        except (OSError, ValueError) as error:  # Popen's: no interpreter, no permission, no memory
            self._close_run()
            self._set_status("Failed.")
            self.ui.errorLabel.setText(_cannot_start(error))
            self._update_state()
            return
        self.ui.applyButton.setText("Cancel")
        self.ui.applyButton.setEnabled(True)
        self.ui.applyButton.setToolTip("Stop the run; nothing is added to the scene")
        self._set_status(status)
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(0)
        self._update_state()
        self.timer.start()

    def cancel(self) -> None:
        self._run.cancel()
        self.ui.applyButton.setEnabled(False)
        self._set_status("Cancelling...")

    def _on_progress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.setValue(int(round(100 * fraction)))
        self._set_status(message)

    def _poll(self) -> None:
        if self._models_run is not None:
            listed = self._models_run.poll()
            if listed is not None:
                self._on_models_listed(listed)
        if self._run is not None:
            outcome = self._run.poll()
            if outcome is not None:
                self._on_run_ended(outcome)
        if self._models_run is None and self._run is None:
            self.timer.stop()

    def _on_run_ended(self, outcome: Outcome) -> None:
        if self._synthesis is None:  # the synthesis ended
            evaluation = self._prepared.evaluate_arguments(outcome) if outcome.status == "done" else None
            if evaluation is not None:
                self._synthesis = outcome
                self._start(evaluation, "Measuring off-plane consistency...")
                if self.running:
                    self.ui.progressBar.setRange(0, 0)  # busy: `evaluate` reports no progress
                return
            synthesis, evaluation = outcome, None
        else:  # the off-plane measurement ended; cancelling it cancels the whole run
            synthesis, evaluation = self._synthesis, outcome
            if evaluation.status == "cancelled":
                synthesis = evaluation
        self._run = None
        try:
            self._finish(synthesis, evaluation)
        finally:
            self._close_run()
            self._update_state()

    def _close_run(self) -> None:
        """Forget the run and remove its temporary folder (the inputs' full-size copies)."""
        self._run = None
        if self._prepared is not None:
            self._prepared.close()
            self._prepared = None
        self.ui.applyButton.setText("Apply")
        self.ui.progressBar.setRange(0, 100)

    def _finish(self, synthesis: Outcome, evaluation: Optional[Outcome]) -> None:
        if synthesis.status == "cancelled":
            self.ui.progressBar.setValue(0)
            self._set_status("Cancelled: nothing was added to the scene.")
            return
        if synthesis.status == "failed":
            self.ui.progressBar.setValue(0)
            self._set_status("Failed.")
            self.ui.errorLabel.setText(self._failure_text(synthesis))
            return
        try:
            self.results = self._prepared.load(synthesis, evaluation)
        except (OSError, ValueError, KeyError) as error:
            self.ui.errorLabel.setText(f"Could not load the results: {error}")
            return
        self.ui.progressBar.setValue(100)
        self._show_results()

    def _failure_text(self, synthesis: Outcome) -> str:
        """The command line's message; for inputs on different grids, where the panel's choice is."""
        message = self._prepared.explain(synthesis.message)
        if (synthesis.exit_code == EXIT_BAD_INPUT and "different grids" in message
                and self._prepared.job.resample_to is None):
            box = prop(self.ui.resampleCheckBox, "text")
            message += f'\nIn this panel: register the inputs first, or tick "{box}" (under Inputs) to resample them.'
        return message

    def _notes_text(self, notes: list[str]) -> str:
        """The command line's notes, and the boxes of this panel that the options they name are."""
        boxes = {"--register": self.ui.registerCheckBox, "--native-spacing": self.ui.nativeSpacingCheckBox}
        named = [f'{option} is the "{prop(box, "text")}" box' for option, box in boxes.items()
                 if any(option in note for note in notes)]
        return "\n".join([*notes, *([f"In this panel (under Inputs): {'; '.join(named)}."] if named else [])])

    def _show_results(self) -> None:
        results = self.results
        names = ", ".join(node.GetName() for node in results.outputs.values())
        self._set_status(f"Done on {results.device}: {names}.")
        self.ui.notesLabel.setText(self._notes_text(results.notes))
        if results.off_plane_problem:
            self.ui.errorLabel.setText(f"Off-plane consistency not measured: {results.off_plane_problem}")
        modalities_used = list(results.inputs)
        # one column per target, in the brain, and beside it in the painted lesion when there is one
        columns = [(t, results.contributions[t], t) for t in results.contributions]
        columns += [(t, results.region_contributions[t], f"{t} in lesion") for t in results.region_contributions]
        columns.sort(key=lambda column: list(results.contributions).index(column[0]))
        self._set_table(self.ui.contributionsTable, [label for _, _, label in columns], modalities_used,
                        [[f"{100 * shares.get(m, 0.0):.1f} %" for _, shares, _ in columns] for m in modalities_used])
        objective = "\n".join(part for part in results.saliency_objective.split("; ") if part)
        if "target-free" in objective:
            objective += "\nA real volume of the target (below) gives the paper's P3S instead."
        self.ui.saliencyObjectiveLabel.setText(objective)
        figures = results.off_plane
        self._set_table(self.ui.offPlaneTable, ["value"], list(figures), [[f"{v:.4g}"] for v in figures.values()])
        self.actions.show_result(self._main_output(), results.lesion if _in_scene(results.lesion) else None)
        if figures:
            self._show_off_plane()
        elif results.saliency:
            self._show_saliency()

    def _main_output(self) -> Any:
        """The output compared with the reference, else the first one."""
        outputs = self.results.outputs
        reference = self.results.reference
        return outputs[reference[1]] if reference else next(iter(outputs.values()))

    def _show_saliency(self) -> None:
        """The maps beside their inputs, those the user has not removed since."""
        target, maps = next(iter(self.results.saliency.items()))
        volumes = self.results.inputs
        shown = [(volumes[m], node) for m, node in maps.items() if _in_scene(volumes[m]) and _in_scene(node)]
        if _in_scene(self.results.outputs[target]) and shown:
            self.actions.show_saliency(self.results.outputs[target], shown)

    def _show_off_plane(self) -> None:
        result, reference = self._main_output(), self.results.reference[0]
        if _in_scene(result) and _in_scene(reference):
            self.actions.show_off_plane(result, reference)

    def scene_closing(self) -> None:
        """The scene closes: stop the run, forget its results (their nodes go) and the parameter node."""
        if self.running:
            self.cancel()
        self.results = None
        self._set_table(self.ui.contributionsTable, [], [], [])
        self._set_table(self.ui.offPlaneTable, [], [], [])
        for label in (self.ui.notesLabel, self.ui.errorLabel, self.ui.saliencyObjectiveLabel):
            label.setText("")
        self.set_parameter_node(None)
        self._update_state()

    @staticmethod
    def _set_table(table: Any, columns: list[str], rows: list[str], cells: list[list[str]]) -> None:
        table.setColumnCount(len(columns))
        table.setRowCount(len(rows))
        table.setHorizontalHeaderLabels(columns)
        table.setVerticalHeaderLabels(rows)
        for r, values in enumerate(cells):
            for c, text in enumerate(values):
                table.setItem(r, c, qt.QTableWidgetItem(text))
        header = prop(table.horizontalHeader(), "sizeHint").height() if columns else 0
        table.setFixedHeight(header + table.verticalHeader().length() + 2 * prop(table, "frameWidth"))
        table.setVisible(bool(rows))

    def shutdown(self) -> None:
        """Stop whatever runs, remove its temporary folder and let go of the parameter node (the module is
        closing, or reloaded: the old panel's widgets may outlive it and must not write the new panel's state)."""
        for run in (self._run, self._models_run):
            if run is not None:
                run.cancel()
        self.timer.stop()
        self._close_run()
        self.bridge.stop_observing(self._removals)
        self.parameters = None


class _Children:
    """``ui.name``: the .ui file's widget of that object name."""

    def __init__(self, root: Any) -> None:
        self._root = root

    def __getattr__(self, name: str) -> Any:
        return child(self._root, name)


def _log(line: str) -> None:
    logging.info("mrsynthesis: %s", line)


def _cannot_start(error: Exception) -> str:
    return f"the MRSynthesis command line could not be started: {error}"


def _in_scene(node: Any) -> bool:
    """Whether a node of a finished run is still in the scene (the user may remove nodes meanwhile)."""
    return node is not None and node.GetScene() is not None
