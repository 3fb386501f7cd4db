"""Re-rank evaluation: the VLM re-ranker against rank voting on the same fixed sample of queries.

Goes through the public path (`VisualMemory.classify(..., rerank=True)`), in chunks; the re-ranker runs
each chunk's requests concurrently (its own `concurrency` setting). Reports re-rank accuracy, the
fallback rate and its reasons, tokens, and a cost estimate when prices are given.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from tqdm import tqdm

from retrieval import VoteRule

from .datasets import EvalImage
from .selective import Selective, selective_scores

RERANK_CONFIDENCE = "vote share of the label answered (the VLM's label where it re-ranked)"


class AnswerGroup(BaseModel):
    queries: int
    accuracy: float | None = Field(description="null when there are none")
    mean_confidence: float | None = Field(description="their mean confidence (the vote's share of their label)")

class RerankAnswer(BaseModel):
    """One query's re-ranked answer, for predictions.csv (rule rerank): its source, the labels that count as right,
    the final label (the VLM's, or the vote's where it fell back) and its confidence, and the nearest neighbour."""

    source: str
    right_labels: tuple[str, ...]
    predicted: str | None
    correct: bool
    nearest: str | None
    nearest_similarity: float | None
    confidence: float


TOKEN_KEYS = ("requests", "prompt_tokens", "output_tokens", "thinking_tokens", "total_tokens", "images")


class RerankReport(BaseModel):
    queries: int
    seed: int
    k: int
    template: str | None = Field(description="the template the answers were asked with, `name@version` (null when "
                                 "none was: re-ranking not configured)")
    template_hash: str | None = Field(default=None, description="its content hash, as `vmem templates list` shows it")
    model: str | None = None
    rank_accuracy: float = Field(description="rank voting at k on the same sample, as classify votes (`vote`)")
    vote: dict[str, Any] | None = Field(default=None, description="the vote the re-ranker was given and is compared "
                                        "with, as classify gives it: rule, k, alpha, tau, soft_pruning (the points' "
                                        "reliability factors weigh, where the memory has any), origin")
    rerank_accuracy: float = Field(description="final answers with re-ranking (fallbacks answer with the vote)")
    reranked: int = Field(description="answers that came from the re-ranker")
    reranked_accuracy: float | None = Field(default=None, description="accuracy on the re-ranked answers only")
    fallback_rate: float
    fallback_reasons: dict[str, int] = Field(description="fallbacks by kind of reason, most first: the reason without "
                                             "what is particular to one query (a label, an answer, a status)")
    fallback_examples: dict[str, str] = Field(default_factory=dict,
                                              description="one whole reason of each kind, as the first query had it")
    changed: int = Field(description="answers that differ from the vote")
    fixed: int = Field(description="vote wrong, re-ranker right")
    broken: int = Field(description="vote right, re-ranker wrong")
    usage: dict[str, int]
    cached: int = 0
    estimated_cost_usd: float | None = Field(default=None,
                                             description="from --price-in/--price-out (USD per 1M tokens)")
    seconds: float
    failed: list[str] = Field(default_factory=list)
    selective: Selective | None = Field(default=None, description="the final answers' confidence as classify gives "
                                        "it (the vote's share of the label answered), scored as the vote's is: "
                                        "the --min-confidence of `vmem classify --rerank` for each target accuracy")
    agreed: AnswerGroup | None = Field(default=None, description="re-ranked answers that kept the vote's label")
    overrode: AnswerGroup | None = Field(default=None, description="re-ranked answers of another label than the "
                                         "vote's: their confidence is that label's share of the vote")
    # Each query's final answer, in the sample's order: predictions.csv's rerank rows (not in results.json)
    answers: list[RerankAnswer] = Field(default_factory=list, exclude=True)


# Reasons that quote Gemini's answer before any parenthesis: the quote is what differs between queries.
_QUOTING = [
    (re.compile(r"Gemini answered .*, which is not one of the \d+ candidate labels", re.S),
     "Gemini answered a label that is not a candidate"),
    (re.compile(r"Gemini's answer .* was not finished", re.S), "Gemini's answer was not finished"),
]


def fallback_kind(reason: str) -> str:
    """A fallback reason without what is particular to one query, to count reasons by: 'only one candidate label
    (n01443537): nothing to re-rank' is 'only one candidate label', 'Gemini quota exceeded (429 RESOURCE_EXHAUSTED)
    after 4 attempts' is 'Gemini quota exceeded'. The specifics follow the kind in a parenthesis or after a colon.

    >>> fallback_kind("circuit open: Gemini failed 5 times in a row; calls resume after a 30 s cool-down")
    'circuit open'
    """
    for pattern, kind in _QUOTING:
        if pattern.match(reason):
            return kind
    return re.split(r" \(|: ", reason, maxsplit=1)[0].strip() or reason


def evaluate_rerank(
    memory: Any,
    items: Sequence[EvalImage],
    k: int = 50,
    template: str | None = None,
    labels: Sequence[str] | None = None,
    chunk: int = 32,
    price_in: float | None = None,
    price_out: float | None = None,
    seed: int = 0,
    alpha: float | None = None,
) -> RerankReport:
    """Classify `items` with and without re-ranking and compare.

    Args:
        memory: a `vmem.VisualMemory`.
        items: the (already sampled) queries.
        k: neighbours voting and shown to the re-ranker.
        template: prompt template name (default: the re-ranker's, neighbors-v1); the report names the template
            the answers used, with its hash.
        labels: restrict neighbours to these labels (ImageNet-A/-R protocol).
        price_in, price_out: USD per million prompt / output tokens (thinking billed as output).
        alpha: rank voting's α for the vote re-ranked and compared with (default: the memory's, as classify's):
            `vmem eval` passes the α its table's rank row is scored with.
    """
    t0 = time.perf_counter()
    votes, finals, failed = [], [], []
    with tqdm(total=len(items), desc="rerank", unit="q", file=sys.stderr, disable=None) as bar:
        for start in range(0, len(items), chunk):
            part = list(items[start : start + chunk])
            res, bad = memory.classify_many([it.source for it in part], k=k, rule=VoteRule.rank, alpha=alpha,
                                            labels=labels, rerank=True, template=template)
            failed += [f.source for f in bad]
            by_src = {r.source: r for r in res}
            for it in part:
                r = by_src.get(it.source)
                if r is None:
                    continue
                # The vote is the first label of the vote scores; the final label may be the re-ranker's.
                vote_label = next(iter(r.scores), None)
                votes.append((it, vote_label))
                finals.append((it, r))
            bar.update(len(part))
    n = len(finals)
    right_vote = [v in it.correct_labels for it, v in votes]
    right_final = [r.label in it.correct_labels for it, r in finals]
    reranked = [r.reranked for _, r in finals]
    # By kind: counted by the whole text, one reason became a key per label ("only one candidate label (n01443537)").
    reasons: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for _, r in finals:
        if not r.reranked:
            kind = fallback_kind(r.fallback_reason or "unknown")
            reasons[kind] += 1
            examples.setdefault(kind, r.fallback_reason or "unknown")
    usage: Counter[str] = Counter()
    cached = 0
    for _, r in finals:
        u = r.usage or {}
        usage.update({key: int(u.get(key, 0) or 0) for key in TOKEN_KEYS})
        cached += bool(u.get("cached"))
    cost = None
    if price_in is not None and price_out is not None:
        cost = (usage["prompt_tokens"] * price_in
                + (usage["output_tokens"] + usage["thinking_tokens"]) * price_out) / 1e6
    n_rr = sum(reranked)
    # The answers' confidence as classify gives it (`Classification.confidence`), 0 for no answer: kept at no threshold
    confidence = [r.confidence or 0.0 for _, r in finals]
    selective = selective_scores(np.asarray(confidence, dtype=np.float64), np.asarray(right_final, dtype=bool),
                                 "rerank", k)
    selective.confidence = RERANK_CONFIDENCE

    def group(which: list[int]) -> AnswerGroup:
        return AnswerGroup(queries=len(which),
                           accuracy=sum(right_final[i] for i in which) / len(which) if which else None,
                           mean_confidence=sum(confidence[i] for i in which) / len(which) if which else None)

    kept = [i for i in range(n) if reranked[i] and finals[i][1].label == votes[i][1]]
    overrode = [i for i in range(n) if reranked[i] and finals[i][1].label != votes[i][1]]
    model = next((r.model for _, r in finals if r.model), None)
    vote = next((r.vote.model_dump(mode="json") for _, r in finals if r.vote is not None), None)
    # The template as used, not as named: the name may be left out (neighbors-v1), a user's file may stand in for a
    # built-in of that name, and an edit may keep the version. The most common, should a file change mid-run.
    used = Counter((r.template, r.template_hash) for _, r in finals if r.template)
    (used_ref, used_hash), _ = used.most_common(1)[0] if used else ((None, None), 0)
    return RerankReport(
        queries=n, seed=seed, k=k, template=used_ref, template_hash=used_hash, model=model,
        rank_accuracy=sum(right_vote) / n if n else 0.0, vote=vote,
        rerank_accuracy=sum(right_final) / n if n else 0.0,
        reranked=n_rr,
        reranked_accuracy=(sum(f for f, rr in zip(right_final, reranked, strict=True) if rr) / n_rr) if n_rr else None,
        fallback_rate=(n - n_rr) / n if n else 0.0,
        fallback_reasons=dict(reasons.most_common()),
        fallback_examples={kind: examples[kind] for kind in reasons},
        changed=sum(r.label != v for (_, r), (_, v) in zip(finals, votes, strict=True)),
        fixed=sum(f and not v for f, v in zip(right_final, right_vote, strict=True)),
        broken=sum(v and not f for f, v in zip(right_final, right_vote, strict=True)),
        usage=dict(usage), cached=cached, estimated_cost_usd=cost,
        seconds=round(time.perf_counter() - t0, 2), failed=failed,
        selective=selective, agreed=group(kept), overrode=group(overrode),
        answers=[RerankAnswer(source=it.source, right_labels=it.correct_labels, predicted=r.label, correct=right,
                              nearest=r.neighbors[0].label if r.neighbors else None,
                              nearest_similarity=round(r.neighbors[0].similarity, 6) if r.neighbors else None,
                              confidence=round(c, 6))
                 for (it, r), right, c in zip(finals, right_final, confidence, strict=True)],
    )
