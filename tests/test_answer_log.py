"""The answer log: every answer logged with the points behind it, so that a decision can be traced after the fact,
and `vmem answers` lists the decisions that used a point (one since forgotten, say).

Memories hold 4 red, 4 green and 4 blue textures, embedded once by the real EfficientNet-Lite0.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor

import pytest
from fake_gemini import FakeGemini
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from reranker import GeminiReranker
from server import Settings, create_app
from tests._lite0_once import lite0_loaded_once  # noqa: F401 - autouse: one Lite0 load for the module
from tests._server_fixtures import API_KEY, fill_memory, texture
from vmem.answer_log import AnswerLog, log_files, read_answers
from vmem.cli import app

KEY = {"X-API-Key": API_KEY}
RED = texture((220, 30, 30), seed=777)  # a red image the memory has not seen


def lines_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_forgotten_point_names_the_served_decisions_it_took_part_in(tmp_path, lite0, memory_images):
    location, log = str(tmp_path / "memory"), tmp_path / "answers.jsonl"
    mem = fill_memory(location, lite0, memory_images)
    settings = Settings(memory=location, api_key=API_KEY, answer_log=log)
    with TestClient(create_app(settings, memory=mem)) as client:
        answer = client.post("/v1/classify?k=3", files={"image": ("query.png", RED, "image/png")}).json()
        again = client.post("/v1/classify?k=3", files={"image": ("query.png", RED, "image/png")}).json()
        assert again["neighbors"] == answer["neighbors"]  # from the cache
        nearest = answer["neighbors"][0]["id"]
        assert client.delete(f"/v1/memory/points/{nearest}", headers=KEY).status_code == 200
        after = client.post("/v1/classify?k=3", files={"image": ("query.png", RED, "image/png")}).json()
        # Asked while the service runs: the memory it holds is read, not opened
        found = CliRunner().invoke(app, ["answers", "--log", str(log), "--forgotten", location])
    [forget] = mem.history()
    mem.close()

    first, cached, later = lines_of(log)
    assert (first["via"], first["client"], first["filename"], first["label"], first["k"], first["rule"]) == (
        "http", "testclient", "query.png", "red", 3, "rank")
    assert first["image_sha256"] == hashlib.sha256(RED).hexdigest()  # the image's content id, never its bytes
    assert [n["id"] for n in first["neighbors"]] == [n["id"] for n in answer["neighbors"]]
    assert (first["cached"], cached["cached"], cached["neighbors"]) == (False, True, first["neighbors"])
    assert first["memory"] == later["memory"] == mem.store.key
    # The memory's state each was made from: no edit journaled yet, then the forget (as `vmem history` lists it)
    assert (first["edit_at"], later["edit_at"]) == (None, forget.at)
    assert nearest not in [n["id"] for n in after["neighbors"]]

    assert found.exit_code == 0, found.output
    decisions = found.stdout.splitlines()  # the two answers before the forget, the cached one too
    assert len(decisions) == 2 and all(f"{nearest} (red, rank 0" in d for d in decisions)
    assert "http testclient\tquery.png (sha256 " in decisions[0] and "[cached]" in decisions[1]
    assert f"forgotten {forget.at[:19].replace('T', ' ')}" in decisions[0]
    as_json = CliRunner().invoke(app, ["answers", "--log", str(log), "--point", nearest, "--json"]).stdout
    assert [json.loads(d)["used"][0]["rank"] for d in as_json.splitlines()] == [0, 0]


class ForgetsWhileAsked:
    """A re-ranker during whose call the nearest neighbour is forgotten, as a forget over HTTP can come while Gemini
    is asked (seconds)."""

    def __init__(self, mem, gemini: GeminiReranker) -> None:
        self.mem, self.gemini = mem, gemini

    def rerank_many(self, requests, store=None):
        self.mem.forget([requests[0].neighbors[0].id])
        return self.gemini.rerank_many(requests, store=store)


def test_a_point_forgotten_while_its_answer_was_re_ranked_names_that_decision(tmp_path, lite0, memory_images):
    location, log = str(tmp_path / "memory"), tmp_path / "answers.jsonl"
    mem = fill_memory(location, lite0, memory_images)
    settings = Settings(memory=location, api_key=API_KEY, answer_log=log)
    with FakeGemini() as fake, TestClient(create_app(settings, memory=mem)) as client:
        mem.reranker = ForgetsWhileAsked(mem, GeminiReranker(api_key="test-key", base_url=fake.url, cache=False))
        answer = client.post("/v1/classify?k=12&rerank=true", headers=KEY,
                             files={"image": ("query.png", RED, "image/png")}).json()
        found = CliRunner().invoke(app, ["answers", "--log", str(log), "--forgotten", location, "--json"])
    [forget] = mem.history()
    mem.close()

    nearest = answer["neighbors"][0]["id"]
    assert answer["reranked"], answer["fallback_reason"]
    assert forget.ids == [nearest]
    # The answer came from the memory as it was before the forget: at and edit_at say so, and the decision is one
    # the forgotten point took part in
    [line] = lines_of(log)
    assert line["at"] < forget.at and line["edit_at"] is None
    [decision] = [json.loads(d) for d in found.stdout.splitlines()]
    assert [(n["id"], n["forgotten_at"]) for n in decision["used"]] == [(nearest, forget.at)]


def test_a_cached_answer_given_while_its_point_was_forgotten_is_one_of_its_decisions(tmp_path, lite0, memory_images):
    location, log = str(tmp_path / "memory"), tmp_path / "answers.jsonl"
    mem = fill_memory(location, lite0, memory_images)
    during = []
    # Told of the forget before the service is (it drops its cached answers then): the forget is journaled, and a
    # repeat of the first question is answered from the cache meanwhile, as another request's can be
    mem.on_forget(lambda ids: during.append(client.post("/v1/classify?k=3", files={"image": ("q.png", RED,
                                                                                              "image/png")}).json()))
    with TestClient(create_app(Settings(memory=location, api_key=API_KEY, answer_log=log), memory=mem)) as client:
        first = client.post("/v1/classify?k=3", files={"image": ("q.png", RED, "image/png")}).json()
        nearest = first["neighbors"][0]["id"]
        mem.forget([nearest])
    [forget] = mem.history()
    mem.close()
    found = CliRunner().invoke(app, ["answers", "--log", str(log), "--forgotten", location, "--json"])

    asked, repeated = lines_of(log)
    assert repeated["cached"] and nearest in [n["id"] for n in repeated["neighbors"]]
    # Asked after the forget's line was written, it repeats an answer worked out before: that one's time and state
    assert repeated["at"] > forget.at and (repeated["cached_at"], repeated["edit_at"]) == (asked["at"], None)
    decisions = [json.loads(d) for d in found.stdout.splitlines()]
    assert [(d["cached"], d["used"][0]["id"]) for d in decisions] == [(False, nearest), (True, nearest)]


def test_concurrent_classifies_log_whole_lines(tmp_path, lite0, memory_images):
    log = tmp_path / "answers.jsonl"
    mem = fill_memory(":memory:", lite0, memory_images)
    settings = Settings(memory=":memory:", api_key=API_KEY, answer_log=log, featurize_threads=4,
                        result_cache_size=0)
    queries = [texture((220, 30, 30), seed=1000 + i) for i in range(24)]
    with TestClient(create_app(settings, memory=mem)) as client, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda q: client.post("/v1/classify", files={"image": ("q.png", q, "image/png")}
                                                    ).status_code, queries))
    mem.close()
    assert codes == [200] * 24
    logged = lines_of(log)  # every line parses: none interleaved with another
    assert sorted(a["image_sha256"] for a in logged) == sorted(hashlib.sha256(q).hexdigest() for q in queries)
    assert all(len(a["neighbors"]) == 12 for a in logged)  # k=50 over 12 points


def test_a_log_that_cannot_be_written_does_not_fail_classify(tmp_path, lite0, memory_images, caplog):
    mem = fill_memory(":memory:", lite0, memory_images)
    nowhere = tmp_path / "no such folder" / "answers.jsonl"
    settings = Settings(memory=":memory:", api_key=API_KEY, answer_log=nowhere)
    with caplog.at_level(logging.WARNING), TestClient(create_app(settings, memory=mem)) as client:
        for seed in (1, 2):
            got = client.post("/v1/classify", files={"image": ("q.png", texture((30, 200, 40), seed), "image/png")})
            assert got.status_code == 200 and got.json()["label"] == "green"
        assert "vmem_answer_log_failures_total 2.0" in client.get("/metrics").text
    mem.close()
    said = [r.getMessage() for r in caplog.records if "answer log" in r.getMessage()]
    assert len(said) == 2  # at the start, and at the first line lost; not once per answer
    assert "cannot be written" in said[0] and "could not be written" in said[1]


def test_the_log_is_rotated_at_its_size_and_read_back_whole(tmp_path, lite0, memory_images):
    mem = fill_memory(":memory:", lite0, memory_images)
    log = tmp_path / "answers.jsonl"
    mem.answer_log = AnswerLog(log, max_mb=0.01, backups=2)  # 10 kB a file: a k=3 answer's line is ~700 bytes
    for seed in (0, 20, 40):
        mem.classify([texture((30, 40, 220), seed + i) for i in range(20)], k=3)
    mem.close()

    files = log_files(log)
    assert [f.name for f in files] == ["answers.jsonl.2", "answers.jsonl.1", "answers.jsonl"]
    assert all(f.stat().st_size <= 0.01 * 2**20 for f in files)  # at most 3 x 10 kB, however many answers
    kept = list(read_answers(log))
    assert 30 < len(kept) < 60 and all(a["via"] == "python" and a["label"] == "blue" for a in kept)
    assert [a["at"] for a in kept] == sorted(a["at"] for a in kept)  # oldest first, across the files


def test_the_cli_logs_its_answers_and_a_torn_last_line_is_skipped_with_a_note(tmp_path, lite0, memory_images):
    location, log = str(tmp_path / "memory"), tmp_path / "answers.jsonl"
    with fill_memory(location, lite0, memory_images):
        pass
    query = tmp_path / "query.png"
    query.write_bytes(RED)
    runner = CliRunner()
    done = runner.invoke(app, ["classify", str(query), "--memory", location, "--k", "3", "--answer-log", str(log)])
    assert done.exit_code == 0, done.output
    [line] = lines_of(log)
    assert (line["via"], line["client"], line["filename"], line["label"]) == ("cli", None, "query.png", "red")
    assert line["image_sha256"] == hashlib.sha256(RED).hexdigest() and line["source"] == str(query)

    with log.open("a") as f:
        f.write('{"at":"2026-12-06T10:00:00+00:00","via":"cli","label":"re')  # a crash mid-write
    used = line["neighbors"][1]["id"]
    found = runner.invoke(app, ["answers", "--log", str(log), "--point", used, "--via", "cli"])
    assert found.exit_code == 0, found.output
    assert found.stdout.count("\n") == 1 and f"{used} (red, rank 1" in found.stdout
    assert "skipped 1 line that is no answer (torn by a crash mid-write)" in found.stderr
    none = runner.invoke(app, ["answers", "--log", str(log), "--point", used, "--via", "http"])
    assert (none.exit_code, none.stdout, none.stderr.splitlines()[-1]) == (0, "", "no logged decisions match")


def test_a_log_deleted_or_moved_aside_while_in_use_is_started_again(tmp_path, lite0, memory_images):
    mem = fill_memory(":memory:", lite0, memory_images)
    log = tmp_path / "answers.jsonl"
    mem.answer_log = AnswerLog(log)
    mem.classify([texture((220, 30, 30), 1)], k=3)
    log.unlink()  # the README's way to drop the trace, or a log rotated by logrotate
    mem.classify([texture((220, 30, 30), 2)], k=3)
    log.rename(tmp_path / "answers.jsonl.old")
    mem.classify([texture((220, 30, 30), 3)], k=3)
    mem.close()
    # Each answer after is in the file at the path vmem answers reads, not in one no longer there
    assert [a["image_sha256"] for a in read_answers(log)] == [hashlib.sha256(texture((220, 30, 30), 3)).hexdigest()]
    assert len(lines_of(tmp_path / "answers.jsonl.old")) == 1


def test_vmem_answers_says_what_is_wrong_with_the_log_it_is_given(tmp_path):
    runner = CliRunner(env={"COLUMNS": "250"})  # no wrapped error boxes
    missing = runner.invoke(app, ["answers", "--log", str(tmp_path / "answers.jsonl")])
    assert missing.exit_code == 2 and "no answer log at" in missing.output
    folder = runner.invoke(app, ["answers", "--log", str(tmp_path)])
    assert folder.exit_code == 2 and "is a folder: give the answer log's file" in folder.output
    assert folder.exception is None or isinstance(folder.exception, SystemExit)  # said, no traceback
    (tmp_path / "answers.jsonl").write_text("")
    # Not "no logged decisions match" for a way of asking that no answer can have
    upper = runner.invoke(app, ["answers", "--log", str(tmp_path / "answers.jsonl"), "--via", "HTTP"])
    assert upper.exit_code == 2 and "'HTTP' is not one of 'http', 'cli', 'python'" in upper.output


@pytest.mark.parametrize("how", ["--forgotten URL", "--qdrant-url URL"])
def test_forgotten_reads_a_memory_that_is_not_a_folder_named_by_its_url(tmp_path, lite0, memory_images, how):
    location, log = f"qdrant-local:{tmp_path / 'memory'}", tmp_path / "answers.jsonl"
    with fill_memory(location, lite0, memory_images) as mem:
        mem.answer_log = AnswerLog(log)
        [answer] = mem.classify([RED], k=3)
        nearest = answer.neighbors[0].id
        mem.forget([nearest])
    option, _ = how.split()
    found = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["answers", "--log", str(log), option, location, "--json"])
    assert found.exit_code == 0, found.output
    [decision] = [json.loads(d) for d in found.stdout.splitlines()]
    assert [n["id"] for n in decision["used"]] == [nearest]


def test_forgotten_and_qdrant_url_together_are_refused_with_what_to_give(tmp_path):
    log = tmp_path / "answers.jsonl"
    log.write_text("")
    both = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["answers", "--log", str(log), "--forgotten", "memory",
                                                          "--qdrant-url", "http://localhost:6333"])
    assert both.exit_code == 2
    assert "give --forgotten http://localhost:6333 (the server's memory) or --forgotten memory, not both" in both.output


def test_answers_from_vectors_embedded_elsewhere_are_logged_too(tmp_path, lite0, memory_images):
    mem = fill_memory(":memory:", lite0, memory_images)
    mem.answer_log = AnswerLog(tmp_path / "answers.jsonl")
    vectors = lite0.embed([texture((220, 30, 30), 1), texture((30, 40, 220), 2)])
    answers = mem.classify_vectors(vectors, sources=["camera-1/0001.jpg", None])
    mem.close()
    logged = lines_of(tmp_path / "answers.jsonl")
    assert [(a["label"], a["source"], a["image_sha256"]) for a in logged] == [
        ("red", "camera-1/0001.jpg", None), ("blue", None, None)]  # no bytes to name the image by
    assert [n["id"] for n in logged[0]["neighbors"]] == [n.id for n in answers[0].neighbors]


def test_vmem_classify_refuses_an_answer_log_it_cannot_write_before_classifying(tmp_path, lite0, memory_images):
    location = str(tmp_path / "memory")
    with fill_memory(location, lite0, memory_images):
        pass
    query = tmp_path / "query.png"
    query.write_bytes(RED)
    nowhere = tmp_path / "no such folder" / "answers.jsonl"
    done = CliRunner(env={"COLUMNS": "250"}).invoke(
        app, ["classify", str(query), "--memory", location, "--answer-log", str(nowhere)])
    # Asked to log, it does not answer unlogged (a service goes on, said and counted: it serves others)
    assert done.exit_code == 2 and f"cannot write {nowhere} (No such file or directory)" in done.output
    assert "red" not in done.stdout


def test_rotated_files_are_found_whatever_the_log_is_named(tmp_path):
    log = tmp_path / "answers[prod].jsonl"  # glob's brackets, taken as they are
    for name, at in ((f"{log.name}.2", "08"), (f"{log.name}.1", "09"), (log.name, "10")):
        (tmp_path / name).write_text(json.dumps({"at": f"2026-12-06T{at}:00:00+00:00", "neighbors": []}) + "\n")
    assert [a["at"][11:13] for a in read_answers(log)] == ["08", "09", "10"]


@pytest.mark.parametrize("where", ["embedded", "server"])
def test_each_logged_answer_names_the_newest_edit_then_whichever_engine_holds_the_memory(tmp_path, lite0, memory_images,
                                                                                         where):
    # The server path runs qdrant-client's own code against its local mode, a folder as a server's collection
    location = str(tmp_path / "memory") if where == "embedded" else f"qdrant-local:{tmp_path / 'memory'}"
    log = tmp_path / "answers.jsonl"
    with fill_memory(location, lite0, memory_images) as mem:
        mem.answer_log = AnswerLog(log)
        mem.classify([RED], k=3)
        mem.forget([mem.classify([RED], k=3)[0].neighbors[0].id])
        mem.classify([RED], k=3)
        mem.relabel(label="green", to="verdant")
        mem.classify([RED], k=3)
        forget, relabel = sorted(mem.history(), key=lambda e: e.at)
    # As `vmem history` lists them: no edit before the first two answers, then the forget, then the relabel
    assert [line["edit_at"] for line in lines_of(log)] == [None, None, forget.at, relabel.at]


def test_the_log_keeps_how_sure_each_answer_was_and_vmem_answers_lists_those_flagged_unsure(tmp_path, lite0,
                                                                                           memory_images):
    location, log = str(tmp_path / "memory"), tmp_path / "answers.jsonl"
    mem = fill_memory(location, lite0, memory_images)
    settings = Settings(memory=location, api_key=API_KEY, answer_log=log)
    with TestClient(create_app(settings, memory=mem)) as client:
        # k=12: every point votes, so red's share is under 1; the same image asked with and without a threshold
        sure = client.post("/v1/classify?k=12", files={"image": ("sure.png", RED, "image/png")}).json()
        flagged = client.post("/v1/classify?k=12&min_confidence=0.99",
                              files={"image": ("flagged.png", RED, "image/png")}).json()
    mem.close()
    assert flagged["unsure"] and not sure["unsure"]
    query = tmp_path / "query.png"
    query.write_bytes(RED)
    cli = CliRunner().invoke(app, ["classify", str(query), "--memory", location, "--k", "12",
                                   "--min-confidence", "0.99", "--answer-log", str(log)])
    assert cli.exit_code == 0, cli.output
    with log.open("a") as f:  # a line logged before answers said how sure: it still reads, never as unsure
        old = {k: v for k, v in lines_of(log)[0].items() if k not in ("confidence", "min_confidence", "unsure")}
        f.write(json.dumps({**old, "filename": "old.png"}) + "\n")

    first, second, by_cli, _ = lines_of(log)
    assert (first["confidence"], first["min_confidence"], first["unsure"]) == (sure["confidence"], None, False)
    assert (second["confidence"], second["min_confidence"], second["unsure"]) == (flagged["confidence"], 0.99, True)
    assert (by_cli["via"], by_cli["min_confidence"], by_cli["unsure"]) == ("cli", 0.99, True)

    runner = CliRunner()
    every = runner.invoke(app, ["answers", "--log", str(log)])
    assert every.exit_code == 0, every.output
    assert [line.split("\t")[2].split(" ")[0] for line in every.stdout.splitlines()] == [
        "sure.png", "flagged.png", "query.png", "old.png"]
    unsure = runner.invoke(app, ["answers", "--log", str(log), "--unsure"])
    assert unsure.exit_code == 0, unsure.output
    listed = unsure.stdout.splitlines()
    assert [line.split("\t")[2].split(" ")[0] for line in listed] == ["flagged.png", "query.png"]
    assert f"-> red [unsure: confidence {flagged['confidence']:.3f} under 0.99]" in listed[0]
