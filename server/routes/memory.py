"""`/v1/memory`: add labelled images, forget points, see what the memory holds, and its thumbnails."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import re
import shutil
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from retrieval import FeaturizerMismatchError, ImageDecodeError, MemoryFullError, first_occurrences
from retrieval.files import DISK_FULL_ERRNOS, LATEST_BACKUP, link_latest, make_private_folder, os_error_reason
from retrieval.journal import KEY_NAME
from retrieval.text import counted, quoted
from vmem import UnknownPointError, VoteSettings
from vmem.import_points import TRUSTING_HTTP, ImportReport, PointsFileError, read_points_file

from ..deps import API_KEY_HEADER, ApiKeyDep, ServiceDep, SettingsDep, has_api_key
from ..problems import ProblemError, problem_responses
from ..schemas import (
    MAX_LABEL_CHARS,
    MOST_FEW_POINTS,
    AddedPoint,
    AddFailure,
    AddJSON,
    AddOut,
    BackupOut,
    BackupQuery,
    EraseOut,
    ExportQuery,
    FeaturizerOut,
    ForgetLikeJSON,
    ForgetLikeOut,
    ForgetLikeQuery,
    ForgetOut,
    ForgetPointQuery,
    ForgetQuery,
    HistoryOut,
    HistoryQuery,
    ImportOut,
    ImportQuery,
    IndexUpkeepOut,
    LabelNamesIn,
    LabelNamesOut,
    NoOptions,
    OtherLabelOut,
    PointLabelIn,
    PointOut,
    PointsOut,
    PointsQuery,
    RelabelIn,
    RelabelOut,
    SimilarPointOut,
    StatsOut,
    SuspectOut,
    SuspectsOut,
    SuspectsQuery,
    printable,
)
from ..service import (
    EXPORT_FOLDER_PREFIX,
    IMPORT_FOLDER_PREFIX,
    ClassifierService,
    EraseFailedError,
    ThumbnailUnavailable,
    Upload,
)
from ..uploads import JSON, MULTIPART, OCTET_STREAM, read_files, read_json, require_media_type, too_many_images
from ._common import (
    LISTED_BY,
    image_body,
    json_body,
    label_history,
    thumbnail_url,
    unknown_labels,
    unless_the_client_leaves,
)

NoOptionsDep = Annotated[NoOptions, Query()]
# A time whose zone's `+` a URL's query decoded as a space: 2026-12-07T21:19:28.013887 00:00
_PLUS_AS_SPACE = re.compile(r"\d[T ][\d:.,]+ \d{2}(:?\d{2})?$")

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/memory", tags=["memory"])
PointId = Annotated[uuid.UUID, Path(description="the point's id, as listed in a classification's neighbours")]
# An array: in a multipart body that is repeated parts, one `label` per image, and one part labels them all. A
# generated client read the field untyped as one value, and stored "['la', 'lb']" as the label of both images.
_LABEL_FIELD = {"label": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 1024},
                           "description": "text fields: one `label` per image, in order, or a single one for all "
                                         "(1 to 1,024 characters each)"}}
LABELS_ONLY = "the form holds the `images` files and their `label` text fields, nothing else"
TOO_MANY = "add fewer images per request, splitting them across several requests"


@router.post(
    "",
    summary="Add labelled images",
    status_code=201,
    response_model=AddOut,
    responses=problem_responses(400, 401, 403, 413, 415, 422, 503, 507),
    openapi_extra=image_body("AddJSON", "images", many=True, text_fields=_LABEL_FIELD),
)
async def add(request: Request, service: ServiceDep, settings: SettingsDep, _: ApiKeyDep,
              _options: NoOptionsDep) -> AddOut:
    """Add one or many labelled images; a new label is simply new points. Requires the API key.

    Multipart: files in repeated `images` fields and a `label` field per image (or one for all).
    JSON: `{"items": [{"image": "<base64>", "label": "cat", "filename": "cat.jpg"}]}`.
    The same image (the same bytes, under any file name) is one point: added again, it is not added twice (`new`
    false, `id` and `source` those of the point that holds it), and given another label it is relabelled as
    `POST /v1/memory/relabel` does it (journaled, `relabelled_from`); twice in one request with two labels it is
    a 422.
    """
    limit = settings.max_batch_images
    if require_media_type(request, MULTIPART, JSON) == JSON:
        body = await read_json(request, AddJSON)
        uploads = [Upload.of(i.image, i.filename) for i in body.items]
        labels = [i.label for i in body.items]
    else:
        files, fields = await read_files(request, "images", max_files=limit, too_many=TOO_MANY,
                                         text_fields=("label",), other_fields=LABELS_ONLY)
        uploads = [Upload(data, name) for data, name in files]
        labels = [lab.strip() for lab in fields.get("label", [])]
        if len(labels) == 1:
            labels *= len(uploads)
        if len(labels) != len(uploads):
            raise ProblemError(422, f"send one non-blank `label` (at most {MAX_LABEL_CHARS:,} characters) per "
                               f"image, or one for all: got {counted(len(labels), 'label')} for "
                               f"{counted(len(uploads), 'image')}",
                               "invalid-parameters", "Invalid parameters")
        if (bad := next((i for i, lab in enumerate(labels) if not 0 < len(lab) <= MAX_LABEL_CHARS), None)) is not None:
            what = "blank" if not labels[bad] else f"{len(labels[bad])} characters long"
            raise ProblemError(422, f"label {bad} is {what}: a label is 1 to {MAX_LABEL_CHARS:,} characters",
                               "invalid-parameters", "Invalid parameters")
        for i, lab in enumerate(labels):
            try:
                printable(lab)
            except ValueError as exc:
                raise ProblemError(422, f"label {i} {exc}", "invalid-parameters", "Invalid parameters") from None
    if len(uploads) > limit:
        raise too_many_images(limit, TOO_MANY, sent=len(uploads))
    # One image (the same bytes, whatever its name) is one point: sent twice it is added once, with two labels
    # refused. A JSON slot whose text is no base64 fails as an image that does not decode: the others are still added.
    readable = [i for i, up in enumerate(uploads) if up.problem is None]
    unreadable = [(i, up.problem) for i, up in enumerate(uploads) if up.problem is not None]
    keep, conflicts = first_occurrences([uploads[i].sha256 for i in readable], [labels[i] for i in readable])
    keep = [readable[i] for i in keep]
    if conflicts:
        j, i = (readable[c] for c in conflicts[0])
        raise ProblemError(422, f"images {j} and {i} are the same image (the same bytes) labelled "
                           f"{quoted(labels[j])} and {quoted(labels[i])}: an image is one point with one label",
                           "invalid-parameters", "Invalid parameters")
    try:
        added, failed, result = await service.run_edit(service.add, [uploads[i] for i in keep],
                                                       [labels[i] for i in keep])
    except ValueError as exc:  # a label's name where a label belongs: nothing added
        raise ProblemError(422, str(exc), "invalid-parameters", "Invalid parameters") from None
    added = [(keep[i], pid, lab, src) for i, pid, lab, src in added]
    failed = sorted([*unreadable, *((keep[i], reason) for i, reason in failed)])
    failures = [AddFailure(index=i, filename=uploads[i].filename, reason=r) for i, r in failed]
    if not added:
        raise ProblemError(400, "no image could be decoded: " + "; ".join(f.reason for f in failures[:3]),
                           "bad-image", "The image could not be decoded")
    points = await run_in_threadpool(service.memory.store.count)
    few = await run_in_threadpool(service.memory.few_point_labels, sorted({lab for _, _, lab, _ in added}))
    new = set(result.added)
    names = service.memory.store.meta.label_names  # as every other answer gives them
    return AddOut(added=[AddedPoint(id=pid, label=lab, label_name=names.get(lab), source=src,
                                    thumbnail_url=thumbnail_url(request, pid), new=pid in new,
                                    relabelled_from=result.relabelled.get(pid))
                         for _, pid, lab, src in added], failed=failures, points=points, few_points=few)


@router.delete(
    "/points/{point_id}",
    summary="Forget one point",
    response_model=ForgetOut,
    responses=problem_responses(401, 403, 404, 422, 503, 507),
)
async def forget_point(point_id: PointId, q: Annotated[ForgetPointQuery, Query()], service: ServiceDep,
                       _: ApiKeyDep) -> ForgetOut:
    """Forget one memory point. From then on no answer (cached or not) cites it. Requires the API key."""
    _check_erase(q.erase, service)
    try:
        n = await service.run_edit(service.forget, ids=[str(point_id)], erase=q.erase)
    except EraseFailedError as exc:
        return await _forgotten_not_erased(exc, service)
    if n == 0:  # nothing forgotten, nothing erased
        raise ProblemError(404, f"no point with id {point_id} in the memory", "unknown-point", "Unknown point")
    return ForgetOut(deleted=n, points=await run_in_threadpool(service.memory.store.count), erased=q.erase)


async def _forgotten_not_erased(exc: EraseFailedError, service: ClassifierService) -> ForgetOut:
    """200: the points are forgotten (no answer cites them again) though their vectors are still in the files."""
    return ForgetOut(deleted=exc.forgotten, points=await run_in_threadpool(service.memory.store.count), erased=False,
                     note=f"forgotten, but their vectors could not be erased from the memory's files ({exc.reason}); "
                          "POST /v1/memory/erase erases them once the cause is mended")


def _check_erase(erase: bool, service: ClassifierService) -> None:
    if erase and not service.memory.store.erases_on_demand:
        raise ProblemError(422, "this memory is on a Qdrant server, which rewrites its segments on its own "
                                "schedule: forget without `erase`", "invalid-parameters", "Invalid parameters")


@router.delete(
    "",
    summary="Forget points by ids, label or source",
    response_model=ForgetOut,
    responses=problem_responses(401, 403, 422, 503, 507),
)
async def forget_where(q: Annotated[ForgetQuery, Query()], service: ServiceDep, _: ApiKeyDep) -> ForgetOut:
    """Forget some points by id (`?ids=...&ids=...`), every point with a label (`?label=cat`), or with a source
    prefix (`?source_prefix=/data/cats/`).

    Exactly one of the three. Returns how many points went (ids not in the memory are not counted). A `label`
    that is a label's name, not a label, is refused (422, naming the label). Requires the API key.
    """
    if sum(x is not None for x in (q.ids, q.label, q.source_prefix)) != 1:
        raise ProblemError(422, "give exactly one of `ids`, `label` or `source_prefix`", "invalid-parameters",
                           "Invalid parameters")
    _check_erase(q.erase, service)
    try:
        n = await service.run_edit(service.forget, ids=q.ids, label=q.label, source_prefix=q.source_prefix,
                              erase=q.erase)
    except ValueError as exc:  # a source_prefix that is no path on this host, a label's name: nothing goes
        raise ProblemError(422, str(exc), "invalid-parameters", "Invalid parameters") from None
    except EraseFailedError as exc:
        return await _forgotten_not_erased(exc, service)
    note = await service.run(service.memory.no_label_note, q.label, LISTED_BY, label_history) \
        if n == 0 and q.label is not None else None
    if q.ids is not None and n < (named := len({str(uuid.UUID(i)) for i in q.ids})):
        # A client retrying a forget (its first answer lost) reads that those went before, not an unexplained count
        missing = named - n
        note = (f"{missing:,} of the {named:,} ids named no point in the memory: forgotten before, or never in it "
                f"(GET /v1/memory/history?point_id=ID says when one was forgotten)" if named > 1 else
                "the id named no point in the memory: forgotten before, or never in it "
                "(GET /v1/memory/history?point_id=ID says when it was forgotten)")
    return ForgetOut(deleted=n, points=await run_in_threadpool(service.memory.store.count), erased=q.erase and n > 0,
                     note=note)


@router.post(
    "/forget-like",
    summary="Forget an image and its copies",
    response_model=ForgetLikeOut,
    responses=problem_responses(400, 401, 403, 413, 415, 422, 503, 507),
    openapi_extra=image_body("ForgetLikeJSON", "image", many=False),
)
async def forget_like(request: Request, q: Annotated[ForgetLikeQuery, Query()], service: ServiceDep,
                      _: ApiKeyDep) -> ForgetLikeOut:
    """Forget every point whose image looks like the one sent: the image itself however it was added (a path, an
    upload), and its copies re-saved, recompressed or enlarged under other names, for "remove this photo, and any
    copy of it" without its point id or path. A point goes when its features are at least `min_similarity` similar
    to the image's, by exact search over every point (hard-pruned ones too); `dry_run=true` answers what would go
    and forgets nothing.

    Send the image as a multipart upload in the `image` field, or as JSON `{"image": "<base64>"}`. Journaled as a
    forget chosen by the image's sha256 and the threshold, never the image. More than 1,000 points that similar (or
    more than 10 making up over half of the memory) is a 422, nothing forgotten: such a threshold takes more than
    copies. Requires the API key.
    """
    if not q.dry_run:
        _check_erase(q.erase, service)
    if require_media_type(request, MULTIPART, JSON) == JSON:
        body = await read_json(request, ForgetLikeJSON)
        upload = Upload(body.image, body.filename)
    else:
        files, _fields = await read_files(request, "image", max_files=1,
                                          too_many="send one image: its copies are found among the memory's points")
        upload = Upload(*files[0])
    return await _forget_like(service, q, upload=upload)


@router.post(
    "/points/{point_id}/forget-like",
    summary="Forget a point and its copies",
    response_model=ForgetLikeOut,
    responses=problem_responses(401, 403, 404, 422, 503, 507),
)
async def forget_point_like(point_id: PointId, q: Annotated[ForgetLikeQuery, Query()], service: ServiceDep,
                            _: ApiKeyDep) -> ForgetLikeOut:
    """Forget a point and every point whose image looks like its image (copies of it under other names), found as
    `POST /v1/memory/forget-like` finds them, with the point's stored vector in place of an image: for a neighbour
    an answer cited, whose image the client does not hold. `dry_run=true` answers what would go (the page asks
    this before its Forget). Journaled as a forget chosen by the point's id and the threshold. Requires the API
    key."""
    if not q.dry_run:
        _check_erase(q.erase, service)
    return await _forget_like(service, q, point_id=str(point_id))


async def _forget_like(service: ClassifierService, q: ForgetLikeQuery, upload: Upload | None = None,
                       point_id: str | None = None) -> ForgetLikeOut:
    what = "the image" if point_id is None else f"point {point_id}"
    try:
        found = await service.run_edit(service.forget_like, upload, q.min_similarity, erase=q.erase, dry_run=q.dry_run,
                                  point_id=point_id)
        note = None if found else f"no point of the memory is at least {q.min_similarity:g} similar to {what}"
        erased = q.erase and bool(found) and not q.dry_run
    except ImageDecodeError as exc:
        raise ProblemError(400, str(exc), "bad-image", "The image could not be decoded") from None
    except UnknownPointError as exc:
        raise ProblemError(404, str(exc), "unknown-point", "Unknown point") from None
    except ValueError as exc:  # more points that similar than copies of one image could be: nothing forgotten
        raise ProblemError(422, str(exc), "invalid-parameters", "Invalid parameters") from None
    except EraseFailedError as exc:
        found, erased = exc.points, False
        note = (await _forgotten_not_erased(exc, service)).note
    return ForgetLikeOut(deleted=0 if q.dry_run else len(found),
                         points=await run_in_threadpool(service.memory.store.count), erased=erased, note=note,
                         dry_run=q.dry_run, min_similarity=q.min_similarity,
                         matched=[SimilarPointOut(**d.model_dump()) for d in found])


@router.post(
    "/erase",
    summary="Erase forgotten vectors",
    response_model=EraseOut,
    responses=problem_responses(401, 403, 422, 503, 507),
)
async def erase(service: ServiceDep, _: ApiKeyDep, _options: NoOptionsDep) -> EraseOut:
    """Rewrite the embedded memory's files without the vectors of every point forgotten so far: those forgotten
    without `erase` (the page's Forget), or whose erase failed. Other requests wait for it: the engine holds
    Python's lock while it rewrites (README, "Forgetting"). A memory on a Qdrant
    server refuses it (422). Requires the API key."""
    if not service.memory.store.erases_on_demand:  # not _check_erase's "forget without erase": this forgets nothing
        raise ProblemError(422, "this memory is on a Qdrant server: a Qdrant server erases forgotten points itself, "
                                "rewriting a segment once its optimizers' deleted_threshold of it is deleted",
                           "invalid-parameters", "Invalid parameters")
    seconds = await service.run_edit(service.erase)
    return EraseOut(erased=True, seconds=round(seconds, 3))


@router.post(
    "/backup",
    summary="Back up the memory on the server",
    response_model=BackupOut,
    responses=problem_responses(401, 403, 409, 422, 503, 507),
)
async def backup(q: Annotated[BackupQuery, Query()], service: ServiceDep, _: ApiKeyDep) -> BackupOut:
    """Copy the embedded memory's folder, as it is now, into a folder of its own under the server's backup folder
    (`VMEM_BACKUP_DIR`; 409 while unset), named `name` or by the time: an embedded memory, restored by putting it in
    the memory's place with the service stopped. Classify goes on meanwhile, edits wait for the copy (seconds: the
    files are copied, no index is built), on a thread of its own (a second backup waits for the first). Refused
    before anything is written where the disk has too little room (507), and a copy that fails midway leaves nothing
    under the name. A memory on a Qdrant server refuses it (422): the server's snapshots back it up. Requires the
    API key."""
    try:
        done = await _backup(q, service)
    except Exception:  # a refusal after the key was taken: a backup asked for and not made
        service.metrics.backups.labels("failed").inc()
        raise
    service.metrics.backups.labels("ok").inc()
    service.metrics.backup_last_success.set(time.time())
    # No edit, so never journaled: who copied the memory out, and where, is said here (at WARNING, as the keys
    # read again are: vmem serve shows it without -v)
    log.warning("backup %s made: %s, %s bytes, in %.1f s (key %s)", done.path, counted(done.points, "point"),
                f"{done.bytes:,}", done.seconds, KEY_NAME.get() or "none: authentication disabled")
    return done


async def _backup(q: BackupQuery, service: ClassifierService) -> BackupOut:
    # A server's memory is refused first: told to set a backup folder and restart, its operator was refused after
    if not service.memory.store.backs_up_files:
        raise ProblemError(422, "this memory is on a Qdrant server: back it up with the server's own snapshots of "
                                "its collection and of its journal's", "invalid-parameters", "Invalid parameters")
    folder = service.settings.backup_dir
    if folder is None:
        raise ProblemError(409, "no backup folder is set: give the service one (VMEM_BACKUP_DIR=/path, best on another "
                                "disk than the memory's) and restart it; or stop the service and copy the memory's "
                                "folder (vmem backup, or vmem copy)", "backups-off", "Backups are not set up")
    if q.name == LATEST_BACKUP:
        raise ProblemError(422, f"{LATEST_BACKUP} is the link to the newest backup, which read-only replicas serve: "
                                "give the backup another name", "invalid-parameters", "Invalid parameters")
    name = q.name or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")

    def work() -> BackupOut:
        nonlocal name
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            # A file put there after the start (which refuses one): had been "a backup named ... exists" or a 500
            file = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
            raise ProblemError(503, f"VMEM_BACKUP_DIR {folder} cannot be made: {file} is a file, not a folder; "
                                    "nothing was written. Move the file away, or give the service another backup "
                                    "folder", "backup-dir-unwritable", "The backup folder cannot be written") from None
        if q.name is None:  # a second backup in the same second took the time's name: the client named none
            stamp = name
            for i in itertools.count(2):
                if not os.path.lexists(folder / name):
                    break
                name = f"{stamp}-{i}"
        done = service.memory.backup(folder / name)
        for path in done.removed_partials:
            log.warning("removed %s: the folder of a backup killed midway", path)
        for path in done.unnamed_partials:
            log.warning("%s may be the folder of a backup killed midway, left by an older vmem (whose it is, nothing "
                        "tells): once no backup is writing beside it, remove it by hand", path)
        if service.settings.read_only:
            # A copy of an older backup (replicas serve the writer's): `latest` moved to it, replicas restarted would
            # serve the memory as it was before the writer's newest backup
            log.warning("%s left as it was: this service serves a read-only copy, not the memory the writer edits",
                        folder / LATEST_BACKUP)
            return BackupOut(name=name, path=done.path, points=done.points, bytes=done.bytes,
                             seconds=round(done.seconds, 3))
        try:
            if not link_latest(folder, name):
                log.warning("%s is not a link: it was left as it is, naming no backup", folder / LATEST_BACKUP)
        except OSError as exc:  # the backup is made: only the link is missing
            log.warning("could not point %s at the backup %s: %s", folder / LATEST_BACKUP, name, exc)
        return BackupOut(name=name, path=done.path, points=done.points, bytes=done.bytes,
                         seconds=round(done.seconds, 3))

    try:
        return await service.run_alone("backup", work)
    except FileExistsError:
        raise ProblemError(409, f"a backup named {name} exists already: give another name, or remove it first",
                           "backup-exists", "A backup of that name exists") from None
    except MemoryFullError as exc:
        raise ProblemError(507, str(exc), "backup-disk-full", "No room for the backup") from None
    except ValueError as exc:  # the backup folder inside the memory's
        raise ProblemError(409, f"{exc} (VMEM_BACKUP_DIR)", "backups-off", "Backups are not set up") from None
    except PermissionError as exc:
        raise ProblemError(503, f"the backup folder {folder} cannot be written ({exc.strerror}): nothing was "
                                "written; make it writable for the service's user", "backup-dir-unwritable",
                           "The backup folder cannot be written") from None


@router.post(
    "/relabel",
    summary="Relabel points",
    response_model=RelabelOut,
    responses=problem_responses(400, 401, 403, 413, 415, 422, 503, 507),
    openapi_extra=json_body("RelabelIn"),
)
async def relabel(request: Request, service: ServiceDep, _: ApiKeyDep, _options: NoOptionsDep) -> RelabelOut:
    """Give points another label, embedding nothing again: correct mislabelled images (`ids`), rename or merge a
    class (`label`), or relabel a folder (`source_prefix`). Their pruning marks go; each keeps the label it held
    before (`relabelled_from`). From then on no answer (cached or not) votes with the old label. Requires the
    API key."""
    body = await read_json(request, RelabelIn)
    to = body.to.strip()
    if body.label is not None and body.label == to:
        raise ProblemError(422, f"the points already have the label {quoted(to)}", "invalid-parameters",
                           "Invalid parameters")

    def apply() -> RelabelOut:
        n = service.relabel(to, ids=body.ids, label=body.label, source_prefix=body.source_prefix)
        store = service.memory.store
        # as `vmem relabel` tells them apart: done already, or nothing there
        note = service.memory.why_nothing_relabelled(to, LISTED_BY, label_history, ids=body.ids, label=body.label,
                                                     source_prefix=body.source_prefix)[1] if n == 0 else None
        return RelabelOut(relabelled=n, label=to, label_name=store.meta.label_names.get(to),
                          label_points=store.count(label=to), note=note)

    try:
        return await service.run_edit(apply)
    except ValueError as exc:  # an id that is no point id, a name instead of a label, a prefix that is no path
        raise ProblemError(422, str(exc), "invalid-parameters", "Invalid parameters") from None


@router.patch(
    "/points/{point_id}",
    summary="Relabel one point",
    response_model=PointOut,
    responses=problem_responses(400, 401, 403, 404, 413, 415, 422, 503, 507),
    openapi_extra=json_body("PointLabelIn"),
)
async def relabel_point(point_id: PointId, request: Request, service: ServiceDep, _: ApiKeyDep,
                        _options: NoOptionsDep) -> PointOut:
    """Give one point another label (a mislabelled image corrected), embedding nothing again; answers the
    point as stored afterwards. Requires the API key."""
    body = await read_json(request, PointLabelIn)

    def apply() -> Any:
        service.relabel(body.label, ids=[str(point_id)])
        return service.memory.point(str(point_id))

    try:
        point = await service.run_edit(apply)
    except ValueError as exc:  # a name instead of a label
        raise ProblemError(422, str(exc), "invalid-parameters", "Invalid parameters") from None
    if point is None:
        raise ProblemError(404, f"no point with id {point_id} in the memory", "unknown-point", "Unknown point")
    return PointOut(**point.model_dump(), thumbnail_url=thumbnail_url(request, point.id))


@router.get("/stats", summary="What the memory holds", response_model=StatsOut,
            responses=problem_responses(503))
async def stats(service: ServiceDep) -> StatsOut:
    """Points, labels, points per label, the encoder, the default vote and the novelty threshold."""

    def collect() -> StatsOut:
        service.memory.refresh()  # names, tuned settings and novelty as another process sharing the memory left them
        store = service.memory.store
        default_vote: VoteSettings = service.memory.vote_settings()
        spec = store.meta.featurizer
        per_label = store.label_counts()
        few = service.memory.few_point_labels(counts=per_label)
        return StatsOut(
            backend="embedded" if service.backend == "embedded" else "qdrant",
            points=store.count(), labels=len(per_label), per_label=per_label,
            label_names={label: name for label, name in store.meta.label_names.items() if label in per_label},
            featurizer=FeaturizerOut(name=spec.name, dim=spec.dim, resize=spec.preprocessing.resize,
                                     crop=spec.preprocessing.crop),
            default_vote=default_vote, ood_threshold=service.ood_threshold(default_vote.k), read_only=store.read_only,
            few_points=few[:MOST_FEW_POINTS], few_points_total=len(few),
            index_upkeep=IndexUpkeepOut(**upkeep.as_dict()) if (upkeep := service.index_upkeep()) is not None else None,
            max_upload_bytes=service.settings.max_upload_bytes,
        )

    return await service.run(collect)


@router.put("/label-names", summary="Name labels", response_model=LabelNamesOut,
            responses=problem_responses(400, 401, 403, 413, 415, 422, 503, 507),
            openapi_extra=json_body("LabelNamesIn"))
async def set_label_names(request: Request, service: ServiceDep, _: ApiKeyDep,
                          _options: NoOptionsDep) -> LabelNamesOut:
    """Give labels the names answers (`label_name`), the page and the re-ranker show (WordNet ids say nothing
    to a person or to Gemini). Merged with the stored names unless `replace`. Requires the API key."""
    body = await read_json(request, LabelNamesIn)
    try:
        names = await service.run_edit(service.set_label_names, body.names, body.replace)
    except ValueError as exc:  # a name of nothing but what str.strip() takes as space (e.g. "\x1c")
        raise ProblemError(422, str(exc), "invalid-parameters", "Invalid parameters") from None
    return LabelNamesOut(label_names=names)


@router.get("/history", summary="The memory's edits", response_model=HistoryOut,
            responses=problem_responses(422, 503))
async def history(q: Annotated[HistoryQuery, Query()], request: Request, service: ServiceDep) -> HistoryOut:
    """Every add, forget, relabel, erase, naming, prune, tune and copy made through vmem (any process: the
    service, the CLI, Python), newest first. A forget lists the ids of the points it deleted: `point_id` answers
    whether and when a point was forgotten, and through what; `by` lists what one API key's holder changed."""
    point_id = str(q.point_id) if q.point_id is not None else None
    try:
        # On the read threads, as the point listing is: a journal of 100,000 entries read whole (a label filter
        # parses every line, ~1 s) by a few clients without a key had slowed classify from 0.08 s to 5 s on the
        # embedding threads, and /readyz to 8.8 s on the request threads
        # (one whose client gave up while it waited is not read: 30 such had held up the next for 21 s)
        page = await unless_the_client_leaves(request, service.run_read(
            service.memory.history_page, point_id=point_id, op=q.op, limit=q.limit, label=q.label, since=q.since,
            by=q.by, until=q.until, cursor=q.cursor))
    except ValueError as exc:  # a `since` or `until` that is no date, or the wrong way round; a cursor that is none
        detail = str(exc)
        if any(value is not None and _PLUS_AS_SPACE.search(value) for value in (q.since, q.until)):
            # An `at` pasted into a URL (the next page's `until`): its `+00:00` had read as no date, with no reason
            detail += "; a `+` in a URL's query reads as a space: send it as %2B (or have the HTTP client encode the " \
                      "parameters)"
        raise ProblemError(422, detail, "invalid-parameters", "Invalid parameters") from None
    entries = page.entries
    if not q.ids:
        entries = [e.model_copy(update={"ids": []}) if e.ids else e for e in entries]
    return HistoryOut(entries=entries, earlier=page.earlier, next_cursor=page.next_cursor)


@router.get("/suspects", summary="Probably mislabelled points", response_model=SuspectsOut,
            responses={202: {"model": SuspectsOut, "description": "the audit is running: ask again",
                             "headers": {"Retry-After": {"description": "seconds to wait before asking again",
                                                         "schema": {"type": "integer", "minimum": 0}}}},
                       **problem_responses(404, 422, 500, 503)})
async def suspects(q: Annotated[SuspectsQuery, Query()], request: Request, service: ServiceDep,
                   response: Response) -> SuspectsOut:
    """Points whose nearest other points vote another label (`vmem suspects`): each with the label suggested,
    to check and relabel. The first request starts the audit (every point searched against the rest of the
    memory: 5.6 s at 20,100 points on 2 cores; above 100,000 points each point's neighbours come from the index,
    about 1 ms a point) and answers 202 while it runs; its result is kept until the memory's points change."""
    if q.label is not None:  # as the memory spells it
        q = q.model_copy(update={"label": await service.run(service.memory.stored_label, q.label)})
    if q.label is not None and not await service.run(service.memory.store.count, q.label):
        await unknown_labels(service, [q.label])
    # Points searches can return: a hard-pruned memory failed the audit with a 500 that said to ask again, forever.
    if (searchable := await service.run(service.memory.store.count, None, True)) < 2:
        total = await service.run(service.memory.store.count)
        raise ProblemError(422, f"the memory holds {counted(searchable, 'point')} a search can "
                           "return" + (f" ({total - searchable} of its {total} are hard-pruned: `vmem prune --undo` "
                                       "restores them)" if total > searchable else "")
                           + ": at least 2 are needed for each to have neighbours to vote", "invalid-parameters",
                           "Invalid parameters")
    try:
        job = await service.run(service.audit)
    except LookupError as exc:
        raise ProblemError(404, str(exc), "not-available", "Not available here") from None
    out = SuspectsOut(status="running" if job.state == "running" else "done", points=job.total,
                      searched=min(job.done, job.total), current=service.audit_is_current(job),
                      seconds=round(job.seconds, 2) if job.seconds is not None else None)
    if job.state == "failed":
        raise ProblemError(500, f"the label audit failed: {job.error}; ask again to retry", "audit-failed",
                           "The audit failed")
    if job.state == "running":
        response.status_code = 202
        response.headers["Retry-After"] = "2"
        return out
    names = service.memory.label_names
    found = [s for s in job.result.suspects(q.min_share) if q.label is None or q.label in (s.label, s.suggested)]
    out.total_suspects = len(found)
    out.suspects = [SuspectOut(id=s.id, label=s.label, label_name=names.get(s.label), suggested=s.suggested,
                               suggested_name=names.get(s.suggested), share=s.share, own_share=s.own_share,
                               source=s.source, thumbnail_url=thumbnail_url(request, s.id))
                    for s in found[: q.limit]]
    return out


@router.get("/points", summary="List memory points", response_model=PointsOut, responses=problem_responses(422, 503))
async def list_points(q: Annotated[PointsQuery, Query()], request: Request, service: ServiceDep,
                      settings: SettingsDep) -> PointsOut:
    """The memory's points in id order, a page at a time, optionally those of one label or source prefix.

    Each has its label (and name), source, tags, when it was added, and whether pruning excluded or
    down-weighted it. Follow `next_cursor` (as `cursor`) until it is null.
    """
    if q.label is not None and not await run_in_threadpool(service.memory.knows_label, q.label):
        # An empty page read as an empty class, for a label misspelt or given by its name: refused. A label whose
        # points were all forgotten (or relabelled) is empty, and a client paging it (or checking that a forget
        # took them all) is answered so, not told the memory never had it.
        await unknown_labels(service, [q.label])
    try:
        # On the read threads: a source_prefix of a big folder is walked for links (seconds), and a request
        # without a key must not hold up classification, nor readiness, that long. Walked for a request with the
        # key (as a forget of the folder chooses its points: a listing before a forget shows what it would take),
        # and for anyone inside the folders the service serves images from: any folder on the host (/usr, an NFS
        # mount) had been walked for anyone asking.
        follow = q.source_prefix is not None and (has_api_key(request, request.headers.get(API_KEY_HEADER))
                                                  or service.serves_from(q.source_prefix))
        # A page read without a walk is cheap (the page's own listings): not queued behind the slow reads
        listing = functools.partial(service.memory.points, q.label, q.source_prefix, q.cursor, q.limit, q.excluded,
                                    follow)
        page = await (unless_the_client_leaves(request, service.run_read(listing)) if follow
                      else run_in_threadpool(listing))
    except ValueError as exc:  # a cursor that is no point id, a source_prefix that is no path here
        raise ProblemError(422, str(exc), "invalid-parameters", "Invalid parameters") from None
    return PointsOut(points=[PointOut(**p.model_dump(), thumbnail_url=thumbnail_url(request, p.id))
                             for p in page.points], next_cursor=page.next_cursor)


@router.get(
    "/export",
    summary="The points with their vectors, as one .npz file",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                     "description": "a numpy .npz file (`vmem export`'s format); `X-Vmem-Points` says how many",
                     "headers": {"X-Vmem-Points": {"description": "how many points the file holds",
                                                   "schema": {"type": "integer", "minimum": 0}}}},
               **problem_responses(401, 403, 422, 503, 507)},
)
async def export_points(q: Annotated[ExportQuery, Query()], service: ServiceDep, _: ApiKeyDep) -> FileResponse:
    """The memory's points (or those of a label, a source prefix, hard-pruned or not) with their vectors as
    stored, as `vmem export` writes them: arrays `vectors`, `ids`, `labels`, `sources`, `excluded`, `reliability`
    and `meta` (JSON), which numpy reads without pickle (`np.load(f)`), to analyse elsewhere or to `vmem import`
    into another memory. Written to a temporary file first (the vectors are never all in RAM), sent, then
    deleted: the server's temporary folder needs room for about twice the vectors. Requires the API key (vectors
    say much of the images they come from)."""
    if q.label is not None and not await run_in_threadpool(service.memory.knows_label, q.label):
        await unknown_labels(service, [q.label])  # one whose points were all forgotten exports an empty file
    folder = make_private_folder(EXPORT_FOLDER_PREFIX)  # named for this process: a killed one's is removed at start
    try:
        n = await service.run_read(service.memory.export_points, folder / "points.npz", q.label, q.source_prefix,
                                   q.excluded)
    except BaseException as exc:  # nothing is sent: nothing is kept
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, ValueError):  # a source_prefix that is no path here
            raise ProblemError(422, str(exc), "invalid-parameters", "Invalid parameters") from None
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            raise ProblemError(507, f"the export did not fit in the server's temporary folder ({exc.strerror}): "
                                    "export a label or a source prefix at a time, or give the server more room "
                                    "(TMPDIR)", "export-disk-full", "No room for the export") from None
        raise
    return FileResponse(folder / "points.npz", media_type="application/octet-stream", filename="points.npz",
                        headers={"X-Vmem-Points": str(n)},
                        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))


IMPORT_PATH = "/v1/memory/import"
_WRITE_BYTES = 4 << 20  # the upload is written to its file this much at a time, off the event loop


def import_too_large(limit: int) -> str:
    """What a 413 of `POST /v1/memory/import` says."""
    shown = f"{limit / 2**30:.1f} GiB" if limit >= 2**30 else f"{limit / 2**20:.1f} MiB"  # not "0.0 GiB"
    return (f"the file is over the limit of {limit:,} bytes ({shown}) for an import over HTTP: raise "
            "it (VMEM_MAX_IMPORT_BYTES), or import the file with `vmem import FILE` on the server's host")


def _write(f: BinaryIO, data: bytearray) -> None:  # one name for the writes: a test fills the disk here
    f.write(data)


def _no_room(reason: str) -> ProblemError:
    return ProblemError(507, f"the file did not fit in the server's temporary folder ({reason}): give the server "
                             "more room (TMPDIR), or import the file with `vmem import FILE` on the server's host",
                        "import-disk-full", "No room for the file")


async def _receive_file(request: Request, path: FilePath) -> None:
    """The request's body into `path`, a few MB at a time: never all in RAM. 507 where the folder has no room (said
    before a byte is read where the body's length is declared)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > (free := shutil.disk_usage(path.parent).free):
        raise _no_room(f"{int(declared):,} bytes sent, {free:,} free")
    buffer = bytearray()
    try:
        with open(path, "wb") as f:
            async for chunk in request.stream():
                buffer += chunk
                if len(buffer) >= _WRITE_BYTES:
                    await run_in_threadpool(_write, f, buffer)
                    buffer.clear()
            await run_in_threadpool(_write, f, buffer)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise _no_room(os_error_reason(exc)) from None
        raise


@router.post(
    "/import",
    summary="Import points with their vectors from an .npz file",
    response_model=ImportOut,
    responses=problem_responses(401, 403, 409, 413, 415, 422, 503, 507),
    openapi_extra={"requestBody": {"required": True, "content": {OCTET_STREAM: {"schema": {
        "type": "string", "format": "binary", "description": "the .npz file"}}}}},
)
async def import_points(request: Request, q: Annotated[ImportQuery, Query()], service: ServiceDep,
                        _: ApiKeyDep) -> ImportOut:
    """Add the points of an `.npz` file, sent as the body, with their vectors, nothing embedded (`vmem import`): one
    `GET /v1/memory/export` or `vmem export` wrote (ids, labels, sources, tags, pruning and label names carried as
    stored), or vectors made elsewhere with their labels (and sources), by the encoder `featurizer` names, which must
    be the memory's. Rows that cannot be points are skipped and counted; points the memory holds already are
    skipped, and under another label keep theirs unless `relabel`. `dry_run` answers what would be done.

    `Content-Type: application/octet-stream`, e.g. `curl -T points.npz -X POST -H 'Content-Type:
    application/octet-stream'`. The file is written to the server's temporary folder as it arrives (never all in
    RAM), imported on a thread of its own (classify goes on meanwhile; a second import waits for the first), and
    deleted. At most `VMEM_MAX_IMPORT_BYTES` (413 past it). Journaled as the CLI's import is. Requires the API key.

    The file's sources record no image folder (`source_roots`): a client's file may name any folder of the server.
    `outside_roots` counts the points whose images are files there outside the memory's folders, which are not
    shown as thumbnails nor sent to the re-ranker.
    """
    require_media_type(request, OCTET_STREAM)
    if not q.dry_run:  # served read-only: refused before the file is received (up to VMEM_MAX_IMPORT_BYTES)
        service.memory.store.check_writable()
    started = threading.Event()
    folder = make_private_folder(IMPORT_FOLDER_PREFIX)  # named for this process: a killed one's is removed at start
    path = folder / q.filename

    def work() -> ImportReport:
        started.set()
        try:
            # the file by the name the client gave it, the options as HTTP takes them
            points = read_points_file(path, q.featurizer, shown_as=q.filename, option_form="{}=NAME")
            return service.import_points(points, label=q.label, relabel=q.relabel, dry_run=q.dry_run)
        finally:  # once it ran, here: the client gone meanwhile does not stop it
            shutil.rmtree(folder, ignore_errors=True)

    try:
        await _receive_file(request, path)
        report = await unless_the_client_leaves(request, service.run_alone("import", work))
    except PointsFileError as exc:
        raise ProblemError(422, str(exc), "bad-points-file", "The file cannot be imported") from None
    except FeaturizerMismatchError as exc:
        raise ProblemError(409, str(exc), "featurizer-mismatch", "Vectors of another encoder") from None
    except ValueError as exc:  # a label that is another label's name: nothing written
        raise ProblemError(422, str(exc), "invalid-parameters", "Invalid parameters") from None
    finally:
        if not started.is_set():  # refused, or the client gone, before the import ran
            shutil.rmtree(folder, ignore_errors=True)
    return ImportOut(
        file=q.filename, sha256=report.sha256, format=report.format, featurizer=report.featurizer, dim=report.dim,
        rows=report.rows, chosen=report.chosen, added=report.added, added_per_label=report.added_per_label,
        already_in_memory=report.already_in_memory, duplicates=report.duplicates,
        other_labels=len(report.other_label),
        other_label=[OtherLabelOut(source=src, stored=old, file=new) for src, old, new in report.other_label[:100]],
        relabelled=report.relabel_applied, skipped=dict(report.skipped.most_common()),
        skipped_rows=report.skipped_rows, names=report.names, vote=report.vote, dry_run=report.dry_run,
        outside_roots=report.outside_roots, memory_points=report.memory_points, seconds=round(report.seconds, 3),
        summary=report.summary(trusting=TRUSTING_HTTP))


@router.get("/points/{point_id}", summary="One memory point", response_model=PointOut,
            responses=problem_responses(404, 422, 503))
async def get_point(point_id: PointId, request: Request, service: ServiceDep) -> PointOut:
    """A point by id (as a classification's neighbours list it): label, source, tags, pruning state."""
    point = await service.run(service.memory.point, str(point_id))
    if point is None:
        raise ProblemError(404, f"no point with id {point_id} in the memory", "unknown-point", "Unknown point")
    return PointOut(**point.model_dump(), thumbnail_url=thumbnail_url(request, point.id))


@router.get(
    "/points/{point_id}/thumbnail",
    summary="Thumbnail of a point's image",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                     "description": "a JPEG thumbnail"}, **problem_responses(404, 422, 503)},
)
async def thumbnail(point_id: PointId, service: ServiceDep) -> Response:
    """A small JPEG of the point's image, or 404 with the reason (unknown point, file gone, remote URI)."""
    try:
        data = await run_in_threadpool(service.thumbnail, str(point_id))
    except ThumbnailUnavailable as exc:
        raise ProblemError(404, str(exc), "no-thumbnail", "No thumbnail") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})
