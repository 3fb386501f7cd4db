"""Points with their vectors into a memory from one `.npz` file (`VisualMemory.import_points`, `vmem import`): the
converse of `vmem export`, and the way in for features computed elsewhere (on a machine with a GPU, or the
encoder's weights, that this one lacks).

Two kinds of file:

    a vmem export    meta["format"] == "vmem-points" (vmem.export). Its meta names the encoder. Ids, labels,
                     sources, `tags`, `added_at` (where the file has them: older exports lack them), `excluded` (hard
                     pruning) and `reliability` (soft pruning) are carried as stored; the
                     names of the labels imported go too (the file's win where both name a label, as `vmem copy`'s
                     source's do), and its tuned vote settings into a memory that has none.
    vectors          `vectors` (float, n x dim) and `labels` (str [n]), optionally `sources` (str [n]: a path to a
                     file on this machine stored as a build stores it, absolute with links resolved; any other
                     source as given. A point's id derives from its source). The encoder that made them must be named
                     (`featurizer`): the memory embeds its queries with it, and another encoder's features are not
                     comparable. A row without a source is known by `import://<sha256>/<row>`, the first 16 hex
                     digits of the file's sha256 and the row's number from 0: importing the same file again finds
                     its points (a file changed since, even by one byte, is another file).

An existing memory takes only vectors of its own encoder (name, dim, preprocessing; a local folder's weights
digest, where both record it); a memory not made yet is made with the file's. Vectors are stored unit length
(cosine), as the encoders give them.

Rows that cannot be points are skipped and reported, the rest imported: NaN or infinite values, a zero vector, an
empty label or one `label_problem` refuses, an empty source, an id that is no UUID. A row whose point the memory
holds already (the same id) is skipped, as `vmem build` skips an image it holds; under another label it keeps the
stored one and is reported, unless `relabel` (then it takes the file's, journaled as a relabel), as `vmem build`
does. A file that cannot be read as one of the two kinds (no zip, an array missing, of another shape or type, an
array of Python objects, which `np.load` would unpickle, running code from the file) is refused with
`PointsFileError` before anything is written; so is one that gives one point two labels.

Memory: the vectors are read a batch of rows at a time, never whole, from a stored or a compressed member alike
(one stored in Fortran order, as `np.savez` writes a transposed array, is read whole); labels, sources and ids are
held as numpy string arrays, as `vmem export` holds them. A member corrupt past its header (a bad CRC) is found
only when its rows are read: the points before them stay imported, and journaled.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from retrieval import FeaturizerSpec, point_id_for
from retrieval.files import file_sha256
from retrieval.store import (
    EXCLUDED_KEY,
    RELIABILITY_KEY,
    FeaturizerMismatchError,
    StoredPoint,
    check_tags,
    is_local_source,
    normalize_source,
)
from retrieval.text import canonical_label, counted, label_problem, quoted, utf8_text, visible

from .export import EXPORT_FORMAT, EXPORT_FORMAT_VERSION

VECTORS_FORMAT = "vectors"  # a file of vectors made elsewhere, as reports name its kind
IMPORT_SOURCE_PREFIX = "import://"  # a URI: no path of this machine, never read as an image
SOURCE_SHA_CHARS = 16
EXAMPLES = 5  # skipped rows named in a report, per reason
# How a report says to record the image folders of points outside them: as vmem import takes it, as the service
TRUSTING_CLI = ("for a file of your own (a vmem export of a memory here), import it again with --trust-sources; "
                "else name the folders whose images may be shown: --source-root DIR")
TRUSTING_HTTP = ("an import over HTTP records none; on the server's machine, vmem import --source-root DIR (or "
                 "--trust-sources, for a file of your own) records them")
_EXPORT_ARRAYS = {"ids": "U", "sources": "U", "excluded": "b", "reliability": "f"}
# An export's arrays its first files did not have (a point's tags and added time): read where there.
_LATER_EXPORT_ARRAYS = {"tags": "U", "added_at": "U"}


class PointsFileError(ValueError):
    """A file that cannot be imported as it is; nothing was written, unless the file was found corrupt part-way
    through its vectors (then it says how many points were added before). `option`: the argument to change where
    the file is right but what was given with it is not (`featurizer`, `label`)."""

    def __init__(self, message: str, option: str | None = None) -> None:
        # One line, whatever of the file it quotes (a source, the writer's version): a newline or an escape
        # sequence of someone else's file forged lines of the error, or retitled the terminal. Escaped once, here:
        # the message quotes the file's text raw ('label', not repr's escapes, which this would escape again)
        super().__init__(visible(message))
        self.option = option


@dataclass(frozen=True)
class _Member:
    """One `.npy` array of the archive, by its header."""

    entry: str  # its name in the zip
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    data_offset: int  # where its data starts, in the member's bytes
    size: int  # the member's bytes, uncompressed


@dataclass
class PointsFile:
    """A file `read_points_file` checked: its small arrays read, its vectors left in the file."""

    path: Path
    sha256: str
    format: str  # EXPORT_FORMAT or VECTORS_FORMAT
    featurizer: str  # the encoder's name
    spec: FeaturizerSpec | None  # an export's, from its meta; None for vectors (`featurizer_spec` knows it)
    n: int
    dim: int
    labels: np.ndarray  # str [n], as in the file
    sources: np.ndarray | None  # str [n]; None: made from the file's hash and the row
    ids: np.ndarray | None  # an export's, str [n]
    excluded: np.ndarray | None  # an export's, bool [n]
    reliability: np.ndarray | None  # an export's, float32 [n]
    tags: np.ndarray | None = None  # an export's, str [n]: a JSON object each
    added_at: np.ndarray | None = None  # an export's, str [n]: ISO 8601 or ""
    meta: dict[str, Any] = field(default_factory=dict)
    _vectors: _Member | None = None
    shown_as: str | None = None  # how messages name the file, where not by its path (read_points_file's)

    @property
    def name(self) -> str:
        """The file as messages name it."""
        return self.shown_as or str(self.path)

    @property
    def is_export(self) -> bool:
        return self.format == EXPORT_FORMAT

    @property
    def label_names(self) -> dict[str, str]:
        names = self.meta.get("label_names") if self.is_export else None
        return {str(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}

    def source_of(self, row: int) -> str:
        """The source row `row` is stored under: the file's, or `import://<sha256 prefix>/<row>`."""
        if self.sources is not None:
            return str(self.sources[row])
        return f"{IMPORT_SOURCE_PREFIX}{self.sha256[:SOURCE_SHA_CHARS]}/{row}"

    def vector_chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, vectors [<= rows, dim] as the file holds them), in order, `rows` at a time."""
        member = self._vectors
        assert member is not None
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(member.entry) as fh:
                if member.fortran_order:  # rows are not contiguous in the file: read whole
                    _read_header(fh)
                    whole = np.ascontiguousarray(np.lib.format.read_array(fh, allow_pickle=False))
                    for start in range(0, self.n, rows):
                        yield start, whole[start : start + rows]
                    return
                fh.read(member.data_offset)
                row_bytes = self.dim * member.dtype.itemsize
                for start in range(0, self.n, rows):
                    count = min(rows, self.n - start)
                    data = fh.read(count * row_bytes)
                    if len(data) != count * row_bytes:
                        raise PointsFileError(f"{self.name}: its vectors end at row {start + len(data) // row_bytes} "
                                              f"of {self.n}: the file is cut short")
                    yield start, np.frombuffer(data, dtype=member.dtype).reshape(count, self.dim)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise PointsFileError(f"{self.name}: its vectors could not be read ({exc}): the file is corrupt") from None


def read_points_file(path: str | Path, featurizer: str | None = None, shown_as: str | None = None,
                     option_form: str = "--{} NAME") -> PointsFile:
    """The file at `path`, checked and its arrays but the vectors read; PointsFileError for a file that cannot be
    imported (see the module's docstring), or a `featurizer` it refuses: required for vectors made elsewhere,
    and for an export only its own encoder (its meta names it).

    The errors, and those of the import, say what the user knows: the file by `shown_as` (default: its path; over HTTP
    the name it was sent under, not where the server keeps it) and an option as `option_form` spells it (the CLI's
    `--featurizer NAME`; `{}=NAME` for HTTP's query parameters)."""
    path = Path(path)
    shown = shown_as or str(path)
    if path.is_dir():
        raise PointsFileError(f"{shown} is a folder: give the .npz file")
    if not path.is_file():
        raise PointsFileError(f"no file at {shown}")
    if not zipfile.is_zipfile(path):
        raise PointsFileError(f"{shown} is not an .npz file (a zip of .npy arrays, as np.savez and vmem export write "
                              "it)")
    try:
        with zipfile.ZipFile(path) as zf:
            members = {}
            for info in zf.infolist():
                if info.filename.endswith(".npy") and not info.is_dir():
                    members[info.filename.removesuffix(".npy")] = _member(zf, info, shown)
            meta = _read_meta(zf, members.get("meta"), shown)
            is_export = meta.get("format") == EXPORT_FORMAT
            wanted = ["vectors", "labels", *(_EXPORT_ARRAYS if is_export else ["sources"] if "sources" in members
                                             else [])]
            if is_export:
                wanted += [name for name in _LATER_EXPORT_ARRAYS if name in members]
            if missing := [name for name in ("vectors", "labels", *(_EXPORT_ARRAYS if is_export else ()))
                           if name not in members]:
                what = "a vmem export" if is_export else "vectors to import"
                raise PointsFileError(f"{shown} holds no {', '.join(repr(m) for m in missing)} array, which "
                                      f"{what} needs (it holds {', '.join(sorted(members)) or 'none'})")
            vectors = members["vectors"]
            if len(vectors.shape) != 2 or vectors.dtype.kind != "f" or vectors.shape[1] == 0:
                raise PointsFileError(f"{shown}: 'vectors' is {vectors.dtype} of shape {vectors.shape}: give float "
                                      "vectors, one row per point (n x dim)")
            n, dim = vectors.shape
            for name in wanted[1:]:
                _check_column(members[name], name, n, shown)
            arrays = {name: _read_whole(zf, members[name], shown) for name in wanted[1:]}
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise PointsFileError(f"{shown} could not be read as an .npz file ({exc}): the file is corrupt") from None
    spec: FeaturizerSpec | None = None
    if is_export:
        version = meta.get("format_version")
        if not isinstance(version, int) or version > EXPORT_FORMAT_VERSION:
            raise PointsFileError(f"{shown} is a vmem export of format version {version!r}, written by vmem "
                                  f"{meta.get('vmem_version')}; this vmem reads version {EXPORT_FORMAT_VERSION}: "
                                  "import it with that vmem or a later one")
        try:
            spec = FeaturizerSpec.model_validate(meta.get("featurizer"))
        except ValidationError as exc:
            raise PointsFileError(f"{shown}: its meta does not say which encoder made its vectors "
                                  f"(featurizer: {exc.errors()[0]['msg']})") from None
        if spec.dim != dim:
            raise PointsFileError(f"{shown}: its meta says {spec.name} made its vectors, {spec.dim}-d, but they are "
                                  f"{dim}-d")
        if featurizer is not None and featurizer != spec.name:
            raise PointsFileError(f"{shown} is a vmem export of {spec.name} vectors (its meta says so), not "
                                  f"{featurizer}: leave the featurizer out, the file names its own",
                                  option="featurizer")
        featurizer = spec.name
    elif featurizer is None:
        raise PointsFileError(f"{shown} holds vectors and labels but does not say which encoder made them: name it "
                              f"({option_form.format('featurizer')}, e.g. dinov2-small or dinov2:/path/to/model): the "
                              "memory embeds its queries with that encoder, so it must be the one that made these "
                              "vectors",
                              option="featurizer")
    reliability = arrays.get("reliability")
    if not is_export and "sources" in arrays:
        arrays["sources"] = _sources_as_stored(arrays["sources"])
    return PointsFile(
        path=path, shown_as=shown_as, sha256=file_sha256(path), format=EXPORT_FORMAT if is_export else VECTORS_FORMAT,
        featurizer=featurizer, spec=spec, n=n, dim=dim, labels=arrays["labels"], sources=arrays.get("sources"),
        ids=arrays.get("ids"), excluded=arrays.get("excluded"),
        reliability=reliability.astype(np.float32) if reliability is not None else None,
        tags=arrays.get("tags"), added_at=arrays.get("added_at"), meta=meta if is_export else {}, _vectors=vectors)


def _sources_as_stored(sources: np.ndarray) -> np.ndarray:
    """Vectors' sources as a build stores an image's path: a file on this machine absolute, its links resolved
    (`normalize_source`), so that forget --source and history --source of the folder it was read from, the
    service's thumbnails and a later build of the same images find it; any other source (a URI, a path of another
    machine) as given."""
    out = []
    for source in sources.tolist():
        if is_local_source(source) and os.path.exists(os.path.expanduser(source)):
            with contextlib.suppress(RuntimeError, ValueError):  # `~user` of no user here: kept as given
                source = normalize_source(source)
        out.append(source)
    return np.array(out, dtype=str) if out else sources


def _read_header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    raise ValueError(f".npy format version {version[0]}.{version[1]} (structured arrays with non-Latin-1 field "
                     "names), which no vmem array is")


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, shown: str) -> _Member:
    name = info.filename.removesuffix(".npy")
    try:
        with zf.open(info) as fh:
            shape, fortran_order, dtype = _read_header(fh)
            offset = fh.tell()
    except ValueError as exc:
        raise PointsFileError(f"{shown}: its array {name!r} is no readable .npy array ({exc})") from None
    if dtype.hasobject:
        raise PointsFileError(f"{shown}: its array {name!r} holds Python objects ({dtype}), which numpy can only "
                              "read by unpickling, and unpickling runs code the file carries: not read. Save "
                              "strings as a str array (np.array(labels, dtype=str)) and vectors as floats")
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if info.file_size < need:
        raise PointsFileError(f"{shown}: its array {name!r} is cut short ({info.file_size:,} bytes of {need:,})")
    return _Member(info.filename, dtype, tuple(shape), fortran_order, offset, info.file_size)


def _check_column(member: _Member, name: str, n: int, shown: str) -> None:
    """PointsFileError unless `member` is one value per row of the kind `name` holds."""
    kind = {**_EXPORT_ARRAYS, **_LATER_EXPORT_ARRAYS}.get(name, "U")
    kinds = {"U": "str", "b": "bool", "f": "float"}
    if member.shape != (n,) or member.dtype.kind != kind:
        raise PointsFileError(f"{shown}: {name!r} is {member.dtype} of shape {member.shape}: give one {kinds[kind]} "
                              f"per row of 'vectors' ({n:,})")


def _read_whole(zf: zipfile.ZipFile, member: _Member, shown: str) -> np.ndarray:
    try:
        with zf.open(member.entry) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)
    except ValueError as exc:
        raise PointsFileError(f"{shown}: its array {member.entry.removesuffix('.npy')!r} could not be read "
                              f"({exc})") from None


def _read_meta(zf: zipfile.ZipFile, member: _Member | None, shown: str) -> dict[str, Any]:
    """An export's meta (a JSON string); {} where the file has none, or a `meta` of its own that is no export's."""
    if member is None or member.shape != () or member.dtype.kind != "U":
        return {}
    try:
        meta = json.loads(str(_read_whole(zf, member, shown).item()))
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def check_featurizer(stored: FeaturizerSpec, points: PointsFile, spec: FeaturizerSpec | None = None) -> None:
    """FeaturizerMismatchError unless the file's vectors were made by the encoder of a memory that records
    `stored`: an export's meta and the memory's record compared (name, dim, preprocessing, weights digest where
    both have one); vectors made elsewhere by the name given (and its `spec` here, where there is one)."""
    mine = spec or points.spec
    said = f"{points.featurizer} ({points.dim}-d)"
    if mine is None:  # vectors: the encoder's name, as given
        same = points.featurizer == stored.name and points.dim == stored.dim
    else:
        same = (mine.name, mine.dim, mine.preprocessing) == (stored.name, stored.dim, stored.preprocessing) and not (
            mine.weights_sha256 and stored.weights_sha256 and mine.weights_sha256 != stored.weights_sha256)
        if same is False and (mine.name, mine.dim) == (stored.name, stored.dim):
            said = f"{mine.name} ({mine.dim}-d) with other preprocessing or weights ({_described(mine)})"
    if not same:
        raise FeaturizerMismatchError(visible(  # an export's meta names its encoder: the file's text
            f"{points.name} holds vectors of {said}; this memory holds {stored.name} features ({stored.dim}-d, "
            f"{_described(stored)}): their similarities mean nothing to each other. Import it into a memory of "
            f"{points.featurizer} (a new one: a directory that does not exist yet)"))


def _described(spec: FeaturizerSpec) -> str:
    pre = spec.preprocessing
    weights = f", weights {spec.weights_sha256[:12]}" if spec.weights_sha256 else ""
    return f"resize {pre.resize}, crop {pre.crop}{weights}"


# ------------------------------------------------------------------ the rows


@dataclass
class ImportReport:
    """What an import did (or with `dry_run`, would do) with the rows of a file."""

    file: str
    sha256: str
    format: str
    featurizer: str
    dim: int
    rows: int  # in the file
    chosen: int = 0  # rows of the label asked for (all rows without one)
    added: int = 0
    added_per_label: dict[str, int] = field(default_factory=dict)
    already_in_memory: int = 0  # the same point, the same label
    duplicates: int = 0  # rows repeating an earlier row's point (same source or id), with its label
    # (source, stored label, the file's label) of points the memory holds under another label
    other_label: list[tuple[str, str, str]] = field(default_factory=list)
    relabel_applied: bool = False
    skipped: Counter[str] = field(default_factory=Counter)  # rows that cannot be points, per reason
    skipped_rows: dict[str, list[int]] = field(default_factory=dict)  # the first few rows of each reason
    names: dict[str, str] = field(default_factory=dict)  # label names the import gave (or would give)
    vote: dict[str, Any] | None = None  # tuned vote settings carried (or that would be)
    source_roots: list[str] = field(default_factory=list)  # image folders the import recorded (or would)
    outside_roots: int = 0  # imported rows whose image is a file here outside the memory's: not shown, nor sent
    dry_run: bool = False
    memory_points: int = 0
    seconds: float = 0.0

    def skip(self, reason: str, rows: Sequence[int] | np.ndarray) -> None:
        if len(rows):
            self.skipped[reason] += len(rows)
            shown = self.skipped_rows.setdefault(reason, [])
            shown += [int(r) for r in rows[: max(0, EXAMPLES - len(shown))]]

    def summary(self, skipped: bool = True, trusting: str = TRUSTING_CLI) -> str:
        """What the import did, for people: counts, labels; with `skipped`, the rows skipped too. `trusting`: how
        to record the image folders of points outside them, as the caller takes it."""
        verb = "would import" if self.dry_run else "imported"
        # Each part one line of what it is: sources, labels and the encoder's name are the file's writer's text (a
        # newline forged a line of the report, an escape sequence retitled the terminal), escaped once, here
        encoder = visible(self.featurizer)
        kind = f"a vmem export of {encoder}" if self.format == EXPORT_FORMAT else f"{encoder} vectors"
        rows = counted(self.rows, "row")
        of = f"{self.chosen:,} of {rows}" if self.chosen != self.rows else rows
        lines = [f"{verb} {counted(self.added, 'point')} from {visible(self.file)} ({kind}, "
                 f"{self.dim}-d; {of}): {self.already_in_memory:,} already in memory, "
                 + (f"{self.duplicates:,} repeated rows, " if self.duplicates else "")
                 + f"{sum(self.skipped.values()):,} skipped"
                 + ("" if self.dry_run else f"; memory now holds {counted(self.memory_points, 'point')}")
                 + (f" ({self.seconds:.1f} s)" if self.seconds and not self.dry_run else "")]
        if self.added_per_label:
            shown = ", ".join(f"{visible(lab)}: {n:,}" for lab, n in list(self.added_per_label.items())[:10])
            more = f" and {len(self.added_per_label) - 10} more" if len(self.added_per_label) > 10 else ""
            lines.append(f"  labels: {shown}{more}")
        if self.other_label:
            n = len(self.other_label)
            lines.append(f"{n:,} already in memory under another label, "
                         + ("would be relabelled as the file labels them:" if self.dry_run and self.relabel_applied
                            else "relabelled as the file labels them:" if self.relabel_applied
                            else "kept as stored (import again with --relabel to take the file's labels):"))
            lines += [f"  {visible(src)}: stored {quoted(old)}, file {quoted(new)}"
                      for src, old, new in self.other_label[:10]]
            if n > 10:
                lines.append(f"  ... and {n - 10:,} more")
        if skipped:
            lines += self._skipped_lines()
        if self.names:
            lines.append(f"label names: {len(self.names)} {'would be ' if self.dry_run else ''}given from the file")
        if self.vote:
            lines.append(f"tuned vote settings {'would be ' if self.dry_run else ''}carried: {visible(str(self.vote))}")
        if self.source_roots:
            lines.append(f"image folders {'would be ' if self.dry_run else ''}recorded (thumbnails shown and images "
                         f"sent to the re-ranker from under them): {', '.join(map(visible, self.source_roots))}")
        if self.outside_roots:
            n = self.outside_roots
            lines.append(f"the images of {counted(n, 'point')} are files on this machine outside the "
                         "memory's image folders (source_roots, vmem info): none is shown as a thumbnail or sent to "
                         f"the re-ranker, since a file's sources are its writer's; {trusting}")
        return "\n".join(line for line in lines if line)

    def skipped_lines(self) -> str:
        """The rows skipped, a line per reason with the first few rows' numbers (from 0)."""
        return "\n".join(self._skipped_lines())  # reasons made for people (`label_problem`'s), escaped there

    def _skipped_lines(self) -> list[str]:
        lines = []
        for reason, n in self.skipped.most_common():
            rows = ", ".join(map(str, self.skipped_rows[reason])) + (", ..." if n > len(self.skipped_rows[reason])
                                                                      else "")
            lines.append(f"  skipped {counted(n, 'row')}: {reason} (row{'s' if n != 1 else ''} {rows})")
        return lines


@dataclass
class RowPlan:
    """What each row of a file is to become, known before any vector is read (`plan_rows`)."""

    labels: np.ndarray  # str [n]: each row's label as the memory is to store it
    ids: np.ndarray  # S16 [n]: each row's point id, as bytes (zeros where it has none)
    usable: np.ndarray  # bool [n]: chosen, and nothing found wrong with it so far


def plan_rows(points: PointsFile, report: ImportReport, stored_labels: Callable[[list[str]], list[str]],
              label: str | None = None) -> RowPlan:
    """Each row's label and id, with the rows that cannot be points (their labels, sources or ids) and repeated
    rows counted in `report`; `label`: only the rows of that label. `stored_labels` spells labels as the memory
    does (`VisualMemory.stored_labels`; vectors' labels only: an export's are carried as stored).

    PointsFileError for a label no row has, and for one point given two labels (which is meant cannot be known)."""
    n = points.n
    uniq, inverse = np.unique(points.labels, return_inverse=True)
    given = [str(u) for u in uniq]
    spelled = given if points.is_export else stored_labels([canonical_label(u) for u in given])
    problems = [_label_problem(lab) for lab in spelled]
    labels = np.array(spelled, dtype=str)[inverse] if n else np.zeros(0, dtype=str)
    usable = np.ones(n, dtype=bool)
    if label is not None:
        wanted = {label, canonical_label(label), *stored_labels([canonical_label(label)])}
        chosen = np.array([lab in wanted for lab in spelled], dtype=bool)[inverse] if n else usable
        if not chosen.any():
            held = ", ".join(f"'{lab}'" for lab in spelled[:10]) + (", ..." if len(spelled) > 10 else "")
            raise PointsFileError(f"{points.name} has no row labelled '{label}' (its labels: {held or 'none'})",
                                  option="label")
        usable &= chosen
    report.chosen = int(usable.sum())
    for u, problem in enumerate(problems):
        if problem is not None:
            rows = np.flatnonzero(usable & (inverse == u))
            report.skip(problem, rows)
            usable[rows] = False
    ids = np.zeros(n, dtype="S16")
    bad_source: list[int] = []
    bad_id: list[int] = []
    for row in np.flatnonzero(usable):
        source = points.source_of(int(row))
        if not source.strip() or utf8_text(source) != source:
            bad_source.append(int(row))
            continue
        try:
            ids[row] = uuid.UUID(str(points.ids[row]) if points.ids is not None else point_id_for(source)).bytes
        except ValueError:
            bad_id.append(int(row))
    report.skip("an empty source, or one that is not UTF-8 text", bad_source)
    report.skip("an id that is no UUID", bad_id)
    usable[bad_source + bad_id] = False
    _repeated_rows(points, labels, ids, usable, report)
    return RowPlan(labels=labels, ids=ids, usable=usable)


def _label_problem(label: str) -> str | None:
    if not label.strip():
        return "an empty label"
    if utf8_text(label) != label:
        return "a label that is not UTF-8 text"
    return label_problem(label)


def _repeated_rows(points: PointsFile, labels: np.ndarray, ids: np.ndarray, usable: np.ndarray,
                   report: ImportReport) -> None:
    """Rows after the first of one point are not imported again (counted in `report.duplicates`); given another
    label than its first, PointsFileError: an image is one point with one label."""
    rows = np.flatnonzero(usable)
    _, first, inverse, counts = np.unique(ids[rows], return_index=True, return_inverse=True, return_counts=True)
    if (counts == 1).all():
        return
    repeats = np.flatnonzero(np.arange(len(rows)) != first[inverse])  # rows after their point's first
    later, firsts = rows[repeats], rows[first[inverse][repeats]]
    clash = np.flatnonzero(labels[later] != labels[firsts])
    if len(clash):
        a, b = int(firsts[clash[0]]), int(later[clash[0]])
        more = f" ({len(clash) - 1:,} more rows so)" if len(clash) > 1 else ""
        raise PointsFileError(f"{points.name}: rows {a} and {b} are one point ({points.source_of(a)}), labelled "
                              f"'{labels[a]}' and '{labels[b]}'{more}: a point has one label; which is meant "
                              "cannot be known, so nothing was imported")
    report.duplicates = len(later)
    usable[later] = False


@dataclass
class ImportBatch:
    """Rows of a file ready to be points: unit vectors, each row's point id, label and payload."""

    rows: np.ndarray
    ids: list[str]
    labels: list[str]
    vectors: np.ndarray  # float32 [n, dim], unit length

    def points(self, payloads: Sequence[Mapping[str, Any]]) -> list[StoredPoint]:
        return [StoredPoint(i, dict(p), v) for i, p, v in zip(self.ids, payloads, self.vectors, strict=True)]


def usable_batches(points: PointsFile, plan: RowPlan, report: ImportReport, batch_size: int,
                   progress: Callable[[int], None] | None = None) -> Iterator[ImportBatch]:
    """The usable rows, a batch at a time, their vectors made unit length: rows whose vectors hold NaN or
    infinite values, or are zero, are counted in `report` and left out. `progress` is told each batch's rows."""
    for start, chunk in points.vector_chunks(batch_size):
        rows = start + np.flatnonzero(plan.usable[start : start + len(chunk)])
        x = chunk[rows - start].astype(np.float64)
        finite = np.asarray(np.isfinite(x).all(axis=1), dtype=bool)
        norms = np.linalg.norm(np.where(finite[:, None], x, 0.0), axis=1)
        report.skip("NaN or infinite values", rows[~finite])
        report.skip("a zero vector (no direction: cosine similarity is undefined)", rows[finite & (norms == 0)])
        keep = finite & (norms > 0)
        rows, x = rows[keep], x[keep] / norms[keep, None]
        if len(rows):
            yield ImportBatch(rows=rows, ids=[str(uuid.UUID(bytes=bytes(b).ljust(16, b"\0"))) for b in plan.ids[rows]],
                              labels=[str(lab) for lab in plan.labels[rows]], vectors=x.astype(np.float32))
        if progress is not None:
            progress(len(chunk))


def payloads(points: PointsFile, batch: ImportBatch, added_at: str) -> list[dict[str, Any]]:
    """What each point of `batch` stores: label, source and when it was added (an export's time where it has one,
    else `added_at`); an export's tags and pruning as stored."""
    out = []
    for row, label in zip(batch.rows, batch.labels, strict=True):
        payload: dict[str, Any] = {
            "label": label, "source": points.source_of(int(row)), "tags": _tags(points, int(row)),
            "added_at": str(points.added_at[row]) if points.added_at is not None and points.added_at[row] else added_at}
        if points.excluded is not None and points.excluded[row]:
            payload[EXCLUDED_KEY] = "pruned"  # as vmem prune --mode hard marks it
        if points.reliability is not None and points.reliability[row] != 1 and np.isfinite(points.reliability[row]):
            # float32 in the file: its shortest decimal, the 0.3 a memory stored (not 0.30000001192092896)
            payload[RELIABILITY_KEY] = float(str(points.reliability[row]))
        out.append(payload)
    return out


def _tags(points: PointsFile, row: int) -> dict[str, Any]:
    """An exported point's tags (a JSON object); {} where the file has none, or none a memory could store."""
    if points.tags is None:
        return {}
    try:
        tags = json.loads(str(points.tags[row]))
        return check_tags(tags) if isinstance(tags, dict) else {}
    except ValueError:  # not JSON, or a value no memory stores (NaN, an integer past 64 bits)
        return {}


def spec_for_new_memory(points: PointsFile) -> FeaturizerSpec:
    """The encoder record of a memory made for this file: an export's, or what `featurizer_spec` knows of the name
    given (FeaturizerError where nothing is known of it here), checked against the vectors' dim."""
    if points.spec is not None:
        return points.spec
    from retrieval import featurizer_spec  # torch: imported only when an encoder is needed

    # trusted: a file of vectors names no encoder; this name is the importer's own (--featurizer, featurizer=).
    # An import into a memory (HTTP's) only compares the name with the memory's (`check_featurizer`).
    spec = featurizer_spec(points.featurizer, trusted=True)
    if spec.dim != points.dim:
        raise PointsFileError(f"{points.name} holds {points.dim}-d vectors, and {spec.name} makes {spec.dim}-d "
                              "features: they were made by another encoder; name that one", option="featurizer")
    return spec


__all__ = ["ImportReport", "PointsFile", "PointsFileError", "check_featurizer", "read_points_file"]
