"""`vmem answers` read through a pipe that closes early (`vmem answers --log answers.jsonl --json | head`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def logged_answer(n: int) -> dict:
    """A line as the answer log writes it (README, "The answer log"), with one neighbour."""
    return {"at": f"2026-12-06T19:{n // 60 % 60:02d}:{n % 60:02d}.000+00:00", "via": "cli", "client": None,
            "by": None, "host": "h", "pid": 1, "image_sha256": "ab" * 32, "filename": f"IMG_{n:04d}.jpg",
            "source": f"IMG_{n:04d}.jpg", "label": "tabby", "scores": {"tabby": 1.0}, "reranked": False,
            "cached": False, "k": 1, "rule": "rank", "memory": "memory-1", "edit_at": None,
            "neighbors": [{"id": "5a1e3c9e-0000-5000-8000-000000000001", "label": "tabby", "similarity": 0.9,
                           "rank": 0}]}


def test_answers_piped_into_head_is_not_said_to_be_a_log_it_cannot_read(tmp_path):
    # The pipe's reader leaving (head has its lines) made the write fail with EPIPE, which the command took for the
    # log's own read failing: "Invalid value for --log: cannot read answers.jsonl (Broken pipe)", exit 2. It ends
    # now as every other vmem command piped into head does (click's way: quietly, exit 1), the log not blamed.
    log = tmp_path / "answers.jsonl"
    log.write_text("".join(json.dumps(logged_answer(n)) + "\n" for n in range(3000)))  # ~1.5 MB: past a pipe's
    proc = subprocess.Popen([sys.executable, "-m", "vmem", "answers", "--log", str(log), "--json"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # as head -1 does
    said = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1, said
    assert json.loads(first)["filename"] == "IMG_0000.jpg"
    assert "cannot read" not in said and "Usage" not in said, said
