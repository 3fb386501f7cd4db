"""Dependencies the routes declare by type: `service: ServiceDep`, `_: ApiKeyDep`, `settings: SettingsDep`."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from retrieval.journal import KEY_NAME

from .keys import ApiKey, KeyRing
from .problems import ProblemError
from .service import ClassifierService
from .settings import Settings

API_KEY_HEADER = "X-API-Key"
Scope = Literal["edit", "rerank"]  # what a key may do (keys.SCOPES)
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


def api_key_of(request: Request, key: str | None, needed_for: str = "this endpoint edits the memory",
               may: Scope = "edit") -> ApiKey | None:
    """The valid key sent, which may do what is asked (keys are compared by their hashes, in constant time); None
    where no key is needed. `needed_for` says why the request needs one."""
    if get_settings(request).auth_disabled:
        return None
    if not key:
        # A generated client's default (openapi-python-client's AuthenticatedClient) sends the key as a bearer token;
        # a Basic one is a proxy's own login (nginx's auth_basic passes it on), no key sent in the wrong place
        sent = request.headers.get("authorization", "")
        where = (f" (it came in the Authorization header, which is not read here: send {API_KEY_HEADER}: KEY, not "
                 "Authorization: Bearer KEY)" if sent and not sent.lower().startswith("basic ") else "")
        raise ProblemError(401, f"{needed_for}: send the API key in the {API_KEY_HEADER} header{where}",
                           "missing-api-key", headers={"WWW-Authenticate": API_KEY_HEADER})
    keys: KeyRing = request.app.state.keys
    if (found := keys.find(key)) is None:
        raise ProblemError(403, "the API key is not valid", "invalid-api-key")
    if may not in found.scopes:
        raise ProblemError(403, f"{needed_for}, and the API key {found.name} may only "
                           f"{' and '.join(sorted(found.scopes))}", "key-not-allowed", "Key not allowed")
    return found


def check_api_key(request: Request, key: str | None, needed_for: str = "this endpoint edits the memory",
                  may: Scope = "edit") -> None:
    """Refuse a request without a valid key that may do what is asked; with one, its name is who the request
    acts as: the journal records it with each edit the request makes (`by`), the answer log with a re-rank."""
    if (found := api_key_of(request, key, needed_for, may)) is not None:
        KEY_NAME.set(found.name)


def has_api_key(request: Request, key: str | None) -> bool:
    """Whether a request may edit the memory (its key, or none needed): for reads that do more for one that may."""
    try:
        api_key_of(request, key)
    except ProblemError:
        return False
    return True


# Keyed routes that edit nothing, by name: what they need the key for, said where it is missing or refused (every
# other keyed route edits the memory)
_KEY_NEEDED_FOR = {
    "export_points": "this endpoint hands out the memory's points with their vectors",
    "backup": "this endpoint writes a copy of the memory on the server",
}


async def require_api_key(request: Request, settings: SettingsDep,
                          key: Annotated[str | None, Security(_api_key_header)]) -> None:
    """Let the request edit the memory only with a valid key; with none needed, only from a page of this
    service or of an origin `VMEM_CORS_ORIGINS` names. (A coroutine, so that the key's name it sets is the
    route's: a plain function runs on a thread, in a context of its own.)"""
    route = str(getattr(request.scope.get("route"), "name", ""))
    check_api_key(request, key, _KEY_NEEDED_FOR.get(route, "this endpoint edits the memory"))
    if settings.auth_disabled:
        check_same_site(request, settings)


def check_same_site(request: Request, settings: Settings) -> None:
    """A 403 for an edit a browser sends from another site's page. With a key needed, such a page cannot send one
    (the header needs CORS's consent); with none, a multipart POST, which needs no preflight, had added points to a
    --no-auth service from any page its user opened."""
    origin = request.headers.get("origin")
    if origin is None or origin in settings.cors_origins:
        return
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        foreign = fetch_site in ("cross-site", "same-site")
    else:  # an older browser: the page's origin against the host asked
        foreign = urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower()
    if foreign:
        raise ProblemError(403, f"an edit sent from a page of {origin} is refused: authentication is disabled, and "
                           "any page its user opens could edit the memory; name the origin in VMEM_CORS_ORIGINS, or "
                           "set an API key", "cross-site-edit", "Cross-site edit")


ApiKeyDep = Annotated[None, Depends(require_api_key)]
