"""`POST /v1/memory/import`: the converse of `GET /v1/memory/export` over HTTP, `vmem import`'s Python API behind it.

The .npz file is the request's body (`application/octet-stream`), written to the server's temporary folder as it
arrives and deleted afterwards; the options are `vmem import`'s. A memory exported and imported into another
answers as the first; what cannot be imported is a problem answer, and nothing is written.
"""

from __future__ import annotations

import asyncio
import errno
import io
import itertools
import json
import pickle
import tempfile

import numpy as np
import pytest

from retrieval import FeaturizerSpec, Preprocessing, open_store
from tests._server_fixtures import API_KEY, COLORS, services, texture
from tests.conftest import random_unit_vectors
from vmem import VisualMemory

AUTH = {"X-API-Key": API_KEY}
NPZ = {**AUTH, "Content-Type": "application/octet-stream"}
QUERY = {"image": ("query.png", texture(COLORS["green"], seed=999), "image/png")}


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    """The server's temporary folder, where an upload waits while it is imported."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def serve(tmp_path, lite0, memory_images):
    """serve(filled=True, **settings) -> a TestClient over a memory of the 12 test images (or an empty one)."""
    made = itertools.count()
    with services(lite0, memory_images) as open_service:
        yield lambda filled=True, **settings: open_service(
            str(tmp_path / f"memory{next(made)}"), filled, **{"thumbnail_dir": tmp_path / "thumbs", **settings})


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def assert_problem(resp, status: int, kind: str, says: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["type"] == f"urn:vmem:problem:{kind}", body
    if says is not None:
        assert says in body["detail"], body["detail"]
    return body


def test_an_export_imported_over_http_into_another_memory_answers_as_the_memory_did(serve, tmp):
    source, other = serve(), serve(filled=False)
    exported = source.get("/v1/memory/export", headers=AUTH)
    assert exported.status_code == 200
    resp = other.post("/v1/memory/import", params={"filename": "colours.npz"}, content=exported.content,
                      headers=NPZ)
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert (report["file"], report["format"], report["rows"], report["added"]) == ("colours.npz", "vmem-points", 12, 12)
    assert report["added_per_label"] == {"red": 4, "green": 4, "blue": 4} and report["memory_points"] == 12
    assert report["summary"].startswith("imported 12 points from colours.npz (a vmem export of efficientnet-lite0")
    # Its sources, files of this machine, make no folder of it shown: a client's file may name any
    assert report["outside_roots"] == 12 and "an import over HTTP records none; on the server's machine, vmem " \
        "import --source-root DIR (or --trust-sources, for a file of your own) records them" in report["summary"]
    point = other.get("/v1/memory/points", params={"limit": 1}).json()["points"][0]
    assert other.get(f"/v1/memory/points/{point['id']}/thumbnail").status_code == 404
    # The same points, the same neighbours, the same answer
    before, after = (c.post("/v1/classify", files=QUERY).json() for c in (source, other))
    assert after["label"] == before["label"] == "green"
    assert [n["id"] for n in after["neighbors"]] == [n["id"] for n in before["neighbors"]]
    # Journaled as the CLI's import is, through the service; counted as adds
    [add] = other.get("/v1/memory/history", params={"op": "add"}).json()["entries"]
    assert (add["via"], add["points"], add["selector"]) == ("http", 12, {"import": "colours.npz"})
    assert add["detail"]["import"]["sha256"] == report["sha256"]
    assert 'vmem_memory_edits_total{op="add"} 12.0' in other.get("/metrics").text
    # Sent again: every point is there already
    again = other.post("/v1/memory/import", content=exported.content, headers=NPZ).json()
    assert (again["added"], again["already_in_memory"], again["memory_points"]) == (0, 12, 12)
    assert list(tmp.iterdir()) == []  # each upload deleted once imported


def test_vectors_made_elsewhere_need_the_encoder_named(serve, memory_images, tmp):
    client = serve(filled=False)
    feats = npz(vectors=memory_images.vectors, labels=np.array(memory_images.labels))
    refused = assert_problem(client.post("/v1/memory/import", content=feats, headers=NPZ), 422, "bad-points-file")
    assert refused["detail"].startswith(  # the file by the name it was sent under, the option as HTTP takes it
        "points.npz holds vectors and labels but does not say which encoder made them: name it (featurizer=NAME, "
        "e.g. dinov2-small or dinov2:/path/to/model): the memory embeds its queries"), refused["detail"]
    resp = client.post("/v1/memory/import", params={"featurizer": "efficientnet-lite0", "label": "red"},
                       content=feats, headers=NPZ)
    assert resp.status_code == 200, resp.text
    assert (resp.json()["format"], resp.json()["chosen"], resp.json()["added_per_label"]) == ("vectors", 4, {"red": 4})
    assert client.post("/v1/classify", files={"image": ("q.png", texture(COLORS["red"], 5), "image/png")}
                       ).json()["label"] == "red"
    assert list(tmp.iterdir()) == []


def test_a_dry_run_answers_what_would_be_imported_and_writes_nothing(serve, memory_images, tmp):
    client = serve()
    labels = ["red"] * 4 + ["green"] * 4 + ["purple"] * 4  # the blue images, labelled otherwise
    feats = npz(vectors=memory_images.vectors, labels=np.array(labels),
                sources=np.array([str(p) for p in memory_images.paths]))
    resp = client.post("/v1/memory/import", params={"featurizer": "efficientnet-lite0", "dry_run": True,
                                                    "relabel": True}, content=feats, headers=NPZ)
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert (report["dry_run"], report["added"], report["already_in_memory"], report["other_labels"]) == (
        True, 0, 8, 4)
    assert report["other_label"][0]["stored"] == "blue" and report["other_label"][0]["file"] == "purple"
    assert report["relabelled"] and report["memory_points"] == 12  # would be relabelled
    assert client.get("/v1/memory/stats").json()["per_label"] == {"red": 4, "green": 4, "blue": 4}
    assert client.get("/v1/memory/history", params={"op": "relabel"}).json()["entries"] == []
    assert list(tmp.iterdir()) == []


def test_rows_that_cannot_be_points_are_skipped_and_counted(serve, memory_images):
    client = serve(filled=False)
    vectors = memory_images.vectors.copy()
    vectors[2] = np.nan
    vectors[5] = 0
    feats = npz(vectors=vectors, labels=np.array(memory_images.labels))
    report = client.post("/v1/memory/import", params={"featurizer": "efficientnet-lite0"}, content=feats,
                         headers=NPZ).json()
    assert report["added"] == 10 and report["skipped"] == {
        "NaN or infinite values": 1, "a zero vector (no direction: cosine similarity is undefined)": 1}
    assert report["skipped_rows"]["NaN or infinite values"] == [2]


@pytest.mark.parametrize(("body", "says"), [
    (b"not a zip at all", "bad.npz is not an .npz file"),
    (b"", "bad.npz is not an .npz file"),
    (npz(vectors=np.ones((2, 4), np.float32)), "bad.npz holds no 'labels' array"),
    (npz(vectors=np.ones((2, 4), np.float32), labels=np.array([object(), object()], dtype=object)),
     "its array 'labels' holds Python objects"),
])
def test_a_file_that_cannot_be_imported_is_a_422_saying_why(serve, tmp, body, says):
    client = serve(filled=False)
    body = assert_problem(client.post("/v1/memory/import", params={"filename": "bad.npz",
                                                                   "featurizer": "efficientnet-lite0"},
                                      content=body, headers=NPZ), 422, "bad-points-file", says)
    assert str(tmp) not in body["detail"]  # the server's own paths are its business
    assert list(tmp.iterdir()) == []


def flipped(body: bytes, member: str, at: float) -> bytes:
    """An .npz whose `member` has one bit flipped `at` this fraction of its data: its CRC fails once it is read."""
    import struct
    import zipfile

    entry = zipfile.ZipFile(io.BytesIO(body)).getinfo(member)
    name_len, extra_len = struct.unpack("<HH", body[entry.header_offset + 26: entry.header_offset + 30])
    at_byte = entry.header_offset + 30 + name_len + extra_len + int(entry.compress_size * at)
    return body[:at_byte] + bytes([body[at_byte] ^ 1]) + body[at_byte + 1:]


def test_a_file_found_corrupt_part_way_says_what_was_added_before(serve, tmp):
    # The vectors are read a batch at a time: a bit flipped (the CRC fails) is found once the batches before
    # it were added. The 422 had said only "the file is corrupt", which reads as nothing written.
    client = serve(filled=False)
    vectors = random_unit_vectors(1500, 1280, seed=4)
    body = flipped(npz(vectors=vectors, labels=np.array(["red"] * 1500)), "vectors.npy", at=0.9)
    problem = assert_problem(client.post("/v1/memory/import", params={"filename": "flipped.npz",
                                                                      "featurizer": "efficientnet-lite0"},
                                         content=body, headers=NPZ), 422, "bad-points-file", "the file is corrupt")
    assert "1,024 points read before it were added" in problem["detail"], problem["detail"]
    assert client.get("/v1/memory/stats").json()["points"] == 1024
    [add] = client.get("/v1/memory/history", params={"op": "add"}).json()["entries"]
    assert add["points"] == 1024 and add["detail"]["import"]["interrupted"]
    assert list(tmp.iterdir()) == []


def test_vectors_of_another_encoder_are_a_409_naming_both(serve, tmp, tmp_path):
    client = serve()
    spec = FeaturizerSpec(name="dummy", dim=8, preprocessing=Preprocessing(resize=32, crop=32))
    with VisualMemory(open_store(tmp_path / "elsewhere", spec), reranker=None) as mem:
        mem.store.add(random_unit_vectors(5, 8), ["cat"] * 5, [f"/data/cats/{i}.jpg" for i in range(5)])
        mem.export_points(tmp_path / "dummy.npz")
    resp = client.post("/v1/memory/import", params={"filename": "dummy.npz"},
                       content=(tmp_path / "dummy.npz").read_bytes(), headers=NPZ)
    refused = assert_problem(resp, 409, "featurizer-mismatch")
    assert refused["detail"].startswith("dummy.npz holds vectors of dummy (8-d); this memory holds "
                                        "efficientnet-lite0 features"), refused["detail"]
    assert client.get("/v1/memory/stats").json()["points"] == 12
    assert list(tmp.iterdir()) == []


def test_an_import_needs_the_key_and_the_file_as_the_body(serve, tmp):
    client = serve()
    no_key = {"Content-Type": "application/octet-stream"}
    assert_problem(client.post("/v1/memory/import", content=b"PK", headers=no_key), 401, "missing-api-key")
    assert_problem(client.post("/v1/memory/import", files={"file": ("points.npz", b"PK")}, headers=AUTH), 415,
                   "unsupported-media-type", "send application/octet-stream")
    assert_problem(client.post("/v1/memory/import", params={"filename": "../points.npz"}, content=b"PK",
                               headers=NPZ), 422, "invalid-parameters", "a file's name, not a path")
    assert list(tmp.iterdir()) == []


def post_in_chunks(app, chunks, headers: dict[str, str]) -> tuple[int, dict, int]:
    """POST /v1/memory/import with a body sent chunk by chunk, without a length (chunked): (status, the answer,
    how many chunks the server read)."""
    read, sent = 0, []
    pending = iter(chunks)

    async def receive():
        nonlocal read
        chunk = next(pending, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        read += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/memory/import", "raw_path": b"/v1/memory/import", "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in {**headers, "host": "testserver"}.items()],
             "client": ("127.0.0.1", 1234), "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")), read


def test_a_file_over_the_limit_is_a_413_saying_how_to_import_it_before_it_is_read(serve, tmp):
    client = serve(max_import_bytes=1 << 20)
    # Its length declared: refused before a byte is read
    body = assert_problem(client.post("/v1/memory/import", content=b"\0" * (2 << 20), headers=NPZ), 413,
                          "upload-too-large", "over the limit of 1,048,576 bytes (1.0 MiB) for an import over HTTP")
    assert "VMEM_MAX_IMPORT_BYTES" in body["detail"] and "vmem import FILE" in body["detail"]
    # Sent without a length: cut off once past the limit, the rest never read
    status, answer, read = post_in_chunks(client.app, (b"\0" * (64 << 10) for _ in range(1600)), NPZ)  # 100 MiB
    assert status == 413 and "VMEM_MAX_IMPORT_BYTES" in answer["detail"] and read == 17
    assert list(tmp.iterdir()) == []
    # Other routes keep their own limit (VMEM_MAX_UPLOAD_BYTES), an import's file its own
    assert serve(max_upload_bytes=4096).post("/v1/memory/import", content=b"\0" * 8192, headers=NPZ).status_code == 422


# A full disk, the user's quota, a file-size limit (`ulimit -f`, a file system's largest file): each a 507 alike
@pytest.mark.parametrize("no_room", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG], ids=errno.errorcode.get)
def test_a_file_the_temporary_folder_has_no_room_for_is_a_507(serve, tmp, monkeypatch, no_room):
    import os
    import shutil
    from collections import namedtuple

    from server.routes import memory as routes

    client = serve()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 20, 10 << 20, 1000))
    assert_problem(client.post("/v1/memory/import", content=b"\0" * 5000, headers=NPZ), 507, "import-disk-full",
                   "5,000 bytes sent, 1,000 free")
    monkeypatch.undo()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))

    def disk_full(f, data):
        raise OSError(no_room, os.strerror(no_room))

    monkeypatch.setattr(routes, "_write", disk_full)
    assert_problem(client.post("/v1/memory/import", content=b"\0" * 5000, headers=NPZ), 507, "import-disk-full",
                   "give the server more room (TMPDIR), or import the file with `vmem import FILE` on the server's")
    assert list(tmp.iterdir()) == []


def test_an_object_array_is_never_unpickled(serve, tmp, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    client = serve(filled=False)
    body = npz(vectors=np.ones((1, 4), np.float32), labels=np.array([Payload()], dtype=object))
    assert pickle.dumps(Payload())  # it would run, unpickled
    assert_problem(client.post("/v1/memory/import", params={"featurizer": "efficientnet-lite0"}, content=body,
                               headers=NPZ), 422, "bad-points-file", "unpickling runs code")
    assert not marker.exists()
