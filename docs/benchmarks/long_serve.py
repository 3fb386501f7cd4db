"""`vmem serve` left up: what it holds after thousands of mixed requests, sampled round by round from outside.

A bounded loopback client sends rounds of mixed requests to a service on a copy of a real memory: classify
(re-ranking off, and on against the fake Gemini on loopback, which answers, fails with 500 or 429, sends
nonsense, or hangs past the attempt timeout), uploads that are corrupt, too large or cut off mid-body (the
client closes its socket), adds, forgets, relabels, exports (one read in full, one dropped mid-download), the
page, its static files, thumbnails, metrics, and bad requests (unknown paths and methods, bad JSON, bad
options). After each round it samples the server process: open file descriptors (/proc/PID/fd, by kind),
threads, resident memory, the files in its TMPDIR, its VMEM_HOME (the re-ranker's cache), the memory's
folder, the log, the answer log, and the series /metrics exports. What grows with the rounds after the first
grows without bound in a service left up for weeks.

    python docs/benchmarks/long_serve.py --memory /tmp/vmem-lite0-8 --images /tmp/val8 \
        --rounds 10 --per-round 500 > docs/benchmarks/long-serve.json
    python docs/benchmarks/long_serve.py --memory /tmp/vmem-lite0-8 --images /tmp/val8 \
        --rounds 7 --per-round 200 --kill-every 2 > docs/benchmarks/long-serve-kills-after.json

(/tmp/vmem-lite0-8: `vmem build` of 8 Tiny-ImageNet classes' train images, 800 points, efficientnet-lite0;
/tmp/val8: links to the same 8 classes' val folders.) `--kill-every N` kills the service with SIGKILL every N
rounds, half of an import received, and starts it again: what a killed service leaves shows in TMPDIR.

The memory is copied first (the run edits it); adds take their images from `--images` and are forgotten again
within the run, so the memory's size stays bounded. Everything the service writes is under one temporary folder
(TMPDIR, VMEM_HOME, the answer log), removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from reranker.testing import Action, FakeGemini, candidates_of
from vmem.cli.bench_load import _free_port, stop_service

KEY = "long-serve-key-0123456789abcdef"
MAX_UPLOAD = 4 << 20  # VMEM_MAX_UPLOAD_BYTES for the run: over the 1 MB a multipart file is held in RAM up to


def flaky_gemini(rng: random.Random) -> Any:
    """A Gemini that answers most requests and fails the rest in each way the re-ranker must survive."""

    def respond(body: dict[str, Any]) -> Action:
        roll, labels = rng.random(), candidates_of(body) or ["x"]
        if roll < 0.55:
            return FakeGemini.answer(rng.choice(labels))
        if roll < 0.70:
            return FakeGemini.status(500)
        if roll < 0.78:
            return FakeGemini.status(429, retry_delay="0.05s")
        if roll < 0.88:
            return FakeGemini.malformed()
        return FakeGemini.hang(2.0)  # past the attempt timeout (0.5 s)

    return respond


def start(memory: Path, work: Path, gemini: str) -> tuple[subprocess.Popen[str], str, Path]:
    port = _free_port()
    tmp, home, log = work / "tmp", work / "home", work / "serve.log"
    tmp.mkdir(exist_ok=True)  # kept across restarts (--kill-every)
    home.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp), "VMEM_HOME": str(home), "VMEM_API_KEY": KEY,
           "VMEM_MAX_UPLOAD_BYTES": str(MAX_UPLOAD), "VMEM_ANSWER_LOG": str(work / "answers.jsonl"),
           "VMEM_ANSWER_LOG_MAX_MB": "1",  # rotated within the run
           "GOOGLE_GEMINI_BASE_URL": gemini, "GEMINI_API_KEY": "fake", "VMEM_GEMINI_DEADLINE_S": "2",
           "VMEM_GEMINI_ATTEMPT_TIMEOUT_S": "0.5", "VMEM_GEMINI_BACKOFF_INITIAL_S": "0.05",
           "VMEM_GEMINI_BACKOFF_MAX_S": "0.2", "VMEM_GEMINI_BREAKER_COOLDOWN_S": "1"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from vmem.cli import app; app()", "serve", "--memory",
                                 str(memory), "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"vmem serve exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url, log
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    stop_service(proc)
    raise SystemExit("vmem serve was not ready after 150 s")


def tree(path: Path) -> tuple[int, int]:
    """(files and folders, bytes) under `path`."""
    n = size = 0
    for root, dirs, files in os.walk(path):
        n += len(dirs) + len(files)
        for f in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                size += os.lstat(os.path.join(root, f)).st_size
    return n, size


def fd_kinds(pid: int) -> Counter[str]:
    kinds: Counter[str] = Counter()
    folder = Path(f"/proc/{pid}/fd")
    for fd in folder.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        kinds[target.split(":")[0] if ":" in target and not target.startswith("/") else "file"] += 1
    return kinds


def series(url: str) -> tuple[int, dict[str, int]]:
    """Samples /metrics exports, and how many per metric family (the name before `{`, suffixes trimmed)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    per: Counter[str] = Counter()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            per[re.sub(r"_(bucket|count|sum|created|total)$", "", name)] += 1
    return sum(per.values()), dict(per)


def sample(proc: subprocess.Popen[str], url: str, work: Path, memory: Path, log: Path) -> dict[str, Any]:
    pid = proc.pid
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    field = {k: v.split()[0] for k, v in (line.split(":", 1) for line in status.splitlines()) if v.split()}
    kinds = fd_kinds(pid)
    total_series, per_family = series(url)
    tmp_n, tmp_b = tree(work / "tmp")
    home_n, home_b = tree(work / "home")
    mem_n, mem_b = tree(memory)
    parts: Counter[str] = Counter()  # the memory's bytes by top-level entry: which of its files grow
    for entry in memory.iterdir():
        parts[entry.name] += tree(entry)[1] if entry.is_dir() else entry.stat().st_size
    logs = [tree(p)[1] if p.is_dir() else p.stat().st_size for p in work.glob("answers.jsonl*")]
    return {"fds": sum(kinds.values()), "fd_kinds": dict(kinds), "threads": int(field["Threads"]),
            "rss_mb": round(int(field["VmRSS"]) / 1024, 1), "tmp_entries": tmp_n, "tmp_mb": round(tmp_b / 2**20, 2),
            "home_entries": home_n, "home_mb": round(home_b / 2**20, 2), "memory_mb": round(mem_b / 2**20, 2),
            "memory_entries": mem_n, "memory_kb_by_entry": {k: round(v / 1024, 1) for k, v in sorted(parts.items())},
            "log_kb": round(log.stat().st_size / 1024, 1),
            "answer_log_files": len(logs), "answer_log_kb": round(sum(logs) / 1024, 1),
            "metric_samples": total_series, "metric_families": per_family}


def cut_off(url: str, path: str, headers: dict[str, str], declared: int, sent: bytes) -> None:
    """A request that declares `declared` body bytes, sends `sent`, and closes its socket."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {declared}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        s.sendall(head.encode() + sent)
        time.sleep(0.02)


def dropped_download(url: str, path: str) -> None:
    """A GET whose answer the client stops reading after its first bytes, then closes the socket."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {KEY}\r\n\r\n".encode())
        s.recv(256)


def kill_mid_import(proc: subprocess.Popen[str], url: str, tmp: Path) -> None:
    """SIGKILL the service (an OOM kill, kill -9) while it holds half of an import's file in its TMPDIR."""
    host, port = url.removeprefix("http://").split(":")
    held = tree(tmp)[1]  # what earlier kills left
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"POST /v1/memory/import?filename=big.npz HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {KEY}\r\n"
                  f"Content-Type: application/octet-stream\r\nContent-Length: {8 << 20}\r\n\r\n".encode()
                  + b"\0" * (4 << 20))
        deadline = time.monotonic() + 30
        while tree(tmp)[1] < held + (4 << 20) and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.kill()
        proc.wait()


def multipart(field: str, data: bytes, name: str, boundary: str = "longserveboundary") -> tuple[bytes, str]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Driver:
    def __init__(self, url: str, images: list[Path], rng: random.Random) -> None:
        self.url, self.images, self.rng = url, images, rng
        self.http = httpx.Client(base_url=url, timeout=60)
        self.added: list[str] = []
        self.statuses: Counter[str] = Counter()

    def image(self) -> tuple[bytes, str]:
        path = self.rng.choice(self.images)
        return path.read_bytes(), path.name

    def call(self, what: str, method: str, path: str, **kw: Any) -> httpx.Response | None:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.TransportError as exc:
            self.statuses[f"{what} {type(exc).__name__}"] += 1
            return None
        self.statuses[f"{what} {r.status_code}"] += 1
        return r

    def one(self, labels: list[str]) -> None:
        rng, key = self.rng, {"X-API-Key": KEY}
        roll = rng.random()
        if roll < 0.30:
            data, name = self.image()
            params: dict[str, Any] = {"k": rng.choice([5, 10, 25, 50])}
            if rng.random() < 0.2:  # label sets: each has a novelty threshold of its own
                params["label"] = rng.sample(labels, rng.randint(2, 4))
            self.call("classify", "POST", "/v1/classify", files={"image": (name, data)}, params=params)
        elif roll < 0.40:
            data, name = self.image()
            self.call("rerank", "POST", "/v1/classify", files={"image": (name, data)},
                      params={"rerank": "true", "k": 10}, headers=key)
        elif roll < 0.44:
            files = [("images", (p.name, p.read_bytes())) for p in rng.sample(self.images, 4)]
            self.call("batch", "POST", "/v1/classify/batch", files=files)
        elif roll < 0.48:
            self.call("corrupt", "POST", "/v1/classify", files={"image": ("bad.jpg", os.urandom(2000))})
        elif roll < 0.51:
            self.call("too-large", "POST", "/v1/classify", files={"image": ("big.jpg", b"\xff" * (MAX_UPLOAD + 10))})
        elif roll < 0.56:
            data, name = self.image()
            # past 1 MB a multipart file part is spooled to a temporary file: cut off after that
            body, ctype = multipart("image", data * (1 + (3 << 20) // len(data)), name)
            cut_off(self.url, "/v1/classify", {"Content-Type": ctype}, len(body), body[: len(body) // 2])
            self.statuses["cut-off classify"] += 1
        elif roll < 0.58:
            cut_off(self.url, "/v1/memory/import?filename=p.npz", {"Content-Type": "application/octet-stream",
                                                                    "X-API-Key": KEY}, 500_000, b"PK" * 50_000)
            self.statuses["cut-off import"] += 1
        elif roll < 0.64:
            data, name = self.image()
            data += rng.randbytes(8)  # new bytes: a new point (a JPEG's trailing bytes are ignored)
            r = self.call("add", "POST", "/v1/memory", files={"images": (name, data)},
                          data={"label": rng.choice(labels)}, headers=key)
            if r is not None and r.status_code == 201:
                self.added += [p["id"] for p in r.json()["added"] if p["new"]]
        elif roll < 0.68 and self.added:
            pid = self.added.pop(rng.randrange(len(self.added)))
            self.call("forget", "DELETE", f"/v1/memory/points/{pid}", headers=key)
        elif roll < 0.71 and self.added:
            self.call("relabel", "PATCH", f"/v1/memory/points/{rng.choice(self.added)}",
                      json={"label": rng.choice(labels)}, headers=key)
        elif roll < 0.72:
            self.call("export", "GET", "/v1/memory/export", params={"label": rng.choice(labels)}, headers=key)
        elif roll < 0.73:
            dropped_download(self.url, "/v1/memory/export")
            self.statuses["dropped export"] += 1
        elif roll < 0.76:
            page = self.call("page", "GET", "/")
            if page is not None:
                for asset in re.findall(r'(?:src|href)="[^"]*?(static/[^"]+)"', page.text)[:3]:
                    self.call("static", "GET", "/" + asset)
        elif roll < 0.80:
            r = self.call("points", "GET", "/v1/memory/points", params={"limit": 5})
            if r is not None and r.status_code == 200:
                for p in r.json()["points"][:2]:
                    if p.get("thumbnail_url"):
                        self.call("thumbnail", "GET", p["thumbnail_url"])
        elif roll < 0.83:
            self.call("metrics", "GET", "/metrics")
        elif roll < 0.85:
            self.call("stats", "GET", "/v1/memory/stats")
        elif roll < 0.86:  # a wrong key, and an abandoned request (the client gives up before the answer)
            data, name = self.image()
            self.call("wrong-key", "POST", "/v1/memory", files={"images": (name, data)}, data={"label": labels[0]},
                      headers={"X-API-Key": f"{rng.getrandbits(128):x}"})
            self.call("abandoned", "POST", "/v1/classify", files={"image": (name, data)},
                      params={"rerank": "true", "k": 10, "why_not": rng.choice(labels)}, headers=key,
                      timeout=0.05)
        elif roll < 0.90:  # unknown paths: each a new URL
            self.call("unknown-path", "GET", f"/no/such/{rng.getrandbits(40):x}")
        elif roll < 0.92:  # a method no route takes, named freely by the client
            self.call("odd-method", f"X{rng.getrandbits(20):x}".upper(), "/v1/classify")
        elif roll < 0.95:
            self.call("bad-json", "POST", "/v1/classify", content=b"{not json",
                      headers={"Content-Type": "application/json"})
        elif roll < 0.97:
            self.call("bad-param", "POST", "/v1/classify", params={"k": "many"},
                      files={"image": ("a.jpg", b"x")})
        else:
            self.call("history", "GET", "/v1/memory/history", params={"limit": 5})

    def burst(self, labels: list[str], n: int = 24) -> None:
        """`n` requests at once, 8 in flight: re-ranks (Gemini hanging on some), classifies, half of them given up
        by their client after 0.3 s."""
        from concurrent.futures import ThreadPoolExecutor

        jobs = [(self.image(), self.rng.random() < 0.5, self.rng.random() < 0.5) for _ in range(n)]

        def send(job: tuple[tuple[bytes, str], bool, bool]) -> str:
            (data, name), rerank, give_up = job
            try:
                with httpx.Client(base_url=self.url, timeout=0.3 if give_up else 60) as http:
                    r = http.post("/v1/classify", files={"image": (name, data)}, headers={"X-API-Key": KEY},
                                  params={"rerank": str(rerank).lower(), "k": 10})
                return f"burst {r.status_code}"
            except httpx.TransportError as exc:
                return f"burst {type(exc).__name__}"

        with ThreadPoolExecutor(8) as pool:
            self.statuses.update(pool.map(send, jobs))

    def forget_all_added(self) -> None:
        while self.added:
            self.call("forget", "DELETE", f"/v1/memory/points/{self.added.pop()}", headers={"X-API-Key": KEY})


def _revision() -> str:
    """The commit of the vmem the service ran (a run before a fix and one after differ here)."""
    out = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory", type=Path, required=True, help="a built memory (copied; the copy is edited)")
    ap.add_argument("--images", type=Path, required=True, help="a folder of images (searched recursively)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kill-every", type=int, default=0, metavar="N",
                    help="every N rounds, SIGKILL the service mid-import and start it again (0: never)")
    ap.add_argument("--keep", action="store_true", help="keep the run's folder (memory, TMPDIR, logs); say where")
    args = ap.parse_args()
    if args.rounds * args.per_round > 20_000:
        raise SystemExit("at most 20,000 requests: the run stays bounded")
    rng = random.Random(args.seed)
    images = sorted(Path(root, f) for root, _, files in os.walk(args.images, followlinks=True) for f in files
                    if Path(f).suffix.lower() in {".jpg", ".jpeg", ".png"})[:2000]
    if len(images) < 4:
        raise SystemExit(f"{args.images}: fewer than 4 images")
    work = Path(tempfile.mkdtemp(prefix="vmem-long-serve-"))
    memory = work / "memory"
    shutil.copytree(args.memory, memory)
    fake = FakeGemini().start()
    fake.responder = flaky_gemini(random.Random(args.seed + 1))
    proc, url, log = start(memory, work, fake.url)
    driver = Driver(url, images, rng)
    labels = list(httpx.get(f"{url}/v1/memory/stats", timeout=30).json()["per_label"])[:20]
    rounds: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    try:
        rounds.append({"round": 0, "requests": 0, **sample(proc, url, work, memory, log)})
        for n in range(1, args.rounds + 1):
            for _ in range(args.per_round):
                driver.one(labels)
            driver.burst(labels)
            driver.forget_all_added()  # the memory back to its size: what grows then is no point's
            time.sleep(3.0)  # requests cut off and hung re-ranks settle
            if args.kill_every and n % args.kill_every == 0:
                kill_mid_import(proc, url, work / "tmp")
                proc, url, log = start(memory, work, fake.url)
                driver.url, driver.http = url, httpx.Client(base_url=url, timeout=60)
            rounds.append({"round": n, "requests": n * args.per_round, "seconds": round(time.perf_counter() - t0),
                           **sample(proc, url, work, memory, log)})
            shown = {k: v for k, v in rounds[-1].items() if not isinstance(v, dict)}
            print(json.dumps(shown), file=sys.stderr)
    finally:
        stop_service(proc)
        fake.stop()
    first, last = rounds[1], rounds[-1]
    families = sorted(set(first["metric_families"]) | set(last["metric_families"]))
    growth = {k: round(last[k] - first[k], 2) for k in first
              if isinstance(first[k], int | float) and k not in ("round", "requests", "seconds")}
    growth["metric_families"] = {f: last["metric_families"].get(f, 0) - first["metric_families"].get(f, 0)
                                 for f in families
                                 if last["metric_families"].get(f, 0) != first["metric_families"].get(f, 0)}
    result = {"memory": str(args.memory), "rounds": args.rounds, "per_round": args.per_round, "seed": args.seed,
              "kill_every": args.kill_every, "revision": _revision(),
              "requests_by_kind_and_status": dict(sorted(driver.statuses.items())),
              "gemini_requests": fake.count,
              "growth_from_round_1_to_last": growth, "samples": rounds}
    if args.keep:
        result["kept"] = str(work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
