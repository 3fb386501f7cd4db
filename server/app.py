"""`create_app`: the FastAPI application, with the memory loaded once in `lifespan`.

    uvicorn --factory vmem.cli.serve:create_service_app   # as vmem serve builds it: checks, label audit
    create_app(Settings(...), memory=my_memory)  # tests and embedding in another program
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, get_args

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from retrieval.journal import JournalOp
from retrieval.store import NoMemoryError
from retrieval.text import without_secrets
from vmem import VisualMemory

from . import schemas
from .head import HeadAsGetMiddleware
from .keys import KeyRing, KeysCollector
from .limits import AllowedHostsMiddleware, BodySizeLimitMiddleware
from .metrics import Metrics, MetricsMiddleware
from .problems import Problem, RequestIdMiddleware, UnexpectedErrorMiddleware, install_problem_handlers
from .routes import classify, ops, page, templates
from .routes import memory as memory_routes
from .routes.page import STATIC_DIR
from .service import Auditor, ClassifierService
from .settings import Settings

log = logging.getLogger(__name__)
API_VERSION = "1.0.0"
# Request bodies declared by hand (a route takes multipart or JSON), so their schemas are added here.
_BODY_MODELS = (schemas.ClassifyJSON, schemas.ClassifyBatchJSON, schemas.AddJSON, schemas.RelabelIn,
                schemas.PointLabelIn, schemas.LabelNamesIn, schemas.ForgetLikeJSON, Problem)

# Enums pydantic writes inline (a Literal has no name), named once: an entry's `op` and the history's `op` filter
# were two enums in a generated client (JournalEntryOp, HistoryOpType0), and one's value was no argument for the other.
_NAMED_ENUMS = {"JournalOp": (list(get_args(JournalOp)), "the kind of edit a journal entry records")}


def _named_enums(node: Any) -> Any:
    """`node` (part of a spec) with each inline enum of `_NAMED_ENUMS` replaced by a `$ref` to its schema."""
    if isinstance(node, list):
        return [_named_enums(v) for v in node]
    if not isinstance(node, dict):
        return node
    for name, (values, _) in _NAMED_ENUMS.items():
        if node.get("enum") == values:
            return {"$ref": f"#/components/schemas/{name}", **{k: node[k] for k in ("description",) if k in node}}
    return {k: _named_enums(v) for k, v in node.items()}


def open_memory(settings: Settings) -> VisualMemory:
    """The memory `settings` name, waited for `settings.wait` seconds where another process holds it."""
    try:
        return VisualMemory.open(settings.location, featurizer=settings.featurizer, create=settings.create_memory,
                                 device=settings.device, read_only=settings.read_only, wait=settings.wait)
    except NoMemoryError as exc:  # said for the service's operator, as the CLI says it: not VisualMemory.open's way
        raise NoMemoryError(exc.fact) from None


# The answers' headers a page of another origin may read: by default a browser shows it none past the CORS-safelisted
# few, so such a page could not read when to ask the label audit again (its 202's Retry-After), nor a 503's, nor how
# many points an export holds (X-Vmem-Points) or its file's name, all of which docs/service.md has a client read.
EXPOSED_HEADERS = ["X-Request-ID", "Retry-After", "X-Vmem-Points", "Content-Disposition"]


def create_app(settings: Settings | None = None, memory: VisualMemory | None = None,
               auditor: Auditor | None = None) -> FastAPI:
    """Build the service.

    Args:
        settings: validated settings; default `Settings()` reads `VMEM_*` variables and `.env`.
        memory: an already open memory to serve (the caller keeps ownership); default: open
            `settings.location` at start-up and close it at shutdown.
        auditor: what `GET /v1/memory/suspects` runs (`eval.label_audit.audit_labels`, which `vmem serve`
            gives); without one that route answers 404.

    Returns:
        The FastAPI app; run it with uvicorn, or `TestClient(app)` in tests.
    """
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.service is None:
            log.info("opening memory at %s", without_secrets(settings.location))
            loaded = await run_in_threadpool(open_memory, settings)
            app.state.service = ClassifierService(loaded, settings, metrics, owns_memory=True, auditor=auditor)
        service: ClassifierService = app.state.service
        if settings.prefetch_memory:
            await service.run(service.prefetch_memory)
        await service.run(service.warm_up)
        log.info("ready: %s, %d points", service.memory.store.meta.featurizer.name, service.memory.store.count())
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="vmem",
        version=API_VERSION,
        summary="Visual-memory image classification: kNN voting or VLM re-ranking over an editable memory.",
        description="Classify images from their nearest labelled neighbours in a Qdrant memory; add and forget "
                    "memory points; see which neighbours decided. Errors are RFC 9457 problem details.",
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.keys = keys = KeyRing(settings.api_key.get_secret_value() if settings.api_key else None,
                                    settings.api_keys_file)
    metrics.registry.register(KeysCollector(keys))
    # Given a memory, serve it at once: the app also works where the lifespan does not run.
    app.state.service = ClassifierService(memory, settings, metrics, auditor=auditor) if memory is not None else None

    install_problem_handlers(app)
    for router in (classify.router, memory_routes.router, templates.router, ops.router, page.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # Outermost last: metrics see every answer, including 413s from the size limit.
    app.add_middleware(UnexpectedErrorMiddleware)
    app.add_middleware(HeadAsGetMiddleware)
    # An import's file has a limit of its own: an ImageNet export is gigabytes
    import_limit = settings.max_import_bytes
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes, route_limits={
        memory_routes.IMPORT_PATH: (import_limit, memory_routes.import_too_large(import_limit))})
    if settings.cors_origins:  # closed unless origins are named
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                           allow_headers=["Content-Type", "X-API-Key", "X-Request-ID"], expose_headers=EXPOSED_HEADERS)
    if settings.allowed_hosts:  # a Host not named is a 400 before anything else runs
        app.add_middleware(AllowedHostsMiddleware, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer carries it, a refused Host's too

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, summary=app.summary,
                               description=app.description, routes=app.routes)
            components = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in _BODY_MODELS:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components[model.__name__] = schema
            spec = _named_enums(spec)
            spec["components"]["schemas"].update({name: {"type": "string", "enum": values, "title": name,
                                                         "description": description}
                                                  for name, (values, description) in _NAMED_ENUMS.items()})
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app

