"""The label audit (`vmem suspects`) by exact search against by the memory's index, on the same memory.

    python docs/benchmarks/audit_search.py MEMORY [MIN_SHARE]        # e.g. the quickstart's ./memory

Runs `audit_labels` both ways (k = 50) and prints their times, peak traced RAM (numpy buffers included; the
tracing slows both, so times come from untraced runs), how many points each calls suspects at MIN_SHARE
(default 0.5), how many of the exact audit's suspects the index's finds, and how often the two suggest
the same label.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

from eval.label_audit import audit_labels
from retrieval import open_store


def main(location: str, min_share: float) -> None:
    store = open_store(location)
    out: dict[str, object] = {"points": store.count(), "dim": store.dim, "min_share": min_share}
    votes = {}
    for search in ("exact", "index"):
        start = time.perf_counter()
        votes[search] = audit_labels(store, search=search)
        out[f"{search}_s"] = round(time.perf_counter() - start, 2)
        tracemalloc.start()
        audit_labels(store, search=search)
        out[f"{search}_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 1e6)
        tracemalloc.stop()
    exact = {s.id: s for s in votes["exact"].suspects(min_share)}
    index = {s.id: s for s in votes["index"].suspects(min_share)}
    both = exact.keys() & index.keys()
    suggested = dict(zip(votes["exact"].ids, votes["exact"].suggested, strict=True))
    same = sum(suggested[i] == s for i, s in zip(votes["index"].ids, votes["index"].suggested, strict=True))
    out.update(exact_suspects=len(exact), index_suspects=len(index), found_by_both=len(both),
               same_suggestion_share=round(same / len(suggested), 4))
    store.close()
    print(json.dumps(out))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("memory", metavar="MEMORY", help="the memory's directory (e.g. the quickstart's ./memory)")
    parser.add_argument("min_share", type=float, nargs="?", default=0.5, metavar="MIN_SHARE",
                        help="share of the neighbours' vote weight for another label that makes a suspect "
                             "(default 0.5)")
    args = parser.parse_args()
    main(args.memory, args.min_share)
