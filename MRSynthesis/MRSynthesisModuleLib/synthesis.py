"""One synthesis run from nodes to nodes: inputs written to a temporary folder, the job for
the command line, and afterwards the results read back as new nodes.

The panel runs the job in the background and polls; batch mode and the self-test wait for
it. Both go through ``PreparedRun`` so they write, name and load the same way.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .job import SynthesisJob, SynthesisResult, evaluate_arguments, input_path, off_plane_figures, saliency_name
from .process import CliLauncher, Outcome
from .scene import SceneBridge


@dataclass
class LoadedResults:
    """The nodes a finished run added to the scene, and the figures that came with them."""

    inputs: dict[str, Any]  # modality -> the input volume node it came from
    outputs: dict[str, Any]  # target -> volume node
    saliency: dict[str, dict[str, Any]] = field(default_factory=dict)  # target -> input modality -> node
    contributions: dict[str, dict[str, float]] = field(default_factory=dict)  # target -> input -> share in brain
    region_contributions: dict[str, dict[str, float]] = field(default_factory=dict)  # the same in the lesion
    lesion: Optional[Any] = None  # the segmentation whose segment was the lesion mask
    reference: Optional[tuple[Any, str]] = None  # the real volume and the target it was compared with
    saliency_objective: str = ""  # what the saliency maps are the gradient of (the command line's words)
    off_plane: dict[str, float] = field(default_factory=dict)
    off_plane_problem: str = ""  # why the figures are missing when a reference was given
    notes: list[str] = field(default_factory=list)
    device: str = ""

    def nodes(self) -> list[Any]:
        return [*self.outputs.values(), *(n for per in self.saliency.values() for n in per.values())]


class PreparedRun:
    """A temporary folder holding the run's input files; ``close()`` removes it."""

    def __init__(self, bridge: SceneBridge, rows: Sequence[tuple[Any, str]], targets: Sequence[str], *,
                 model: Optional[str] = None, device: str = "auto", lesion: Optional[tuple[Any, str]] = None,
                 lesion_file: Optional[str] = None, lesion_on: Optional[str] = None,
                 brain: Optional[tuple[Any, str]] = None,
                 brain_file: Optional[str] = None, saliency: bool = False,
                 saliency_reference_files: Optional[Mapping[str, str]] = None,
                 reference: Optional[tuple[Any, str, str]] = None, resample: bool = False,
                 native_spacing: bool = False, register: bool = False, precision: str = "auto",
                 plane: Optional[str] = None,
                 labels: Optional[Mapping[str, str]] = None) -> None:
        """``rows``: (volume node, modality), the first one's grid being the outputs' grid;
        ``lesion``: (segmentation node, segment ID) or ``lesion_file``: a mask file; ``lesion_on``: the modality
        of the input ``lesion_file`` was drawn on (the command line's ``--lesion-mask-on``; a segment's is the input
        that is its segmentation's reference geometry volume, ``SceneBridge.segment_drawn_on``); ``brain`` or
        ``brain_file`` the same for the brain mask (default: the command line takes the inputs' foreground);
        ``resample``: inputs (and the mask) on other grids are resampled onto the first one's
        instead of refused; ``native_spacing``: synthesise on the inputs' own voxels even where they
        are coarser than the model's (the command line's ``--native-spacing``); ``register``: the other
        inputs are registered rigidly onto the first one (``--register``);
        ``reference``: (real volume node, the target it is a scan of, the plane a 2D model slices in or None):
        with ``saliency`` the maps are the paper's P3S against it, and with a plane its off-plane consistency
        is measured;
        ``saliency_reference_files``: target -> a real scan of it on file (batch mode's ``--saliency-reference``);
        ``precision``, ``plane``: the command line's ``--precision`` and ``--plane``;
        ``labels``: modality -> what the user calls that input in messages (default: its node's name)."""
        others = (lesion and lesion[0], brain and brain[0], reference and reference[0])
        _check_same_transform([node for node, _ in rows] + [n for n in others if n is not None])
        self.bridge = bridge
        self.inputs = {modality: node for node, modality in rows}
        self.first_input = rows[0][0]
        self.lesion = lesion[0] if lesion is not None else None
        self.folder = tempfile.mkdtemp(prefix="MRSynthesis-")
        try:
            inputs = {}
            for node, modality in rows:
                inputs[modality] = input_path(self.folder, modality)
                bridge.write_volume(node, inputs[modality])
            if lesion is not None:
                lesion_file = self._path("lesion.nrrd")
                bridge.write_segment_mask(lesion[0], lesion[1], self.first_input, lesion_file)
                # Exported onto the first input's grid where it lies in the scene, on the anatomy of the input it
                # was painted on: with --register the command line moves it with that input's registration.
                drawn_on = bridge.segment_drawn_on(lesion[0])
                lesion_on = next((m for m, node in self.inputs.items() if drawn_on is not None
                                  and node.GetID() == drawn_on.GetID()), None)
            if brain is not None:
                brain_file = self._path("brain.nrrd")
                bridge.write_segment_mask(brain[0], brain[1], self.first_input, brain_file)
            self.reference = reference
            if reference is not None:
                bridge.write_volume(reference[0], self._path("reference.nrrd"))
        except BaseException:
            self.close()
            raise
        # The command line names the temporary files in its errors and notes; the user knows the volumes.
        self._labels = {path: (labels or {}).get(m) or f'"{self.inputs[m].GetName()}"' for m, path in inputs.items()}
        if lesion is not None:
            self._labels[lesion_file] = f'the lesion segment of "{lesion[0].GetName()}"'
        if brain is not None:
            self._labels[brain_file] = f'the brain segment of "{brain[0].GetName()}"'
        if reference is not None:
            self._labels[self._path("reference.nrrd")] = f'"{reference[0].GetName()}"'
        references = dict(saliency_reference_files or {})
        if saliency and reference is not None:
            references[reference[1]] = self._path("reference.nrrd")
        self.job = SynthesisJob(inputs, list(targets), self._path("out"), model=model, device=device,
                                lesion_mask=lesion_file, lesion_mask_on=lesion_on,
                                brain_mask=brain_file,
                                saliency_dir=self._path("saliency") if saliency else None,
                                saliency_references=references,
                                resample_to=rows[0][1] if resample else None, native_spacing=native_spacing,
                                register=register,
                                precision=precision, plane=plane)

    def _path(self, name: str) -> str:
        return str(Path(self.folder) / name)

    def explain(self, text: str) -> str:
        """A message of the command line with this run's temporary files named as the user knows them."""
        for path, label in self._labels.items():
            text = text.replace(path, label)
        return text

    def _provenance(self, image: str) -> dict:
        """The command line's sidecar of ``image`` with this run's temporary files named as the user knows them."""
        from MRSynthesisLib.provenance import sidecar_path

        record = json.loads(sidecar_path(image).read_text(encoding="utf-8"))
        record["inputs"] = {m: self._labels.get(p, p) for m, p in record["inputs"].items()}
        for key in ("lesion_mask", "brain_mask", "grid_of"):
            record[key] = self._labels.get(record[key], record[key])
        record["notes"] = [self.explain(note) for note in record["notes"]]
        return record

    def evaluate_arguments(self, synthesis: Outcome) -> Optional[list[str]]:
        """The off-plane measurement to run after ``synthesis``, when a reference was given to a 2D model."""
        if self.reference is None or self.reference[2] is None:
            return None
        _, target, plane = self.reference
        synthetic = SynthesisResult.from_event(synthesis.result).outputs[target]
        return evaluate_arguments(synthetic, self._path("reference.nrrd"), plane, self._path("metrics.json"))

    def load(self, synthesis: Outcome, evaluation: Optional[Outcome] = None) -> LoadedResults:
        """New nodes for the outputs and saliency maps; nothing is added when a read fails."""
        from MRSynthesisLib.provenance import saliency_description

        result = SynthesisResult.from_event(synthesis.result)
        loaded = LoadedResults(inputs=self.inputs, outputs={}, contributions=result.contributions,
                               region_contributions=result.region_contributions,
                               notes=[self.explain(note) for note in synthesis.notes],
                               device=result.device, lesion=self.lesion,
                               saliency_objective=result.saliency_objective,
                               reference=self.reference[:2] if self.reference else None)
        try:
            records = {}
            for target, path in result.outputs.items():
                loaded.outputs[target] = self.bridge.load_volume(path, self.job.output_name(target), self.first_input)
                records[target] = self._provenance(path)
                self.bridge.mark_synthetic(loaded.outputs[target], records[target])
            for target, maps in result.saliency.items():
                for modality, path in maps.items():
                    node = self.bridge.load_volume(path, saliency_name(target, modality), self.first_input)
                    self.bridge.style_saliency(node)
                    self.bridge.mark_saliency(node, saliency_description(target, modality,
                                                                         records[target]["model"]["name"]))
                    loaded.saliency.setdefault(target, {})[modality] = node
        except BaseException:
            self.bridge.remove(loaded.nodes())
            raise
        if evaluation is not None and evaluation.status == "done":
            metrics = json.loads(Path(self._path("metrics.json")).read_text(encoding="utf-8"))
            loaded.off_plane = off_plane_figures(metrics)
        elif evaluation is not None:
            loaded.off_plane_problem = self.explain(evaluation.message)
        return loaded

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _check_same_transform(nodes: Sequence[Any]) -> None:
    """Refuse nodes under different parent transforms.

    Volumes go to the command line as voxel grids without their parent transforms (the
    results are placed back under the first input's), so inputs under different transforms
    would be mixed out of register without a word.
    """
    transforms = {node.GetTransformNodeID() for node in nodes}
    if len(transforms) > 1:
        names = ", ".join(f"{node.GetName()!r} ({node.GetTransformNodeID() or 'no transform'})" for node in nodes)
        raise ValueError(f"the inputs are under different parent transforms: {names}; harden the transforms "
                         "(Transforms module) or put every input under the same transform first")


class SynthesisFailed(RuntimeError):
    """The command line refused or failed; ``exit_code`` is its own (2 bad input, 1 internal)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def synthesize_and_wait(bridge: SceneBridge, launcher: CliLauncher, rows: Sequence[tuple[Any, str]],
                        targets: Sequence[str], **options: Any) -> LoadedResults:
    """Batch mode and the self-test: run, wait, load; ``options`` are ``PreparedRun``'s."""
    prepared = PreparedRun(bridge, rows, targets, **options)
    try:
        outcome = launcher.run(prepared.job.arguments()).wait()
        if outcome.status != "done":
            raise SynthesisFailed(prepared.explain(outcome.message or f"synthesis {outcome.status}"),
                                  outcome.exit_code)
        return prepared.load(outcome)
    finally:
        prepared.close()
