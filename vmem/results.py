"""The shapes of what vmem returns: one classification per image, each traceable to memory points."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, computed_field, field_validator

from retrieval import DEFAULT_ALPHA, DEFAULT_TAU, VoteRule
from retrieval.journal import JournalEntry
from retrieval.schema_types import IsoTime, PointIdText
from retrieval.text import counted, quoted, short_repr, utf8_text, visible

DEFAULT_K = 50
DEFAULT_RULE = VoteRule.rank
# Bounds of alpha and tau on every surface (Python, CLI, HTTP). Away from 0: a denormal alpha or tau overflows the
# vote weights.
MIN_ALPHA = MIN_TAU = 1e-3
MAX_ALPHA, MAX_TAU = 1e6, 1e3


class VoteSettings(BaseModel):
    """The voting settings a result used, and where they came from."""

    rule: VoteRule | Literal["dmn"] = Field(default=DEFAULT_RULE,
                                            description="plurality, distance, softmax, rank or dmn")
    k: int = Field(default=DEFAULT_K, ge=1, le=1000, description="number of nearest neighbours voting")
    # The bounds HTTP takes, for every surface: the CLI and Python took --alpha 1e7 that the service refused.
    alpha: float = Field(default=DEFAULT_ALPHA, ge=MIN_ALPHA, le=MAX_ALPHA, allow_inf_nan=False,
                         description="rank voting: w = 1/(alpha + rank)")
    tau: float = Field(default=DEFAULT_TAU, ge=MIN_TAU, le=MAX_TAU, allow_inf_nan=False,
                       description="softmax voting temperature")
    soft_pruning: bool = Field(default=True, description="multiply weights by the points' reliability factors, if any")
    origin: Literal["default", "memory", "explicit"] = Field(
        default="default", description="built-in defaults, the memory's tuned settings, or given by the caller"
    )


class NeighborVote(BaseModel):
    """A memory point behind a decision, with the weight its vote carried."""

    id: PointIdText = Field(description="point id (UUIDv5 of the source)")
    label: str
    label_name: str | None = Field(default=None, description="the label's name, where the memory names its labels")
    source: str = Field(description="path or URI of the memory image")
    similarity: float = Field(description="cosine similarity to the query")
    weight: float = Field(description="vote weight under the rule used (0 past k)")
    rank: int = Field(description="0 for the nearest neighbour")


class DmnDetails(BaseModel):
    """How the `dmn` rule decided (Dual Memory Networks: text, dynamic and static memories)."""

    mode: Literal["zero-shot", "few-shot", "memory-only"]
    stream: str | None = Field(default=None, description="dynamic memory stream (null: dynamic memory off)")
    alpha: dict[str, float] = Field(description="fusion weight per memory in use")
    parts: dict[str, dict[str, float]] = Field(description="per memory, its top-3 class probabilities")
    pseudo_label: str | None = Field(default=None, description="label the query was filed under in the stream")
    entropy: float | None = Field(default=None,
                                  description="entropy (nats) of the prediction that gave the pseudo-label")
    written: bool | None = Field(default=None, description="whether the query entered the dynamic memory")


# Confidences meet a threshold at this many decimals, here and in `vmem eval`'s risk-coverage: two vote shares equal
# but for the last bits of their sums (0.7 and 0.6999999999999998) meet the same thresholds, and a threshold read
# off an eval keeps the same answers here.
CONFIDENCE_DECIMALS = 6


def rounded_confidence(confidence: Any) -> Any:
    """A confidence (or an array of them) as thresholds compare it (`CONFIDENCE_DECIMALS`)."""
    return np.round(confidence, CONFIDENCE_DECIMALS)


def check_min_confidence(min_confidence: float | None) -> None:
    """ValueError for a threshold that is no confidence (a vote share, or the dmn rule's fused probability, lies in
    0-1). Checked before the rule is known (a memory's default may be dmn): the message names both."""
    if min_confidence is not None and (isinstance(min_confidence, bool) or not isinstance(min_confidence, int | float)
                                       or not 0 <= min_confidence <= 1):  # NaN too: no comparison holds
        raise ValueError("min_confidence is a confidence between 0 and 1: the vote share of the label answered, or "
                         "with the dmn rule its fused DMN probability (vmem eval's table.md gives the one that keeps "
                         f"a target accuracy; vmem eval --dmn the dmn rule's), not {min_confidence!r}")


def unsure_of(label: str | None, confidence: float | None, min_confidence: float | None,
              rule: str | None = None) -> tuple[bool, str | None]:
    """(unsure, why) for an answer of this label and confidence against `min_confidence` (None: never unsure); `rule`
    the answer's (`dmn`'s confidence is no vote share, but the fused probability of its label)."""
    if min_confidence is None:
        return False, None
    if label is None or confidence is None:
        return True, "no answer: no memory point could vote"
    if float(rounded_confidence(confidence)) >= float(rounded_confidence(min_confidence)):  # both: 1/3 meets 1/3
        return False, None
    share = "the DMN probability" if rule == "dmn" else "the vote share"
    return True, (f"confidence {confidence:.3f} ({share} of {quoted(label)}) is under "
                  f"min_confidence {min_confidence:g}: the label is a suggestion, for a person to check")


class Classification(BaseModel):
    """The answer for one query image."""

    source: str | None = Field(default=None, description="the query's path or upload name, when known")
    _printable_source = field_validator("source")(utf8_text)
    label: str | None = Field(description="predicted label; null when the memory had no neighbours")
    label_name: str | None = Field(default=None, description="the predicted label's name, where the memory names its "
                                   "labels (vmem build --label-names)")
    scores: dict[str, float] = Field(description="vote share per label, summing to 1, best first")
    neighbors: list[NeighborVote]
    vote: VoteSettings
    novelty: float | None = Field(default=None, description="mean cosine distance to the k neighbours")
    reranked: bool = Field(default=False, description="true when the VLM's answer is the label")
    fallback_reason: str | None = Field(default=None, description="why re-ranking was asked for but not used")
    template: str | None = Field(default=None, description="the re-ranker's template, `name@version`")
    template_hash: str | None = Field(default=None, description="the template's content hash (as `vmem templates "
                                      "list` shows it): two texts under one `name@version` differ here")
    model: str | None = None
    usage: dict[str, Any] | None = Field(default=None, description="VLM tokens used")
    trace: list[dict[str, Any]] | None = Field(default=None, description="agentic re-ranker tool calls")
    dmn: DmnDetails | None = Field(default=None, description="details of the dmn rule's decision")
    why_not: WhyNot | None = Field(default=None, description="with `why_not`: why the vote did not answer that "
                                   "label")
    min_confidence: float | None = Field(default=None, description="the confidence asked for (`min_confidence`): "
                                         "an answer under it is `unsure`; null when none was asked for")
    unsure: bool = Field(default=False, description="the confidence is under `min_confidence` (or there is no "
                         "answer): `label` is a suggestion, for a person to check")
    unsure_reason: str | None = Field(default=None, description="why the answer is unsure, in a line")

    @computed_field(description="the vote share of the label answered (its `scores` entry; with rerank, the "  # type: ignore[prop-decorator]
                    "vote's share of the VLM's answer; with the dmn rule, the fused probability of its label): "
                    "what `min_confidence` compares; null with no answer")
    @property
    def confidence(self) -> float | None:
        return None if self.label is None else self.scores.get(self.label, 0.0)

    def judged(self, min_confidence: float | None) -> Classification:
        """This answer marked `unsure`, with the reason, when its confidence is under `min_confidence` (a copy;
        None: as it is)."""
        unsure, reason = unsure_of(self.label, self.confidence, min_confidence, self.vote.rule)
        return self.model_copy(update={"min_confidence": min_confidence, "unsure": unsure, "unsure_reason": reason})

    def __repr__(self) -> str:
        """A summary for a notebook or a print: the whole answer, with 50 neighbours, ran to 12,000 characters.
        Every field is still there (`.neighbors`, `.model_dump()`)."""
        label = f"{self.label!r}" + (f" ({self.label_name})" if self.label_name else "")
        top = ", ".join(f"{lab!r}: {share:.2f}" for lab, share in list(self.scores.items())[:3])
        more = f", ... {len(self.scores) - 3} more" if len(self.scores) > 3 else ""
        nearest = ", ".join(f"{n.label!r} {n.similarity:.2f} {n.source}" for n in self.neighbors[:3])
        how = "re-ranked by the VLM" if self.reranked else f"{self.vote.rule} vote, k={self.vote.k}" + (
            f"; re-ranking fell back: {self.fallback_reason}" if self.fallback_reason else "")
        return (f"Classification({label}, {how}, scores {{{top}{more}}}, {counted(len(self.neighbors), 'neighbour')}"
                + (f", nearest: {nearest}" if nearest else "") + (f", source={self.source!r}" if self.source else "")
                + ")")

    __str__ = __repr__


class MemoryPoint(BaseModel):
    """One memory point as stored: what it is, where it came from, and whether searches can return it."""

    id: PointIdText = Field(description="point id (UUIDv5 of the source)")
    label: str = Field(description="the point's label")
    label_name: str | None = Field(default=None, description="the label's name, where the memory names its labels")
    source: str = Field(description="path, URI or `upload:sha256:...` id of the point's image")
    added_at: IsoTime | None = Field(default=None, description="when it was added (UTC, ISO 8601)")
    tags: dict[str, Any] = Field(default_factory=dict, description="KEY=VALUE tags given when it was added")
    excluded: bool = Field(default=False,
                           description="hard-pruned: stored, but no search returns it (vmem prune --undo)")
    reliability: float = Field(default=1.0, description="soft pruning's factor on its vote weight (1: neutral)")
    prune_count: int | None = Field(default=None,
                                    description="leave-one-out decisions it misled, when vmem prune counted")
    relabelled_from: str | None = Field(default=None, description="the label it held before it was last relabelled")
    relabelled_at: IsoTime | None = Field(default=None, description="when it was last relabelled (UTC, ISO 8601)")


class NearDuplicate(BaseModel):
    """A memory point whose image looks like a given one: the image itself, or a copy of it re-saved, recompressed
    or resized (`VisualMemory.near_duplicates`, `forget_like`)."""

    id: PointIdText = Field(description="point id (UUIDv5 of the source)")
    label: str = Field(description="the point's label")
    label_name: str | None = Field(default=None, description="the label's name, where the memory names its labels")
    source: str = Field(description="path, URI or `upload:sha256:...` id of the point's image")
    similarity: float = Field(description="cosine similarity of its features to the image's (1: the same features)")


class PointPage(BaseModel):
    """A page of memory points in id order, and where the next page starts."""

    points: list[MemoryPoint] = Field(description="the page's points, in id order")
    next_cursor: str | None = Field(description="give it as `cursor` for the next page; null after the last")

    def __repr__(self) -> str:
        """The first points and a count of the rest (a page of 100 showed 32,000 characters); all in `.points`."""
        return short_repr(self, items=3)

    __str__ = __repr__


class HistoryPage(BaseModel):
    """A page of a memory's edits, newest first (`VisualMemory.history_page`), and where the next page starts."""

    entries: list[JournalEntry] = Field(description="the page's edits, newest first")
    earlier: int = Field(description="edits older than these that match too, left out by `limit`")
    next_cursor: str | None = Field(default=None,
                                    description="give it as `cursor` for the next page; null after the last")

    def __repr__(self) -> str:
        """The first entries and a count of the rest (a forget's entry lists up to 100,000 ids); all in `.entries`."""
        return short_repr(self, items=3)

    __str__ = __repr__


class FailedImage(BaseModel):
    source: str
    reason: str
    _printable = field_validator("source", "reason")(utf8_text)


class FewPoints(BaseModel):
    """A label with fewer points than it takes to win the memory's vote where another label holds the rest of a
    query's k nearest neighbours: a class of a few images added beside classes of a hundred is then seldom the
    answer (README, "A class of a few images")."""

    label: str = Field(description="the label, as stored")
    label_name: str | None = Field(default=None, description="the label's name, where the memory names its labels")
    points: int = Field(description="the label's points")
    needed: int = Field(description="the fewest points that win the vote at k, as a query's nearest neighbours, "
                                    "against one other label of the memory filling the rest of the k")
    k: int = Field(description="the memory's k (its tuned k, else the default)")
    rule: str = Field(description="the memory's voting rule")
    k_that_fits: int = Field(description="the largest k at which the label's points win so")

    @computed_field(description="what to do about it, in a sentence")  # type: ignore[prop-decorator]
    @property
    def note(self) -> str:
        named = f" ({visible(self.label_name)})" if self.label_name not in (None, self.label) else ""
        return (f"label {quoted(self.label)}{named} has {counted(self.points, 'point')}, fewer than the "
                f"{self.needed} it takes to win a {self.rule} vote of k = {counted(self.k, 'neighbour')} against a "
                f"fuller class near it: add images of it, or classify with k = {self.k_that_fits} or less "
                f"(README, 'A class of a few images')")


class WhyNotPoint(BaseModel):
    """One of the contrast label's points nearest the query, and where it stood among all the memory's points."""

    id: PointIdText = Field(description="point id (UUIDv5 of the source)")
    source: str = Field(description="path or URI of the memory image")
    similarity: float = Field(description="cosine similarity to the query")
    rank: int | None = Field(description="its place among all points a search returns, 0 for the nearest (as a "
                                         "neighbour's `rank`); null past the 1,000 nearest (the largest k)")
    weight: float = Field(description="the weight its vote carried (0 outside the k)")


class WhyNot(BaseModel):
    """Why the vote did not answer a label the caller expected (`classify(why_not=LABEL)`, `--why-not`): its
    nearest points, where they ranked, its vote against the winner's, and the reason in a line."""

    label: str = Field(description="the label asked about, as stored")
    label_name: str | None = Field(default=None, description="its name, where the memory names its labels")
    points: int = Field(description="its points a search can return")
    nearest: list[WhyNotPoint] = Field(description="its points nearest the query (a search among its points "
                                                   "alone), nearest first")
    in_top_k: int = Field(description="its points among the k neighbours that voted")
    share: float = Field(description="its vote share (0 when none of its points voted)")
    vote_label: str | None = Field(description="the vote's winner (with rerank, perhaps not the answer)")
    vote_label_name: str | None = Field(default=None, description="the winner's name, where the memory names it")
    vote_share: float = Field(description="the winner's vote share")
    vote_label_in_top_k: int = Field(description="the winner's points among the k neighbours")
    k_that_wins: int | None = Field(description="the k nearest to the one used at which the label wins the vote, "
                                                "of the k up to `k_checked`; null when none does")
    k_checked: int = Field(description="the largest k looked at for `k_that_wins` (the neighbours searched)")
    few_points: FewPoints | None = Field(default=None, description="set when the label has too few points to win "
                                         "the memory's vote (as `vmem info` lists them)")
    reason: str = Field(description="why, in plain words")
    note: str | None = Field(default=None, description="with rerank: this explains the vote, not the VLM's answer")


Classification.model_rebuild()  # its `why_not` is of a class defined after it


class AddResult(BaseModel):
    """What `VisualMemory.add_images` did with each image."""

    ids: list[str] = Field(description="the point id of each image that decoded, in order (the same image twice: "
                                       "its id twice)")
    sources: list[str] = Field(default_factory=list, description="the source of each of those points, in order: an "
                                                                 "upload's bytes held under another name, that one")
    failed: list[FailedImage] = Field(default_factory=list, description="images that could not be decoded")
    added: list[str] = Field(default_factory=list, description="ids of the points added now")
    relabelled: dict[str, str] = Field(
        default_factory=dict, description="images already in the memory under another label: id -> the label "
                                          "they had (they take the label given, as `relabel` gives it)")

    def __repr__(self) -> str:
        """Each list cut short (an add of 100 images showed 15,000 characters of ids and paths); all in the fields."""
        return short_repr(self)

    __str__ = __repr__


class BackupResult(BaseModel):
    """What `VisualMemory.backup` wrote."""

    path: str = Field(description="the backup's folder: an embedded memory, opened as any other")
    points: int = Field(description="the points it holds")
    bytes: int = Field(description="the bytes of the memory's files copied (their holes left holes)")
    seconds: float = Field(description="how long it took, edits waiting meanwhile")
    removed_partials: list[str] = Field(
        default_factory=list, description="the hidden folders of backups killed midway that it removed beside it "
        "(`.NAME.*.partial`, whose writing process on this host is gone)")
    unnamed_partials: list[str] = Field(
        default_factory=list, description="hidden folders an older vmem's backups left beside it, which it left: "
        "whose they are, nothing tells (remove one by hand once no backup is running)")


class SkippedPoint(BaseModel):
    """A point `VisualMemory.reembed_to` could not embed again, and left out of the new memory."""

    id: str
    label: str
    source: str
    reason: str = Field(description="why: no image of its own (an upload, imported vectors), or its file is gone "
                                    "or does not decode")


class ReembedResult(BaseModel):
    """What `VisualMemory.reembed_to` did."""

    location: str = Field(description="the new memory")
    featurizer: str = Field(description="the encoder that embedded its points")
    from_featurizer: str = Field(description="the encoder of the memory they came from")
    embedded: int = Field(description="points embedded now from their images")
    already_there: int = Field(description="points an earlier run had embedded (a run resumed): their labels, "
                                           "tags and names brought up to date, not embedded again")
    skipped: list[SkippedPoint] = Field(default_factory=list, description="points left out: no image to embed")
    unpruned: int = Field(default=0, description="points whose pruning marks were dropped: they judged the old "
                                                 "encoder's neighbours")
    forgotten: int = Field(default=0, description="points an earlier run had put there that were forgotten here "
                                                  "since: forgotten there too")
    notes: list[str] = Field(default_factory=list, description="what was not carried over, and why")
    memory_points: int = Field(description="the points the new memory holds")
    seconds: float
