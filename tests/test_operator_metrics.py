"""/metrics as an operator alerts on it: whether the service can answer, without a probe of its own on /readyz."""

from __future__ import annotations

import shutil
import socket

from fastapi.testclient import TestClient
from qdrant_client import QdrantClient

from retrieval.store import ServerClient
from server import Settings, create_app
from tests._server_fixtures import API_KEY, fill_memory, sample


def dead_url() -> str:
    """A loopback address where nothing listens: a Qdrant server gone."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_vmem_ready_says_what_readyz_says_when_the_memory_s_folder_goes(tmp_path, lite0, memory_images):
    # A memory folder removed under the service turns /readyz 503 and every edit a 503 memory-gone, while classify,
    # /healthz and the size gauges go on as before: scraped alone, /metrics showed nothing wrong.
    mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images)
    try:
        with TestClient(create_app(Settings(memory=str(tmp_path / "memory"), api_key=API_KEY), memory=mem)) as client:
            assert client.get("/readyz").status_code == 200
            assert sample(client, "vmem_ready") == 1
            shutil.rmtree(tmp_path / "memory")
            assert client.get("/readyz").status_code == 503
            assert sample(client, "vmem_ready") == 0
            assert sample(client, "vmem_memory_points") == 12  # as counted last: no sign of it there
    finally:
        mem.close()


def test_vmem_ready_turns_0_while_the_qdrant_server_is_down_and_1_once_it_is_back(tmp_path, lite0, memory_images):
    mem = fill_memory(":memory:", lite0, memory_images)  # qdrant-client's local mode, the server path
    try:
        with TestClient(create_app(Settings(memory=":memory:", api_key=API_KEY, thumbnail_dir=tmp_path / "thumbs"),
                                   memory=mem)) as client:
            assert sample(client, "vmem_ready") == 1
            working, url = mem.store.client, dead_url()
            mem.store.client = ServerClient(QdrantClient(url=url, timeout=5, check_compatibility=False), url)
            assert sample(client, "vmem_ready") == 0
            mem.store.client = working
            assert sample(client, "vmem_ready") == 1
    finally:
        mem.close()


def test_prometheus_scraping_a_pod_by_its_address_is_answered_where_the_service_names_its_hosts(
        tmp_path, lite0, memory_images):
    # Kubernetes' pod discovery scrapes http://<pod ip>:8000/metrics, Host the address: with VMEM_ALLOWED_HOSTS set
    # as a proxy's name (docs/service.md), every scrape was a 400 and the target down, as the probes had been
    mem = fill_memory(str(tmp_path / "memory"), lite0, memory_images)
    try:
        settings = Settings(memory=str(tmp_path / "memory"), api_key=API_KEY, allowed_hosts="vmem.example.org")
        with TestClient(create_app(settings, memory=mem)) as client:
            pod = {"Host": "10.1.2.3:8000"}
            scraped = client.get("/metrics", headers=pod)
            assert scraped.status_code == 200 and "vmem_memory_points 12.0" in scraped.text
            assert TestClient(client.app, root_path="/vmem").get("/vmem/metrics", headers=pod).status_code == 200
            # The memory's own reads stay its named hosts' (DNS rebinding)
            assert client.get("/v1/memory/stats", headers=pod).status_code == 400
            assert client.get("/v1/memory/points", headers=pod).status_code == 400
    finally:
        mem.close()
