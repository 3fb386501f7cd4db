"""Reading images out of a request: multipart uploads or JSON with base64, one parser for every route."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from .problems import ProblemError

M = TypeVar("M", bound=BaseModel)
MULTIPART = "multipart/form-data"
JSON = "application/json"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def require_media_type(request: Request, *allowed: str) -> str:
    kind = media_type(request)
    if kind not in allowed:
        got = f"{kind!r}" if kind else "no Content-Type"
        raise ProblemError(415, f"send {' or '.join(allowed)}, not {got}", "unsupported-media-type")
    return kind


async def read_json(request: Request, model: type[M]) -> M:
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
        ) from None


async def read_files(request: Request, field: str, max_files: int) -> tuple[list[tuple[bytes, str | None]],
                                                                          dict[str, list[str]]]:
    """The files uploaded under `field` (in order), and the form's text fields."""
    # Starlette answers 400 itself for a malformed body or too many parts.
    form = await request.form(max_files=max_files, max_fields=max_files + 16)
    try:
        files: list[tuple[bytes, str | None]] = []
        fields: dict[str, list[str]] = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != field:
                    raise _invalid(name, f"unexpected file field {name!r}: send images as {field!r}")
                files.append((await value.read(), value.filename or None))
            else:
                if name == field:
                    raise _invalid(name, f"{field!r} must be a file (multipart upload), not a text field")
                fields.setdefault(name, []).append(value)
        if not files:
            raise _invalid(field, f"no image: upload a file in the {field!r} field")
        return files, fields
    finally:
        await form.close()


def _invalid(field: str, msg: str) -> RequestValidationError:
    issue: dict[str, Any] = {"loc": ("body", field), "msg": msg, "type": "value_error"}
    return RequestValidationError([issue])
