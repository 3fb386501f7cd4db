"""vmem asks a Qdrant server's version itself, once a process, and warns in its own words where qdrant-client is not
made for it: qdrant-client's own check asked at every opening, and its warning said to "Set
check_compatibility=False", which no vmem user can set."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import threading
import warnings

import pytest
from qdrant_client import QdrantClient

import retrieval.store
from retrieval import MemoryUnavailableError, QdrantServerStore
from retrieval.store import _check_server_version
from tests._listeners import HeadersListener

OURS = importlib.metadata.version("qdrant-client")
MAJOR, MINOR = (int(part) for part in OURS.split(".")[:2])


def version_listener(version: str) -> HeadersListener:
    """A loopback port that answers each request as a Qdrant server's `GET /` says its version (title and version,
    nothing else: it is no Qdrant server), and keeps each request."""
    body = json.dumps({"title": "qdrant - vector search engine", "version": version}).encode()
    return HeadersListener(answer=(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                                   b"content-length: %d\r\n\r\n" % len(body)) + body, most=20)


@pytest.fixture(autouse=True)
def _no_server_checked_yet(monkeypatch):
    monkeypatch.setattr(retrieval.store, "_VERSION_CHECKED", set())


@pytest.mark.parametrize(("version", "advice"), [
    (f"{MAJOR}.{MINOR - 3}.2", f"upgrade the server to Qdrant {MAJOR}.{MINOR - 1} or later"),
    (f"{MAJOR + 1}.0.0", f"upgrade qdrant-client in vmem's environment to {MAJOR + 1}.0 or later"),
    (f"{MAJOR}.{MINOR + 1}.0", None),
    (f"{MAJOR}.{MINOR - 1}.9", None),
    ("dev", None),  # said in no form qdrant-client reads either: let be
])
def test_a_server_qdrant_client_is_not_made_for_is_warned_of_once_in_vmems_words(version, advice, caplog):
    listener = version_listener(version)
    client = QdrantClient(url=listener.url, check_compatibility=False)
    try:
        with caplog.at_level(logging.WARNING, logger="retrieval.store"):
            for _ in range(2):  # a second opening of the same server in this process asks no more
                _check_server_version(client, f"{listener.url}?api_key=a-secret-key")
    finally:
        client.close()
        listener.close()
    assert listener.request_lines == ["GET / HTTP/1.1"]
    said = [r.getMessage() for r in caplog.records]
    if advice is None:
        assert not said, said
        return
    assert said == [f"the Qdrant server at {listener.url} runs Qdrant {version}, and vmem's qdrant-client is {OURS}, "
                    f"made for servers {MAJOR}.{MINOR - 1} to {MAJOR}.{MINOR + 1}: requests may be refused or "
                    f"misread; {advice}" + (" (pip install -U qdrant-client)" if "qdrant-client in" in advice else "")]
    assert "check_compatibility" not in said[0] and "a-secret-key" not in said[0]


def test_opening_a_memory_on_a_server_leaves_qdrant_clients_own_version_check_off():
    # qdrant-client's check asked GET / on a thread of its own at each opening, beside vmem's requests: a server
    # that answers none of them (this listener) is asked nothing but what the opening needs
    listener = HeadersListener()
    before = set(threading.enumerate())
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            with pytest.raises(MemoryUnavailableError, match="could not reach the Qdrant server"):
                QdrantServerStore(listener.url)
            for thread in set(threading.enumerate()) - before:  # a version check on its thread would end by now
                thread.join(timeout=30)
    finally:
        listener.close()
    assert listener.heads and not [h for h in listener.heads if h.startswith("GET / ")], listener.heads
    assert not [w for w in warned if "check_compatibility" in str(w.message)]
