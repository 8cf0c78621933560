"""What the extension build and Slicer's Python 3.9 need of the module's files."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

import slicer_paths  # noqa: F401  (puts MRSynthesis/ on sys.path)

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "MRSynthesis"
PYTHON_FILES = sorted(p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")
                      if "__pycache__" not in p.parts)


def test_the_module_cmakelists_ships_every_python_file():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    block = re.search(r"set\(MODULE_PYTHON_SCRIPTS(.*?)\)", cmake, re.S).group(1)
    listed = sorted(line.strip().replace("${MODULE_NAME}", "MRSynthesis") for line in block.splitlines()
                    if line.strip())
    assert listed == PYTHON_FILES


def test_the_module_and_the_library_parse_as_python_3_9_and_defer_annotations():
    """Slicer <= 5.8 runs Python 3.9: no 3.10 syntax, and no ``X | None`` evaluated at import. The library too:
    the panel runs it in PythonSlicer, and the extension build's byte-compiling only prints a syntax error."""
    library = sorted(p for p in (REPO / "MRSynthesisLib").rglob("*.py") if "__pycache__" not in p.parts)
    for path in [MODULE_DIR / name for name in PYTHON_FILES] + library:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path), feature_version=(3, 9))
        if _annotated(tree):
            assert "from __future__ import annotations" in source, path


def _annotated(tree: ast.AST) -> bool:
    """Whether a module holds annotations (which Python 3.9 would evaluate at import without the future import)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg,
                         node.args.kwarg]
            if node.returns is not None or any(a is not None and a.annotation is not None for a in arguments):
                return True
    return False


def test_the_panel_ui_uses_only_plain_qt_widgets():
    """Slicer's and PySide's loaders both build it; MRML widgets come from the factory instead."""
    tree = ElementTree.parse(REPO / "Resources" / "UI" / "MRSynthesis.ui")
    classes = {w.get("class") for w in tree.iter("widget")}
    assert classes <= {"QWidget", "QFrame", "QLabel", "QPushButton", "QGroupBox", "QComboBox", "QCheckBox",
                       "QTableWidget", "QProgressBar"}
    assert tree.find("customwidgets") is None


def test_mrsynthesis_py_is_the_only_python_file_at_the_module_top_level():
    """Slicer registers every .py file directly in qt-scripted-modules as a scripted module
    (qSlicerScriptedLoadableModuleFactory::isValidFile) and fails on one without a class of
    its name; scripts therefore go in a subfolder (SlicerMONAIAuto3DSeg: Scripts/)."""
    assert sorted(p.name for p in MODULE_DIR.glob("*.py")) == ["MRSynthesis.py"]


# What Slicer's own Python has (SuperBuild/External_python-{numpy,scipy,SimpleITK}.cmake).
SLICER_BUNDLED = {"numpy", "scipy", "SimpleITK"}


def test_the_command_lines_imports_are_in_slicers_python_or_installed_by_torchsetup():
    """Every import of MRSynthesisLib, those inside functions too (matplotlib writes the saliency
    figure of a panel run with saliency on): a missing one would fail a run half-way."""
    import sys

    from MRSynthesisModuleLib.torchsetup import REQUIRED

    third_party = set()
    for path in (REPO / "MRSynthesisLib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                third_party |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                third_party.add(node.module.split(".")[0])
    third_party -= set(sys.stdlib_module_names) | {"MRSynthesisLib"}
    assert third_party <= SLICER_BUNDLED | set(REQUIRED), third_party - SLICER_BUNDLED - set(REQUIRED)


def test_what_slicer_batch_mode_imports_itself_needs_neither_torch_nor_nibabel():
    """Batch mode checks its arguments, names the outputs' sidecars and saves in Slicer's own Python, before
    (and whether or not) the packages the command line needs are installed there: an import of nibabel on that
    path, through ``volume``, turned a missing package into a traceback. The module imports the hook that marks
    the files Slicer saves (``saved_files``) at start-up, so it is held to the same."""
    import subprocess
    import sys

    script = (REPO / "MRSynthesis" / "Scripts" / "batch.py").read_text(encoding="utf-8")
    modules = sorted(set(re.findall(r"from MRSynthesisLib\.(\w+) import", script)))
    assert {"header_notes", "provenance", "nifti_checks"} <= set(modules), modules  # the parse found them
    code = (f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(MODULE_DIR)!r}]; "
            + "; ".join(f"import MRSynthesisLib.{m}" for m in modules)
            + "; import MRSynthesisModuleLib.saved_files"
            + "; print(sorted({'nibabel', 'torch', 'matplotlib'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_the_extension_icon_and_screenshot_urls_name_files_of_this_repository():
    """The extension catalogue shows these; a URL into the repository must name a file it has."""
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    urls = dict(re.findall(r'set\((EXTENSION_(?:ICONURL|SCREENSHOTURLS)) "([^"]+)"\)', cmake))
    assert set(urls) == {"EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"}
    for key, url in urls.items():
        path = re.fullmatch(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(.+)", url).group(1)
        assert (REPO / path).is_file(), (key, url)
    assert urls["EXTENSION_SCREENSHOTURLS"].endswith(".png") and "Icons" not in urls["EXTENSION_SCREENSHOTURLS"]


def test_the_extension_installs_every_committed_resource_and_nothing_else():
    """The top-level CMakeLists globs the resources by kind (a stray file in Resources/ is not installed): each
    committed resource must match one of its patterns, or the extension would ship without it."""
    import subprocess
    from pathlib import PurePosixPath

    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    block = re.search(r"file\(GLOB MRSYNTHESIS_SHARED_RESOURCES (.*?)\)", cmake, re.S).group(1)
    patterns = re.findall(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/(\S+)", block)
    assert patterns and all(p.startswith("Resources/") for p in patterns)
    listed = subprocess.run(["git", "ls-files", "Resources"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the committed resources are unknown")
    committed = listed.stdout.split()
    assert "Resources/Models/chartsias-mimo-shared/model.safetensors" in committed
    for name in committed:
        path = PurePosixPath(name)
        matched = [p for p in patterns if len(path.parts) == len(PurePosixPath(p).parts) and path.match(p)]
        assert matched, f"{name} matches none of the CMakeLists resource patterns {patterns}"
