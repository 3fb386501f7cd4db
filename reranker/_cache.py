"""A persistent cache of re-ranked answers that forgets what cited a deleted memory point.

SQLite (WAL, so a server and a CLI can share it): `answers(key, outcome)` plus `cites(key, point_id)`,
indexed by point id, so `invalidate(ids)` drops every answer whose prompt showed one of those points
(neighbours, exemplars and extra neighbours alike). Unlearning a point therefore reaches the cache.
Only real answers are cached: a fallback is never stored, so a transient failure is retried next time.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from retrieval.files import user_folder

from ._types import RerankOutcome

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, outcome TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cites (key TEXT NOT NULL, point_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS cites_point ON cites(point_id);
CREATE INDEX IF NOT EXISTS cites_key ON cites(key);
CREATE INDEX IF NOT EXISTS answers_created ON answers(created);
"""

# Answers kept; past it the oldest go. One answer with its ~26 cited ids took ~7.4 KB in a soak of the service: 20,000
# are ~150 MB. Unbounded, a service re-ranking one new image a second grew the file by ~640 MB a day.
DEFAULT_MAX_ENTRIES = 20_000
# Puts between trims: a count and a delete per put would cost more than the answers they keep out.
TRIM_EVERY = 64


def default_cache_dir() -> Path:
    """`$VMEM_HOME/cache`, else `$XDG_CACHE_HOME/vmem`, else `~/.cache/vmem` (NoHomeError, an OSError, where no
    home is known)."""
    if os.environ.get("VMEM_HOME"):
        return Path(os.environ["VMEM_HOME"]).expanduser() / "cache"
    return user_folder("XDG_CACHE_HOME", ".cache") / "vmem"


def default_cache_path() -> Path:
    """Where the Gemini re-ranker keeps its answers unless told otherwise (`VMEM_GEMINI_CACHE_PATH`)."""
    return default_cache_dir() / "rerank.sqlite"


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of everything that can change the answer."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class AnswerCache:
    """Re-ranked outcomes by cache key, with the ids of the points each one cited."""

    def __init__(self, path: str | Path | None = None, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_entries = max_entries
        self._puts = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # A dropped answer's bytes (the ids it cited) are overwritten with zeros, not left in free space: the
            # default of some SQLite builds (Debian's), not of others (python.org's, macOS's).
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.executescript(SCHEMA)
            self._db.commit()
        self.trim()  # a cache kept by an older vmem, or under a larger limit

    def get(self, key: str) -> RerankOutcome | None:
        with self._lock:
            row = self._db.execute("SELECT outcome FROM answers WHERE key = ?", (key,)).fetchone()
        return RerankOutcome.model_validate_json(row[0]) if row else None

    def cited(self, key: str) -> list[str]:
        """The ids of the points the answer under `key` cited."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT point_id FROM cites WHERE key = ?", (key,))]

    def put(self, key: str, outcome: RerankOutcome, cited_ids: Iterable[str]) -> None:
        ids = sorted(set(cited_ids))
        with self._lock, self._db:
            self._db.execute("DELETE FROM cites WHERE key = ?", (key,))
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)",
                             (key, outcome.model_dump_json(), time.time()))
            self._db.executemany("INSERT INTO cites VALUES (?, ?)", [(key, i) for i in ids])
            self._puts += 1
            due = self._puts % TRIM_EVERY == 0
        if due:
            self.trim()

    def trim(self) -> int:
        """Drop the oldest answers beyond `max_entries`, with their cited ids; returns how many went. SQLite reuses
        the freed pages, so the file stops growing at about the limit's size."""
        with self._lock, self._db:
            old = [r[0] for r in self._db.execute(
                "SELECT key FROM answers ORDER BY created DESC LIMIT -1 OFFSET ?", (self.max_entries,))]
            for start in range(0, len(old), 500):  # SQLite caps bound parameters per statement
                chunk = old[start : start + 500]
                marks = ",".join("?" * len(chunk))
                self._db.execute(f"DELETE FROM answers WHERE key IN ({marks})", chunk)
                self._db.execute(f"DELETE FROM cites WHERE key IN ({marks})", chunk)
        return len(old)

    def invalidate(self, point_ids: Sequence[str]) -> int:
        """Drop every answer that cited one of these points; returns how many went."""
        ids = list(point_ids)
        dropped = 0
        with self._lock, self._db:
            for start in range(0, len(ids), 500):  # SQLite caps bound parameters per statement
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                keys = [r[0] for r in self._db.execute(
                    f"SELECT DISTINCT key FROM cites WHERE point_id IN ({marks})", chunk)]
                for k in range(0, len(keys), 500):
                    kc = keys[k:k + 500]
                    km = ",".join("?" * len(kc))
                    dropped += self._db.execute(f"DELETE FROM answers WHERE key IN ({km})", kc).rowcount
                    self._db.execute(f"DELETE FROM cites WHERE key IN ({km})", kc)
        if dropped:
            self._forget_old_pages()
        return dropped

    def _forget_old_pages(self) -> None:
        """Empty the write-ahead log: it holds the pages as they were before the delete, the dropped ids in them,
        until the last connection closes (a service's: for as long as it runs). Best effort: a read another process
        holds open keeps the log, until a later forget empties it or the last connection closes."""
        with self._lock:
            # Without waiting: the connection's 30 s busy timeout held a forget up that long behind such a reader.
            waits = self._db.execute("PRAGMA busy_timeout").fetchone()[0]
            self._db.execute("PRAGMA busy_timeout=0")
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                self._db.execute(f"PRAGMA busy_timeout={int(waits)}")

    def clear(self) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM answers")
            self._db.execute("DELETE FROM cites")

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
