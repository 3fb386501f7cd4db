"""Images added over HTTP kept as sent (VMEM_KEEP_UPLOADS), so that a memory curated through the service moves to
another encoder with its uploads, and Gemini sees them when re-ranking: real Tiny-ImageNet JPEGs through a
TestClient, a Lite0 memory re-embedded with Lite1, every forget deleting the kept image with its point, and re-ranks
through the real SDK against the fake Gemini."""

from __future__ import annotations

import base64
import io
import shutil
from collections import namedtuple
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from reranker import GeminiReranker
from reranker.testing import FakeGemini
from retrieval import load_featurizer
from retrieval.store import THUMBNAILS_DIR, UPLOADS_DIR, open_read_only, upload_file
from server import create_app
from server.settings import Settings
from tests._lite0_once import lite0_loaded_once  # noqa: F401 - autouse
from tests._server_fixtures import API_KEY, fill_memory
from vmem import VisualMemory

pytestmark = pytest.mark.realdata
AUTH = {"X-API-Key": API_KEY}
GOLDFISH, STORK = "n01443537", "n02002724"


@pytest.fixture
def photos(tiny_imagenet) -> dict[str, list[bytes]]:
    """Three real JPEGs of each of two classes, as a client would send them."""
    return {label: [p.read_bytes() for p in sorted((tiny_imagenet / "val" / label).glob("*.JPEG"))[:3]]
            for label in (GOLDFISH, STORK)}


@pytest.fixture(scope="module")
def lite1():
    return load_featurizer("efficientnet-lite1", device="cpu")


@pytest.fixture
def service(tmp_path, lite0, memory_images):
    """service(keep_uploads=...) -> (a TestClient over a fresh embedded memory, the memory's folder).
    `stop(client)` stops the service and closes its memory, as a host would before `vmem copy`."""
    opened: dict[int, tuple[TestClient, VisualMemory]] = {}

    def make(**overrides) -> tuple[TestClient, Path]:
        folder = tmp_path / f"memory{len(opened)}"
        mem = fill_memory(str(folder), lite0, memory_images)
        client = TestClient(create_app(Settings(memory=str(folder), api_key=API_KEY, **overrides), memory=mem))
        client.__enter__()
        opened[id(client)] = (client, mem)
        return client, folder

    def stop(client: TestClient) -> None:
        client, mem = opened.pop(id(client))
        client.__exit__(None, None, None)
        mem.close()

    make.stop = stop  # type: ignore[attr-defined]
    yield make
    for client, mem in opened.values():
        client.__exit__(None, None, None)
        mem.close()


def add(client: TestClient, label: str, images: list[bytes], names: list[str] | None = None) -> list[str]:
    names = names or [f"photo{i}.jpg" for i in range(len(images))]
    resp = client.post("/v1/memory", headers=AUTH, data={"label": label},
                       files=[("images", (n, data, "image/jpeg")) for n, data in zip(names, images, strict=True)])
    assert resp.status_code == 201, resp.text
    return [p["id"] for p in resp.json()["added"]]


def test_uploads_kept_as_sent_move_to_another_encoder_with_the_memory(service, photos, tmp_path, lite1):
    client, folder = service(keep_uploads=True)
    fish, storks = add(client, GOLDFISH, photos[GOLDFISH]), add(client, STORK, photos[STORK])
    assert upload_file(folder, fish[0]).read_bytes() == photos[GOLDFISH][0]  # the bytes as sent, by point id
    sent = sum(map(len, photos[GOLDFISH] + photos[STORK]))
    assert client.app.state.service.memory.disk_usage()[UPLOADS_DIR] >= sent  # vmem info's disk counts them
    service.stop(client)  # the service stopped, the memory is moved to Lite1 on the host
    with VisualMemory.open(folder, reranker=None) as mem:
        new, done = mem.reembed_to(tmp_path / "lite1", lite1)
    with new:
        assert [s.source for s in done.skipped] == []  # no upload left out
        assert done.embedded == 12 + 6
        vector = new.store.retrieve([fish[1]], with_vectors=True)[0].vector
        # embedded from the bytes as sent (stored as float16)
        np.testing.assert_allclose(vector, lite1.embed([photos[GOLDFISH][1]])[0], atol=1e-3)
        assert new.classify([photos[STORK][2]], k=1)[0].label == STORK
        # The new memory's service shows their thumbnails and can move them once more
        assert upload_file(tmp_path / "lite1", storks[0]).read_bytes() == photos[STORK][0]
        assert (tmp_path / "lite1" / "thumbnails" / f"{storks[0]}.jpg").is_file()


def test_the_same_photo_under_other_names_keeps_one_copy_with_the_point_that_holds_it(service, photos, tmp_path,
                                                                                       lite1):
    client, folder = service(keep_uploads=True)
    photo = photos[GOLDFISH][0]
    [held] = client.app.state.service.memory.add([photo], GOLDFISH)[0]  # from Python: no copy kept, no thumbnail
    assert add(client, GOLDFISH, [photo], ["fish.jpg"]) == [held]
    assert add(client, GOLDFISH, [photo, photo], ["a.jpg", "b.jpg"]) == [held]
    # The point took the first upload's copy and thumbnail; no file is left under an id no point has
    assert [f.name for f in (folder / UPLOADS_DIR).iterdir()] == [held]
    assert upload_file(folder, held).read_bytes() == photo
    assert [f.stem for f in (folder / "thumbnails").iterdir()] == [held]
    assert client.get("/v1/memory/stats").json()["points"] == 13
    service.stop(client)
    with VisualMemory.open(folder, reranker=None) as mem:  # so it moves to another encoder with its image
        new, done = mem.reembed_to(tmp_path / "lite1", lite1)
    new.close()
    assert done.skipped == [] and done.embedded == 13


def test_without_the_setting_uploads_are_left_out_of_a_move_and_say_how_to_keep_them(service, photos, tmp_path,
                                                                                       lite1):
    client, folder = service()
    [fish] = add(client, GOLDFISH, photos[GOLDFISH][:1])
    assert not (folder / UPLOADS_DIR).exists()  # only a thumbnail, as before
    service.stop(client)
    with VisualMemory.open(folder, reranker=None) as mem:
        new, done = mem.reembed_to(tmp_path / "lite1", lite1)
    new.close()
    [skipped] = done.skipped
    assert skipped.id == fish and "VMEM_KEEP_UPLOADS=true" in skipped.reason


def test_an_upload_whose_thumbnail_was_lost_is_shown_from_the_image_kept_as_sent(service, photos):
    # A thumbnail lost (or kept under another VMEM_THUMBNAIL_DIR) had been a 404 for good, the image as sent kept
    client, folder = service(keep_uploads=True)
    fish, stork = add(client, GOLDFISH, photos[GOLDFISH][:1]) + add(client, STORK, photos[STORK][:1])
    thumbnails = client.app.state.service.thumbnails
    thumbnails.path(fish).unlink()
    resp = client.get(f"/v1/memory/points/{fish}/thumbnail")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
    shown = np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"), dtype=np.float32)
    sent = np.asarray(Image.open(io.BytesIO(photos[GOLDFISH][0])).convert("RGB"), dtype=np.float32)
    assert shown.shape == sent.shape == (64, 64, 3) and np.abs(shown - sent).mean() < 8  # the photo, re-encoded
    assert thumbnails.path(fish).read_bytes() == resp.content  # kept again, as an add keeps it

    # Neither kept: a 404 that says so, as before
    thumbnails.path(stork).unlink()
    upload_file(folder, stork).unlink()
    body = client.get(f"/v1/memory/points/{stork}/thumbnail").json()
    assert body["type"] == "urn:vmem:problem:no-thumbnail" and "nor the image as sent" in body["detail"]

def test_every_forget_deletes_the_kept_image_and_the_history_keeps_none(service, photos):
    client, folder = service(keep_uploads=True)
    fish = add(client, GOLDFISH, photos[GOLDFISH])
    # A copy of a photo in other bytes (re-saved: here a byte past the JPEG's end) under another name is a point of
    # its own, with its own kept file: forgetting the photo keeps the copy's (the same bytes would be its point)
    [again] = add(client, STORK, [photos[GOLDFISH][0] + b"\0"], names=["copy.jpg"])
    storks = add(client, STORK, photos[STORK])
    kept = lambda ids: [upload_file(folder, i).is_file() for i in ids]  # noqa: E731

    assert client.delete(f"/v1/memory/points/{fish[0]}", headers=AUTH).json()["deleted"] == 1
    assert kept(fish) == [False, True, True] and kept([again]) == [True]
    assert client.delete(f"/v1/memory?ids={fish[1]}&erase=true", headers=AUTH).json()["erased"]
    assert kept(fish) == [False, False, True]
    source = client.get(f"/v1/memory/points/{fish[2]}").json()["source"]
    assert client.delete("/v1/memory", headers=AUTH, params={"source_prefix": source}).json()["deleted"] == 1
    assert client.post("/v1/memory/forget-like", headers=AUTH,
                       files={"image": ("q.jpg", photos[GOLDFISH][0], "image/jpeg")}).json()["deleted"] == 1
    assert kept([again]) == [False] and kept(storks) == [True] * 3
    assert client.delete(f"/v1/memory?label={STORK}&erase=true", headers=AUTH).json()["deleted"] == 3
    assert list((folder / UPLOADS_DIR).iterdir()) == []
    history = (folder / "journal.jsonl").read_bytes()
    assert all(photo[-64:] not in history for photo in photos[GOLDFISH] + photos[STORK])


def test_a_full_disk_is_refused_before_an_upload_is_kept(service, photos, monkeypatch):
    client, folder = service(keep_uploads=True)
    usage = namedtuple("usage", "total used free")
    # Room for the thumbnails and the engine, not for the images as sent
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 0, (8 << 20) + 1000 if Path(path) == folder
                                                                 else 10 << 30))
    resp = client.post("/v1/memory", headers=AUTH, data={"label": GOLDFISH},
                       files=[("images", ("big.jpg", photos[GOLDFISH][0] + b"\0" * 4096, "image/jpeg"))])
    assert resp.status_code == 507, resp.text
    assert "VMEM_KEEP_UPLOADS" in resp.json()["detail"] and "nothing was added" in resp.json()["detail"]
    assert client.get("/v1/memory/stats").json()["points"] == 12 and not (folder / UPLOADS_DIR).exists()


def kept_images(folder: Path) -> list[Path]:
    """The thumbnails and uploads as sent kept in a memory's folder."""
    return sorted(p.relative_to(folder) for sub in (THUMBNAILS_DIR, UPLOADS_DIR) for p in (folder / sub).rglob("*")
                  if p.is_file())


def test_adds_the_memory_refuses_leave_no_thumbnail_nor_image_behind(service, photos, monkeypatch):
    # A disk with room for an upload's thumbnail and bytes (checked first) but not for the engine's edit (64 MB of
    # headroom): the store refuses the add after they were written, and each refused add had left them there, files
    # of no point, until a restart, on the disk that was already nearly full: a client retrying for days filled it.
    client, folder = service(keep_uploads=True)
    [kept] = add(client, GOLDFISH, photos[GOLDFISH][:1])  # a point's: its files stay
    images_kept = kept_images(folder)
    assert len(images_kept) == 2  # its thumbnail and its bytes as sent
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 0, 50 << 20))
    for i, photo in enumerate(photos[STORK] + photos[GOLDFISH][:1]):  # new images, and the point's own again
        resp = client.post("/v1/memory", headers=AUTH, data={"label": STORK},
                           files=[("images", (f"retry{i}.jpg", photo, "image/jpeg"))])
        assert resp.status_code == 507 and "has 50 MB free" in resp.json()["detail"], resp.text
    assert kept_images(folder) == images_kept
    assert client.get(f"/v1/memory/points/{kept}/thumbnail").status_code == 200
    assert upload_file(folder, kept).read_bytes() == photos[GOLDFISH][0]


def test_an_add_whose_second_image_cannot_be_kept_leaves_the_first_one_s_files_neither(service, photos, monkeypatch):
    import errno

    import server.service

    client, folder = service(keep_uploads=True)
    real_write, writes = server.service.write_atomically, []

    def full_on_the_second_image(path, data, **kwargs):  # writes: its bytes, its thumbnail, then the second
        writes.append(path)
        if len(writes) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data, **kwargs)

    monkeypatch.setattr(server.service, "write_atomically", full_on_the_second_image)
    resp = client.post("/v1/memory", headers=AUTH, data={"label": STORK},
                       files=[("images", (f"s{i}.jpg", photo, "image/jpeg")) for i, photo in enumerate(photos[STORK])])
    assert resp.status_code >= 500 and len(writes) == 3
    assert kept_images(folder) == [] and client.get("/v1/memory/stats").json()["points"] == 12


def test_backups_and_copies_take_the_kept_images_and_a_read_only_replica_leaves_them(service, photos, tmp_path):
    client, folder = service(keep_uploads=True)
    [fish] = add(client, GOLDFISH, photos[GOLDFISH][:1])
    mem = client.app.state.service.memory
    mem.backup(tmp_path / "backup")
    assert upload_file(tmp_path / "backup", fish).read_bytes() == photos[GOLDFISH][0]
    copy, notes = mem.copy_to(tmp_path / "copy")
    copy.close()
    assert upload_file(tmp_path / "copy", fish).is_file() and "1 uploaded image kept as sent copied along" in notes
    replica = open_read_only(tmp_path / "backup")
    try:  # it classifies only: the images as sent stay out of its private copy
        assert replica.count() == 13 and not (replica.path / UPLOADS_DIR).exists()
    finally:
        replica.close()


@pytest.mark.parametrize("where", [{"qdrant_url": "http://127.0.0.1:6333"}, {"memory": ":memory:"}])
def test_keeping_uploads_needs_a_memory_with_a_folder(where):
    with pytest.raises(ValueError, match="VMEM_KEEP_UPLOADS keeps uploaded images in the embedded memory's folder"):
        Settings(api_key=API_KEY, keep_uploads=True, **where)


@contextmanager
def reranking(tmp_path: Path, lite0, memory_images,
              keep_uploads: bool) -> Iterator[tuple[TestClient, Path, FakeGemini]]:
    """(a client of a service re-ranking with the real SDK against the fake Gemini, keeping its answers in
    tmp_path, the memory's folder, the fake)."""
    with FakeGemini() as fake:
        rr = GeminiReranker(api_key="test-key", base_url=fake.url, cache_path=tmp_path / "rerank.sqlite")
        folder = tmp_path / "memory"
        mem = fill_memory(str(folder), lite0, memory_images, reranker=rr)
        try:
            with TestClient(create_app(Settings(memory=str(folder), api_key=API_KEY, keep_uploads=keep_uploads),
                                       memory=mem), headers=AUTH) as client:
                yield client, folder, fake
        finally:
            mem.close()  # closes its re-ranker too


def near_copy(jpeg: bytes, quality: int) -> bytes:
    """The photo saved again at another JPEG quality, as a second camera roll's copy would be."""
    out = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def sent_images(body: dict) -> list[np.ndarray]:
    """The images of a request to Gemini, in the prompt's order (neighbours by rank, then the query), as pixels."""
    data = [part["inlineData"]["data"] for content in body["contents"] for part in content["parts"]
            if "inlineData" in part]  # the SDK's URL-safe base64, unpadded
    return [pixels(base64.urlsafe_b64decode(d + "=" * (-len(d) % 4))) for d in data]


def pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), float)


CLASSIFY = "/v1/classify?k=6&rerank=true&template=neighbors-v1"


def test_reranking_shows_gemini_the_uploads_kept_as_sent_and_keeps_its_answer(tmp_path, lite0, memory_images, photos):
    with reranking(tmp_path, lite0, memory_images, keep_uploads=True) as (client, folder, fake):
        fish, _ = add(client, GOLDFISH, photos[GOLDFISH]), add(client, STORK, photos[STORK])
        query = near_copy(photos[GOLDFISH][0], quality=70)
        first = client.post(CLASSIFY, files={"image": ("a.jpg", query, "image/jpeg")}).json()
        assert (first["label"], first["reranked"], first["fallback_reason"]) == (GOLDFISH, True, None)
        assert first["neighbors"][0]["id"] == fish[0]  # the photo it is a copy of
        images = sent_images(fake.requests[0].body)
        assert len(images) == 6 + 1  # every neighbour's image, then the query's
        # The nearest neighbour's is the photo added over HTTP, as sent (re-encoded as the prompt's JPEG)
        assert images[0].shape == pixels(photos[GOLDFISH][0]).shape
        assert np.abs(images[0] - pixels(photos[GOLDFISH][0])).mean() < 4
        assert not any(step.get("event") == "neighbor_label_only" for step in first["trace"] or [])

        # A full prompt's answer is kept: the same photo under another name is answered from the cache
        again = client.post(CLASSIFY, files={"image": ("b.jpg", query, "image/jpeg")}).json()
        assert again["label"] == GOLDFISH and again["usage"]["cached"] is True and fake.count == 1

        # Its kept file gone, the upload is shown by its label alone again, and that answer is not kept
        upload_file(folder, fish[0]).unlink()
        other = near_copy(photos[GOLDFISH][0], quality=50)
        for name in ("c.jpg", "d.jpg"):
            answer = client.post(CLASSIFY, files={"image": (name, other, "image/jpeg")}).json()
            assert answer["reranked"] is True and answer["usage"]["cached"] is False
        assert fake.count == 3 and len(sent_images(fake.requests[-1].body)) == 6
        assert [step["id"] for step in answer["trace"] or [] if step.get("event") == "neighbor_label_only"] == [fish[0]]


def test_without_keeping_uploads_gemini_gets_their_labels_alone(tmp_path, lite0, memory_images, photos):
    with reranking(tmp_path, lite0, memory_images, keep_uploads=False) as (client, _, fake):
        uploads = set(add(client, GOLDFISH, photos[GOLDFISH]) + add(client, STORK, photos[STORK]))
        query = near_copy(photos[GOLDFISH][0], quality=70)
        answer = client.post(CLASSIFY, files={"image": ("a.jpg", query, "image/jpeg")}).json()
        assert answer["reranked"] is True
        near_uploads = [n["id"] for n in answer["neighbors"] if n["id"] in uploads]
        shown_alone = [step for step in answer["trace"] or [] if step.get("event") == "neighbor_label_only"]
        assert near_uploads and [step["id"] for step in shown_alone] == near_uploads
        assert "VMEM_KEEP_UPLOADS=true" in shown_alone[0]["reason"]
        assert len(sent_images(fake.requests[0].body)) == 6 + 1 - len(near_uploads)  # the memory's files' and the query
        again = client.post(CLASSIFY, files={"image": ("b.jpg", query, "image/jpeg")}).json()
        assert again["usage"]["cached"] is False and fake.count == 2  # a prompt short of images is not kept


def test_an_agentic_re_rank_s_exemplars_of_a_label_show_its_kept_uploads(tmp_path, lite0, memory_images, photos):
    with reranking(tmp_path, lite0, memory_images, keep_uploads=True) as (client, _, fake):
        add(client, GOLDFISH, photos[GOLDFISH]), add(client, STORK, photos[STORK])
        fake.enqueue(fake.call("exemplars", label="black stork", n=3), fake.answer("goldfish"))
        query = near_copy(photos[GOLDFISH][0], quality=70)
        answer = client.post("/v1/classify?k=6&rerank=true&template=agentic-v1",
                             files={"image": ("a.jpg", query, "image/jpeg")}).json()
        assert (answer["label"], answer["reranked"]) == (GOLDFISH, True), answer
        exemplars = next(step for step in answer["trace"] if step.get("tool") == "exemplars")
        assert exemplars["returned"] == exemplars["images"] == 3 and "label_only" not in exemplars
        assert fake.requests[1].images == fake.requests[0].images + 3  # the storks' photos went with the reply
