"""`vmem serve`: the classify service (FastAPI on uvicorn) over the embedded memory or a Qdrant server."""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from retrieval.files import mark_served, os_error_reason
from retrieval.store import (
    LOCAL_MODE_PREFIX,
    EdgeMemoryStore,
    MemoryInUseError,
    MemoryStoreError,
    WaitInterrupted,
    local_folder,
)
from retrieval.text import counted, without_secrets

from ._common import (
    EXIT_TEMPORARY,
    WAIT_HELP,
    TemporaryFailure,
    Terminated,
    check_memory_location,
    check_reranker_settings,
    one_line,
    open_failure,
    refuse_both,
    settings_problems,
    sigterm_as_interrupt,
)

log = logging.getLogger(__name__)


SERVICE_LOG_FORMAT = "%(asctime)s %(levelprefix)s %(message)s"
VMEM_LOG_FORMAT = "%(asctime)s %(levelprefix)s %(name)s: %(message)s"


# Open files a service holds besides its connections: about 11 idle (the memory's segments, the answer cache, logs),
# and thumbnails being read.
FILES_BESIDE_CONNECTIONS = 16
# Below this many open files, the service says so at start.
FEW_OPEN_FILES = 1024


def open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit, and return the soft limit now.

    Each connection takes a file: at `ulimit -n 64`, 100 clients at once made asyncio log 106,273 "socket.accept()
    out of system resource" tracebacks in 21 s (47 MB of log). Servers raise the soft limit as a matter of course;
    the hard limit is the operator's."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 1 << 16
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit (macOS) is not a value setrlimit takes for the soft one.
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    # macOS refuses more than OPEN_MAX (10,240) where the hard limit is unlimited: then that.
    for asked in (wanted, min(wanted, 10240)):
        if soft == resource.RLIM_INFINITY or soft >= asked:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (asked, hard))
            soft = asked
        except (ValueError, OSError):
            continue
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class AcceptErrorsOncePerMinute(logging.Filter):
    """asyncio logs each failed accept() with its traceback, and retries at once: out of open files, that was
    thousands of lines a second. One a minute says it, with how many were left out."""

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last = -every_s
        self._left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "socket.accept() out of system resource" not in record.getMessage():
            return True
        now = time.monotonic()
        if now - self._last < self.every_s:
            self._left_out += 1
            return False
        if self._left_out:
            record.msg = f"{record.msg} ({self._left_out} more like it in the last minute)"
            record.exc_info = None  # the same traceback each time
        self._last, self._left_out = now, 0
        return True


def _check_thumbnail_dir(folder: Path) -> None:
    """BadParameter for a VMEM_THUMBNAIL_DIR that cannot be made or written: it had been a 59-line traceback at
    start (cannot be made), or uploads taken with 201 while their thumbnails, an upload's only copy of its
    image, were dropped (cannot be written)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK | os.X_OK)
    except OSError as exc:
        raise typer.BadParameter(f"VMEM_THUMBNAIL_DIR: {folder} cannot be made ({os_error_reason(exc)})",
                                 param_hint="the settings") from None
    if not writable:
        raise typer.BadParameter(f"VMEM_THUMBNAIL_DIR: {folder} is not writable by this user: the thumbnails of "
                                 "uploads (their only copy of the image) could not be kept", param_hint="the settings")


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line (`VMEM_LOG_FORMAT=json`), for a log collector that parses fields: time (ISO 8601 with
    its offset), level, logger, message, and the traceback where there is one."""

    def format(self, record: logging.LogRecord) -> str:
        import json
        from datetime import datetime

        entry = {"time": datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


@contextmanager
def _errors_said_as(log_format: str) -> Iterator[None]:
    """With `VMEM_LOG_FORMAT=json`, an error that ends the start is one JSON object too (level ERROR), as every
    other line: it had been typer's box drawn over several lines, each a separate event to a log collector."""
    if log_format.strip().lower() != "json":
        yield
        return
    try:
        yield
    except (typer.BadParameter, TemporaryFailure, MemoryStoreError) as exc:
        if isinstance(exc, typer.BadParameter | TemporaryFailure):
            message, code = exc.format_message(), exc.exit_code
        else:  # as vmem's commands say it (vmem.cli._Commands)
            message, code = str(exc), EXIT_TEMPORARY if isinstance(exc, MemoryInUseError) else 1
        record = logging.LogRecord("vmem.serve", logging.ERROR, "", 0, f"Error: {message}", None, None)
        typer.echo(JsonLogFormatter().format(record), err=True)
        raise typer.Exit(code) from None


def _service_log_config(log_format: str | None = None) -> dict[str, Any]:
    """uvicorn's logging with a timestamp on every line, vmem's own lines (fallbacks, warnings) through the same
    handler with their logger's name: a service's log is read hours later, beside other services' logs. With
    `VMEM_LOG_FORMAT=json`, every line is a JSON object instead (`JsonLogFormatter`)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["default"]["fmt"] = SERVICE_LOG_FORMAT
    config["formatters"]["access"]["fmt"] = "%(asctime)s " + config["formatters"]["access"]["fmt"]
    config["formatters"]["vmem"] = {**config["formatters"]["default"], "fmt": VMEM_LOG_FORMAT}
    log_format = (log_format or os.environ.get("VMEM_LOG_FORMAT", "text")).strip().lower()
    if log_format not in ("text", "json"):
        raise typer.BadParameter(f"VMEM_LOG_FORMAT is {log_format!r}: give text or json", param_hint="the environment")
    if log_format == "json":
        for name in ("default", "access", "vmem"):
            config["formatters"][name] = {"()": JsonLogFormatter}
    config["handlers"]["vmem"] = {**config["handlers"]["default"], "formatter": "vmem"}
    # -v (the root logger's level, set by the CLI's callback) still decides how much of vmem's own work is told
    config["root"] = {"handlers": ["vmem"], "level": logging.getLevelName(logging.getLogger().level)}
    return config


@contextmanager
def _stop_asked_before_serving(say: Callable[[str], None]) -> Iterator[None]:
    """SIGTERM before uvicorn takes it (the memory's opening, a read-only service's copy, the encoder's load) ends
    the start as asked, with exit 0 as once serving: it had been exit 130, which systemd calls a failure, and
    "interrupted: ... run the command again to finish"."""
    try:
        yield
    except (Terminated, WaitInterrupted) as exc:  # the opening's wait says which interrupt stopped it
        if not isinstance(exc, Terminated) and not isinstance(exc.interrupt, Terminated):
            raise  # Ctrl-C while it waited: as any command's
        say("stopped (SIGTERM) before serving")
        raise typer.Exit(0) from None


# What a memory the service cannot open is blamed on: VMEM_MEMORY as often as --memory (a container's settings)
SERVE_MEMORY_OPTIONS = ("--memory (VMEM_MEMORY)", "--qdrant-url (VMEM_QDRANT_URL)")


# uvicorn's levels: refused among the options, not with a KeyError once the memory is open
LogLevel = StrEnum("LogLevel", {"critical": "critical", "error": "error", "warning": "warning", "info": "info",
                                "debug": "debug", "trace": "trace"})

# What the re-ranker reads from the environment; an env file's are taken too (the environment's own win, as for
# VMEM_* settings): one file for the service's settings held the Gemini key and model, and they were ignored. So was
# its VMEM_TEMPLATES_DIR (the prompts' registry reads it), while its VMEM_GEMINI_MODEL was taken.
RERANKER_ENV = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL", "VMEM_TEMPLATES_DIR")


def _export_reranker_env(env_file: Path) -> None:
    if not env_file.is_file():
        return
    from dotenv import dotenv_values

    for key, value in dotenv_values(env_file, encoding="utf-8").items():
        # A blank variable is unset, as for the VMEM_* settings (env_ignore_empty): the file's value stands
        if value is not None and (key.startswith("VMEM_GEMINI_") or key in RERANKER_ENV) and not os.environ.get(key):
            os.environ[key] = value


def checked_settings(env_file: Path | None, overrides: dict[str, Any]) -> Any:
    """The service's settings (`VMEM_*`, the env file, `overrides`), checked as far as they can be before the
    memory opens, with the re-ranker's variables of the env file exported: BadParameter names what is wrong."""
    from server import Settings

    try:
        settings = Settings(_env_file=env_file or ".env", **overrides)
    except ValidationError as exc:
        raise typer.BadParameter(settings_problems(exc, "VMEM_"), param_hint="the settings") from exc
    except UnicodeDecodeError as exc:  # the env file's, as pydantic-settings reads it
        raise typer.BadParameter(f"{env_file or '.env'} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}): "
                                 "save it as UTF-8", param_hint="--env-file") from exc
    if settings.device is not None:  # checked now: the encoder loads in the app's start-up, as a long traceback
        from retrieval.featurizers import FeaturizerError, usable_device

        try:
            usable_device(settings.device)
        except FeaturizerError as exc:
            raise typer.BadParameter(f"VMEM_DEVICE: {exc}", param_hint="the settings") from None
    if settings.thumbnail_dir is not None:
        _check_thumbnail_dir(settings.thumbnail_dir.expanduser())
    _export_reranker_env(env_file or Path(".env"))
    check_reranker_settings()  # now, not at the first re-rank's 500
    return settings


def _label_auditor(store: Any, progress: Any) -> Any:
    """What `GET /v1/memory/suspects` runs: the label audit (eval), given to the server from out here."""
    from eval.label_audit import audit_labels

    return audit_labels(store, progress=progress)


def create_service_app() -> Any:
    """`vmem serve`'s app for another ASGI server: `uvicorn --factory vmem.cli.serve:create_service_app`. Settings
    from `VMEM_*` and `./.env`, checked as `vmem serve` checks them (a setting that is wrong ends the start with
    one line saying which), and the label audit behind `/v1/memory/suspects` (`server:create_app` alone has none:
    that route answers 404 there). The memory opens in the app's start-up."""
    from server import create_app

    try:
        settings = checked_settings(None, {})
        log_config = _service_log_config(settings.log_format)
    except typer.BadParameter as exc:
        raise SystemExit(f"vmem: {exc.format_message()}") from None
    if not logging.getLogger().handlers:
        # As vmem serve logs: vmem's warnings (a re-ranker's circuit opening) had come out bare, through Python's
        # last-resort handler, with no time, level or logger
        from logging.config import dictConfig

        dictConfig(log_config)
    return create_app(settings, auditor=_label_auditor)


def _startup_summary(mem: Any, settings: Any) -> str:
    """What an operator checks first in a service's log: which memory, how big, which encoder, whether re-ranking
    can work and whether edits need the key (the re-ranker's key had shown only at the first re-rank)."""
    from reranker import GeminiSettings, api_key_from_env

    rerank = (f"re-rank with {GeminiSettings().model}" if api_key_from_env()
              else "no Gemini key (GEMINI_API_KEY): re-ranked requests fall back to the vote")
    source = getattr(mem.store, "source", None)  # which backup a replica started on a backup folder's `latest` serves
    edits = ((f"read-only (a copy of {one_line(str(source))})" if source else "read-only") + ": every edit is refused"
             if settings.read_only else
             "anyone may edit" if settings.auth_disabled else "edits need the API key")
    if settings.api_keys_file is not None and not settings.auth_disabled and not settings.read_only:
        from server.keys import read_keys_file

        named = [k.name if "edit" in k.scopes else f"{k.name} [re-ranks only]"
                 for k in read_keys_file(settings.api_keys_file)]
        edits = (f"edits need an API key: {'VMEM_API_KEY or ' if settings.api_key else ''}one of "
                 f"{settings.api_keys_file} ({', '.join(named)})")
    return (f"{counted(mem.store.count(), 'point')}, {mem.store.meta.featurizer.name} features; {rerank}; {edits}")


def _template_warnings(registry: Any) -> list[str]:
    """A warning per template the service cannot offer (a broken file in $VMEM_TEMPLATES_DIR, or that folder missing),
    as `vmem templates list` says it: said at the start, where it had shown only in GET /v1/templates and in the 422
    of a request that named it."""
    if registry is None:
        return []
    return [f"warning: {problem}" for problem in registry.problems()]  # read again if its files changed


def _graceful_shutdown_s() -> float:
    """How long a stop waits for requests in flight: past a re-rank's deadline (in flight, it falls back to the vote
    by then), and short of systemd's 90 s before its SIGKILL, which skips closing the memory. Unbounded, a client
    trickling an upload held the stop 38 s, and a slower one would have been killed."""
    from reranker import GeminiSettings

    return min(GeminiSettings().deadline_s + 10, 80.0)


def _held_folder(store: Any) -> Path | None:
    """The folder of a memory this process holds alone (embedded, or qdrant-client's local mode); None for one
    other processes may open too (a Qdrant server's, a read-only copy)."""
    if isinstance(store, EdgeMemoryStore):
        return None if store.read_only else store.path
    location = str(getattr(store, "location", ""))
    return local_folder(location) if location.startswith(LOCAL_MODE_PREFIX) else None


def _url_host(host: str) -> str:
    """`host` as a URL writes it (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def _local_host(host: str) -> str:
    """The address a client on this machine reaches a service listening on `host` at, as a URL writes it."""
    return _url_host({"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host))


def _reserve_free_port(host: str) -> tuple[int, socket.socket | None]:
    """A port of `host` no process listens on, for --port 0: known before uvicorn listens on it, so the URL vmem
    serve writes for the CLI (.vmem-served.json) names it. On Linux the socket that found it stays bound
    (SO_REUSEADDR, not listening) until the service stops, keeping the port from other processes while the memory
    opens, which uvicorn, binding it with SO_REUSEADDR too, is allowed; elsewhere it is closed (None)."""
    family = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = int(sock.getsockname()[1])
    if sys.platform != "linux":
        sock.close()
        return port, None
    return port, sock


def _check_port_free(host: str, port: int) -> None:
    """TemporaryFailure where another process listens on `host:port`, where uvicorn's bind had found it once the
    encoder was warmed up, exiting 3 with "[Errno 98] ... address already in use". Bound by the call uvicorn makes
    (asyncio's create_server), then let go at once: each address the host names (`localhost`: 127.0.0.1 and ::1),
    SO_REUSEADDR (a port left in TIME_WAIT by a service just stopped is free), and IPv6 only (`::` beside another
    process's 0.0.0.0 binds, where a socket of both families, as a plain bind of `::` makes, did not)."""
    import asyncio

    async def bind() -> None:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, host, port)
        server.close()
        await server.wait_closed()

    try:
        asyncio.run(bind())
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:  # a host that cannot be bound: uvicorn says so, as before
            return
        raise TemporaryFailure(f"port {port} of {host} is taken by another process (another vmem serve?): stop it, "
                               "or give another --port (--port 0: a free one)") from None


def serve(
    memory: Annotated[Path | None, typer.Option("--memory", "-m", help="embedded memory directory "
                                                "\\[default: $VMEM_MEMORY or ./memory]")] = None,
    qdrant_url: Annotated[str | None, typer.Option("--qdrant-url", help="serve a memory on a Qdrant server "
                                                   "(http://host:6333) instead")] = None,
    host: Annotated[str, typer.Option(help="interface to listen on (0.0.0.0 for every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port")] = 8000,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="let anyone edit the memory (trusted networks "
                                          "only); otherwise $VMEM_API_KEY or $VMEM_API_KEYS_FILE is required")] = False,
    env_file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="read VMEM_* settings from "
                                                  "this file \\[default: ./.env when present]")] = None,
    threads: Annotated[int | None, typer.Option(min=1, max=64, help="threads that embed images")] = None,
    # A setting of the service's (VMEM_WAIT, of the environment or the env file), as --read-only is: typer's own
    # reading of VMEM_WAIT took the environment's only, and one in the service's .env was ignored
    wait: Annotated[float | None, typer.Option(
        "--wait", min=0, show_default=False, metavar="SECONDS", help=WAIT_HELP + " \\[default: $VMEM_WAIT, else 0]")
    ] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="classify only, every edit refused (as "
                                            "$VMEM_READ_ONLY=true): a copy of the memory in TMPDIR is served, so its "
                                            "folder may be read-only and other services may serve it too")] = False,
    log_level: Annotated[LogLevel, typer.Option(help="uvicorn log level")] = LogLevel.info,
    root_path: Annotated[str, typer.Option(help="the path prefix a reverse proxy serves this under and strips "
                                                "(e.g. /vmem): the URLs the service hands out carry it")] = "",
    forwarded_allow_ips: Annotated[str | None, typer.Option(
        help="addresses of the proxies whose X-Forwarded-For/-Proto to believe, comma-separated, or * "
             "\\[default: $FORWARDED_ALLOW_IPS, else loopback]: a proxy elsewhere needs its address here, or the log "
             "names the proxy, not the client, and redirects say http")] = None,
) -> None:
    """Serve the memory over HTTP: classify, add, forget, and a page at / that shows why."""
    from server import create_app
    from server.app import open_memory
    from server.service import template_registry

    refuse_both(memory, qdrant_url)
    if root_path and not root_path.startswith("/"):
        # Without the slash every URL handed out is relative to the page's, and the browser doubled the prefix
        raise typer.BadParameter(f"{root_path!r} lacks its leading /: give --root-path /{root_path}",
                                 param_hint="--root-path")
    overrides: dict[str, Any] = {"memory": str(memory) if memory else None, "qdrant_url": qdrant_url,
                                 "featurize_threads": threads, "auth_disabled": True if no_auth else None,
                                 "read_only": True if read_only else None, "wait": wait}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if memory and not qdrant_url:  # an explicit --memory is served, whatever VMEM_QDRANT_URL says
        overrides["qdrant_url"] = None
    with _errors_said_as(os.environ.get("VMEM_LOG_FORMAT", "")):  # the settings are not read yet
        settings = checked_settings(env_file, overrides)
    log_config = _service_log_config(settings.log_format)  # VMEM_LOG_FORMAT of the environment or the env file
    # Taken now, not at uvicorn's start: vmem's lines before it (a --wait for the memory's holder, said once) had come
    # out through the CLI's plain handler, a text line among the JSON ones
    from logging.config import dictConfig

    dictConfig(log_config)

    def say(message: str, level: int = logging.INFO) -> None:
        """A line of vmem serve's own, before uvicorn's logging starts: as a JSON object too where asked."""
        if settings.log_format == "json":
            message = JsonLogFormatter().format(logging.LogRecord("vmem.serve", level, "", 0, message, None, None))
        typer.echo(message, err=True)

    if settings.auth_disabled:  # read-only, nobody edits: what the key guards there is said instead
        say("warning: authentication is disabled: anyone who can reach the port can " + (
            "export the memory's points, re-rank (Gemini, paid per call) and back it up" if settings.read_only
            else "edit the memory"), logging.WARNING)
    memory_path, url = Path(settings.memory), settings.qdrant_url
    # SIGTERM (docker stop, Kubernetes, systemd) as Ctrl-C: uvicorn finishes the requests in flight, then raises the
    # signal again, which had killed the process before the memory was closed (its last writes left to the engine's
    # log, a read-only service's copy left in TMPDIR) with exit 143. Now the memory closes and the exit is 0.
    with _stop_asked_before_serving(say), sigterm_as_interrupt(), _errors_said_as(settings.log_format):
        check_memory_location(memory_path, url, SERVE_MEMORY_OPTIONS)
        try:
            mem = open_memory(settings)  # opened here, so a missing memory is a one-line error, not a traceback
        except Exception as exc:
            or_read_only = "" if settings.read_only else (
                "; or serve it as it is, for classify only: vmem serve --read-only (VMEM_READ_ONLY=true)")
            if (problem := open_failure(memory_path, url, exc, SERVE_MEMORY_OPTIONS, or_read_only)) is None:
                raise
            raise problem from exc
        for dead in getattr(mem.store, "dead_copies_removed", ()):  # logged as it opened, before any logging here
            say(f"removed {dead}: the copy of a memory a read-only service killed before its close had served")
        served = reserved = None
        given_port = port != 0  # not one found free here (--port 0), which this process holds meanwhile
        try:
            if port == 0:
                with suppress(OSError):  # a host that cannot be bound: uvicorn says so, as before
                    port, reserved = _reserve_free_port(host)
            app = create_app(settings, memory=mem, auditor=_label_auditor)
            prefix = root_path.rstrip("/")
            if (folder := _held_folder(mem.store)) is not None:
                # The CLI is refused the memory meanwhile (one process at a time): it says where to ask instead, at
                # the service's own address, where a proxy's prefix (--root-path), which the proxy strips, is a 404
                served = mark_served(folder, [f"http://{_local_host(host)}:{port}"] if port else [])
            where = (f"http://{_url_host(host)}:{port}" if port
                     else f"a free port of {host} (uvicorn's line below names it)")
            say(f"serving {without_secrets(settings.location)} on {where} (page at /, API docs at /docs)"
                + (f", behind a proxy at {prefix}/" if prefix else "") + f": {_startup_summary(mem, settings)}")
            for warning in _template_warnings(template_registry(mem)):
                say(warning, logging.WARNING)
            files = open_files_limit()
            if files < FEW_OPEN_FILES:
                # No limit_concurrency: uvicorn counts idle keep-alive connections, and past its limit answered every
                # request on every connection with a plain-text 503. Past the files, a new connection waits instead.
                say(f"warning: this process may open {files} files only (ulimit -n): past about "
                    f"{files - FILES_BESIDE_CONNECTIONS} connections at once, new ones wait to be accepted",
                    logging.WARNING)
            logging.getLogger("asyncio").addFilter(AcceptErrorsOncePerMinute())
            forced = run_uvicorn(
                app, host=host, port=port, log_level=log_level.value, root_path=prefix,
                forwarded_allow_ips=forwarded_allow_ips, log_config=log_config,
                timeout_graceful_shutdown=_graceful_shutdown_s(), http=_probing_http_protocol(),
                check_port=given_port)
        finally:
            if served is not None:
                served.unlink(missing_ok=True)
            if reserved is not None:
                reserved.close()
            mem.close()
    if forced:
        # The threads of the requests cut off are still waiting (on Gemini, up to its deadline), and the
        # interpreter's exit would wait for them: the memory is closed, nothing is left to do
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


# A client gone without a word mid-request (its host off, a NAT's mapping dropped, a network cut: no FIN ever comes):
# uvicorn waits for the rest of its request without end, and each such connection had held a file for good, until a
# service up for weeks ran out of them. The kernel probes a connection idle this long, and closes it once this many
# probes this far apart go unanswered: about 2 minutes. A live client's kernel answers the probes, whatever it sends.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 60, 15, 4


def probe_idle_peers(sock: Any) -> None:
    """Turn TCP keep-alive probes on for an accepted connection (a Unix socket is left as it is)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                            ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
            if hasattr(socket, name):  # Linux's; elsewhere the system's defaults (hours) apply
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _probing_http_protocol() -> type:
    """uvicorn's HTTP protocol, each connection's peer probed (`probe_idle_peers`)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class ProbingHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: Any) -> None:
            if (sock := transport.get_extra_info("socket")) is not None:
                probe_idle_peers(sock)
            super().connection_made(transport)

    return ProbingHTTPProtocol


def run_uvicorn(app: Any, check_port: bool = False, **options: Any) -> bool:
    """`uvicorn.run(app, **options)`, a second Ctrl-C included (`_server`): whether the stop was forced so.
    `check_port`: a port another process listens on is a TemporaryFailure, said before the app's start (the encoder
    warmed up) and not as uvicorn's bind error, exit 3."""
    import uvicorn

    if check_port:
        _check_port_free(options.get("host", "127.0.0.1"), int(options.get("port", 8000)))

    server = _server(uvicorn.Config(app, **options))
    with suppress(KeyboardInterrupt):  # as uvicorn.run: the Ctrl-C it raises again once stopped
        server.run()
    if not server.started:
        sys.exit(3)  # as uvicorn.run: the port taken, the app's startup failed (said above)
    return bool(server.force_exit)


def _server(config: Any) -> Any:
    """uvicorn's server, but for a second Ctrl-C: uvicorn then stops waiting for the requests in flight and skips the
    app's shutdown, whose task the loop's end cancelled (a CancelledError traceback), and the service's threads were
    left to finish their work. It says so in a line, and the app shuts down (its threads told to stop)."""
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit and sig == signal.SIGINT and not self.force_exit:
                n = len(self.server_state.tasks)
                log.warning("Ctrl-C again: stopping at once; %d request%s in flight cut off", n, "s" * (n != 1))
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await super().shutdown(sockets)
            if self.force_exit:
                await self.lifespan.shutdown()

    return Server(config)
