"""Is an image file whole? SimpleITK reads a truncated ``.nii.gz`` without complaint and fills the missing voxels
with zeros: a prediction cut short by a killed ``nnUNetv2_predict`` would score a lower Dice, a cut reference an
empty tumour, both with exit code 0. Every command that reads NIfTI files (conversion, evaluation, figures)
asks here first."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path


def _stored_bytes(path: Path) -> int:
    """Bytes the file really holds once decompressed; raises on a broken gzip stream."""
    if not path.name.endswith(".gz"):
        return path.stat().st_size
    n = 0
    with gzip.open(path, "rb") as stream:
        while chunk := stream.read(1 << 24):
            n += len(chunk)
    return n


def incomplete(path: Path) -> str | None:
    """Why a NIfTI file is not whole ("truncated (...)", "corrupt (...)"), or None if it is (or is another format,
    which SimpleITK checks itself).

    The whole gzip stream is read (a broken stream raises), and the bytes it holds are counted against what its
    header promises (voxel data offset + voxels x bytes per voxel).
    """
    if not path.name.endswith((".nii", ".nii.gz")):
        return None
    import nibabel

    try:
        header = nibabel.load(path)
        expected = int(header.dataobj.offset) + header.get_data_dtype().itemsize * math.prod(header.shape)
        stored = _stored_bytes(path)
    except (EOFError, OSError, zlib.error, nibabel.filebasedimages.ImageFileError) as e:
        return f"corrupt ({e})"
    if stored < expected:
        return f"truncated ({stored} of {expected} bytes)"
    return None
