"""Reading images out of a request: multipart uploads or JSON with base64, one parser for every route."""

from __future__ import annotations

from collections.abc import Collection
from contextlib import aclosing
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from retrieval.text import quoted

from .problems import ProblemError
from .schemas import FileName

M = TypeVar("M", bound=BaseModel)
MULTIPART = "multipart/form-data"
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
OPTIONS_IN_QUERY = "options go in the query string (e.g. `?k=5&vote=rank`), not in the form"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def require_media_type(request: Request, *allowed: str) -> str:
    kind = media_type(request)
    if kind not in allowed:
        got = f"{kind!r}" if kind else "no Content-Type"
        raise ProblemError(415, f"send {' or '.join(allowed)}, not {got}", "unsupported-media-type")
    return kind


async def read_json(request: Request, model: type[M]) -> M:
    # application/json or 415: a text/plain POST is one a page elsewhere may send without asking (no CORS
    # preflight), and with --no-auth it had relabelled points (the diff review)
    require_media_type(request, JSON)
    body = await request.body()
    try:  # off the event loop: up to the size limit of base64 to parse and decode (seconds for 20 MB)
        return await run_in_threadpool(model.model_validate_json, body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
        ) from None


def too_many_images(limit: int, advice: str, sent: int | None = None) -> ProblemError:
    """413 `too-many-images`: more images than a route takes in one request; `advice` says what to do."""
    if sent is not None:
        what = f"{sent} images"
    else:
        what = "more than one image" if limit == 1 else f"more than {limit} images"
    return ProblemError(413, f"{what} in one request: the limit is {limit} per request; {advice}",
                        "too-many-images", "Too many images")


def bad_multipart(reason: str, field: str, other_fields: str = OPTIONS_IN_QUERY) -> ProblemError:
    """400 `bad-multipart`: a multipart/form-data body that does not parse, with what to do about it."""
    if reason.startswith("Too many fields"):
        # Starlette's parser stops past `max_fields` text fields (options sent as fields, say): the file is not what
        # is wrong, and the fields cannot be named (fewer are each a 422 naming it)
        advice = f"it holds more text fields than this route reads; {other_fields}"
    elif "boundary" in reason.lower():
        # The usual cause: a client that sets `Content-Type: multipart/form-data` itself, which drops the boundary
        # its HTTP library would have written (requests' and httpx' `files=` write the header whole).
        advice = ("the Content-Type names no boundary (multipart/form-data; boundary=...): let the HTTP client "
                  "write that header for a multipart upload rather than setting it by hand")
    else:
        advice = f"send the image as a file part named {field!r} (curl -F {field}=@photo.jpg)"
    return ProblemError(400, f"the multipart/form-data body does not parse ({reason.rstrip('.')}): {advice}",
                        "bad-multipart", "Malformed multipart body")


class _ClosingBoundaryParser(MultiPartParser):
    """Starlette's multipart parser, noting whether the body reached its closing boundary (`--boundary--`).

    python-multipart calls `on_end` there and nowhere else, and its `finalize` checks nothing: a body cut off
    inside a part had parsed as the parts before it, the unfinished one silently dropped."""

    closed = False
    parts = 0

    def on_part_begin(self) -> None:
        self.parts += 1
        super().on_part_begin()

    def on_end(self) -> None:
        self.closed = True


async def _parse_form(request: Request, field: str, max_files: int, too_many: str, other_fields: str) -> FormData:
    try:
        async with aclosing(request.stream()) as stream:
            parser = _ClosingBoundaryParser(request.headers, stream, max_files=max_files, max_fields=max_files + 16)
            form = await parser.parse()
    except MultiPartException as exc:
        # Starlette's parser refuses the file past `max_files` with words of its own and no status of ours.
        if exc.message.startswith("Too many files"):
            raise too_many_images(max_files, too_many) from None
        raise bad_multipart(exc.message, field, other_fields) from None  # about:blank and Starlette's words had said so
    if not parser.closed:
        await form.close()
        what = ("the multipart/form-data body holds no part (it is empty): upload a file in the "
                f"{field!r} field" if not parser.parts else
                "the multipart/form-data body ended before its closing boundary (--boundary--): the upload was "
                "cut off, or the client did not finish the body; send it again whole")
        raise ProblemError(400, what, "bad-multipart", "Malformed multipart body")
    return form


async def read_files(request: Request, field: str, max_files: int, *, too_many: str,
                     text_fields: Collection[str] = (), other_fields: str = OPTIONS_IN_QUERY,
                     ) -> tuple[list[tuple[bytes, str | None]], dict[str, list[str]]]:
    """The files uploaded under `field` (in order), and the text fields named in `text_fields`.

    More than `max_files` files is a 413 `too-many-images` that ends with `too_many` (what to do
    instead); the parser stops there, so a client cannot make the server buffer unlimited parts.
    Any other text field is a 422 naming it and ending with `other_fields`: options travel in the
    query string, and a form field the route does not read must not be silently ignored.
    """
    form = await _parse_form(request, field, max_files, too_many, other_fields)
    try:
        files: list[tuple[bytes, str | None]] = []
        fields: dict[str, list[str]] = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != field:
                    raise _invalid(name, f"unexpected file field {quoted(name)}: send images as {field!r}")
                files.append((await value.read(), _file_name(field, value.filename)))
            elif name == field:
                raise _invalid(name, f"{field!r} must be a file (multipart upload), not a text field")
            elif name not in text_fields:
                raise _invalid(name, f"unexpected form field {quoted(name)}: {other_fields}")
            else:
                fields.setdefault(name, []).append(value)
        if not files:
            raise _invalid(field, f"no image: upload a file in the {field!r} field")
        return files, fields
    finally:
        await form.close()


_FILE_NAME = TypeAdapter(FileName)  # built once: a TypeAdapter compiles its validator


def _file_name(field: str, name: str | None) -> str | None:
    """A part's file name, held to what a JSON body's `filename` may be (one line of text, 255 characters).

    A browser sends a name's `"` as `%22` (the HTML standard's multipart encoding, which httpx follows too): read
    back, or `photo "x".jpg` was stored and echoed as `photo %22x%22.jpg`. Its `%0A` and `%0D` stay as sent,
    control characters being no part of a name."""
    if not name:
        return None
    name = name.replace("%22", '"')
    try:
        return _FILE_NAME.validate_python(name)
    except ValidationError as exc:
        raise _invalid(field, f"the file name {name[:60]!r}: {exc.errors()[0]['msg']}") from None


def _invalid(field: str, msg: str) -> RequestValidationError:
    issue: dict[str, Any] = {"loc": ("body", field), "msg": msg, "type": "value_error"}
    return RequestValidationError([issue])
