"""`vmem bench`: benchmarks are scripts that print figures, never timed assertions in tests.

Each command prints the machine, its settings, and one JSON object of results.
"""

from __future__ import annotations

import typer

from . import bench_classify, bench_featurize, bench_load, bench_rerank, bench_search

bench_app = typer.Typer(help="Benchmarks: search, featurisation, classify latency, forget, re-ranking, load.",
                        no_args_is_help=True)
bench_app.command("search")(bench_search.search)
bench_app.command("featurize")(bench_featurize.featurize)
bench_app.command("forget")(bench_search.forget)
bench_app.command("classify")(bench_classify.classify)
bench_app.command("rerank")(bench_rerank.rerank)
bench_app.command("load")(bench_load.load)
