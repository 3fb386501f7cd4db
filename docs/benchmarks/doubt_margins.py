"""How wide the doubtful window should be: a kept 1.28M turboquant8 memory built with --rescore-doubtful, served
inside 0.5x the raw vector bytes with each margin in turn (one run each).

    python docs/benchmarks/doubt_margins.py KEPT_MEMORY 0.0004,0.0006,0.0008 > doubt-margins.jsonl

KEPT_MEMORY: `bash docs/benchmarks/run.sh search-1m-doubtful` with the `rm -rf "$kept"` left out, or
`vmem bench search --n 1280000 --quantization turboquant8 --no-rescore --rescore-doubtful --keep`.
Prints one JSON line per margin: recall@50, batched QPS (median of three rounds, and the rounds), single QPS,
rows read a query, disk reads waited for a query (major faults).
"""

import argparse
import json
from pathlib import Path

from eval.exact import exact_search
from vmem.cli.bench_ram_limit import fresh_queries_needed, serve_within_limit
from vmem.cli.bench_search import fresh_queries, synthetic_features

n, k = 1_280_000, 50


def main(kept: Path, margins: str) -> None:
    allv, _, centres = synthetic_features(n + 1000, 384, n // 1000, 0)
    vecs, queries = allv[:n], allv[n:]
    truth = exact_search(queries, vecs, k)[0]
    fresh = fresh_queries(centres, fresh_queries_needed(1000), 0)
    for m in [float(x) for x in margins.split(",")]:
        r = serve_within_limit(kept, queries, truth, fresh, k, int(0.5 * vecs.nbytes), search={"doubt_margin": m})
        keys = ("recall_at_50", "qps_batch", "qps_batch_rounds", "qps_single", "rows_read_per_query",
                "major_faults_per_query")
        print(json.dumps({"margin": m, **{key: r.get(key) for key in keys}}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kept", type=Path, metavar="KEPT_MEMORY",
                        help="a kept 1.28M turboquant8 memory built with --rescore-doubtful (see above)")
    parser.add_argument("margins", metavar="MARGINS",
                        help="doubt margins to serve with, comma-separated, e.g. 0.0004,0.0006,0.0008")
    args = parser.parse_args()
    main(args.kept, args.margins)
