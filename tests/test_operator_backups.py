"""Backups over HTTP as an operator watches them: in /metrics, for an alert on a backup failing or missing, and in
the log, with the key that asked (a backup copies every point, and is no edit: the journal does not record it)."""

from __future__ import annotations

import logging
import os
import time
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from retrieval import open_store
from server import Settings, create_app
from tests._server_fixtures import API_KEY, sample, services
from vmem import VisualMemory

AUTH = {"X-API-Key": API_KEY}


@pytest.fixture
def serve(tmp_path, lite0, memory_images):
    """serve(**settings) -> a TestClient over a fresh embedded memory of 12 points."""
    with services(lite0, memory_images) as open_service:
        yield lambda **settings: open_service(str(tmp_path / "memory"), **settings)


def test_backups_are_counted_by_result_and_the_last_one_made_is_timed(tmp_path, serve, monkeypatch):
    client = serve(backup_dir=tmp_path / "backups")
    # There from the start, at 0: an alert on `increase(vmem_backups_total{result="failed"}[1d]) > 0` sees the
    # first failure, and one on `time() - vmem_backup_last_success_timestamp_seconds` a service never backed up
    assert sample(client, 'vmem_backups_total{result="ok"}') == 0
    assert sample(client, 'vmem_backups_total{result="failed"}') == 0
    assert sample(client, "vmem_backup_last_success_timestamp_seconds") == 0

    before = time.time()
    assert client.post("/v1/memory/backup?name=nightly", headers=AUTH).status_code == 200
    assert sample(client, 'vmem_backups_total{result="ok"}') == 1
    assert before <= sample(client, "vmem_backup_last_success_timestamp_seconds") <= time.time()

    # A backup the server could not make is a failure; the last success keeps its time
    made_at = sample(client, "vmem_backup_last_success_timestamp_seconds")
    monkeypatch.setattr("shutil.disk_usage", lambda path: SimpleNamespace(total=1 << 30, used=0, free=1 << 20))
    assert client.post("/v1/memory/backup?name=full", headers=AUTH).status_code == 507
    assert client.post("/v1/memory/backup?name=nightly", headers=AUTH).status_code == 409  # the name taken
    assert sample(client, 'vmem_backups_total{result="failed"}') == 2
    assert sample(client, 'vmem_backups_total{result="ok"}') == 1
    assert sample(client, "vmem_backup_last_success_timestamp_seconds") == made_at


def test_a_service_with_no_backup_folder_counts_a_backup_asked_of_it_as_failed(serve):
    # A nightly job's curl against a service started without VMEM_BACKUP_DIR backs nothing up, every night
    client = serve()
    assert client.post("/v1/memory/backup", headers=AUTH).status_code == 409
    assert sample(client, 'vmem_backups_total{result="failed"}') == 1


def test_a_request_the_key_refuses_is_no_backup_tried(tmp_path, serve):
    client = serve(backup_dir=tmp_path / "backups")
    assert client.post("/v1/memory/backup").status_code == 401
    assert sample(client, 'vmem_backups_total{result="failed"}') == 0


def test_each_backup_is_logged_with_where_it_went_and_the_key_that_asked(tmp_path, serve, caplog):
    client = serve(backup_dir=tmp_path / "backups")
    with caplog.at_level(logging.WARNING, logger="server"):  # vmem serve's level, without -v
        assert client.post("/v1/memory/backup?name=nightly", headers=AUTH).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("server")]
    assert any(str(tmp_path / "backups" / "nightly") in line and "12 points" in line and "key default" in line
               for line in lines), lines


def test_a_backup_asked_of_a_read_only_replica_leaves_latest_at_the_writers_newest(tmp_path, serve, lite0):
    # Writer and replicas share one settings file, VMEM_BACKUP_DIR with it, behind one load balancer: the nightly
    # backup may reach a replica. Its memory is a copy of an older backup: `latest` moved to it, the replicas
    # restarted onto it would serve the memory as it was before the writer's last backup.
    backups = tmp_path / "backups"
    writer = serve(backup_dir=backups)
    assert writer.post("/v1/memory/backup?name=monday", headers=AUTH).status_code == 200
    replica_memory = VisualMemory(open_store(backups / "latest", read_only=True), lite0)  # monday's 12 points
    try:
        assert writer.delete("/v1/memory", params={"label": "red"}, headers=AUTH).json()["deleted"] == 4
        assert writer.post("/v1/memory/backup?name=tuesday", headers=AUTH).status_code == 200
        with TestClient(create_app(Settings(memory=str(backups / "latest"), api_key=API_KEY, read_only=True,
                                            backup_dir=backups), memory=replica_memory)) as replica:
            made = replica.post("/v1/memory/backup?name=wednesday", headers=AUTH)
            assert made.status_code == 200 and made.json()["points"] == 12, made.text  # a backup of what it serves
    finally:
        replica_memory.close()
    assert os.readlink(backups / "latest") == "tuesday"
    with open_store(backups / "latest", read_only=True) as newest:
        assert newest.count() == 8
