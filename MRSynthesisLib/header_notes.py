"""The one-line note in an image file's header that says what the image is, also in files another program saved.

``volume.write_volume`` sets it through ITK (``ITK_FileNotes``: NIfTI's ``descrip``, a NRRD key/value line, a
MetaImage field). Slicer's MRML storage, which batch mode saves through, writes none, so a synthetic image saved
there would pass for an acquired scan once its JSON sidecar is lost; ``write_note`` puts the same line into such a
file afterwards, as ITK would have written it, and leaves every other byte of the header and the voxels alone.

Standard library only: Slicer's batch script imports it before Slicer's Python may have nibabel or torch.
"""

from __future__ import annotations

import gzip
import os
import re

from .formats import suffix_of

KEY = "ITK_FileNotes"  # the metadata key ITK's readers and writers use for the note in every format
DESCRIPTION_BYTES = 79  # NIfTI-1's descrip: 80 bytes with the terminating NUL; ITK's NIfTI writer refuses more
_NIFTI1_DESCRIP = slice(148, 228)
_NIFTI1_MAGICS = (b"n+1\0", b"ni1\0")
_HEADER_LIMIT = 1 << 16  # NRRD and MetaImage headers are a few hundred bytes of text
GZIP_LEVEL = 6  # zlib's default, as ITK's writers use


def header_line(text: str) -> str:
    """``text`` as every format holds it: ASCII (others replaced by "?"), at most ``DESCRIPTION_BYTES``."""
    return text.encode("ascii", "replace")[:DESCRIPTION_BYTES].decode().replace("\n", " ")


def write_note(path: str | os.PathLike, text: str) -> None:
    """Put ``header_line(text)`` into the header of the single-file image ``path`` (NIfTI-1, NRRD or MetaImage
    with attached data), replacing a note already there. Rewrites ``path`` in place: call it on a temporary name
    (``atomic.replacing``). A header not laid out as those formats are is a ``ValueError`` naming the file."""
    line = header_line(text)
    suffix = suffix_of(path)
    with open(path, "rb") as handle:
        data = handle.read()
    if suffix in (".nii", ".nii.gz"):
        raw = bytearray(gzip.decompress(data) if suffix == ".nii.gz" else data)
        if len(raw) < 348 or 348 not in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")) \
                or bytes(raw[344:348]) not in _NIFTI1_MAGICS:
            raise ValueError(f"{path}: not a NIfTI-1 file; its header note was not written")
        raw[_NIFTI1_DESCRIP] = line.encode().ljust(80, b"\0")
        data = gzip.compress(bytes(raw), compresslevel=GZIP_LEVEL, mtime=0) if suffix == ".nii.gz" else bytes(raw)
    elif suffix == ".nrrd":  # text lines up to a blank line, then the data; "key:=value" is a key/value pair
        end = data.find(b"\n\n", 0, _HEADER_LIMIT)
        if not data.startswith(b"NRRD") or end < 0:
            raise ValueError(f"{path}: not a NRRD file with its data attached; its header note was not written")
        lines = [k for k in data[:end].split(b"\n") if not k.startswith(KEY.encode() + b":=")]
        data = b"\n".join([*lines, f"{KEY}:={line}".encode()]) + data[end:]
    else:  # .mha: "Key = value" lines, the last one ElementDataFile, then the data
        found = re.search(rb"(^|\n)ElementDataFile *= *LOCAL\r?\n", data[:_HEADER_LIMIT])
        if not data.startswith(b"ObjectType") or found is None:
            raise ValueError(f"{path}: not a MetaImage file with its data attached; its header note was not written")
        start = found.start() + len(found.group(1))
        lines = [k for k in data[:start].split(b"\n") if k and not re.match(rb"%s *=" % KEY.encode(), k)]
        data = b"\n".join([*lines, f"{KEY} = {line}".encode()]) + b"\n" + data[start:]
    with open(path, "wb") as handle:
        handle.write(data)
