"""`POST /v1/classify` and `POST /v1/classify/batch`: images in, labels and the neighbours behind them out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from prompts import TemplateError
from vmem import NoSuchLabelsError, NothingToSearchError

from ..deps import API_KEY_HEADER, ServiceDep, SettingsDep, check_api_key
from ..problems import TYPE_BASE, ProblemError, problem_responses
from ..schemas import BatchItemOut, BatchOut, ClassificationOut, ClassifyBatchJSON, ClassifyJSON, ClassifyQuery
from ..service import Answer, ClassifierService, Upload
from ..uploads import JSON, MULTIPART, read_files, read_json, require_media_type, too_many_images
from ._common import (
    check_labels,
    check_template,
    check_vote_options,
    check_why_not,
    classification_out,
    image_body,
    template_problem,
    unless_the_client_leaves,
)

router = APIRouter(prefix="/v1/classify", tags=["classify"])
QueryDep = Annotated[ClassifyQuery, Query()]
TOO_MANY = "send fewer images per request, splitting them across several requests"


def check_rerank_key(request: Request, q: ClassifyQuery) -> None:
    """Classifying is open to all, but re-ranking asks Gemini, paid per call (and a page elsewhere can make a
    browser send this form): `rerank=true` needs the key too."""
    if q.rerank:
        check_api_key(request, request.headers.get(API_KEY_HEADER), "rerank=true asks Gemini, which is paid per call",
                      may="rerank")


async def classified(request: Request, service: ClassifierService, uploads: list[Upload], q: ClassifyQuery
                     ) -> list[Answer | str]:
    run = service.run_reranking if q.rerank else service.run  # Gemini's waits must not hold the embedding threads
    try:
        client = request.client.host if request.client is not None else None  # as the access log names it
        return await unless_the_client_leaves(request, run(service.classify, uploads, q, client))
    except NoSuchLabelsError as exc:  # its last points were forgotten or relabelled since check_labels
        raise ProblemError(422, str(exc), "unknown-label", "Unknown label") from None
    except TemplateError as exc:  # removed or broken since check_template: said, not a 500
        raise template_problem(service, q, exc) from None
    except NothingToSearchError as exc:  # empty, or every point hard-pruned: said as vmem classify says it
        raise ProblemError(409, str(exc), "nothing-to-search", "Nothing to search") from None


@router.post(
    "",
    summary="Classify one image",
    response_model=ClassificationOut,
    responses=problem_responses(400, 401, 403, 409, 413, 415, 422, 503),
    openapi_extra={**image_body("ClassifyJSON", "image", many=False), "security": [{}, {"APIKeyHeader": []}]},
)
async def classify(request: Request, service: ServiceDep, settings: SettingsDep, q: QueryDep) -> ClassificationOut:
    """Classify one image from its nearest labelled neighbours (or the VLM re-ranker with `rerank=true`).

    Send the image as a multipart upload in the `image` field, or as JSON `{"image": "<base64>"}`.
    The answer lists the neighbours that voted, each with a thumbnail URL, and a novelty score.
    """
    check_rerank_key(request, q)
    check_template(service, q)
    check_vote_options(service, q)
    await check_labels(service, q)
    await check_why_not(service, q)
    if require_media_type(request, MULTIPART, JSON) == JSON:
        body = await read_json(request, ClassifyJSON)
        upload = Upload(body.image, body.filename)
    else:
        advice = f"send several to POST /v1/classify/batch (up to {settings.max_batch_images} per request)"
        files, _ = await read_files(request, "image", max_files=1, too_many=advice)
        upload = Upload(*files[0])
    [answer] = await classified(request, service, [upload], q)
    if isinstance(answer, str):
        raise ProblemError(400, answer, "bad-image", "The image could not be decoded")
    return classification_out(request, answer, q.min_confidence)


@router.post(
    "/batch",
    summary="Classify several images",
    response_model=BatchOut,
    responses=problem_responses(400, 401, 403, 409, 413, 415, 422, 503),
    openapi_extra={**image_body("ClassifyBatchJSON", "images", many=True), "security": [{}, {"APIKeyHeader": []}]},
)
async def classify_batch(request: Request, service: ServiceDep, settings: SettingsDep, q: QueryDep) -> BatchOut:
    """Classify several images with the same options; they are embedded together.

    Upload files in repeated `images` fields, or send JSON `{"images": [{"image": "<base64>"}, ...]}`.
    An image that does not decode (or, in JSON, whose text is no base64) gets an `error` in its place; the others
    are still answered.
    """
    check_rerank_key(request, q)
    check_template(service, q)
    check_vote_options(service, q)
    await check_labels(service, q)
    await check_why_not(service, q)
    limit = settings.max_batch_images
    if require_media_type(request, MULTIPART, JSON) == JSON:
        body = await read_json(request, ClassifyBatchJSON)
        uploads = [Upload.of(i.image, i.filename) for i in body.images]
    else:
        files, _ = await read_files(request, "images", max_files=limit, too_many=TOO_MANY)
        uploads = [Upload(data, name) for data, name in files]
    if len(uploads) > limit:
        raise too_many_images(limit, TOO_MANY, sent=len(uploads))
    answers = await classified(request, service, uploads, q)
    items = [BatchItemOut(index=i, filename=up.filename, error=a, error_type=f"{TYPE_BASE}bad-image")
             if isinstance(a, str) else
             BatchItemOut(index=i, filename=up.filename, result=classification_out(request, a, q.min_confidence))
             for i, (up, a) in enumerate(zip(uploads, answers, strict=True))]
    return BatchOut(items=items, failed=sum(1 for a in answers if isinstance(a, str)))
