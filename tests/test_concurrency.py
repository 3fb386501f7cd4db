"""Classify, add, forget and relabel at the same time against a live service on loopback (bounded in time).

The workload and its invariants live in `scripts/soak.py` (`python scripts/soak.py --seconds 60` for
the long run whose figures are in docs/reliability.md); here it runs for a few seconds in the suite:
no 5xx, no deleted point returned after its delete call returned, no relabelled point returned with its old
label after its relabel call returned, every acknowledged add still there.
"""

from __future__ import annotations

import pytest

from scripts.soak import run_soak
from tests._reliability_fixtures import tiny_app, tiny_memory
from tests._server_fixtures import API_KEY, live_server

# 4 s: on a loaded 2-core machine about 70 adds, 40 forgets, 40 relabels and 130 classifies, several times the
# floors below; a result cache kept across edits gave 100 stale neighbours in that time.
SECONDS = 4.0


@pytest.mark.slow
def test_classify_add_forget_and_relabel_at_once_keep_every_promise(encoder, tmp_path):
    mem = tiny_memory(encoder, location=str(tmp_path / "memory"), per_label=10)
    app = tiny_app(encoder, tmp_path, memory=mem, api_key=API_KEY)
    try:
        with live_server(app) as url:
            report = run_soak(url, SECONDS, api_key=API_KEY, adders=2, forgetters=1, classifiers=3, relabellers=1)
    finally:
        mem.close()
    summary = report.summary()
    assert not report.server_errors, report.server_errors[:5]
    assert not report.stale_neighbours, summary
    assert not report.stale_labels and not report.unrelabelled, summary
    assert not report.lost_adds and not report.undeleted, summary
    # The run did overlap all four: enough of each to mean something.
    assert report.acked_adds >= 10 and report.deletes >= 5 and report.requests["classify"] >= 10, summary
    assert report.relabels >= 5, summary
    # A relabel of a point forgotten meanwhile is a 404, nothing else.
    assert set(report.statuses) <= {"add 201", "forget 200", "classify 200", "relabel 200", "relabel 404"}, \
        report.statuses
