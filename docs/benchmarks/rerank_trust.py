"""Which confidence to trust a re-ranked answer by: the vote's share of the label answered (what classify gives),
the vote's own share of its winner, or the answer's share with every answer the VLM changed ranked last, measured
on real images with simulated VLMs.

The memory and queries are real (a memory built with `vmem build`, e.g. the 30 Tiny-ImageNet classes of
docs/results/eval.md, EfficientNet-Lite0); the re-ranker is vmem's own, through the real google-genai SDK, against
the fake Gemini server on loopback (`reranker.testing.FakeGemini`). The fake plays a VLM of a chosen skill: it finds
the query by its image (the JPEG the re-ranker sends, hashed) and, where the true label is a candidate, answers it
with probability `skill`; otherwise, and when it errs, it answers a wrong candidate drawn by the vote's shares (the
look-alikes a VLM confuses). No real VLM answers here: the figures say how each confidence behaves for a VLM of
that skill, not how Gemini does (`vmem eval --rerank` with a key measures that).

    python docs/benchmarks/rerank_trust.py --memory ti30/memory --queries ti30/val \
        --out docs/benchmarks/rerank-trust.json
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from eval.selective import selective_scores
from reranker import GeminiSettings
from reranker._thumbs import encode_jpeg
from reranker.testing import FakeGemini, candidates_of
from retrieval.images import load_image


def b64(text: str) -> bytes:
    """The SDK writes bytes as URL-safe base64, padding left off."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory", required=True)
    ap.add_argument("--queries", required=True, help="an ImageFolder of labelled queries")
    ap.add_argument("--per-class", type=int, default=10, help="queries per class (the first, by name)")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--skills", default="0.6,0.8,0.95")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    files = [(f, c.name) for c in sorted(Path(args.queries).iterdir()) if c.is_dir()
             for f in sorted(c.iterdir())[: args.per_class]]
    size = GeminiSettings().query_size
    truth_of = {hashlib.sha256(encode_jpeg(load_image(str(f)), size)).hexdigest(): label for f, label in files}

    skill = 0.0
    names: dict[str, str] = {}  # the memory's label names: Gemini is shown a label's name where it has one

    def vlm(body: dict[str, Any]) -> Any:
        cands = candidates_of(body)
        parts = [p for c in body.get("contents", []) for p in c.get("parts", []) if "inlineData" in p]
        digests = [hashlib.sha256(b64(p["inlineData"]["data"])).hexdigest() for p in parts]
        truth = next((truth_of[d] for d in digests if d in truth_of), None)
        assert truth is not None, "the query's image was not found in the request"
        rng = random.Random(f"{skill}:{truth}:{digests[0]}")
        # The candidate that names the true label: its name, or its name and label where the name is ambiguous
        right = next((c for c in cands if c in (truth, names.get(truth)) or c.endswith(f"({truth})")), None)
        if right is not None and rng.random() < skill:
            return FakeGemini.answer(right)
        wrong = [c for c in cands if c != right] or cands
        shares = [1.0 / (1 + i) for i, _ in enumerate(wrong)]  # candidates come best-voted first
        return FakeGemini.answer(rng.choices(wrong, weights=shares)[0])

    rows = []
    with FakeGemini() as fake, tempfile.TemporaryDirectory() as home:
        fake.responder = vlm
        os.environ.update(GEMINI_API_KEY="simulated", GOOGLE_GEMINI_BASE_URL=fake.url, VMEM_HOME=home,
                          VMEM_GEMINI_CACHE="false")
        from vmem import VisualMemory

        with VisualMemory.open(args.memory) as mem:
            names.update(mem.label_names)
            for skill in [float(s) for s in args.skills.split(",")]:
                res, failed = mem.classify_many([str(f) for f, _ in files], k=args.k, rule="rank", rerank=True)
                assert not failed and len(res) == len(files)
                right = np.array([r.label == t for r, (_, t) in zip(res, files, strict=True)])
                vote_label = [next(iter(r.scores)) for r in res]
                answer_share = np.array([r.confidence or 0.0 for r in res])
                vote_share = np.array([r.scores[v] for r, v in zip(res, vote_label, strict=True)])
                changed = np.array([r.label != v for r, v in zip(res, vote_label, strict=True)])
                row: dict[str, Any] = {
                    "skill": skill, "queries": len(res), "reranked": int(sum(r.reranked for r in res)),
                    "vote_accuracy": float(np.mean([v == t for v, (_, t) in zip(vote_label, files, strict=True)])),
                    "accuracy": float(right.mean()), "changed": int(changed.sum()),
                    "changed_accuracy": float(right[changed].mean()) if changed.any() else None,
                    "changed_mean_answer_share": float(answer_share[changed].mean()) if changed.any() else None}
                # A third: the answer's share where the VLM kept the vote's label, and every changed answer
                # ranked below all of those (its share scaled into (0, 1e-3]: a changed answer is always unsure)
                agreed_first = np.where(changed, answer_share * 1e-3, answer_share)
                for name, conf in (("answer_share", answer_share), ("vote_share", vote_share),
                                   ("agreed_first", agreed_first)):
                    sel = selective_scores(conf, right, "rerank", args.k)
                    row[name] = {"aurc": round(sel.aurc, 4), "ece": round(sel.ece, 4),
                                 "at_accuracy": {f"{a.target:g}": [a.min_confidence, round(a.coverage, 4)]
                                                 for a in sel.at_accuracy},
                                 "changed_kept_at_90": int((conf[changed] >= (sel.at_accuracy[0].min_confidence
                                                                              or 2)).sum())}
                print(json.dumps(row))
                rows.append(row)
    if args.out:
        args.out.write_text(json.dumps({"memory": args.memory, "queries": args.queries, "k": args.k, "rows": rows},
                                       indent=1) + "\n")


if __name__ == "__main__":
    main()
