"""Hostile and odd input over HTTP: each bad request is a clear 4xx problem, odd but valid images work,
and the server is still up (and has answered no 5xx) at the end.

tests/test_server.py already covers: empty, not-an-image and truncated PNG uploads, a 9000x9000
decompression bomb, bad base64 bodies, wrong content types, the size limit on /v1/classify, k=0,
k=1001, an unknown vote rule and an unknown template. This file adds the rest of the table, and
runs the memory-editing endpoint through the same inputs.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.routes.memory import LABELS_ONLY
from server.uploads import OPTIONS_IN_QUERY
from tests._reliability_fixtures import LABELS, noise_png, tiny_app

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def client(encoder, tmp_path_factory):
    with TestClient(tiny_app(encoder, tmp_path_factory.mktemp("svc"), max_upload_bytes=256 * 1024)) as c:
        yield c
        # Whatever this module's tests sent this one server, and in whatever order they ran: no 5xx.
        metrics = c.get("/metrics").text
        assert not [line for line in metrics.splitlines()
                    if line.startswith("vmem_http_requests_total{") and 'status="5' in line], metrics


def encode(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header claiming `width` x `height` pixels, followed by a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def noise(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    w, h = size
    arr = np.random.default_rng(w * 7 + h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


PHOTO = encode(noise((64, 48)), "JPEG")


# ------------------------------------------------------------------ bad input: a clear 4xx, nothing else

BAD_UPLOADS = {
    # name: (file name, bytes, status, problem type, words in the detail)
    "truncated-jpeg": ("cut.jpg", PHOTO[: len(PHOTO) // 2], 400, "bad-image", "truncated"),
    "jpeg-header-only": ("head.jpg", PHOTO[:200], 400, "bad-image", "truncated"),
    "zero-bytes": ("empty.jpg", b"", 400, "bad-image", "empty"),
    "text-named-jpg": ("notes.jpg", b"shopping list: eggs, milk\n" * 20, 400, "bad-image", "not a recognised image"),
    "png-declaring-10^10-pixels": ("bomb.png", png_declaring(100_000, 100_000), 400, "bad-image",
                                   "64,000,000 pixels"),
    "png-declaring-one-huge-row": ("row.png", png_declaring(2**31 - 1, 1), 400, "bad-image", "too large"),
    "over-the-size-limit": ("big.png", encode(noise((400, 400)), "PNG"), 413, "upload-too-large", "262,144 bytes"),
}


@pytest.mark.parametrize("endpoint", ["/v1/classify", "/v1/memory"])
@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_are_clear_4xx_problems(client, endpoint, case):
    name, data, status, kind, says = BAD_UPLOADS[case]
    field = "image" if endpoint == "/v1/classify" else "images"
    extra = {} if endpoint == "/v1/classify" else {"data": {"label": "ant"}}
    resp = client.post(endpoint, files={field: (name, data, "image/jpeg")}, **extra)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM
    body = resp.json()
    assert body["type"] == f"urn:vmem:problem:{kind}" and body["status"] == status
    assert says in body["detail"], body["detail"]


BAD_REQUESTS = {
    # name: (query string, content type, body, status, words in the detail)
    "k=-1": ("k=-1", None, None, 422, "query.k"),
    "k=10^9": ("k=1000000000", None, None, 422, "query.k"),
    "k=huge-integer": ("k=" + "9" * 400, None, None, 422, "query.k"),
    "k=NaN": ("k=nan", None, None, 422, "query.k"),
    "alpha=inf": ("alpha=inf", None, None, 422, "query.alpha"),
    "unknown-vote-rule": ("vote=borda", None, None, 422, "query.vote"),
    "unknown-template": ("rerank=true&template=../../etc/passwd", None, None, 422, "unknown template"),
    "xml-body": ("", "application/xml", b"<image/>", 415, "not 'application/xml'"),
    "form-urlencoded": ("", "application/x-www-form-urlencoded", b"image=abc", 415, "x-www-form-urlencoded"),
    "json-not-an-object": ("", "application/json", b"[1, 2, 3]", 422, "body"),
    "json-truncated": ("", "application/json", b'{"image": "iVBORw0', 422, "body"),
    "json-image-is-text": ("", "application/json", b'{"image": "' + base64.b64encode(b"hello") + b'"}', 400,
                           "not a recognised image"),
    "multipart-without-boundary": ("", "multipart/form-data", b"--x\r\n\r\n", 400, None),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_are_clear_4xx_problems(client, case):
    query, content_type, body, status, says = BAD_REQUESTS[case]
    if content_type is None:
        resp = client.post(f"/v1/classify?{query}", files={"image": ("q.png", noise_png(1))})
    else:
        resp = client.post(f"/v1/classify?{query}", content=body, headers={"content-type": content_type})
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM
    if says:
        assert says in resp.json()["detail"], resp.json()["detail"]


@pytest.mark.parametrize("endpoint", ["/v1/classify", "/v1/classify/batch", "/v1/memory"])
def test_a_multipart_body_that_does_not_parse_is_a_bad_multipart_problem_saying_what_to_do(client, endpoint):
    # The usual slip: `Content-Type: multipart/form-data` set by hand, beside a body the library encoded with a
    # boundary of its own. It had been an about:blank 400, "Missing boundary in multipart."
    field = "image" if endpoint == "/v1/classify" else "images"
    def part(name: str, value: bytes, file: str = "") -> bytes:
        return (f'--b0undary\r\nContent-Disposition: form-data; name="{name}"{file}\r\n\r\n'.encode() + value
                + b"\r\n")

    label = part("label", b"multipart") if endpoint == "/v1/memory" else b""
    body = label + part(field, noise_png(10_001), '; filename="q.png"') + b"--b0undary--\r\n"
    with_boundary = client.post(endpoint, content=body,
                                headers={"content-type": "multipart/form-data; boundary=b0undary"})
    assert with_boundary.status_code in (200, 201), with_boundary.text
    by_hand = client.post(endpoint, content=body, headers={"content-type": "multipart/form-data"})
    assert by_hand.status_code == 400 and by_hand.headers["content-type"] == PROBLEM
    problem = by_hand.json()
    assert problem["type"] == "urn:vmem:problem:bad-multipart"
    assert "no boundary" in problem["detail"] and "rather than setting it by hand" in problem["detail"]
    nameless = client.post(endpoint, content=b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n",
                           headers={"content-type": "multipart/form-data; boundary=b"})
    assert nameless.status_code == 400 and nameless.json()["type"] == "urn:vmem:problem:bad-multipart"
    assert f"send the image as a file part named '{field}'" in nameless.json()["detail"]
    # A form that parses, of more text fields than the parser takes (options sent as fields, say): what to send
    fields = {name: "5" for name in [f"option{i}" for i in range(200)]}
    crowded = client.post(endpoint, data=fields, files={field: ("q.png", noise_png(10_002))})
    assert crowded.status_code == 400 and crowded.json()["type"] == "urn:vmem:problem:bad-multipart"
    said = crowded.json()["detail"]
    assert "it holds more text fields than this route reads" in said and "file part" not in said, said
    assert said.endswith(LABELS_ONLY if endpoint == "/v1/memory" else OPTIONS_IN_QUERY), said


@pytest.mark.parametrize("endpoint", ["/v1/classify", "/v1/classify/batch", "/v1/memory"])
def test_a_multipart_body_cut_off_before_its_closing_boundary_says_so(client, endpoint):
    # The parser had dropped the unfinished part without a word, and the answer was a 422 "no image: upload a
    # file in the 'image' field" to a client that had uploaded one (or a memory edit made of the parts before it).
    field = "image" if endpoint == "/v1/classify" else "images"
    label = b'--b\r\nContent-Disposition: form-data; name="label"\r\n\r\nant\r\n' if endpoint == "/v1/memory" else b""
    whole = (label + f'--b\r\nContent-Disposition: form-data; name="{field}"; filename="q.png"\r\n'
             f"Content-Type: image/png\r\n\r\n".encode() + noise_png(10_002) + b"\r\n--b--\r\n")
    headers = {"content-type": "multipart/form-data; boundary=b"}
    assert client.post(endpoint, content=whole, headers=headers).status_code in (200, 201)
    for cut in (len(whole) - len(b"--b--\r\n"), len(whole) // 2):
        resp = client.post(endpoint, content=whole[:cut], headers=headers)
        assert resp.status_code == 400 and resp.headers["content-type"] == PROBLEM, resp.text
        problem = resp.json()
        assert problem["type"] == "urn:vmem:problem:bad-multipart"
        assert "ended before its closing boundary" in problem["detail"] and "cut off" in problem["detail"]
    empty = client.post(endpoint, content=b"", headers=headers)
    assert empty.status_code == 400 and empty.json()["type"] == "urn:vmem:problem:bad-multipart"
    assert f"holds no part (it is empty): upload a file in the '{field}' field" in empty.json()["detail"]


# ------------------------------------------------------------------ odd but valid images: answered

def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    return encode(noise((40, 20)), "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [noise((24, 24)).convert("P"), Image.new("P", (24, 24), 3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _palette_with_transparency() -> bytes:
    img = noise((24, 24)).convert("P")
    return encode(img, "PNG", transparency=0)


ODD_IMAGES = {
    "cmyk-jpeg": lambda: encode(noise((32, 32), "CMYK"), "JPEG"),
    "16-bit-png": lambda: encode(Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)), "PNG"),
    "palette-with-transparency": _palette_with_transparency,
    "animated-gif": _animated_gif,
    "exif-rotated-jpeg": _exif_rotated,
    "grayscale": lambda: encode(noise((32, 32), "L"), "PNG"),
    "grayscale-with-alpha": lambda: encode(noise((32, 32), "LA"), "PNG"),
    "rgba": lambda: encode(noise((32, 32), "RGBA"), "PNG"),
    "1x1": lambda: encode(noise((1, 1)), "PNG"),
    "very-wide-4000x2": lambda: encode(noise((4000, 2)), "PNG"),
    "very-tall-2x4000": lambda: encode(noise((2, 4000)), "PNG"),
    "webp": lambda: encode(noise((32, 32)), "WEBP"),
    "bmp": lambda: encode(noise((32, 32)), "BMP"),
    "tiff": lambda: encode(noise((32, 32)), "TIFF"),
    "progressive-jpeg": lambda: encode(noise((64, 64)), "JPEG", progressive=True),
}


@pytest.mark.parametrize("case", list(ODD_IMAGES))
def test_odd_but_valid_images_are_classified_and_added(client, case):
    data = ODD_IMAGES[case]()
    labels = "&".join(f"label={lab}" for lab in LABELS)  # the odd images added below do not vote
    resp = client.post(f"/v1/classify?k=3&{labels}",
                       files={"image": (f"{case}.img", data, "application/octet-stream")})
    assert resp.status_code == 200, resp.text
    assert resp.json()["label"] in LABELS and len(resp.json()["neighbors"]) == 3
    added = client.post("/v1/memory", data={"label": f"odd {case}"}, files={"images": (f"{case}.img", data)})
    assert added.status_code == 201, added.text
    thumb = client.get(added.json()["added"][0]["thumbnail_url"])
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).mode == "RGB"


def test_after_bad_requests_the_server_is_up_and_counts_them_by_status(client):
    # Every test of this module sends its requests to this one server (the fixture checks for 5xx at the end).
    client.post("/v1/classify", files={"image": ("q.png", b"not an image")})  # 400
    client.post("/v1/classify", files={"image": ("q.png", b"0" * 300 * 1024)})  # 413
    client.post("/v1/classify", content=b"x", headers={"content-type": "text/plain"})  # 415
    client.post("/v1/classify?k=0", files={"image": ("q.png", noise_png(3))})  # 422
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    assert client.post("/v1/classify", files={"image": ("q.png", noise_png(3))}).status_code == 200
    metrics = client.get("/metrics").text
    statuses = [line.split('status="')[1][:3] for line in metrics.splitlines()
                if line.startswith("vmem_http_requests_total{")]
    assert "400" in statuses and "413" in statuses and "415" in statuses and "422" in statuses
