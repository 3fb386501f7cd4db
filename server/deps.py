"""Dependencies the routes declare by type: `service: ServiceDep`, `_: ApiKeyDep`, `settings: SettingsDep`."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from .problems import ProblemError
from .service import ClassifierService
from .settings import Settings

API_KEY_HEADER = "X-API-Key"
_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                               description="required by the endpoints that edit the memory")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_service(request: Request) -> ClassifierService:
    service = request.app.state.service
    if service is None:
        raise ProblemError(503, "the memory is still loading; retry shortly", "not-ready",
                           headers={"Retry-After": "5"})
    return service


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[ClassifierService, Depends(get_service)]


def check_api_key(settings: Settings, key: str | None, needed_for: str = "this endpoint edits the memory") -> None:
    """Refuse a request without the configured key (compared in constant time); `needed_for` says why it needs one."""
    if settings.auth_disabled:
        return
    if not key:
        raise ProblemError(401, f"{needed_for}: send the API key in the {API_KEY_HEADER} header",
                           "missing-api-key", headers={"WWW-Authenticate": API_KEY_HEADER})
    expected = settings.api_key.get_secret_value().encode() if settings.api_key else b""
    if not hmac.compare_digest(key.encode(), expected):
        raise ProblemError(403, "the API key is not valid", "invalid-api-key")


def has_api_key(settings: Settings, key: str | None) -> bool:
    """Whether a request may edit the memory (its key, or none needed): for reads that do more for one that may."""
    try:
        check_api_key(settings, key)
    except ProblemError:
        return False
    return True


def require_api_key(settings: SettingsDep, key: Annotated[str | None, Security(_api_key_header)]) -> None:
    """Let the request edit the memory only with the configured key."""
    check_api_key(settings, key)


ApiKeyDep = Annotated[None, Depends(require_api_key)]
