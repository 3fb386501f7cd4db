"""What goes in and out over HTTP: input models and output models, kept apart, every field described."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from retrieval import VoteRule
from retrieval.journal import JournalEntry, JournalOp
from retrieval.schema_types import PointIdText
from retrieval.text import MAX_LABEL_CHARS, control_character
from vmem import COPY_SIMILARITY, FewPoints, MemoryPoint, VoteSettings, WhyNot, WhyNotPoint
from vmem.results import MAX_ALPHA, MAX_TAU, MIN_ALPHA, MIN_TAU

# The most images one request may carry whatever the settings: a JSON list beyond it is refused while parsing.
MOST_BATCH_IMAGES = 1024

# ----------------------------------------------------------------------------- inputs


def _decode_base64(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError("the image must be a base64 string")
    # Accept a bare base64 string or a data URL (`data:image/png;base64,...`), as browsers produce.
    if value.startswith("data:"):
        head, sep, value = value.partition(",")
        if not sep or ";base64" not in head:
            raise ValueError("a data URL must be base64-encoded (data:<type>;base64,<data>)")
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"not valid base64{_why_not_base64(value)}") from None
    return data  # empty bytes fail as that image's own decode error ("the image is empty"), not the request's


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_URL_SAFE_BASE64 = re.compile(r"[A-Za-z0-9_-]+={0,2}")


def _why_not_base64(text: str) -> str:
    """What a client most likely sent instead of base64, where it is plain (else nothing): the two that read as
    base64 at a glance, yet do not decode."""
    if _URL.match(text):  # an image's address: the service reaches out to nothing
        return ": it is a URL, and the service fetches none: send the image's bytes as base64 (or a data: URL)"
    if _URL_SAFE_BASE64.fullmatch("".join(text.split())) and any(c in text for c in "-_"):
        return ": it is in the URL-safe alphabet (- and _): send standard base64 (+ and /, RFC 4648 section 4)"
    return ""


_BASE64_SCHEMA = WithJsonSchema({"type": "string", "contentEncoding": "base64",
                                 "description": "the encoded image (JPEG, PNG, WebP, ...) as base64, or a `data:` URL"})
Base64Image = Annotated[bytes, BeforeValidator(_decode_base64), _BASE64_SCHEMA]


@dataclass(frozen=True)
class NotBase64:
    """An image of a batch whose text does not decode as base64: that image's own error, as an image whose bytes
    do not decode gets one, and the batch's other images are still answered (one truncated string had cost a
    client the whole batch, a 422)."""

    reason: str


def _decode_base64_in_batch(value: object) -> bytes | NotBase64:
    if not isinstance(value, str):  # no string at all is the client's code at fault: the request's 422
        raise ValueError("the image must be a base64 string")
    try:
        return _decode_base64(value)
    except ValueError as exc:
        return NotBase64(str(exc))


Base64ImageInBatch = Annotated[bytes | NotBase64, PlainValidator(_decode_base64_in_batch), _BASE64_SCHEMA]




def printable(text: str) -> str:
    """A label, name or file name as stored from HTTP: no control characters. A newline in a label broke the
    re-ranker's list of candidates into lines of instructions ("cat\nIGNORE PREVIOUS INSTRUCTIONS..."), and one in
    a file name split the CLI's line of the point it names."""
    if (bad := control_character(text)) is not None:
        raise ValueError(f"holds the control character {bad!r}: labels, names and file names are one line of text")
    return text


def _not_home_relative(text: str) -> str:
    if text.startswith("~"):  # the server's home, not the client's; and `~name` would tell who has an account
        raise ValueError("a path from ~ means the server's home directory: give the absolute path")
    if "://" not in text and not text.startswith(("/", "upload:", "mem:")):
        # The server's working folder means nothing to a client (and a prefix "u" chose every upload:... point)
        raise ValueError(f"{text!r} is relative: give an absolute path on the server, a URI, or an upload: id")
    return text


ServerPath = Annotated[str, AfterValidator(_not_home_relative)]
Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS, description="the class label, e.g. `tabby cat`"),
                  AfterValidator(printable)]


FileName = Annotated[str, Field(max_length=255), AfterValidator(printable)]


class Answer(BaseModel):
    """A response body: every field is always sent, so the schema marks each one required (a generated client
    typed them all `X | None | Unset`, as if the service might leave them out)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class ImageIn(BaseModel):
    """One image sent as JSON."""

    model_config = ConfigDict(extra="forbid")

    image: Base64Image
    filename: FileName | None = Field(default=None, description="the image's file name, echoed as `source`")


class ClassifyJSON(ImageIn):
    """`POST /v1/classify` with a JSON body: one base64 image (options go in the query string)."""


class ImageInBatch(ImageIn):
    """One image of several sent as JSON: text that is no base64 is that image's error, not the request's."""

    image: Base64ImageInBatch  # type: ignore[assignment]  # a batch also holds its undecodable slots


class ClassifyBatchJSON(BaseModel):
    """`POST /v1/classify/batch` with a JSON body: several base64 images."""

    model_config = ConfigDict(extra="forbid")

    images: list[ImageInBatch] = Field(min_length=1, max_length=MOST_BATCH_IMAGES,
                                  description="the images to classify, answered in order")


class LabelledImageIn(ImageInBatch):
    """One labelled image to add to the memory."""

    label: Label

    @field_validator("label")
    @classmethod
    def _strip(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the label is blank")
        return v.strip()


class AddJSON(BaseModel):
    """`POST /v1/memory` with a JSON body: labelled images to add."""

    model_config = ConfigDict(extra="forbid")

    items: list[LabelledImageIn] = Field(min_length=1, max_length=MOST_BATCH_IMAGES,
                                         description="images with their labels")


class ClassifyQuery(BaseModel):
    """Options of a classification, given in the query string."""

    model_config = ConfigDict(extra="forbid")

    k: int | None = Field(default=None, ge=1, le=1000,
                          description="neighbours that vote (default: the memory's tuned k, else 50)")
    vote: VoteRule | None = Field(default=None, description="voting rule (default: the memory's tuned rule, else rank)")
    # The bounds VoteSettings takes (vmem.results): bounded away from 0, as a denormal overflows the weights.
    alpha: float | None = Field(default=None, ge=MIN_ALPHA, le=MAX_ALPHA, allow_inf_nan=False,
                                description="rank voting: weight 1/(alpha + rank)")
    tau: float | None = Field(default=None, ge=MIN_TAU, le=MAX_TAU, allow_inf_nan=False,
                              description="softmax voting temperature")
    rerank: bool = Field(default=False, description="ask the VLM re-ranker; falls back to the vote with a reason")
    exact: bool = Field(default=False, description="search every point exactly, not through the index: the answer any "
                                           "build or copy of the memory gives (its index graph is built at random); "
                                           "slower on a large memory")
    template: str | None = Field(default=None, min_length=1, max_length=64,
                                 description="re-ranker prompt template (see GET /v1/templates)")
    label: list[Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS)]] | None = Field(
        default=None, max_length=1000, description="only neighbours with these labels vote; repeat the parameter for "
                                           "several (at most 1,000)")
    why_not: str | None = Field(default=None, min_length=1, max_length=MAX_LABEL_CHARS,
                                description="a label expected instead: the answer's `why_not` says why the vote did "
                                            "not answer it (its nearest points and their ranks, its vote against "
                                            "the winner's, a k at which it wins)")
    min_confidence: float | None = Field(
        default=None, ge=0, le=1, allow_inf_nan=False,
        description="an answer whose `confidence` (the vote share of its label) is under this is `unsure`: its label a "
                    "suggestion, for a person to check (`vmem eval` gives the threshold for a target accuracy)")


class NoOptions(BaseModel):
    """The query of an edit that takes no options: one sent is refused, not ignored (forget-like and import take
    `dry_run`, and an add or a relabel sent `?dry_run=true` had been made for real)."""

    model_config = ConfigDict(extra="forbid")


class ForgetQuery(BaseModel):
    """Which points to forget: exactly one of `ids`, `label` or `source_prefix`."""

    model_config = ConfigDict(extra="forbid")

    # Many at once, as relabel takes them: one request and one erase, not one per point.
    ids: list[PointIdText] | None = Field(default=None, min_length=1, max_length=1000,
                                          description="forget these points (repeat `ids`; up to 1,000)")
    label: str | None = Field(default=None, min_length=1, max_length=MAX_LABEL_CHARS,
                              description="forget every point with this label")
    source_prefix: ServerPath | None = Field(default=None, min_length=1, max_length=4096, pattern=r"\S",
                                      description="forget every point whose source starts with this")
    erase: bool = Field(default=False, description="also rewrite the memory's files without the forgotten vectors "
                                           "before answering (embedded memory)")


class ForgetLikeJSON(ImageIn):
    """`POST /v1/memory/forget-like` with a JSON body: one base64 image, whose copies to forget (options go in the
    query string)."""


class ForgetLikeQuery(BaseModel):
    """Options of forgetting the points whose image looks like the one sent."""

    model_config = ConfigDict(extra="forbid")

    min_similarity: float = Field(default=COPY_SIMILARITY, gt=0, le=1, allow_inf_nan=False,
                                  description="the cosine similarity to the image from which a point is taken for a "
                                              "copy of it (the default is measured: README, \"Forgetting\")")
    dry_run: bool = Field(default=False, description="answer the points it would forget, and forget nothing")
    erase: bool = Field(default=False, description="also rewrite the memory's files without the forgotten vectors "
                                           "before answering (embedded memory)")


class ForgetPointQuery(BaseModel):
    """Options of forgetting one point (a misspelt one is refused, not ignored)."""

    model_config = ConfigDict(extra="forbid")

    erase: bool = Field(default=False, description="also rewrite the memory's files without the point's vector before "
                                           "answering (embedded memory)")


class RelabelIn(BaseModel):
    """A new label for the points chosen by exactly one of `ids`, `label` or `source_prefix`."""

    model_config = ConfigDict(extra="forbid")

    to: Annotated[str, AfterValidator(printable)] = Field(
        min_length=1, max_length=MAX_LABEL_CHARS, pattern=r"\S",
        description="the new label (a label, not a name: `vmem labels` lists both)")
    ids: list[PointIdText] | None = Field(default=None, min_length=1, max_length=1000,
                                          description="point ids, as a classification's neighbours list them")
    label: str | None = Field(default=None, min_length=1, max_length=MAX_LABEL_CHARS,
                              description="every point with this label (renames or merges a class)")
    source_prefix: ServerPath | None = Field(default=None, min_length=1, max_length=4096, pattern=r"\S",
                                      description="every point whose source starts with this")

    @model_validator(mode="after")
    def _one_choice(self) -> RelabelIn:
        if sum(x is not None for x in (self.ids, self.label, self.source_prefix)) != 1:
            raise ValueError("give exactly one of `ids`, `label` or `source_prefix`")
        return self


class PointLabelIn(BaseModel):
    """A point's new label, e.g. `{"label": "n02123045"}`."""

    model_config = ConfigDict(extra="forbid")

    label: Annotated[str, AfterValidator(printable)] = Field(
        min_length=1, max_length=MAX_LABEL_CHARS, pattern=r"\S",
        description="the new label (a label, not a name: `vmem labels` lists both)")


class RelabelOut(Answer):
    """How many points took the new label."""

    relabelled: int = Field(description="points whose label changed (those that already had it are not counted)")
    label: str = Field(description="the new label")
    label_name: str | None = Field(default=None, description="its name, where the memory names its labels")
    label_points: int = Field(description="points with the new label afterwards")
    note: str | None = Field(default=None,
                             description="nothing relabelled: why (no such label, a name given for one, no such "
                                               "ids or source, or the points have the label already), as `vmem "
                                               "relabel` says it")


class LabelNamesIn(BaseModel):
    """Names for labels, e.g. `{"names": {"n02124075": "Egyptian cat"}}`."""

    model_config = ConfigDict(extra="forbid", strict=True)  # `"replace": 0` is no boolean

    names: dict[Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS)],
                Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS, pattern=r"\S"),
                          AfterValidator(printable)]] = Field(
        max_length=100_000, description="label -> the name answers, the page and the re-ranker show for it")
    replace: bool = Field(default=False,
                          description="drop every name not given here (default: merge with those stored)")


class PointsFilter(BaseModel):
    """Which points: all of them, or those of a label, a source prefix, hard-pruned or not."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(default=None, min_length=1, max_length=MAX_LABEL_CHARS,
                              description="only points with this label")
    source_prefix: ServerPath | None = Field(default=None, min_length=1, max_length=4096, pattern=r"\S",
                                      description="only points whose source starts with this")
    excluded: bool | None = Field(default=None, description="true: only points hard pruning took out of search; false: "
                                                    "only the others")


class PointsQuery(PointsFilter):
    """Which points to list, and which page."""

    cursor: str | None = Field(default=None, max_length=64, description="`next_cursor` of the previous page")
    limit: int = Field(default=100, ge=1, le=1000, description="points per page")


class ExportQuery(PointsFilter):
    """Which points to export with their vectors (all of them by default)."""


def _file_name_only(name: str) -> str:
    if name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError("a file's name, not a path: no / or \\")
    return name


class ImportQuery(BaseModel):
    """How to import the .npz file sent (`vmem import`'s options)."""

    model_config = ConfigDict(extra="forbid")

    featurizer: str | None = Field(
        default=None, min_length=1, max_length=1024, pattern=r"\S",
        description="the encoder that made the vectors, for a file `vmem export` did not write (e.g. `dinov2-small`): "
                    "it must be the memory's (`GET /v1/memory/stats`). A vmem export names its own")
    label: str | None = Field(default=None, min_length=1, max_length=MAX_LABEL_CHARS,
                              description="only the rows of this label")
    relabel: bool = Field(default=False, description="a point already in memory under another label takes the "
                                                     "file's (journaled as a relabel); by default it keeps its own")
    dry_run: bool = Field(default=False, description="answer what would be imported and skipped; write nothing")
    filename: Annotated[FileName, AfterValidator(_file_name_only)] = Field(
        default="points.npz", min_length=1,
        description="the file's name, as the answer and the memory's history name the import")


class HistoryQuery(BaseModel):
    """Which of the memory's edits to list."""

    model_config = ConfigDict(extra="forbid")

    op: JournalOp | None = Field(default=None, description="only edits of this kind")
    point_id: uuid.UUID | None = Field(default=None, description="only the edits that forgot or relabelled this point")
    label: str | None = Field(default=None, min_length=1, max_length=MAX_LABEL_CHARS,
                              description="only the edits that touched this label's points (or named it)")
    since: str | None = Field(default=None, min_length=4, max_length=40,
                              description="only edits from this ISO 8601 date "
                                                                             "or time on (UTC unless it names a zone)")
    by: str | None = Field(default=None, min_length=1, max_length=64,
                           description="only the edits made with the API key of this name (`default`: "
                                       "VMEM_API_KEY's)")
    until: str | None = Field(default=None, min_length=4, max_length=40,
                              description="only edits from this ISO 8601 time back (UTC unless it names a zone; a "
                                          "date: through that day); not before `since`")
    cursor: str | None = Field(default=None, min_length=1, max_length=200,
                               description="`next_cursor` of the previous page (with the same filters): the edits "
                                           "older than it listed")
    limit: int = Field(default=50, ge=1, le=1000, description="edits listed, newest first (`earlier` counts those "
                                                              "left out: `next_cursor` pages to them)")
    ids: bool = Field(default=True, description="each forget's and relabel's point ids (false: left out, `points` "
                                                "counts them): a forget of 72,000 points lists 2.9 MB of them")


class SuspectsQuery(BaseModel):
    """Which probable mislabels to list."""

    model_config = ConfigDict(extra="forbid")

    min_share: float = Field(default=0.5, ge=0, le=1,
                             description="another label's share of a point's neighbours' vote that "
                                                          "makes it a suspect (higher: fewer, surer)")
    label: str | None = Field(default=None, min_length=1, max_length=MAX_LABEL_CHARS,
                              description="only suspects with this label, or suggested this label")
    limit: int = Field(default=50, ge=1, le=1000, description="suspects listed, most confident first")


# ----------------------------------------------------------------------------- outputs


class NeighborOut(Answer):
    """A memory point behind a decision."""

    id: PointIdText = Field(description="point id; use it to forget the point")
    label: str = Field(description="the point's label")
    label_name: str | None = Field(default=None, description="the label's name, where the memory names its labels")
    source: str = Field(description="path, URI or `upload:sha256:...` id of the point's image")
    similarity: float = Field(description="cosine similarity to the query")
    weight: float = Field(description="the weight its vote carried under the rule used")
    rank: int = Field(description="0 for the nearest neighbour")
    thumbnail_url: str = Field(description="JPEG thumbnail of the point's image (may answer 404 with a reason)")


class WhyNotPointOut(WhyNotPoint):
    """One of the `why_not` label's points nearest the query, with its thumbnail as a neighbour has it."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # as `Answer`

    thumbnail_url: str = Field(description="JPEG thumbnail of the point's image (may answer 404 with a reason)")


class WhyNotOut(WhyNot):
    """Why the vote did not answer the `why_not` label, its points with their thumbnails."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # as `Answer`

    nearest: list[WhyNotPointOut] = Field(description="its points nearest the query (a search among its points "  # type: ignore[assignment]
                                                       "alone), nearest first")


class UsageOut(Answer):
    """What re-ranking an image cost, and, where it fell back to the vote, the kind of failure, for a client to branch
    on (`fallback_reason` says it to a person)."""

    requests: int = Field(default=0, description="Gemini calls answered (billed); 0 for a cached or fallen-back answer")
    prompt_tokens: int = Field(default=0, description="input tokens, as Gemini counted them")
    output_tokens: int = Field(default=0, description="answer tokens")
    thinking_tokens: int = Field(default=0, description="thinking tokens")
    total_tokens: int = Field(default=0, description="every token billed")
    images: int = Field(default=0, description="image parts sent")
    cached: bool = Field(default=False, description="the re-ranker's (or the service's) cached answer: nothing spent")
    cache_checked: bool = Field(default=False, description="the re-ranker's cache was looked in (a fallback decided "
                                                           "before, such as one candidate label, looks in none)")
    attempts: int = Field(default=0, description="HTTP attempts made, failed and retried ones included")
    latency_s: float | None = Field(default=None, description="seconds the re-ranking took")
    error: str | None = Field(default=None, description="with a fallback, its kind: `NoApiKeyError`, "
                              "`DeadlineExceededError`, `QuotaExceededError`, `NothingToRerankError`, ... "
                              "(docs/reranking.md, \"Why a result fell back\"); null when re-ranked")


class ClassificationOut(Answer):
    """The answer for one image, with the neighbours that explain it."""

    source: str | None = Field(default=None, description="the uploaded file's name, or its content id")
    label: str | None = Field(description="predicted label; null when no memory point could vote")
    label_name: str | None = Field(default=None,
                                   description="the predicted label's name, where the memory names its labels "
                                   "(e.g. `Egyptian cat` for `n02124075`)")
    scores: dict[str, float] = Field(description="vote share per label (summing to 1), best first")
    label_names: dict[str, str] = Field(default_factory=dict, description="the names of the labels in `scores`, "
                                        "where the memory names them")
    reranked: bool = Field(description="true when the VLM re-ranker chose the label")
    fallback_reason: str | None = Field(default=None, description="why re-ranking was asked for but the vote was used")
    template: str | None = Field(default=None, description="the re-ranker template used (`name@version`), when "
                                 "re-ranked")
    template_hash: str | None = Field(default=None, description="its content hash, as `GET /v1/templates` gives it: "
                                      "an edit that kept the version, or a user's template in place of a built-in "
                                      "of the same name, is told apart here")
    model: str | None = Field(default=None, description="the re-ranker model, when re-ranked")
    usage: UsageOut | None = Field(default=None, description="what the re-ranker spent, when re-ranking was asked "
                                   "for (null otherwise); with a fallback, `error` names its kind")
    trace: list[dict[str, Any]] | None = Field(
        default=None, description="the agentic re-ranker's tool calls in order, and the neighbours it was shown by "
                                  "label alone (docs/reranking.md)")
    vote: VoteSettings = Field(description="the voting settings used and where they came from")
    novelty: float | None = Field(default=None,
                                  description="mean cosine distance to the k neighbours (0 = seen before)")
    why_not: WhyNotOut | None = Field(default=None, description="with `why_not=LABEL`: why the vote did not "
                                      "answer that label")
    ood_threshold: float | None = Field(
        default=None,
        description="novelty above this is out of distribution (a percentile of the memory's own novelty)")
    out_of_distribution: bool | None = Field(
        default=None, description="novelty is above the threshold; null when the memory is too small to calibrate")
    confidence: float | None = Field(default=None, description="the vote share of the label answered (with rerank, "
                                     "the vote's share of the VLM's answer); null with no answer")
    min_confidence: float | None = Field(default=None, description="the `min_confidence` asked for, if any")
    unsure: bool = Field(default=False, description="the confidence is under `min_confidence` (or there is no "
                         "answer): `label` is a suggestion, for a person to check")
    unsure_reason: str | None = Field(default=None, description="why the answer is unsure, in a line")
    cached: bool = Field(default=False, description="answered from the cache of recent answers")
    neighbors: list[NeighborOut] = Field(description="the k nearest memory points, nearest first")


class PointOut(MemoryPoint):
    """A memory point as stored."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # as `Answer`

    thumbnail_url: str = Field(description="JPEG thumbnail of the point's image (may answer 404 with a reason)")


class PointsOut(Answer):
    """A page of memory points in id order."""

    points: list[PointOut] = Field(description="the page's points, in id order")
    next_cursor: str | None = Field(description="give it as `cursor` for the next page; null after the last")


class LabelNamesOut(Answer):
    """The memory's label names after the change."""

    label_names: dict[str, str] = Field(description="label -> name, every name the memory holds")


class BatchItemOut(Answer):
    """One image of a batch: a classification, or the reason it could not be classified."""

    index: int = Field(description="position of the image in the request")
    filename: str | None = Field(default=None, description="the uploaded file's name")
    result: ClassificationOut | None = Field(default=None, description="the answer, when the image decoded")
    error: str | None = Field(default=None, description="why the image could not be classified")
    error_type: str | None = Field(default=None, description="the error's kind, as a one-image request's problem type "
                                                     "would name it (urn:vmem:problem:bad-image)")


class BatchOut(Answer):
    """Answers for a batch, in request order."""

    items: list[BatchItemOut] = Field(description="one entry per image, in order")
    failed: int = Field(description="how many images could not be classified")


class AddedPoint(Answer):
    """A point now in the memory."""

    id: PointIdText = Field(description="point id (derived from the image's content, so re-adding is idempotent)")
    label: str = Field(description="the label stored")
    label_name: str | None = Field(default=None, description="the label's name, where the memory names its labels")
    source: str = Field(description="`upload:sha256:<hash>[:filename]`")
    thumbnail_url: str = Field(description="JPEG thumbnail of the added image")
    new: bool = Field(default=True, description="false: the image was in the memory already (the same bytes, under any "
                                                "name), and was not added again: `id` and `source` are the point's "
                                                "that holds it")
    relabelled_from: str | None = Field(default=None,
                                        description="an image that was in the memory under another label: "
                                                          "that label (it has the one sent now)")


class AddFailure(Answer):
    """An image that was not added."""

    index: int = Field(description="position of the image in the request")
    filename: str | None = Field(default=None, description="the uploaded file's name")
    reason: str = Field(description="why it was not added")


class AddOut(Answer):
    """The result of adding images."""

    added: list[AddedPoint] = Field(description="the points written, in request order")
    failed: list[AddFailure] = Field(description="images that did not decode")
    points: int = Field(description="points in the memory afterwards")
    few_points: list[FewPoints] = Field(
        default_factory=list, description="the request's labels with too few points to win the memory's vote against a "
                                          "fuller class near them, each with what to do (README, 'A class of a few "
                                          "images')")


class ForgetOut(Answer):
    """How many points were forgotten."""

    deleted: int = Field(description="points removed from the memory")
    points: int = Field(description="points in the memory afterwards")
    erased: bool = Field(default=False, description="the memory's files were rewritten without the forgotten vectors "
                                            "(asked for, and something was forgotten)")
    note: str | None = Field(default=None,
                             description="nothing forgotten by label: why (no such label, or a name given "
                                               "for one), as `vmem forget` says it; by ids: how many named no "
                                               "point (forgotten before, as by a retried forget, or never in the "
                                               "memory); or, with `erase`, why the forgotten vectors are still in "
                                               "the files")


class SimilarPointOut(Answer):
    """A memory point whose image looks like the one sent."""

    id: PointIdText = Field(description="point id")
    label: str = Field(description="the point's label")
    label_name: str | None = Field(default=None, description="the label's name, where the memory names its labels")
    source: str = Field(description="path, URI or `upload:sha256:...` id of the point's image")
    similarity: float = Field(description="cosine similarity of its features to the image's")


class ForgetLikeOut(ForgetOut):
    """The points whose image looks like the one sent: forgotten, or with `dry_run` those that would be."""

    note: str | None = Field(default=None,
                             description="nothing that similar: so said; or, with `erase`, why the forgotten vectors "
                                         "are still in the files")
    dry_run: bool = Field(description="true: nothing was forgotten, `matched` is what would be")
    min_similarity: float = Field(description="the threshold the points were chosen by")
    matched: list[SimilarPointOut] = Field(description="the points at least `min_similarity` similar to the image, "
                                                       "most similar first (at most 1,000: more is refused)")


class OtherLabelOut(Answer):
    """A point of the file the memory holds under another label."""

    source: str = Field(description="the point's source")
    stored: str = Field(description="its label in the memory")
    file: str = Field(description="its label in the file")


class ImportOut(Answer):
    """What an import did with the rows of the file sent (or with `dry_run`, would do): `vmem import`'s report."""

    file: str = Field(description="the file's name (`filename`)")
    sha256: str = Field(description="the file's sha256, as the memory's history records it")
    format: Literal["vmem-points", "vectors"] = Field(
        description="`vmem-points`: a vmem export; `vectors`: vectors made elsewhere")
    featurizer: str = Field(description="the encoder that made the vectors")
    dim: int = Field(description="the vectors' dimension")
    rows: int = Field(description="rows in the file")
    chosen: int = Field(description="rows of `label` (all rows without one)")
    added: int = Field(description="points added (with `dry_run`: that would be)")
    added_per_label: dict[str, int] = Field(description="points added per label, most first")
    already_in_memory: int = Field(description="rows whose point the memory holds already, with the same label")
    duplicates: int = Field(description="rows repeating an earlier row's point, not imported twice")
    other_labels: int = Field(description="rows whose point the memory holds under another label")
    other_label: list[OtherLabelOut] = Field(description="the first 100 of them")
    relabelled: bool = Field(description="those took the file's label (`relabel`; with `dry_run`, would take it); "
                                         "else they kept their own")
    skipped: dict[str, int] = Field(description="rows that cannot be points, per reason (NaN values, a zero vector, "
                                                "an empty or bad label, source or id)")
    skipped_rows: dict[str, list[int]] = Field(description="per reason, the first few skipped rows (from 0)")
    names: dict[str, str] = Field(description="label names an export gave (or would give)")
    vote: dict[str, Any] | None = Field(description="an export's tuned vote settings carried into a memory without "
                                                    "its own (or that would be)")
    dry_run: bool = Field(description="true: nothing was written")
    outside_roots: int = Field(description="points whose images are files on the server outside the memory's image "
                                           "folders (`source_roots`): no thumbnail of them is shown, nor is any sent "
                                           "to the re-ranker. A file's sources record no folder")
    memory_points: int = Field(description="points in the memory afterwards")
    seconds: float = Field(description="how long the import took (not the upload)")
    summary: str = Field(description="the same, for people, as `vmem import` says it")


class EraseOut(Answer):
    """The memory's files were rewritten without the vectors of the points forgotten so far."""

    erased: bool = Field(description="always true: a failure is a problem answer")
    seconds: float = Field(description="how long the rewrite took")


BACKUP_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class BackupQuery(BaseModel):
    """What to call the backup."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, pattern=BACKUP_NAME,
                             description="the backup's folder in the server's backup folder (`VMEM_BACKUP_DIR`): "
                                         "letters, digits, `.`, `_`, `-`, not first a dot (no path), not `latest` "
                                         "(the link to the newest backup); default: the time, UTC "
                                         "(`20261206T181500Z`)")


class BackupOut(Answer):
    """A copy of the memory's folder, as it was, written on the server."""

    name: str = Field(description="its folder's name in the backup folder")
    path: str = Field(description="where it is on the server: an embedded memory, opened as any other")
    points: int = Field(description="the points it holds")
    bytes: int = Field(description="the bytes of the memory's files copied")
    seconds: float = Field(description="how long it took, edits waiting meanwhile (classify goes on)")


class FeaturizerOut(Answer):
    """The encoder that made the memory's vectors."""

    name: str = Field(description="encoder name, e.g. `dinov2-small`")
    dim: int = Field(description="feature dimension")
    resize: int = Field(description="shorter side resized to this before cropping")
    crop: int = Field(description="centre crop size fed to the encoder")


# The labels of few points a stats answer lists: the page reads stats every few seconds, and a memory of 50,000
# labels may have tens of thousands of them, each with a note.
MOST_FEW_POINTS = 100


class IndexUpkeepOut(Answer):
    """How far an embedded memory's index has drifted from its points (README, "Upkeep")."""

    points: int = Field(description="points in the memory")
    indexed: int = Field(description="of them, in the engine's HNSW index")
    unindexed: int = Field(description="of them, searched in full (exactly, more slowly): added or edited since the "
                                       "index was built (a build, import, copy or erase), or too few to index")
    deleted_in_index: int = Field(description="copies the index still holds, marked deleted, of points forgotten or "
                                              "edited (relabelled, pruned) since it was built")
    deleted_share: float = Field(description="deleted_in_index over the index's vectors: searches through it drift "
                                             "from exact ones as it grows")
    advice: str | None = Field(description="one line saying to erase (POST /v1/memory/erase), where deleted_share "
                                           "is past the measured threshold; null otherwise")


class StatsOut(Answer):
    """What the memory holds."""

    backend: Literal["embedded", "qdrant"] = Field(description="embedded Qdrant Edge or a Qdrant server")
    points: int = Field(description="number of points")
    labels: int = Field(description="number of distinct labels")
    per_label: dict[str, int] = Field(description="points per label, most frequent first")
    label_names: dict[str, str] = Field(default_factory=dict, description="label -> name, for the labels named")
    featurizer: FeaturizerOut = Field(description="the memory's encoder")
    default_vote: VoteSettings = Field(description="voting settings used when a request gives none")
    ood_threshold: float | None = Field(default=None,
                                        description="novelty threshold at the default k (null if not calibrated)")
    few_points: list[FewPoints] = Field(
        default_factory=list, description=f"labels with too few points to win the default vote against a fuller "
                                          f"class near them, fewest first, the first {MOST_FEW_POINTS} (README, 'A "
                                          f"class of a few images')")
    few_points_total: int = Field(default=0, description="how many labels have too few points so, all told")
    read_only: bool = Field(default=False, description="served read-only (`VMEM_READ_ONLY`): every edit is refused "
                            "(503 `memory-read-only`)")
    index_upkeep: IndexUpkeepOut | None = Field(default=None, description="an embedded memory's index against its "
                                                "points (null on a Qdrant server, which indexes and vacuums its "
                                                "collection itself)")
    max_upload_bytes: int = Field(description="the largest request body the service takes (`VMEM_MAX_UPLOAD_BYTES`; "
                                  "an import's is its own): an image over it is a 413 `upload-too-large`, so a client "
                                  "can refuse it before sending it")


class TemplateOut(Answer):
    """A re-ranker prompt template."""

    name: str = Field(description="the name to pass as `template`")
    version: int = Field(description="bumped on any change that could change answers")
    ref: str = Field(description="`name@version`, recorded with re-ranked answers")
    description: str = Field(description="what the template asks the VLM")
    agentic: bool = Field(description="the VLM may call tools (look at more exemplars) before answering")
    origin: str = Field(description="`builtin` or `user`")
    hash: str = Field(description="content hash of the template")


class TemplatesOut(Answer):
    """The available templates."""

    default: str | None = Field(description="the template used when none is named")
    templates: list[TemplateOut] = Field(description="templates by name")
    errors: dict[str, str] = Field(default_factory=dict,
                                   description="templates that could not be loaded, by file name: why (as `vmem "
                                               "templates list` says it, without the server's path)")


class HealthOut(Answer):
    """Liveness: the process answers."""

    status: Literal["ok"] = Field(description="always `ok` when the process answers")


class ReadyOut(Answer):
    """Readiness: the memory and the encoder are loaded."""

    status: Literal["ready", "not ready"] = Field(description="`ready` when requests can be served")
    points: int | None = Field(default=None, description="points in the memory")
    featurizer: str | None = Field(default=None, description="the loaded encoder")
    read_only: bool = Field(default=False, description="served read-only (`VMEM_READ_ONLY`): classify, no edits")
    detail: str | None = Field(default=None, description="why not ready")


class HistoryOut(Answer):
    """The memory's edits, newest first."""

    entries: list[JournalEntry] = Field(description="each edit: when, what, how many points of which labels, the ids "
                                                    "a forget or relabel changed, and who (via, host, pid)")
    earlier: int = Field(description="edits older than these, left out by `limit`")
    next_cursor: str | None = Field(default=None, description="give it as `cursor` for the next page (the `earlier` "
                                                              "edits); null after the last")


class SuspectOut(Answer):
    """A point the rest of the memory votes another label: probably mislabelled, to check."""

    id: PointIdText = Field(description="point id: relabel it with PATCH /v1/memory/points/{id}")
    label: str = Field(description="the point's label")
    label_name: str | None = Field(default=None, description="its name, where the memory names its labels")
    suggested: str = Field(description="the label its 50 nearest other points vote for it (rank vote)")
    suggested_name: str | None = Field(default=None, description="that label's name")
    share: float = Field(description="the suggested label's share of the vote (0 to 1)")
    own_share: float = Field(description="the point's own label's share")
    source: str = Field(description="the point's image")
    thumbnail_url: str = Field(description="URL of a JPEG thumbnail of the image")


class SuspectsOut(Answer):
    """The label audit: every point queried against the rest of the memory (exact search)."""

    status: Literal["running", "done"] = Field(description="running: ask again (see Retry-After) for the list")
    points: int = Field(description="points audited")
    searched: int = Field(description="points searched so far")
    current: bool = Field(description="false while the memory has been edited since this audit began: asking "
                                      "again once it is done starts a new one")
    seconds: float | None = Field(default=None, description="how long the audit took, once done")
    suspects: list[SuspectOut] = Field(default_factory=list, description="most confident first (done only)")
    total_suspects: int = Field(default=0, description="suspects found, before `limit`")
