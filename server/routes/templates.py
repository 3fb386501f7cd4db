"""`GET /v1/templates`: the re-ranker's prompt templates, to choose one by name."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ..schemas import TemplateOut, TemplatesOut
from ..service import template_registry

router = APIRouter(prefix="/v1/templates", tags=["templates"])


def _list(request: Request) -> TemplatesOut:
    # The templates of the memory's re-ranker; while the memory loads, the default registry's (the default re-ranker's)
    service = request.app.state.service
    registry = service.template_registry() if service is not None else template_registry()
    if registry is None:
        return TemplatesOut(default=None, templates=[])
    from prompts import DEFAULT_TEMPLATE

    out = [TemplateOut(name=e.template.name, version=e.template.version, ref=e.template.ref,
                       description=e.template.description, agentic=e.template.agentic, origin=e.origin,
                       hash=e.template.content_hash) for e in registry.entries()]
    # A broken one is said, not left out: classifying with it is refused as "could not be loaded". Its reason
    # alone: the name says which file, and the server's path to it (or to $VMEM_TEMPLATES_DIR) is not the client's.
    return TemplatesOut(default=DEFAULT_TEMPLATE if DEFAULT_TEMPLATE in registry else None, templates=out,
                        errors={name: exc.reason for name, exc in sorted(registry.errors.items())})


@router.get("", summary="List re-ranker templates", response_model=TemplatesOut)
async def list_templates(request: Request) -> TemplatesOut:
    """The prompt templates the re-ranker can use (pass one as `template` when classifying)."""
    return await run_in_threadpool(_list, request)
