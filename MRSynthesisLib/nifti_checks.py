"""What ITK's NIfTI reader does not check: a file that ends before its voxels do, and NIfTI-2.

ITK's NIfTI reader (SimpleITK's, and so Slicer's) fills the voxels missing from a truncated
``.nii`` or ``.nii.gz`` with zeros without a word: an interrupted copy or download then enters
the model as a scan with half its slices black, and the result looks like a failure of the
model. (Its NRRD and MetaImage readers do raise.) The header says how many bytes the voxels
take; this checks that the file holds them, reading a gzip stream through (and so its CRC) without
keeping it.

ITK does not read NIfTI-2 at all ("Unable to determine ImageIO reader"); ``is_nifti2`` lets the
message say so. Only the standard library and SimpleITK: Slicer's batch script checks its inputs with it before
Slicer loads them, in a Python that may not have nibabel yet.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import SimpleITK as sitk

CHUNK = 1 << 20  # most bytes decompressed per step: memory stays flat whatever the volume's size


def truncation(path: str | os.PathLike) -> str | None:
    """Why ``path`` (a NIfTI file) lacks some of its voxels, or None when it holds them all.

    None as well for another format, and for a header ITK cannot read: the reader that comes next
    says what is wrong with it."""
    name = str(path).lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    expected = _expected_bytes(path)
    if expected is None:
        return None
    if name.endswith(".nii"):
        found = os.path.getsize(path)
    elif not _is_gzip(path):
        # Refused, not read as ITK's znzlib would: nibabel (and with it FSL's and nilearn's readers) opens a .nii.gz
        # through gzip and fails on it, and the file is intact, so the fix is its name, not a new copy.
        return "is not gzip-compressed, although its name ends in .nii.gz: an uncompressed NIfTI; rename it to .nii"
    else:
        try:
            found = _gzip_length(path)
        except (OSError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
            return f"its gzip stream is damaged ({error}); copy or download it again"
    if found >= expected:
        return None
    return (f"is truncated: its header announces {expected:,} bytes of header and voxels, the file holds "
            f"about {100 * found / expected:.0f} % of them (the rest would be read as zeros), as an interrupted "
            "copy or download leaves it; copy it again")


def _is_gzip(path: str | os.PathLike) -> bool:
    """Whether the file starts with gzip's magic number (RFC 1952: 0x1f 0x8b)."""
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def is_nifti2(path: str | os.PathLike) -> bool:
    """The header's first field, its own size, is 540 in NIfTI-2 (348 in NIfTI-1), in either byte order."""
    name = str(path).lower()
    if not name.endswith((".nii", ".nii.gz")):
        return False
    try:
        with (gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb")) as stream:
            head = stream.read(4)
    except (OSError, EOFError, zlib.error):
        return False
    return len(head) == 4 and 540 in (struct.unpack("<i", head)[0], struct.unpack(">i", head)[0])


def _expected_bytes(path: str | os.PathLike) -> int | None:
    """Offset of the voxels plus their size, from the header (NIfTI-1 and NIfTI-2 alike)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    keys = set(reader.GetMetaDataKeys())
    if not {"vox_offset", "bitpix", "dim[0]"} <= keys:  # an ITK older than these keys: no check
        return None
    try:
        rank = int(reader.GetMetaData("dim[0]"))
        dims = [int(reader.GetMetaData(f"dim[{axis}]")) for axis in range(1, rank + 1)]
        bits = int(reader.GetMetaData("bitpix"))
        offset = int(float(reader.GetMetaData("vox_offset")))
    except (RuntimeError, ValueError):
        return None
    return offset + math.prod(max(1, d) for d in dims) * bits // 8


def _gzip_length(path: str | os.PathLike) -> int:
    """Bytes the stream decompresses to. Read to its end, where gzip checks its CRC: a corrupted block
    can inflate to the right length of wrong voxels, and only the CRC tells."""
    count = 0
    with gzip.open(path, "rb") as stream:
        try:
            while chunk := stream.read1(CHUNK):  # one step at a time: a stream that ends early stops early
                count += len(chunk)
        except EOFError:  # the stream ended early: all but the last step's output is counted
            pass
    return count
