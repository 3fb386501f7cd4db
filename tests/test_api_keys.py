"""Named API keys (VMEM_API_KEYS_FILE) over a real uvicorn on loopback: who made each edit, rotation without a
restart, a key that may only re-rank, and a keys file broken at start or while serving."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from server import Settings, create_app
from tests._server_fixtures import API_KEY, COLORS, fill_memory, live_server, texture
from tests.conftest import REPO
from vmem.cli import app
from vmem.cli.serve import _startup_summary

ALICE, BOB, KIOSK = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef", "kiosk-key-0123456789abcdef"


def line(name: str, key: str, may: str = "") -> str:
    return f"{name} {hashlib.sha256(key.encode()).hexdigest()} {may}".rstrip() + "\n"


@pytest.fixture
def serve(tmp_path, lite0, memory_images):
    """with serve(**settings) as url: a real service over a fresh copy of the test memory (its folder
    `tmp_path / "memory"`), the memory closed at the block's end."""

    @contextmanager
    def served(**settings) -> Iterator[str]:
        mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images)
        try:
            with live_server(create_app(Settings(memory=str(tmp_path / "memory"), **settings), memory=mem)) as url:
                yield url
        finally:
            mem.close()

    return served


def add(http: httpx.Client, key: str, label: str = "yellow", seed: int = 1) -> httpx.Response:
    return http.post("/v1/memory", headers={"X-API-Key": key}, data={"label": label},
                     files={"images": (f"{label}{seed}.png", texture((240, 230, 20), seed))})


def test_each_edit_is_journaled_with_the_name_of_the_key_that_made_it(tmp_path, serve):
    keys = tmp_path / "keys"
    keys.write_text("# curators\n" + line("alice", ALICE) + line("bob", BOB))
    with serve(api_key=API_KEY, api_keys_file=keys) as url, httpx.Client(base_url=url, timeout=30) as http:
        [added] = add(http, ALICE).json()["added"]
        assert http.delete(f"/v1/memory/points/{added['id']}", headers={"X-API-Key": BOB}).status_code == 200
        assert add(http, API_KEY, seed=2).status_code == 201  # VMEM_API_KEY works as before, named "default"
        history = http.get("/v1/memory/history").json()["entries"]
        bobs = http.get("/v1/memory/history", params={"by": "bob"}).json()["entries"]  # what did bob change?
    assert [(e["op"], e["via"], e["by"]) for e in history] == [
        ("add", "http", "default"), ("forget", "http", "bob"), ("add", "http", "alice")]
    assert [(e["op"], e["ids"]) for e in bobs] == [("forget", [added["id"]])]

    runner = CliRunner(env={"COLUMNS": "250"})
    shown = runner.invoke(app, ["history", "--memory", str(tmp_path / "memory")]).output.splitlines()
    assert [x.split("\t")[-1].split(" on ")[0] for x in shown[:3]] == [
        "via http (key default)", "via http (key bob)", "via http (key alice)"]
    alices = runner.invoke(app, ["history", "--memory", str(tmp_path / "memory"), "--by", "alice"])
    assert [x.split("\t")[1] for x in alices.output.splitlines()] == ["add"]
    nobodys = runner.invoke(app, ["history", "--memory", str(tmp_path / "memory"), "--by", "carol"])
    assert (nobodys.exit_code, nobodys.output) == (0, "no edits recorded that match --by carol\n")


def test_a_key_is_rotated_without_a_restart_and_a_revoked_key_is_refused(tmp_path, serve):
    keys = tmp_path / "keys"
    keys.write_text(line("ci", ALICE))
    with serve(api_keys_file=keys) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert add(http, ALICE).status_code == 201
        keys.write_text(line("ci", ALICE) + line("ci-2026", BOB))  # the new key beside the old
        assert add(http, BOB, seed=2).status_code == 201
        assert add(http, ALICE, seed=3).status_code == 201  # clients not moved yet still work
        keys.write_text(line("ci-2026", BOB))  # every client moved: the old one removed
        refused = add(http, ALICE, seed=4)
        assert (refused.status_code, refused.json()["type"]) == (403, "urn:vmem:problem:invalid-api-key")
        assert add(http, BOB, seed=5).status_code == 201
        assert [e["by"] for e in http.get("/v1/memory/history").json()["entries"]] == [
            "ci-2026", "ci", "ci-2026", "ci"]


def test_a_key_that_may_only_rerank_is_refused_edits_and_named_in_the_answer_log(tmp_path, serve):
    keys, log = tmp_path / "keys", tmp_path / "answers.jsonl"
    keys.write_text(line("kiosk", KIOSK, "rerank") + line("alice", ALICE))
    with serve(api_keys_file=keys, answer_log=log) as url, httpx.Client(base_url=url, timeout=30) as http:
        refused = add(http, KIOSK)
        assert (refused.status_code, refused.json()["type"]) == (403, "urn:vmem:problem:key-not-allowed")
        assert "the API key kiosk may only rerank" in refused.json()["detail"]
        image = {"image": ("q.png", texture(COLORS["red"], 999))}
        reranked = http.post("/v1/classify?rerank=true", headers={"X-API-Key": KIOSK}, files=image)
        assert reranked.status_code == 200  # no Gemini key here: the vote answers, and says why
        assert http.post("/v1/classify", files=image).status_code == 200  # a plain classify needs no key
    assert [(a["via"], a["by"]) for a in map(json.loads, log.read_text().splitlines())] == [
        ("http", "kiosk"), ("http", None)]
    kiosks = CliRunner().invoke(app, ["answers", "--log", str(log), "--by", "kiosk", "--json"])
    assert [(a["by"], a["reranked"]) for a in map(json.loads, kiosks.output.splitlines())] == [("kiosk", False)]


def test_a_keys_file_broken_while_serving_keeps_the_keys_read_before_and_says_so(tmp_path, serve, caplog):
    keys = tmp_path / "keys"
    keys.write_text(line("alice", ALICE))
    with serve(api_keys_file=keys) as url, httpx.Client(base_url=url, timeout=30) as http:
        keys.write_text(line("alice", ALICE) + f"bob {BOB}\n")  # a key pasted where its hash belongs
        with caplog.at_level(logging.ERROR, logger="server.keys"):
            assert add(http, ALICE).status_code == 201
        assert "vmem_api_keys_file_valid 0.0" in http.get("/metrics").text
        assert add(http, BOB, seed=2).status_code == 403
        keys.write_text(line("alice", ALICE) + line("bob", BOB))  # mended
        assert add(http, BOB, seed=3).status_code == 201
        assert "vmem_api_keys_file_valid 1.0" in http.get("/metrics").text
    broken, mended = [r.getMessage() for r in caplog.records if r.name == "server.keys"]  # each said once
    assert f"{keys}, line 2: the second field is not a sha256" in broken
    assert "the 1 keys read from it before are still taken" in broken
    assert mended == f"API keys read again from {keys}: alice, bob"
    assert BOB not in caplog.text  # a key is never logged, even one written where it should not be


def test_vmem_serve_says_at_start_which_keys_edits_take(tmp_path, lite0, memory_images):
    keys = tmp_path / "keys"
    keys.write_text(line("alice", ALICE) + line("kiosk", KIOSK, "rerank"))
    with fill_memory(str(tmp_path / "memory"), lite0, memory_images) as mem:
        summary = _startup_summary(mem, Settings(memory=str(tmp_path / "memory"), api_keys_file=keys))
    assert summary.endswith(f"; edits need an API key: one of {keys} (alice, kiosk [re-ranks only])")


@pytest.mark.parametrize(("content", "says"), [
    (line("alice", ALICE) + "bob\n", "line 2: 1 field where a name, the key's sha256"),
    (line("alice", ALICE) + line("alice", BOB), "line 2: the name alice is taken by an earlier line"),
    (line("default", ALICE), "line 1: the name default is taken (VMEM_API_KEY's)"),
    (line("alice", ALICE, "delete"), "line 1: delete: a key may edit or rerank"),
    (f"alice {ALICE}\n", "line 1: the second field is not a sha256"),
    ("# nobody yet\n", "holds no key, and VMEM_API_KEY is unset"),
])
def test_a_malformed_keys_file_is_refused_at_start_with_its_line(tmp_path, content, says):
    keys = tmp_path / "keys"
    keys.write_text(content)
    with pytest.raises(ValidationError, match=re.escape(says)) as refused:
        Settings(memory=str(tmp_path / "memory"), api_keys_file=keys)
    assert ALICE not in str(refused.value)


@pytest.mark.parametrize("planted", ["a FIFO", "a file far larger than a keys file"])
def test_a_keys_file_that_is_no_file_of_keys_is_refused_at_start_at_once(tmp_path, planted):
    # A FIFO had been waited on for a writer forever (vmem serve silent), and a link to /dev/zero read until memory
    # ran out; a few MiB stands for the latter here
    keys = tmp_path / "keys"
    if planted == "a FIFO":
        os.mkfifo(keys)
    else:
        keys.write_text(line("alice", ALICE) + "# padding\n" * 300_000)
    refused = subprocess.run([sys.executable, "-m", "vmem", "serve", "--memory", str(tmp_path / "memory")], cwd=REPO,
                             env={**os.environ, "VMEM_API_KEYS_FILE": str(keys), "COLUMNS": "250"},
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused.stderr
    said = "not a plain file" if planted == "a FIFO" else "larger than 1 MiB, which no keys file is"
    assert f"VMEM_API_KEYS_FILE: {keys}: {said}" in refused.stderr


def test_a_keys_file_any_user_may_write_is_warned_of_at_start(tmp_path, serve, caplog):
    # Its hashes are no secret, but any user who writes a line of their own gets a key, and edits under any name
    keys = tmp_path / "keys"
    keys.write_text(line("alice", ALICE))
    keys.chmod(0o666)
    with caplog.at_level(logging.WARNING, logger="server.keys"), serve(api_keys_file=keys):
        pass
    assert (f"the API keys file {keys} may be written by any user of this machine (mode -rw-rw-rw-): whoever "
            f"writes it can add a key that edits the memory, under any name; chmod o-w {keys}") in caplog.text
    caplog.clear()
    keys.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="server.keys"), serve(api_keys_file=keys):
        pass
    assert "may be written" not in caplog.text


def test_vmem_key_makes_a_key_whose_hash_only_is_written_and_revokes_it(tmp_path):
    keys, runner = tmp_path / "keys", CliRunner(env={"COLUMNS": "250"})  # its error on one line
    made = runner.invoke(app, ["key", "kiosk", "--file", str(keys), "--may", "rerank"])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert keys.read_text() == line("kiosk", key, "rerank") and key not in keys.read_text()
    again = runner.invoke(app, ["key", "kiosk"], env={"VMEM_API_KEYS_FILE": str(keys)})
    assert again.exit_code == 2 and "holds a key named kiosk already" in again.output
    assert runner.invoke(app, ["key", "kiosk", "--file", str(keys), "--revoke"]).exit_code == 0
    assert keys.read_text() == ""


def test_a_keys_file_dated_in_the_future_is_read_again_only_until_it_settles(tmp_path, monkeypatch):
    # Clock skew, or `cp -p` from a machine whose clock is ahead: a file changed "in the future" was never taken
    # as settled, and was read again on every request with a key
    from server import keys as keys_module

    keys = tmp_path / "keys"
    keys.write_text(line("alice", ALICE))
    in_an_hour = time.time() + 3600
    os.utime(keys, (in_an_hour, in_an_hour))
    monkeypatch.setattr(keys_module, "_SETTLED_S", 0.05)  # settles in a twentieth of a second, not two
    reads = []
    real_read = keys_module.keys_file_text
    monkeypatch.setattr(keys_module, "keys_file_text", lambda path: reads.append(path) or real_read(path))
    ring = keys_module.KeyRing(path=keys)
    time.sleep(0.1)
    assert all(ring.find(ALICE).name == "alice" for _ in range(100))
    assert len(reads) <= 3
    keys.write_text(line("alice", ALICE) + line("bob", BOB))  # a change is still seen at once
    assert ring.find(BOB).name == "bob"


def test_a_keys_file_read_while_it_is_written_in_place_keeps_the_keys_read_before(tmp_path):
    from server.keys import KeyRing

    keys = tmp_path / "keys"
    keys.write_text(line("kiosk", KIOSK, "rerank") + line("alice", ALICE))
    ring = KeyRing(path=keys)
    with open(keys, "w", encoding="utf-8") as editor:  # rewritten in place: truncated, then written a piece at a time
        editor.flush()
        assert ring.find(ALICE).name == "alice"  # read empty: no client refused meanwhile
        editor.write(line("kiosk", KIOSK).rstrip("\n"))  # cut before what kiosk may do
        editor.flush()
        assert ring.find(KIOSK).scopes == {"rerank"}  # not both, as a line with no scopes says
        editor.write(" rerank\n" + line("bob", BOB))
    # Written whole: read at once. (A read that ends at a line's end is whole as far as it can tell: a key whose
    # line is still to come is refused until it is written, as a key added a moment later would be.)
    assert ring.find(KIOSK).scopes == {"rerank"} and ring.find(BOB).name == "bob" and ring.find(ALICE) is None


def test_a_keys_file_whose_last_line_has_no_newline_is_read_once_it_has_settled(tmp_path):
    from server.keys import KeyRing

    keys = tmp_path / "keys"
    keys.write_text(line("alice", ALICE))
    ring = KeyRing(path=keys)
    keys.write_text(line("alice", ALICE) + line("bob", BOB).rstrip("\n"))  # as an editor may save it
    a_minute_ago = time.time() - 60
    os.utime(keys, (a_minute_ago, a_minute_ago))
    assert ring.find(BOB).name == "bob"


def test_a_keys_file_read_at_start_while_it_is_written_waits_for_it_whole(tmp_path, monkeypatch):
    # `vmem serve` started while a deploy writes the keys file: its last line cut inside what kiosk may do ("rer")
    # had stopped the service, saying "rer" is no scope (the re-read while serving waits for the file whole; the
    # first read had not)
    from server import keys as keys_module

    keys = tmp_path / "keys"
    keys.write_text(line("alice", ALICE) + line("kiosk", KIOSK, "rerank")[:-4])
    real_read = keys_module.keys_file_text

    def read_then_written_on(path):
        text = real_read(path)
        with open(path, "a", encoding="utf-8") as editor:  # the writer goes on as the service reads
            editor.write("" if text.endswith("\n") else "ank\n")
        return text

    monkeypatch.setattr(keys_module, "keys_file_text", read_then_written_on)
    ring = keys_module.KeyRing(path=keys)
    assert ring.find(KIOSK).scopes == {"rerank"} and ring.find(ALICE).name == "alice"


def test_a_keys_file_that_never_stops_changing_at_start_is_refused_in_words(tmp_path, monkeypatch):
    from server import keys as keys_module

    keys = tmp_path / "keys"
    keys.write_text(line("alice", ALICE))
    monkeypatch.setattr(keys_module, "_SETTLED_S", 0.05)  # gives up in a tenth of a second, not four
    real_read = keys_module.keys_file_text

    def read_then_changed(path):
        text = real_read(path)
        with open(path, "a", encoding="utf-8") as editor:
            editor.write("# still writing\n")
        return text

    monkeypatch.setattr(keys_module, "keys_file_text", read_then_changed)
    with pytest.raises(keys_module.KeysFileError, match=r"still being written.*start the service again"):
        keys_module.KeyRing(path=keys)


def test_vmem_key_refuses_the_name_default_which_is_vmem_api_keys(tmp_path):
    # A line named default is refused by the service (at start, or kept out while serving): made, it had been
    # printed as a key to hand out while the file it went into stopped the service's next start
    keys, runner = tmp_path / "keys", CliRunner(env={"COLUMNS": "250"})
    refused = runner.invoke(app, ["key", "default", "--file", str(keys)])
    assert refused.exit_code == 2 and "the name default is taken (VMEM_API_KEY's)" in refused.output
    assert not keys.exists()


def test_vmem_key_writes_through_a_link_to_the_keys_file_and_keeps_its_mode(tmp_path):
    # The service reads the keys file through a link (one a configuration tool keeps, say): vmem key had put a
    # file of its own in the link's place, the file it led to left without the new key, and its mode reset
    kept = tmp_path / "config" / "vmem-keys"
    kept.parent.mkdir()
    kept.write_text(line("alice", ALICE))
    kept.chmod(0o640)
    (tmp_path / "keys").symlink_to(kept)
    made = CliRunner().invoke(app, ["key", "bob", "--file", str(tmp_path / "keys")])
    assert made.exit_code == 0, made.output
    assert (tmp_path / "keys").is_symlink()
    assert kept.read_text() == line("alice", ALICE) + line("bob", made.stdout.strip())
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    assert CliRunner().invoke(app, ["key", "alice", "--file", str(tmp_path / "keys"), "--revoke"]).exit_code == 0
    assert (tmp_path / "keys").is_symlink() and "alice" not in kept.read_text()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640


def test_vmem_key_into_a_folder_that_is_not_there_says_so_and_prints_no_key(tmp_path):
    keys = tmp_path / "no-such-folder" / "keys"
    refused = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["key", "alice", "--file", str(keys)])
    assert refused.exit_code == 2, refused.output
    assert f"{keys} cannot be written (No such file or directory)" in refused.output
    assert refused.stdout == ""  # no key printed: none was written
