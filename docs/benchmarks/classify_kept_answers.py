"""What a `vmem classify` run keeps of each answer once printed (for its summaries), by tracemalloc: the answers
kept whole (50 neighbours each at the default k) against `for_summaries`, in the same run, alternated twice.

    python docs/benchmarks/classify_kept_answers.py MEMORY IMAGES_FOLDER [N=400]
"""

from __future__ import annotations

import gc
import io
import sys
import tracemalloc
from contextlib import redirect_stdout, suppress
from pathlib import Path

import vmem.cli.memory as cli
from vmem import VisualMemory


def main() -> None:
    memory, folder = sys.argv[1], Path(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 400
    paths = sorted(p for p in folder.rglob("*") if p.is_file())[:n]
    slim = cli.for_summaries
    with VisualMemory.open(memory) as mem:
        for mode in ("whole", "for_summaries", "whole", "for_summaries"):
            cli.for_summaries = (lambda r: r) if mode == "whole" else slim  # type: ignore[assignment]
            gc.collect()
            tracemalloc.start()
            with redirect_stdout(io.StringIO()), suppress(SystemExit):
                results, _ = cli.classify_in_parts(mem, paths, desc="classify", batch_size=64, rerank=False,
                                                   json_out=True, min_confidence=0.6)
            gc.collect()
            held = tracemalloc.get_traced_memory()[0]
            del results
            gc.collect()
            freed = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            print(f'{{"kept": "{mode}", "answers": {len(paths)}, "kb_per_answer": '
                  f'{(held - freed) / len(paths) / 1024:.1f}}}', flush=True)
    cli.for_summaries = slim


if __name__ == "__main__":
    main()
