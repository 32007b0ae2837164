"""The text headers of MetaImage (``.mha``/``.mhd``) and NRRD (``.nrrd``/``.nhdr``) files, parsed the way ITK
reads them, without reading any voxel.

Both formats may name a separate data file (MetaIO ``ElementDataFile = path``, NRRD ``data file: path``). ITK
then opens that path, whatever it is. :func:`read_itk_header` reports it, so that a caller can refuse it (an
upload) or measure it (a user's own ``.mhd`` + ``.raw``), and :func:`canonical_header` rewrites a header so that
it keeps only fields that describe the image, with its voxels in the same file.

The parsing follows ITK's readers, not a reading of the format specs:

- MetaIO (``MetaUtils.cxx``): a key runs to the first ``=`` or ``:``; surrounding blanks are trimmed; keys are
  case-sensitive and compared as C strings, so a NUL byte ends a key. ``ElementDataFile`` is the last header line
  and the voxels start after its newline, unless it is ``LOCAL`` (or ``Local``, ``local``) any other value is a
  path, a file list or a pattern.
- NRRD (teem's NrrdIO): the first line is the magic ``NRRD000N``; ``#`` lines are comments, ``key:=value`` lines
  are key/value pairs; other lines are ``field: value`` with field names matched without case and spaces
  (``data file`` = ``datafile``); a blank line ends the header.

>>> read_itk_header(Path("scan.mha")).data_file   # doctest: +SKIP
'LOCAL'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# NRRD/MetaImage headers are text at the start of the file; a longer one is not a scan we can read anyway.
HEADER_BYTES = 1 << 20
METAIO_LOCAL = ("LOCAL", "Local", "local")  # the spellings ITK's MetaImage takes for "the voxels follow"
METAIO_SUFFIXES = (".mha", ".mhd")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
# Fields that describe a MetaIO image and its voxels (MetaObject.cxx and MetaImage.cxx); any other line is
# dropped by canonical_header. HeaderSize is left out on purpose (it moves the start of the voxels), and
# CompressedDataSize is written from the payload's real size (ITK allocates what it says).
METAIO_IMAGE_FIELDS = (
    "ObjectType", "ObjectSubType", "NDims", "BinaryData", "BinaryDataByteOrderMSB", "ElementByteOrderMSB",
    "CompressedData", "TransformMatrix", "Rotation", "Orientation", "Offset", "Origin",
    "Position", "CenterOfRotation", "AnatomicalOrientation", "ElementSpacing", "ElementSize", "DimSize",
    "ElementType", "ElementNumberOfChannels", "ElementMin", "ElementMax", "Modality",
)
# NRRD per-array and per-axis fields (teem's nrrdField), normalised (lower case, no spaces). "datafile" is not
# one of them: canonical_header refuses it.
NRRD_FIELDS = (
    "type", "dimension", "space", "spacedimension", "sizes", "spacedirections", "kinds", "endian", "encoding",
    "spaceorigin", "spaceunits", "centers", "centerings", "spacings", "thicknesses", "axismins", "axismaxs",
    "labels", "units", "min", "max", "oldmin", "oldmax", "byteskip", "lineskip", "content", "sampleunits",
    "measurementframe", "blocksize",
)


class ItkHeaderError(ValueError):
    """A header that cannot be parsed as ITK would parse it; the message starts with the file name."""


@dataclass(frozen=True)
class ItkHeader:
    """A parsed MetaIO or NRRD header.

    Attributes:
        kind: ``"metaio"`` or ``"nrrd"``.
        fields: ``(key, value)`` in file order, keys as ITK matches them (MetaIO: as written, cut at a NUL;
            NRRD: lower case without spaces); comments, NRRD key/value pairs and the data-file line left out.
        data_file: MetaIO ``ElementDataFile`` as written (``LOCAL`` for voxels in the same file); NRRD ``data
            file`` as written, or None when the voxels follow the header.
        data_offset: bytes from the start of the file to the first byte after the header.
    """

    kind: str
    fields: tuple[tuple[str, str], ...]
    data_file: str | None
    data_offset: int

    def get(self, key: str, default: str | None = None) -> str | None:
        """The last value of ``key`` (MetaIO: exact key; NRRD: any spelling of the field), or ``default``."""
        key = key if self.kind == "metaio" else _nrrd_key(key)
        values = [v for k, v in self.fields if k == key]
        return values[-1] if values else default

    @property
    def attached(self) -> bool:
        """Whether the voxels are in the same file as the header."""
        return self.data_file in METAIO_LOCAL if self.kind == "metaio" else self.data_file is None


def read_itk_header(path: Path, name: str | None = None) -> ItkHeader:
    """Parse the header of ``path`` (chosen by suffix: ``.mha``/``.mhd`` MetaIO, ``.nrrd``/``.nhdr`` NRRD).

    Args:
        path: the file.
        name: the name used in messages (e.g. an upload's file name); ``path`` by default.

    Raises:
        ItkHeaderError: no end of the header in its first MiB, a missing ``ElementDataFile`` or NRRD magic.
    """
    name = name or str(path)
    with open(path, "rb") as fh:
        head = fh.read(HEADER_BYTES)
    lower = path.name.lower()
    if lower.endswith(METAIO_SUFFIXES):
        return _parse_metaio(head, name)
    if lower.endswith(NRRD_SUFFIXES):
        return _parse_nrrd(head, name, detached_header=lower.endswith(".nhdr"))
    raise ItkHeaderError(f"{name}: not a MetaImage or NRRD file name (expected {METAIO_SUFFIXES + NRRD_SUFFIXES})")


def canonical_header(header: ItkHeader, name: str, payload_bytes: int) -> bytes:
    """The header re-written from the fields that describe the image, with the voxels following it.

    ITK then reads only lines written here: no path, no file list, no header size. The caller appends the
    original file's ``payload_bytes`` from ``header.data_offset`` on.

    Raises:
        ItkHeaderError: the header names a separate data file.
    """
    if not header.attached:
        raise ItkHeaderError(f"{name}: the header names a separate data file ({header.data_file[:200]!r}); "
                             f"upload a single-file scan that holds its own voxels")
    for key, value in header.fields:
        if any(ord(c) < 32 and c != "\t" for c in value):  # a line end hidden in a value would start a new line
            raise ItkHeaderError(f"{name}: a control character in header field {key!r}")
    if header.kind == "metaio":
        lines = [f"{k} = {v}" for k, v in header.fields if k in METAIO_IMAGE_FIELDS]
        if (header.get("CompressedData") or "").lower() == "true":
            lines.append(f"CompressedDataSize = {payload_bytes}")
        return ("\n".join([*lines, "ElementDataFile = LOCAL"]) + "\n").encode("latin-1")
    lines = ["NRRD0004", *(f"{_NRRD_NAMES[k]}: {v}" for k, v in header.fields if k in _NRRD_NAMES)]
    return ("\n".join(lines) + "\n\n").encode("latin-1")


_NRRD_NAMES = {k: {"spacedimension": "space dimension", "spacedirections": "space directions",
                   "spaceorigin": "space origin", "spaceunits": "space units", "axismins": "axis mins",
                   "axismaxs": "axis maxs", "oldmin": "old min", "oldmax": "old max", "byteskip": "byte skip",
                   "lineskip": "line skip", "sampleunits": "sample units", "measurementframe": "measurement frame",
                   "blocksize": "block size"}.get(k, k) for k in NRRD_FIELDS}


def _lines(head: bytes, lone_cr: bool = False) -> list[tuple[bytes, int]]:
    """Each terminated line of ``head`` (without its end) with the offset just past it. A line ends at ``\\n``
    (``\\r\\n`` too); with ``lone_cr`` also at a lone ``\\r``, as teem's NRRD reader ends lines."""
    pattern = re.compile(rb"\r\n|\r|\n" if lone_cr else rb"\r?\n")
    out, start = [], 0
    for match in pattern.finditer(head):
        out.append((head[start:match.start()], match.end()))
        start = match.end()
    return out


def _parse_metaio(head: bytes, name: str) -> ItkHeader:
    fields: list[tuple[str, str]] = []
    for raw, offset in _lines(head):
        cut = min((i for i in (raw.find(b"="), raw.find(b":")) if i >= 0), default=-1)
        if cut < 0:
            continue  # ITK skips a line without a separator
        key = raw[:cut].split(b"\0", 1)[0].strip().decode("latin-1")
        value = raw[cut + 1:].strip().decode("latin-1")
        if key == "ElementDataFile":
            return ItkHeader("metaio", tuple(fields), value, offset)
        fields.append((key, value))
    if len(head) == HEADER_BYTES:  # a header may not hide its data file behind a megabyte of padding
        raise ItkHeaderError(f"{name}: no end of the MetaImage header in its first {HEADER_BYTES >> 20} MiB")
    raise ItkHeaderError(f"{name}: not a MetaImage file (no ElementDataFile line, which ITK requires)")


def _nrrd_key(key: str) -> str:
    return "".join(key.split()).lower()


def _parse_nrrd(head: bytes, name: str, detached_header: bool) -> ItkHeader:
    lines = _lines(head, lone_cr=True)
    if not lines or not lines[0][0].startswith(b"NRRD000"):
        raise ItkHeaderError(f"{name}: not a NRRD file (no NRRD000N magic on its first line)")
    fields: list[tuple[str, str]] = []
    data_file: str | None = None
    for raw, offset in lines[1:]:
        if not raw.strip():
            return ItkHeader("nrrd", tuple(fields), data_file, offset)
        if raw.startswith(b"#") or (b":=" in raw and raw.find(b":=") <= raw.find(b":")):
            continue
        key, _, value = raw.partition(b":")
        key_text, value_text = _nrrd_key(key.split(b"\0", 1)[0].decode("latin-1")), value.strip().decode("latin-1")
        if key_text == "datafile":
            data_file = value_text
        else:
            fields.append((key_text, value_text))
    if detached_header or data_file is not None:  # a header that ends with the file (.nhdr) needs no blank line
        return ItkHeader("nrrd", tuple(fields), data_file, len(head))
    if len(head) == HEADER_BYTES:
        raise ItkHeaderError(f"{name}: no end of the NRRD header in its first {HEADER_BYTES >> 20} MiB")
    return ItkHeader("nrrd", tuple(fields), data_file, len(head))
