"""The memory's journal: every edit recorded with the memory, and a forgotten image's trace.

Memories hold 4 red, 4 green and 4 blue textures, embedded once by the real EfficientNet-Lite0.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import date, timedelta

import pytest
from fastapi.testclient import TestClient
from qdrant_client import QdrantClient
from typer.testing import CliRunner

import retrieval.journal
from eval.pruning import prune_store, undo_pruning
from retrieval import open_store
from retrieval.journal import JOURNAL_FILE, FileJournal, JournalEntry, entries_for
from retrieval.store import QdrantServerStore, point_id_for
from server import Settings, create_app
from tests._lite0_once import lite0_loaded_once  # noqa: F401 - autouse: one Lite0 load for the module
from tests._server_fixtures import API_KEY, fill_memory, texture
from vmem import VisualMemory
from vmem.cli import app

KEY = {"X-API-Key": API_KEY}


@pytest.fixture(params=["edge", "qdrant-client"])
def memory(request, tmp_path, lite0, memory_images):
    location = str(tmp_path / "memory") if request.param == "edge" else ":memory:"
    mem = fill_memory(location, lite0, memory_images)
    yield mem
    mem.close()


def test_every_edit_is_recorded_newest_first_with_what_it_touched(memory, memory_images, tmp_path):
    lime = [texture((120, 230, 60), seed=900 + i) for i in range(2)]
    memory.add(lime, ["lime", "lime"], sources=["upload:lime-0", "upload:lime-1"], tags={"batch": "7"})
    green = [str(p) for p, label in zip(memory_images.paths, memory_images.labels, strict=True) if label == "green"]
    memory.relabel("verde", label="green")
    memory.set_label_names({"verde": "leaf green"})
    assert memory.forget(source_prefix=green[0]) == 1
    assert memory.forget(ids=["00000000-0000-0000-0000-000000000000"]) == 0  # nothing went: nothing recorded

    forget, name, relabel, add = memory.history()
    # An add names its note (journal.pending/, or the server's vmem-journal-pending): settling it after a kill counts
    # its own entries
    assert len(add.detail.get("note", "")) == 32
    assert (add.op, add.points, add.labels, add.detail["tags"], add.via) == ("add", 2, {"lime": 2}, {"batch": "7"},
                                                                             "python")
    assert (relabel.op, relabel.points, relabel.labels, relabel.to, relabel.selector) == (
        "relabel", 4, {"green": 4}, "verde", {"label": "green"})
    assert name.detail == {"names": {"verde": "leaf green"}, "replace": False}
    assert (forget.op, forget.points, forget.labels) == ("forget", 1, {"verde": 1})
    assert forget.ids == [point_id_for(green[0])]
    assert forget.host and forget.pid == os.getpid() and forget.at >= add.at

    # Was this image forgotten, and when? Its source is enough: a point's id derives from it.
    assert memory.history(source=green[0]) == [forget, relabel]
    assert memory.point(forget.ids[0]) is None
    assert memory.history(point_id=point_id_for(green[1])) == memory.history(source=green[1]) == [relabel]
    assert memory.history(op="add", limit=5) == [add] and len(memory.history(limit=2)) == 2

    # Who touched a label, and what changed since a moment.
    assert memory.history(label="green") == [relabel]
    assert memory.history(label="verde") == [forget, name, relabel]
    assert memory.history(label="lime") == [add]
    assert memory.history(since=forget.at) == [forget]
    assert memory.history(since="2999-01-01") == [] and len(memory.history(since="2000-01-01")) == 4
    assert memory.history(since=forget.at.replace("+00:00", "+01:00")) == memory.history()  # an hour earlier, UTC
    with pytest.raises(ValueError, match="not a date or time"):
        memory.history(since="last tuesday")


def test_a_forget_of_many_points_is_recorded_in_parts(memory, monkeypatch):
    monkeypatch.setattr(retrieval.journal, "IDS_PER_ENTRY", 5)
    ids = memory.store.ids_where(label="red") + memory.store.ids_where(label="blue")
    assert memory.forget(ids=ids) == 8
    parts = memory.history(op="forget")
    assert [e.part for e in parts] == [1, 0] and sorted(parts[0].ids + parts[1].ids) == sorted(ids)
    assert {e.at for e in parts} == {parts[0].at}


def test_edits_racing_each_other_record_each_point_once(memory):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    def at_once(edit) -> list[int]:  # eight clients make the same edit at the same moment
        start = threading.Barrier(8)

        def one(_) -> int:
            start.wait()
            return edit()

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(8)))

    blue = memory.store.ids_where(label="blue")
    relabelled = at_once(lambda: memory.relabel("navy", ids=blue))
    relabels = memory.history(op="relabel")
    assert sum(relabelled) == sum(e.points for e in relabels) == 4  # each point relabelled by one call, once
    assert sorted(i for e in relabels for i in e.ids) == sorted(blue)

    ids = memory.store.ids_where(label="red") + memory.store.ids_where(label="green")
    forgotten = at_once(lambda: memory.forget(ids=ids))
    forgets = memory.history(op="forget")
    assert sum(forgotten) == sum(e.points for e in forgets) == 8
    assert sorted(i for e in forgets for i in e.ids) == sorted(ids)


def test_a_relabel_and_a_forget_of_one_point_are_journaled_in_the_order_they_were_made(memory, monkeypatch):
    # The relabel is made and held before its entry is journaled, until the forget waits for the edit lock: the
    # relabel's entry goes in under it, so the forget's comes after it.
    import threading

    from tests._handshakes import Waits

    journal, record = memory.store.journal, memory.store.journal.record
    waits = Waits()
    monkeypatch.setattr(memory, "_edit_lock", waits.watch(memory._edit_lock))
    relabelled, go_on = threading.Event(), threading.Event()

    def held_before_journaling_relabels(op, *args, **kw):  # the relabel is made, and its entry is on its way
        if op == "relabel":
            relabelled.set()
            assert go_on.wait(30)
        return record(op, *args, **kw)

    monkeypatch.setattr(journal, "record", held_before_journaling_relabels)
    [point] = memory.store.ids_where(label="blue")[:1]
    relabel = waits.start(memory.relabel, "navy", ids=[point])
    assert relabelled.wait(30)  # the relabel has been applied; now another client forgets the point
    forget = waits.start(memory.forget, ids=[point])
    assert waits.blocked(forget) is memory._edit_lock  # it waits for the relabel's entry
    go_on.set()
    relabel.join(30)
    forget.join(30)
    assert [e.op for e in memory.history(point_id=point)] == ["forget", "relabel"]  # newest first


def warm_and_cool_images(folder, n: int, warm: int) -> list:
    """`n` distinct images to build from, the first `warm` labelled warm and the rest cool."""
    from retrieval import LabelledImage

    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        path = folder / f"{i}.png"
        path.write_bytes(texture((20 * i, 90, 200 - 10 * i), seed=i))
        items.append(LabelledImage(str(path), "warm" if i < warm else "cool"))
    return items


def test_a_build_stopped_halfway_journals_what_it_added(lite0, tmp_path):
    # Ctrl-C after the first batch: those points are in the memory, and the resumed build counts them as already
    # there, so unless journaled then they were never.
    items = warm_and_cool_images(tmp_path / "set", 12, warm=6)

    def stop_after_the_first_batch(done: int) -> None:
        raise KeyboardInterrupt

    with VisualMemory.open(tmp_path / "memory", featurizer="efficientnet-lite0", create=True, reranker=None) as mem:
        with pytest.raises(KeyboardInterrupt):
            mem.build(items, batch_size=4, num_workers=0, progress=stop_after_the_first_batch)
        [stopped] = mem.history(op="add")
        assert stopped.points == mem.store.count() == 4 and stopped.detail["build"]["interrupted"] is True
        mem.build(items, batch_size=4, num_workers=0)  # resumed
        assert sum(e.points for e in mem.history(op="add")) == mem.store.count() == 12


def test_a_long_build_journals_its_adds_as_it_goes(lite0, tmp_path, monkeypatch):
    # A kill -9 cannot be caught: what a build has not journaled when its process dies, it never will (the resumed
    # build counts those points as already there). So a build journals at least every BUILD_JOURNAL_EVERY_S.
    import vmem.visual_memory as visual_memory

    monkeypatch.setattr(visual_memory, "BUILD_JOURNAL_EVERY_S", 0.0)  # every batch
    items = warm_and_cool_images(tmp_path / "set", 10, warm=6)
    with VisualMemory.open(tmp_path / "memory", featurizer="efficientnet-lite0", create=True, reranker=None) as mem:
        mem.build(items, batch_size=4, num_workers=0)
        adds = mem.history(op="add")[::-1]  # oldest first
        assert [e.points for e in adds] == [4, 4, 2]  # each batch's own points
        assert [e.labels for e in adds] == [{"warm": 4}, {"warm": 2, "cool": 2}, {"cool": 2}]
        assert [e.detail["build"].get("running") for e in adds] == [True, True, True]


def test_processes_sharing_a_server_write_one_journal(lite0, memory_images):
    client = QdrantClient(":memory:")
    first = fill_memory(":memory:", lite0, memory_images)
    a = VisualMemory(QdrantServerStore(":memory:", first.store.meta, client=client), lite0, reranker=None)
    first.close()
    b = VisualMemory(QdrantServerStore(":memory:", client=client), lite0, reranker=None)
    a.add([texture((9, 9, 9), 1)], ["grey"], sources=["upload:grey"])
    b.forget(ids=b.store.ids_where(label="grey"))
    assert [e.op for e in a.history()] == [e.op for e in b.history()] == ["forget", "add"]


def test_a_torn_last_line_is_skipped_and_a_journal_that_cannot_be_written_fails_no_edit(tmp_path, lite0, memory_images,
                                                                                         caplog):
    location = tmp_path / "memory"
    with fill_memory(str(location), lite0, memory_images) as mem:
        mem.forget(label="red")
    with open(location / JOURNAL_FILE, "a", encoding="utf-8") as f:
        f.write('{"at": "2026-12-05T00:00:00+00:00", "op": "forg')  # a crash mid-write
    with VisualMemory.open(location) as mem:
        assert [e.op for e in mem.history()] == ["forget"]
        os.remove(location / JOURNAL_FILE)
        (location / JOURNAL_FILE).mkdir()  # cannot be appended to
        with caplog.at_level(logging.ERROR, logger="retrieval.journal"):
            assert mem.forget(label="blue") == 4  # the edit stands
            assert undo_pruning(mem.store) == 0 and prune_store(mem.store, "soft", k=3).points == 4  # so does a prune
        assert "journal could not record a forget of 4 points" in caplog.text
        assert "journal could not record a prune" in caplog.text
        assert mem.store.count() == 4
    shutil.rmtree(location / JOURNAL_FILE)


def test_an_edit_after_a_torn_line_is_journaled_whole_and_a_line_that_is_no_entry_fails_no_history(
        tmp_path, lite0, memory_images, caplog):
    location = tmp_path / "memory"
    with fill_memory(str(location), lite0, memory_images) as mem:
        mem.forget(label="red")
    journal = location / JOURNAL_FILE
    with open(journal, "a", encoding="utf-8") as f:
        f.write('{"at": "2026-12-05T00:00:00+00:00", "op": "forg')  # a crash mid-write
    with VisualMemory.open(location) as mem, caplog.at_level(logging.WARNING, logger="retrieval.journal"):
        assert mem.forget(label="blue") == 4  # appended after the torn line: it is cut off first
        assert [(e.op, e.labels) for e in mem.history()] == [("forget", {"blue": 4}), ("forget", {"red": 4})]
        assert "torn by a crash" in caplog.text
        # A journal an earlier vmem wrote such a line into: the line is skipped, the rest still read.
        with open(journal, "a", encoding="utf-8") as f:
            f.write('{"at": "2026-12-05T00:00:00+00:00", "op": "forg{"at": "2026-12-05T00:00:01+00:00"}\n')
        mem.forget(label="green")
        assert [e.labels for e in mem.history()] == [{"green": 4}, {"blue": 4}, {"red": 4}]
        assert [e.labels for e in mem.history(limit=2)] == [{"green": 4}, {"blue": 4}]
        assert "a line that is no entry" in caplog.text
    with VisualMemory.open(location) as mem:
        copy, _ = mem.copy_to(str(tmp_path / "copy"))  # the journal goes along
        copy.close()


def test_cli_prints_the_history_of_the_memory_and_of_one_image(tmp_path, lite0, memory_images):
    location = str(tmp_path / "memory")
    with fill_memory(location, lite0, memory_images):
        pass
    runner = CliRunner(env={"COLUMNS": "250"})
    gone = str(memory_images.paths[0])  # a red image
    assert runner.invoke(app, ["forget", "--memory", location, "--source", gone]).exit_code == 0
    assert runner.invoke(app, ["relabel", "--memory", location, "--label", "blue", "--to", "navy"]).exit_code == 0
    assert runner.invoke(app, ["prune", "--memory", location, "--mode", "soft", "--k", "3"]).exit_code == 0
    assert runner.invoke(app, ["prune", "--memory", location, "--undo"]).exit_code == 0

    shown = runner.invoke(app, ["history", "--memory", location])
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert [line.split("\t")[1] for line in lines] == ["unprune", "prune", "relabel", "forget"]
    assert "4 points (blue: 4) to navy\tby label 'blue'\tvia cli on " in lines[2]  # labels as classify prints them
    assert f"1 point (red: 1)\tby source_prefix '{gone}'" in lines[3]

    one = runner.invoke(app, ["history", "--memory", location, "--source", gone])
    assert one.stderr.startswith(f"{gone}: not in the memory now") or one.stdout.startswith(f"{gone}: not in")
    assert [line.split("\t")[1] for line in one.stdout.splitlines()[1:]] == ["forget"]
    kept = runner.invoke(app, ["history", "--memory", location, "--source", str(memory_images.paths[5]), "--json"])
    assert "in the memory now, labelled green" in kept.stderr and kept.stdout == ""
    assert "no edits recorded for it" in kept.stderr
    as_json = [JournalEntry.model_validate_json(line) for line in runner.invoke(
        app, ["history", "--memory", location, "--op", "forget", "--json"]).stdout.splitlines()]
    assert [(e.op, e.via, len(e.ids)) for e in as_json] == [("forget", "cli", 1)]
    both = runner.invoke(app, ["history", "--memory", location, "--id", as_json[0].ids[0], "--source", gone])
    assert both.exit_code == 2 and "not both" in both.output
    navy = runner.invoke(app, ["history", "--memory", location, "--label", "navy", "--since", "2000-01-01"])
    assert [line.split("\t")[1] for line in navy.stdout.splitlines()] == ["relabel"]
    none = runner.invoke(app, ["history", "--memory", location, "--op", "copy", "--since", "2000-01-01"])
    assert none.stderr == "no edits recorded that match --op copy --since 2000-01-01\n"  # not: an empty journal
    bad = runner.invoke(app, ["history", "--memory", location, "--since", "yesterday"])
    assert bad.exit_code == 2 and "'yesterday' is not a date or time" in bad.output


def test_history_of_an_image_added_under_a_name_of_its_own_knows_it_is_still_there(tmp_path, lite0, memory_images):
    # A name given to add(sources=...) is stored as given: the CLI had looked for it as a path under the current
    # folder and said "not in the memory now" above the very point's relabel.
    location = str(tmp_path / "memory")
    with VisualMemory(open_store(location, lite0.spec), lite0) as mem:
        mem.add([str(p) for p in memory_images.paths[:2]], "red", sources=["cam/0.jpg", "cam/1.jpg"])
        mem.relabel("crimson", ids=[mem.point_id_of_source("cam/0.jpg")])
    shown = CliRunner().invoke(app, ["history", "--memory", location, "--source", "cam/0.jpg"])
    assert shown.exit_code == 0, shown.output
    state, *edits = shown.stdout.splitlines()
    assert state.startswith("cam/0.jpg: in the memory now, labelled crimson")
    assert [line.split("\t")[1] for line in edits] == ["relabel"]


def test_http_lists_the_edits_made_through_the_service(tmp_path, lite0, memory_images):
    mem = fill_memory(":memory:", lite0, memory_images)
    settings = Settings(memory=":memory:", api_key=API_KEY, thumbnail_dir=tmp_path / "thumbs")
    with TestClient(create_app(settings, memory=mem)) as client:
        added = client.post("/v1/memory", headers=KEY, data={"label": "lime"},
                            files=[("images", ("lime.png", texture((120, 230, 60), seed=900), "image/png"))])
        point = added.json()["added"][0]["id"]
        assert client.delete(f"/v1/memory/points/{point}", headers=KEY).status_code == 200

        history = client.get("/v1/memory/history").json()
        assert [(e["op"], e["via"], e["points"]) for e in history["entries"]] == [("forget", "http", 1),
                                                                                 ("add", "http", 1)]
        assert history["entries"][0]["ids"] == [point] and history["earlier"] == 0
        # A summary (the page's recent edits) leaves the ids out: a big forget's are megabytes
        summary = client.get("/v1/memory/history", params={"ids": "false"}).json()["entries"]
        assert [(e["op"], e["points"], e["ids"]) for e in summary] == [("forget", 1, []), ("add", 1, [])]
        of_point = client.get("/v1/memory/history", params={"point_id": point}).json()
        assert [e["op"] for e in of_point["entries"]] == ["forget"]
        latest = client.get("/v1/memory/history", params={"limit": 1, "op": "add"}).json()
        assert ([e["op"] for e in latest["entries"]], latest["earlier"]) == (["add"], 0)
        assert client.get("/v1/memory/history", params={"limit": 1}).json()["earlier"] == 1
        assert [e["op"] for e in client.get("/v1/memory/history", params={"label": "lime"}).json()["entries"]] == [
            "forget", "add"]
        assert client.get("/v1/memory/history", params={"since": "2999-12-31"}).json()["entries"] == []
        assert client.get("/v1/memory/history", params={"since": "soon"}).status_code == 422
        for outside_utc in ["0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-02:00"]:  # dates, but not in UTC
            too_far = client.get("/v1/memory/history", params={"since": outside_utc})
            assert too_far.status_code == 422 and "between years 1 and 9999" in too_far.json()["detail"]
        assert client.get("/v1/memory/history", params={"op": "delete"}).status_code == 422
        assert client.get("/v1/memory/history", params={"point_id": "nope"}).status_code == 422
    mem.close()


def test_http_pages_through_a_history_longer_than_its_limit_with_until(memory, tmp_path):
    # `limit` is at most 1,000 and the history is newest first: an audit of every forget since the memory began had
    # no way past the newest 1,000 edits (`earlier` counted them, and nothing reached them).
    settings = Settings(memory=memory.store.location, api_key=API_KEY, thumbnail_dir=tmp_path / "thumbs")
    with TestClient(create_app(settings, memory=memory)) as client:
        for i in range(7):
            memory.set_label_names({"red": f"red {i}"})
        whole = client.get("/v1/memory/history", params={"limit": 1000}).json()["entries"]
        assert [e["op"] for e in whole] == ["name"] * 7
        pages, seen, until = [], [], None
        while True:
            page = client.get("/v1/memory/history", params={"limit": 3, **({"until": until} if until else {})}).json()
            new = [e for e in page["entries"] if e not in seen]
            seen += new
            pages.append(len(new))
            if not page["earlier"]:
                break
            until = page["entries"][-1]["at"]
        assert seen == whole and pages == [3, 2, 2]  # each page after the first repeats the entry it starts at
        assert client.get("/v1/memory/history", params={"until": "2000-01-01"}).json() == {
            "entries": [], "earlier": 0, "next_cursor": None}
        assert client.get("/v1/memory/history", params={"until": "later"}).status_code == 422
        # The oldest `at` pasted into the URL as it is: its `+00:00` reads as ` 00:00` (a `+` in a query is a space)
        pasted = client.get(f"/v1/memory/history?limit=3&until={whole[3]['at']}")
        assert pasted.status_code == 422
        assert pasted.json()["detail"].endswith("a `+` in a URL's query reads as a space: send it as %2B (or have "
                                                "the HTTP client encode the parameters)"), pasted.json()["detail"]


def test_a_forget_journaled_in_parts_is_paged_through_each_part_once_in_python_and_over_http(memory, tmp_path,
                                                                                             monkeypatch):
    # A forget of more than 100,000 points journals several parts at one time. Paged 2 at a time by `until` the
    # oldest time shown, less the entries shown, 3 parts stalled a reader: each page was the same 2 parts again
    memory.relabel("navy", label="blue")
    monkeypatch.setattr(retrieval.journal, "IDS_PER_ENTRY", 1)  # a part per point: 3 parts of one time
    assert memory.forget(ids=memory.store.ids_where(label="red")[:3]) == 3
    memory.set_label_names({"green": "leaf"})
    whole = memory.history()
    assert [e.op for e in whole] == ["name", "forget", "forget", "forget", "relabel"]

    paged, page = [], memory.history_page(limit=2)
    while True:
        paged += page.entries
        assert page.earlier == len(whole) - len(paged)
        if page.next_cursor is None:
            break
        page = memory.history_page(limit=2, cursor=page.next_cursor)
    assert paged == whole  # each entry once, newest first
    assert [e.part for e in paged[1:4]] == [2, 1, 0]
    forgets = memory.history_page(op="forget", limit=2)
    assert memory.history(op="forget", limit=2, cursor=forgets.next_cursor) == whole[3:4]
    with pytest.raises(ValueError, match="'nope' is no cursor of this memory's history"):
        memory.history(limit=2, cursor="nope")

    settings = Settings(memory=memory.store.location, api_key=API_KEY, thumbnail_dir=tmp_path / "thumbs")
    with TestClient(create_app(settings, memory=memory)) as client:
        listed, cursor = [], None
        while True:
            page = client.get("/v1/memory/history", params={"limit": 2, "ids": "false",
                                                            **({"cursor": cursor} if cursor else {})}).json()
            listed += page["entries"]
            if (cursor := page["next_cursor"]) is None:
                break
        assert listed == [e.model_copy(update={"ids": []}).model_dump(mode="json") for e in whole]
        refused = client.get("/v1/memory/history", params={"cursor": "nope"})
        assert refused.status_code == 422 and "is no cursor of this memory's history" in refused.json()["detail"]


def test_an_until_that_is_a_date_takes_in_that_whole_day(memory):
    # As `since 2026-12-05` starts with that day, `until 2026-12-05` ends with it: read as its midnight, it had left
    # out the whole day named, and `since D until D` found nothing of D
    memory.set_label_names({"red": "crimson"})
    newest = memory.history(limit=1)[0]
    day = newest.at[:10]  # the journal writes UTC
    assert memory.history(until=day, limit=1) == [newest]
    assert memory.history(since=day, until=day, limit=1000) == memory.history(since=day, limit=1000)
    assert memory.history(until=day) == memory.history()  # unlimited: every entry parsed, as a label query reads
    before = (date.fromisoformat(day) - timedelta(days=1)).isoformat()
    assert memory.history(until=before, limit=1000) == [e for e in memory.history(limit=1000) if e.at < day]


def test_a_since_after_the_until_is_refused_not_answered_with_nothing(memory, tmp_path):
    # Two dates given the wrong way round had answered an empty history, read as "no edits then"
    memory.set_label_names({"red": "crimson"})
    with pytest.raises(ValueError, match=r"since '2026-12-06' is after until '2026-12-05T23:00'"):
        memory.history(since="2026-12-06", until="2026-12-05T23:00")
    day = memory.history(limit=1)[0].at[:10]
    assert len(memory.history(since=day, until=day)) == 1  # one day: from its first instant through its last
    settings = Settings(memory=memory.store.location, api_key=API_KEY, thumbnail_dir=tmp_path / "thumbs")
    with TestClient(create_app(settings, memory=memory)) as client:
        refused = client.get("/v1/memory/history", params={"since": "2026-12-06", "until": "2026-12-05"})
        assert refused.status_code == 422 and refused.json()["type"] == "urn:vmem:problem:invalid-parameters"
        assert "since '2026-12-06' is after until '2026-12-05'" in refused.json()["detail"]


def test_journal_entries_round_trip_as_json_lines():
    entry = JournalEntry(at="2026-12-05T00:00:00+00:00", op="relabel", points=1, ids=["a"], to="b")
    assert JournalEntry.model_validate(json.loads(entry.model_dump_json())) == entry


def test_entries_appended_from_many_threads_each_stay_whole(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    journal = FileJournal(tmp_path / JOURNAL_FILE)

    def forget_many(n: int) -> None:  # a forget of 5,000 points: a ~200 kB line
        journal.append(entries_for("forget", [f"{n:08d}-0000-0000-0000-{i:012d}" for i in range(5000)], points=5000))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(forget_many, range(16)))
    entries = journal.read()
    assert sorted(e.ids[0][:8] for e in entries) == [f"{n:08d}" for n in range(16)]
    assert all(len(e.ids) == 5000 for e in entries)


LABELS = ["cat", 'a "quoted" one', "猫", "back\\slash", "x"]


def a_long_journal(seed: int = 7) -> tuple[list[JournalEntry], list]:
    """301 entries of every kind (the last two an edit's two parts, at one time), and queries of each kind."""
    import itertools
    import random
    import uuid

    from retrieval.journal import JournalQuery

    rng = random.Random(seed)
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(30)]
    entries = []
    for i in range(300):
        op = rng.choice(["add", "forget", "relabel", "name", "tune"])
        chosen = rng.sample(ids, 3) if op in ("forget", "relabel") else []
        at = f"2026-01-0{1 + i // 100}T00:00:{i % 60:02d}.{rng.randrange(10**6):06d}+00:00"
        entries.append(JournalEntry(at=at, op=op, points=len(chosen) or 1, labels={rng.choice(LABELS): 1}, ids=chosen,
                                    to=rng.choice(LABELS) if op == "relabel" else None,
                                    by=rng.choice([None, "alice", "bob"])))
    entries.append(entries[-1].model_copy(update={"part": 1}))  # an edit's second part: the same time
    queries = [JournalQuery(op=op, point_id=point, label=label, since=since) for op, point, label, since in
               itertools.product([None, "forget", "add"], [None, ids[0]], [None, *LABELS],
                                 [None, "2026-01-02T00:00:30+00:00"])]
    queries += [JournalQuery(by="alice"), JournalQuery(op="forget", by="bob"), JournalQuery(label="猫", by="alice"),
                JournalQuery(by="carol"), JournalQuery(by='a "quoted" one')]  # who made the edits (an API key's name)
    return entries, queries


def test_recent_edits_parse_only_what_they_show_and_agree_with_reading_the_whole_journal(tmp_path, monkeypatch):
    import itertools

    from retrieval.journal import Journal, JournalQuery

    entries, queries = a_long_journal()
    journal = FileJournal(tmp_path / JOURNAL_FILE)
    journal.append(entries[150:])
    journal.append(entries[:150])  # older entries after newer ones, as `vmem copy` carries them
    with open(journal.path, "a", encoding="utf-8") as f:
        f.write('{"at":"2030-01-01T00:00:00+00:00","op":"add"')  # torn by a crash: never shown

    for query, limit in itertools.product(queries, [0, 1, 5, 1000]):
        assert journal.newest(query, limit) == Journal.newest(journal, query, limit), (query, limit)

    parsed = []
    validate = JournalEntry.model_validate_json
    monkeypatch.setattr(JournalEntry, "model_validate_json", lambda line: parsed.append(1) or validate(line))
    shown, earlier = journal.newest(JournalQuery(), 20)
    assert len(parsed) == 20 and earlier == len(entries) - 20  # the page's "recent edits": 20 lines parsed of 301
    assert [e.at for e in shown] == sorted((e.at for e in entries), reverse=True)[:20]


def test_recent_edits_read_as_a_torn_line_is_cut_off_are_the_journal_as_the_read_began(tmp_path):
    from dataclasses import dataclass

    from retrieval.journal import JournalQuery

    journal = FileJournal(tmp_path / JOURNAL_FILE)
    journal.append([JournalEntry(at=f"2026-12-05T00:00:0{i}+00:00", op="add", points=1) for i in (1, 2)])
    with open(journal.path, "a", encoding="utf-8") as f:
        f.write('{"at":"2026-12-05T00:00:03+00:00","op":"fo')  # a crash mid-write

    @dataclass(frozen=True)
    class EditedMeanwhile(JournalQuery):  # another thread's edit lands as the page reads the journal's first line
        def may_match(self, line: str) -> bool:
            if not journal.path.read_bytes().endswith(b"\n"):
                journal.append([JournalEntry(at="2026-12-05T00:00:04+00:00", op="forget", points=9, ids=["x"] * 9)])
            return super().may_match(line)

    shown, earlier = journal.newest(EditedMeanwhile(), 10)
    # Not the torn bytes and the new entry's end read as one line (skipped, yet counted as an earlier edit)
    assert ([e.at[17:19] for e in shown], earlier) == (["02", "01"], 0)
    assert [e.op for e in journal.newest(JournalQuery(), 10)[0]] == ["forget", "add", "add"]


# qdrant-client's local mode stands for a server here (a journal asked for a server's payload indexes), so it warns
@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant:UserWarning")
@pytest.mark.parametrize("kind", ["file", "server"])
def test_a_history_is_read_a_page_at_a_time_each_entry_once_through_edits_of_many_parts(kind, tmp_path):
    # A forget of more than 100,000 points journals a part per 100,000 at one time: paged by `until` the oldest time
    # shown, less the entries shown, a page of 2 among 5 parts came back to the same 2 parts forever. A cursor
    # names the page's oldest entry itself.
    from retrieval.journal import CollectionJournal, Journal, JournalQuery

    entries, queries = a_long_journal()
    at = entries[105].at
    parts = [JournalEntry(at=at, op="forget", points=5, ids=[f"{i:08d}-0000-0000-0000-000000000000"], part=i)
             for i in range(5)]
    journal = (FileJournal(tmp_path / JOURNAL_FILE) if kind == "file"
               else CollectionJournal(QdrantClient(":memory:"), "vmem-journal"))
    journal.append(entries[150:])
    journal.append(parts)
    journal.append(entries[:150])  # older entries written later, as `vmem copy` carries them
    around = JournalQuery(since=entries[100].at, until=entries[115].at)  # the parts' time among others
    for query, limits in [(JournalQuery(), [60]), (around, [2]), (JournalQuery(op="forget", until=at), [7]),
                          (JournalQuery(op="forget", label="cat", by="alice"), [3]), (queries[-4], [5])]:
        whole = Journal.newest(journal, query)[0]  # every match, newest first, the journal read whole
        for limit in limits:
            paged, cursor, pages = [], None, 0
            while True:
                page = journal.page(query, limit, cursor)
                paged += page.entries
                pages += 1
                assert page.earlier == len(whole) - len(paged), (query, limit)
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            assert paged == whole and pages == max(1, -(-len(whole) // limit)), (query, limit)
    forgets = journal.page(JournalQuery(op="forget", since=at, until=at), 2)
    assert [e.part for e in forgets.entries] == [4, 3] and forgets.earlier == 3
    rest = journal.page(JournalQuery(op="forget", since=at, until=at), 2, forgets.next_cursor)
    assert [e.part for e in rest.entries] == [2, 1] and rest.earlier == 1
    assert [e.part for e in journal.page(JournalQuery(op="forget", since=at, until=at), 2, rest.next_cursor)
            .entries] == [0]
    other = (CollectionJournal(QdrantClient(":memory:"), "vmem-journal") if kind == "file"
             else FileJournal(tmp_path / JOURNAL_FILE))
    for cursor in ["nope", "", forgets.next_cursor[:-2], _other_kind_of_cursor(other, parts)]:
        with pytest.raises(ValueError, match="is no cursor of this memory's history"):
            journal.page(JournalQuery(), 2, cursor)


def _other_kind_of_cursor(journal, entries) -> str:
    """A cursor of another kind of journal (an embedded memory's, given to a server memory's; or the other way)."""
    from retrieval.journal import JournalQuery

    if not journal.read():
        journal.append(entries)
    return journal.page(JournalQuery(), 1).next_cursor


# qdrant-client's local mode stands for a server here (a journal asked for a server's payload indexes), so it warns
@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant:UserWarning")
def test_a_shared_memorys_recent_edits_are_one_page_from_the_server_and_agree_with_reading_them_all():
    from retrieval.journal import CollectionJournal, Journal, JournalQuery

    entries, queries = a_long_journal()
    client = QdrantClient(":memory:")
    journal = CollectionJournal(client, "vmem-journal")
    for start in range(150, len(entries), 50):
        journal.append(entries[start : start + 50])
    journal.append(entries[:150])  # older entries written later, as `vmem copy` carries them
    for query in queries:
        # Every match, newest first, as reading the whole journal gives it: read once per query, not per limit
        # (each read scrolls the whole collection); `Journal.newest` with a limit is this list cut at the limit.
        every, _ = Journal.newest(journal, query)
        for limit in [0, 1, 5, 20, 1000]:
            expected = (every[:limit], max(0, len(every) - limit))
            assert journal.newest(query, limit) == expected, (query, limit)

    sent = []  # the entries the server sends for the page's "recent edits"
    scroll = client.scroll

    def counted_scroll(*args, **kwargs):
        page = scroll(*args, **kwargs)
        sent.extend(page[0])
        return page

    client.scroll = counted_scroll
    shown, earlier = journal.newest(JournalQuery(), 20)
    assert len(sent) == 21 and earlier == len(entries) - 20  # one more: the page does not end inside an edit
    assert [e.at for e in shown] == sorted((e.at for e in entries), reverse=True)[:20]
    sent.clear()
    shown, earlier = journal.newest(JournalQuery(), 1)  # it ends inside an edit of two parts: both read again
    assert len(sent) == 4 and [e.part for e in shown] == [1] and earlier == len(entries) - 1


# qdrant-client's local mode stands for a server here (a journal asked for a server's payload indexes), so it warns
@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant:UserWarning")
def test_the_answer_logs_edit_at_costs_a_shared_memory_one_request_a_classify(tmp_path, caplog):
    # README: a memory on a Qdrant server asks for its newest edit "once per classify call (one request)"; its
    # journal's existence had been asked too, every time. qdrant-local: qdrant-client's code, a folder as a server.
    from retrieval.journal import CollectionJournal

    entries, _ = a_long_journal()
    client = QdrantClient(path=str(tmp_path / "server"))
    journal = CollectionJournal(client, "vmem-journal")
    asked: list[str] = []
    for name in ("collection_exists", "scroll", "create_payload_index", "create_collection", "upsert"):
        def counted(*args, _real=getattr(client, name), _name=name, **kwargs):
            asked.append(_name)
            return _real(*args, **kwargs)
        setattr(client, name, counted)

    assert journal.newest_at is None and asked == ["collection_exists"]  # no journal yet: asked each time
    journal.append(entries[:10])
    journal.newest_at  # noqa: B018 - its index made once
    asked.clear()
    newest = max(e.at for e in entries[:10])
    assert [journal.newest_at for _ in range(3)] == [newest] * 3 and asked == ["scroll"] * 3
    # Dropped by another process sharing the memory: no journal now, not a server that will not order it
    QdrantClient.delete_collection(client, "vmem-journal")
    assert journal.newest_at is None and "would not order" not in caplog.text
    journal.append(entries[10:20])  # made again, and ordered again
    assert journal.newest_at == max(e.at for e in entries[10:20])


# qdrant-client's local mode stands for a server here (a journal asked for a server's payload indexes), so it warns
@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant:UserWarning")
def test_a_server_that_will_not_order_the_journal_has_it_read_whole(caplog):
    from qdrant_client.http.exceptions import UnexpectedResponse

    from retrieval.journal import CollectionJournal, Journal, JournalQuery

    entries, _ = a_long_journal()
    client = QdrantClient(":memory:")
    journal = CollectionJournal(client, "vmem-journal")
    journal.append(entries)
    scroll = client.scroll

    def no_order(*args, order_by=None, **kwargs):  # as a server answers a key that may not create the index
        if order_by is not None:
            raise UnexpectedResponse(400, "Bad Request", b'{"status":{"error":"No range index for `order_by` key"}}',
                                     {})
        return scroll(*args, **kwargs)

    client.scroll = no_order
    assert journal.newest(JournalQuery(op="forget"), 5) == Journal.newest(journal, JournalQuery(op="forget"), 5)
    assert "would not order its entries" in caplog.text
    # The answer log's edit_at: none, said once, not asked again (and warned of) at every classify after
    caplog.clear()
    assert journal.newest_at is None and journal.newest_at is None
    assert caplog.text.count("no edit_at for the answer log") == 1


def test_an_embedded_memory_knows_its_newest_edit_without_reading_the_journal_again(tmp_path, lite0, memory_images):
    location = str(tmp_path / "memory")
    with fill_memory(location, lite0, memory_images) as mem:
        assert mem.store.journal.newest_at is None  # nothing journaled yet
        mem.forget(source_prefix=str(memory_images.paths[0]))
        [forget] = mem.history()
        assert mem.store.journal.newest_at == forget.at  # kept as it appends
    with open(os.path.join(location, JOURNAL_FILE), "a", encoding="utf-8") as f:
        f.write('{"at":"2999-01-01T00:00:00+00:00","op":"forg')  # an entry torn by a crash
    with VisualMemory.open(location) as mem:  # another process, or a restart: read from the file's end
        assert mem.store.journal.newest_at == forget.at
    # On a Qdrant server, every process sharing the memory writes the journal: each asks the server, and so
    # knows the edits of the others too
    client = QdrantClient(":memory:")
    first = fill_memory(":memory:", lite0, memory_images)
    a = VisualMemory(QdrantServerStore(":memory:", first.store.meta, client=client), lite0, reranker=None)
    first.close()
    b = VisualMemory(QdrantServerStore(":memory:", client=client), lite0, reranker=None)
    assert a.store.journal.newest_at is None
    a.add([texture((9, 9, 9), 1)], ["grey"], sources=["upload:grey"])
    b.forget(ids=b.store.ids_where(label="grey"))
    forget, _ = b.history()
    assert a.store.journal.newest_at == b.store.journal.newest_at == forget.at
