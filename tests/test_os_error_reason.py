"""An OSError said in words, without its path: `os_error_reason`, for every message that names the file itself.

`exc.strerror or exc` showed an error with no words of its own (a network file system's EIO, a FUSE mount's) as
`[Errno 5] : '/srv/photos/...'`: the path a second time, raw. One case per kind of caller: a command's refusal, a
log line, a failed image's reason, the service's keys file."""

from __future__ import annotations

import errno
import logging
import os

import pytest
from typer.testing import CliRunner

from retrieval.feature_cache import FeatureCache
from retrieval.files import os_error_reason
from tests.conftest import make_image
from tests.test_feature_cache import MeanColour
from vmem.cli import app

EIO_WORDS = os.strerror(errno.EIO)  # "Input/output error"


def without_words(path: object) -> OSError:
    """What a file system that gives no words raises: a number, an empty strerror, the path."""
    return OSError(errno.EIO, "", str(path))


def test_an_os_error_is_said_by_its_words_else_its_numbers_else_what_it_says_escaped():
    assert os_error_reason(PermissionError(errno.EACCES, "Permission denied", "/srv/a.png")) == "Permission denied"
    assert os_error_reason(without_words("/srv/a.png")) == EIO_WORDS
    assert os_error_reason(OSError("the mount went away\n")) == "the mount went away\\n"  # no number: its text
    assert os_error_reason(OSError()) == "OSError"
    assert os_error_reason(KeyError("projection_dim")) == "'projection_dim'"  # a config.json's missing key


def test_a_commands_refusal_says_the_file_once(tmp_path, monkeypatch):
    # vmem key's keys file, on a mount that answers a write with EIO and no words
    def write_atomically(path, data, *args, **kwargs):
        raise without_words(path)

    monkeypatch.setattr("retrieval.files.write_atomically", write_atomically)
    keys = tmp_path / "keys\u202e.txt"
    out = CliRunner().invoke(app, ["key", "alice", "--file", str(keys)], env={"COLUMNS": "250"})
    assert out.exit_code == 2 and "[Errno" not in out.output
    assert f"cannot be written ({EIO_WORDS})" in out.output and out.output.count("keys\u202e.txt") <= 1


def test_a_log_line_says_the_file_once(tmp_path, monkeypatch, caplog):
    from vmem.answer_log import AnswerLog

    def no_open(path, *args, **kwargs):
        raise without_words(path)

    monkeypatch.setattr("vmem.answer_log.open", no_open, raising=False)
    with caplog.at_level(logging.WARNING, logger="vmem.answer_log"):
        AnswerLog(tmp_path / "answers.jsonl")
    [said] = [r.getMessage() for r in caplog.records]
    assert said == (f"the answer log {tmp_path}/answers.jsonl cannot be written ({EIO_WORDS}): answers go on, "
                    "unlogged")


def test_an_image_that_cannot_be_read_is_skipped_with_its_reason_in_words(tmp_path, monkeypatch):
    # An eval's query (or a build's image, with --cache) read for its content hash
    image = tmp_path / "a.png"
    image.write_bytes(make_image(fmt="PNG"))

    def file_sha256(path):
        raise without_words(path)

    monkeypatch.setattr("retrieval.feature_cache.file_sha256", file_sha256)
    _, ok, [failure] = FeatureCache(tmp_path / "cache", MeanColour()).features_for([image], num_workers=0)
    assert ok == [] and failure.reason == f"{image}: cannot be read ({EIO_WORDS})"


def test_the_services_keys_file_that_cannot_be_read_says_why_in_words(tmp_path, monkeypatch):
    # What vmem serve (and vmem key) say of VMEM_API_KEYS_FILE
    from server.keys import KeysFileError, keys_file_text

    def read_small_file(path, *args, **kwargs):
        raise without_words(path)

    monkeypatch.setattr("server.keys.read_small_file", read_small_file)
    with pytest.raises(KeysFileError) as exc:
        keys_file_text(tmp_path / "keys.txt")
    assert str(exc.value).endswith(f"cannot be read ({EIO_WORDS})") and "[Errno" not in str(exc.value)
