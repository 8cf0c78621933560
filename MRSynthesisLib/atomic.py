"""Writing files so that an interrupted run never leaves a half-written one under the final name.

Every writer in MRSynthesis writes to a hidden temporary name in the destination folder,
gives it the mode a plain ``open`` would, and renames it into place: a rename within one
folder is atomic, so the final name holds either the old file, or the complete new one.
``check_writable`` is the other half of not losing what the user had: it refuses, before any
work, an output that would replace an input, or an existing file without ``--overwrite``.
Nothing here imports torch: Slicer's batch script uses it in Slicer's own Python.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import InputError

PARTIAL = ".partial"  # in the name of every temporary file ``replacing`` makes
# What the user's machine or path, not our code, is to blame for: a full disk or quota, no permission, a read-only
# file system, a file where the path needs a folder (or the reverse).
UNWRITABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                        errno.EEXIST, errno.EISDIR})
IN_THE_WAY = frozenset({errno.ENOTDIR, errno.EEXIST})  # what making the folder says of a file in its place


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named as ``replacing`` names its temporary files (``.FLAIR.nii.gz.x1y2.partial.nii.gz``)."""
    name = Path(path).name
    return name.startswith(".") and PARTIAL + "." in name + "."


@contextlib.contextmanager
def replacing(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it becomes ``path``, on failure it is removed.

    ``suffix`` ends the temporary name, for writers that choose the format by extension. A full disk, a
    read-only folder or a missing permission is an ``InputError`` naming ``path`` (the user can fix it;
    it is not a bug of ours).
    """
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL + suffix, dir=path.parent)
        os.close(handle)
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp made it private; give the usual mode
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in UNWRITABLE:
            reason = error.strerror if error.errno not in IN_THE_WAY else "a file stands where its folder must be"
            raise InputError(f"{path}: could not be written ({reason}); nothing was left under that name") from None
        raise


def read_json(path: str | os.PathLike, error: type[InputError] = InputError) -> object:
    """The counterpart of ``write_json``: a JSON file's content; a file that is not valid JSON (or
    not UTF-8) is ``error``, naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None


def write_json(path: str | os.PathLike, data: object) -> Path:
    with replacing(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return Path(path)


def check_writable(paths: Sequence[Path], inputs: Sequence[Path], overwrite: bool) -> None:
    """Fail before any work when an output would replace an input, or an existing file without --overwrite, or its
    folder cannot be written into (``check_folder``)."""
    sources = {Path(p).resolve() for p in inputs}
    for path in map(Path, paths):
        blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
        if blocking is not None:
            raise InputError(f"{path}: {blocking} is a file, not a folder to write into")
        if path.resolve() in sources:
            raise InputError(f"{path}: is one of the inputs; outputs never replace inputs")
        if path.exists() and not overwrite:
            raise InputError(f"{path}: already exists; choose another name or pass --overwrite")
    for folder in {Path(p).parent for p in paths}:
        check_folder(folder)


def check_folder(folder: Path) -> None:
    """Fail at once when ``folder`` (or, not there yet, the nearest folder above it, where it will be made) cannot be
    written into: create and remove a temporary file there. A read-only folder was found only when the first output
    was written, after the whole inference (20-60 s a volume; in a batch, every subject's in turn)."""
    existing = next((f for f in (Path(folder), *Path(folder).parents) if f.is_dir()), None)
    if existing is None:
        return
    try:
        handle, probe = tempfile.mkstemp(prefix=".mrsynthesis-probe.", suffix=PARTIAL, dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        if error.errno in UNWRITABLE:
            raise InputError(f"{folder}: cannot be written into ({error.strerror}); choose another output folder, "
                             "or make it writable") from None
        raise


def check_distinct_outputs(planned: Sequence[tuple[str, Path]]) -> None:
    """Refuse two planned outputs under one name (an output's sidecar and the saliency contributions.json, a P3S map
    named like an output, --json equal to --figure): the second would silently replace the first, or be refused as
    "already exists" after the whole run. ``planned``: (what it is, where it goes)."""
    seen: dict[Path, str] = {}
    for role, path in planned:
        key = Path(os.path.abspath(path))
        if key in seen:
            raise InputError(f"{path}: would be written twice, as {seen[key]} and as {role}; choose other names")
        seen[key] = role
