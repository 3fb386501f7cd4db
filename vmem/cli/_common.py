"""Options and helpers shared by the command groups."""

from __future__ import annotations

import os
import random
import shlex
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, get_args

import typer

from retrieval import DatasetError, FeaturizerError, IndexSettings, MemoryError, MemoryUnavailableError
from retrieval.files import DISK_FULL_ERRNOS, os_error_reason, served_by
from retrieval.images import failure_line, files_under, is_image_path, is_unread_file, unread_files_message
from retrieval.store import ENGINE_ACCESS_ERRORS, MemoryMetadataError, NoMemoryError
from retrieval.text import canonical_label, counted, quoted, visible, without_secrets

from ..results import FewPoints

# $VMEM_MEMORY as `vmem serve` reads it: a shell that exports it for the service had every other command open
# (or `vmem build` make) ./memory instead.
MemoryOpt = Annotated[Path, typer.Option("--memory", "-m", envvar="VMEM_MEMORY", show_envvar=False, show_default=False,
                                         help="embedded memory directory \\[default: $VMEM_MEMORY or ./memory]")]
QdrantUrlOpt = Annotated[
    str | None, typer.Option("--qdrant-url", help="use a Qdrant server (http://host:6333) instead")
]
# How long a command waits for another process that holds the embedded memory (a notebook, a service, a build) to
# let go: a nightly `vmem build` beside a notebook had been refused at once (exit 75).
WAIT_HELP = ("wait up to SECONDS for another process that holds the embedded memory to let go (said once, who it "
             "is), then go on; refused as without it (exit 75) past that")
WaitOpt = Annotated[float, typer.Option(
    "--wait", min=0, envvar="VMEM_WAIT", show_envvar=False, show_default=False, metavar="SECONDS",
    help=WAIT_HELP + " \\[default: $VMEM_WAIT, else 0: at once]")]
# vmem info and history read a memory another process holds from its files at once: they wait only for one being made
CreatedWaitOpt = Annotated[float, typer.Option(
    "--wait", min=0, envvar="VMEM_WAIT", show_envvar=False, show_default=False, metavar="SECONDS",
    help="wait up to SECONDS for another process creating the embedded memory (a first vmem build) to make it "
         "(said once, who it is), then go on; refused as without it (exit 75) past that. A memory another process "
         "holds is read from its files at once \\[default: $VMEM_WAIT, else 0: at once]")]
DEFAULT_MEMORY = Path("memory")
LISTED_BY = "vmem labels"  # where an error about labels sends the user to see them all


def label_history(label: str) -> str:
    """The command that lists a label's edits, as a note names it (`VisualMemory.no_label_note`): typed as shown."""
    return visible(f"vmem history --label {shlex.quote(label)}")


# Derived from IndexSettings so the CLI offers exactly what the store accepts.
Quantization = StrEnum("Quantization", {q: q for q in get_args(IndexSettings.model_fields["quantization"].annotation)})  # type: ignore[misc]  # from the Literal
VectorsDtype = StrEnum("VectorsDtype", {t: t for t in get_args(IndexSettings.model_fields["vectors_dtype"].annotation)})  # type: ignore[misc]  # from the Literal


def one_line(text: str | None) -> str:
    """A path or label as a field of a tab-separated line: control characters (a newline or tab in a file name)
    escaped as Python writes them, so that one point stays one line and its fields stay apart, and so are the
    characters a terminal shows as nothing or that reorder the line (U+202E, U+200B: `visible`)."""
    return visible(text or "")


def settings_problems(exc, prefix: str) -> str:
    """A pydantic-settings ValidationError as the environment variables to mend: `VMEM_GEMINI_DEADLINE_S: Input
    should be a valid number` (the bare message did not say which of twenty settings it was)."""
    return "; ".join(f"{prefix}{str(e['loc'][0]).upper()}: {e['msg'].removeprefix('Value error, ')}" if e["loc"]
                     else e["msg"].removeprefix("Value error, ") for e in exc.errors())


def check_reranker_settings() -> None:
    """BadParameter for a `VMEM_GEMINI_*` setting that does not parse, before a memory opens: it was found at the
    first re-rank (a service said it was ready, then answered 500s)."""
    from pydantic import ValidationError

    from reranker import GeminiSettings, http_url_problem

    try:
        GeminiSettings()
    except ValidationError as exc:
        raise typer.BadParameter(settings_problems(exc, "VMEM_GEMINI_"), param_hint="the environment") from None
    # read by google-genai itself
    if problem := http_url_problem(os.environ.get("GOOGLE_GEMINI_BASE_URL")):
        raise typer.BadParameter(f"GOOGLE_GEMINI_BASE_URL: {problem}", param_hint="the environment")


def check_vote_value(name: str, value: float, param_hint: str) -> None:
    """BadParameter for an α or τ a memory's vote settings refuse (NaN, 0, negative, past the bounds): classify
    refused them, and an evaluation scored with one wrote 0 % curves."""
    from pydantic import ValidationError

    from vmem.results import VoteSettings

    try:
        VoteSettings(**{name: value})
    except ValidationError as exc:
        raise typer.BadParameter(f"{name} {value:g} is not a valid vote setting ({exc.errors()[0]['msg']})",
                                 param_hint=param_hint) from exc


def say_few_points(few: list[FewPoints], most: int = 5) -> None:
    """A note (stderr) per label too few to win the memory's vote, as `VisualMemory.few_point_labels` finds them."""
    for f in few[:most]:
        typer.echo(f"note: {f.note}", err=True)
    if len(few) > most:
        typer.echo(f"note: and {len(few) - most:,} more such labels (vmem info --json: few_points)", err=True)


def n_points(n: int) -> str:
    """`1 point`, `2 points`."""
    return counted(n, "point")


def named_label(label: str, names: dict[str, str]) -> str:
    """A label as every command prints it: `n02124075 (Egyptian cat)`, or the label alone when unnamed."""
    name = names.get(label)
    return one_line(f"{label} ({name})" if name and name != label else label)  # a tab in a label splits no line


def memory_location(memory: Path, qdrant_url: str | None) -> str:
    return qdrant_url or str(memory)


def at_rest_location(memory: Path, qdrant_url: str | None) -> str | None:
    """Where a command that only reads may first try the memory's files alone (`stats_from_files`): an embedded
    memory's folder, checked as `open_memory` checks it; None for a memory on a server."""
    if qdrant_url is not None:
        return None
    check_memory_location(memory, None)
    return str(memory)


def open_memory(memory: Path, qdrant_url: str | None, featurizer: str | None = None, create: bool = False,
                index: IndexSettings | None = None, opener: Callable[[str], Any] | None = None, wait: float = 0.0):
    """The memory, or a BadParameter that says what is wrong with it (never a traceback for the usual mistakes).
    `opener`: opens the memory at a location in place of `VisualMemory.open` (`VisualMemory.open_for_import`);
    `wait`: seconds to wait for another process that holds it to let go (--wait)."""
    from vmem import VisualMemory

    if qdrant_url is not None and memory == Path(os.environ.get("VMEM_MEMORY") or DEFAULT_MEMORY):
        memory = DEFAULT_MEMORY  # --qdrant-url wins over $VMEM_MEMORY, as in vmem serve (typer says not whence)
    refuse_both(memory if memory != DEFAULT_MEMORY else None, qdrant_url)
    check_memory_location(memory, qdrant_url)
    try:
        location = memory_location(memory, qdrant_url)
        # SIGTERM while it waits (`timeout`, a CI job's limit) said as Ctrl-C is, nothing done: it had ended unsaid
        with sigterm_as_interrupt():
            mem = opener(location) if opener is not None else VisualMemory.open(location, featurizer=featurizer,
                                                                                 create=create, index=index, wait=wait)
        mem.via = "cli"  # as the journal records who edited
        return mem
    except NoMemoryError as exc:  # said for the command line: vmem build, not VisualMemory.open's create=True
        raise NoMemoryError(exc.fact) from None
    except Exception as exc:
        if (problem := open_failure(memory, qdrant_url, exc)) is None:
            raise
        raise problem from exc


def refuse_both(memory: Path | None, qdrant_url: str | None) -> None:
    """BadParameter for a --memory given beside a --qdrant-url: one of them would be ignored without a word."""
    if memory is not None and qdrant_url is not None:
        raise typer.BadParameter(f"give --memory {memory} or --qdrant-url {without_secrets(qdrant_url)}, not both",
                                 param_hint="--qdrant-url")


# The options that name a memory: (directory, server URL). `vmem copy` names its destination with its own.
MEMORY_OPTIONS = ("--memory", "--qdrant-url")


def check_memory_location(memory: Path, qdrant_url: str | None, options: tuple[str, str] = MEMORY_OPTIONS) -> None:
    """BadParameter for a --qdrant-url that is not a server's URL, or a --memory that is a file."""
    if qdrant_url is not None:
        _check_qdrant_url(qdrant_url, options[1])
    elif memory.exists() and not memory.is_dir():
        raise typer.BadParameter(f"{memory} is a file, not a memory directory: give a new or existing directory",
                                 param_hint=options[0])


# The ClickException typer catches and prints: typer 0.29 carries its own copy of click, older ones use click's.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class TemporaryFailure(_ClickException):  # type: ignore[misc, valid-type]  # a base found at run time
    """A failure a retry may not meet (the memory's server unreachable, the memory open in another process):
    exit 75 (EX_TEMPFAIL), so that a script or a scheduler can tell it from a mistake in the command (2)."""

    exit_code = 75


EXIT_TEMPORARY = TemporaryFailure.exit_code


# What a running vmem serve answers in place of each command: its route, said where the service holds the memory
SERVED_ROUTES = {
    "info": "GET /v1/memory/stats", "labels": "GET /v1/memory/stats", "points": "GET /v1/memory/points",
    "export": "GET /v1/memory/export", "suspects": "GET /v1/memory/suspects", "history": "GET /v1/memory/history",
    "classify": "POST /v1/classify", "build": "POST /v1/memory", "forget": "DELETE /v1/memory",
    "relabel": "POST /v1/memory/relabel", "names": "PUT /v1/memory/label-names", "import": "POST /v1/memory/import",
    "backup": "POST /v1/memory/backup", "erase": "POST /v1/memory/erase",
}


def served_note(folder: Path, command: str | None) -> str:
    """Where a running `vmem serve` serves the memory in `folder` (the file it writes there), and its route for
    `command`: `served by vmem serve (pid 812) at http://127.0.0.1:8000: ask it, GET
    http://127.0.0.1:8000/v1/memory/points`. Empty where no service says it serves it."""
    if (said := served_by(folder)) is None:
        return ""
    # The file is any writer's of the folder: a newline or a terminal's escape in it would make this one line
    # several (a forged "Error:" line) or retitle the terminal
    urls = [one_line(str(u)) for u in said.get("urls") or []]  # type: ignore[attr-defined]  # a list, as written
    host = "" if said["here"] else f" on {one_line(str(said['host']))}"
    note = f"served by vmem serve (pid {said['pid']}{host})" + (f" at {urls[0]}" if urls else "")
    if (route := SERVED_ROUTES.get(command or "")) is None:
        return note
    method, path = route.split(" ", 1)
    return f"{note}: ask it, {method} {urls[0] if urls else ''}{path}"


def open_failure(memory: Path, qdrant_url: str | None, exc: Exception,
                 options: tuple[str, str] = MEMORY_OPTIONS, unwritable_also: str = "") -> Exception | None:
    """What went wrong opening the memory, said for the user; None for a failure that is not theirs to fix.
    `unwritable_also` ends what is said of a memory this user may not write (what else the command can do)."""
    from pydantic import ValidationError

    if isinstance(exc, MemoryUnavailableError):
        return TemporaryFailure(str(exc))
    if isinstance(exc, MemoryMetadataError):  # no plain file: refused as a corrupt one is (exit 2)
        return typer.BadParameter(str(exc))
    if isinstance(exc, MemoryError):  # in use by another process: the command was right (vmem's main says it)
        return None
    if isinstance(exc, FeaturizerError):
        return typer.BadParameter(str(exc))
    if isinstance(exc, ValidationError | UnicodeDecodeError):  # the memory's stored metadata
        return typer.BadParameter(_bad_metadata(memory, qdrant_url, exc))
    if qdrant_url is not None:
        problem = _qdrant_problem(qdrant_url, exc)
        return typer.BadParameter(problem, param_hint=options[1]) if problem else None
    if getattr(exc, "errno", None) in DISK_FULL_ERRNOS or "No space left on device" in str(exc):
        # Not a mistake in the command: the engine writes as it opens a memory (its config, its log), and a full
        # disk had been a 25-line traceback, or an exit 2 saying to give a writable directory.
        return TemporaryFailure(f"the disk holding the memory {memory} is full (the engine writes as it opens a "
                                "memory): free some space, then run the command again")
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename and Path(exc.filename) != memory else ""
        return typer.BadParameter(f"cannot open or create the memory directory {memory}: {os_error_reason(exc)}"
                                  f"{where}: give a directory you can write to{_owner_note(memory)}{unwritable_also}",
                                  param_hint=options[0])
    if any(words in str(exc) for words in ENGINE_ACCESS_ERRORS):
        # The engine's own error, as one line: it had been a 54-line traceback (files the user may not write,
        # in a folder whose lock file they may).
        said = ": ".join(str(exc).strip().splitlines()[0].split(": ")[-2:])  # "Failed to open ...: Permission denied"
        return typer.BadParameter(f"cannot open the memory's files in {memory} ({said}): they must be writable by "
                                  f"this user, even to read them{_owner_note(memory)}{unwritable_also}",
                                  param_hint=options[0])
    return None


def _owner_note(memory: Path, most: int = 10_000) -> str:
    """Whose the memory's files are, where some are not this user's: a memory restored by root (a backup copied
    back, `vmem info` run as root, which rewrites a few files) had said only "Permission denied" to the service's
    own user. Empty where all are this user's, or the owner cannot be told."""
    if not hasattr(os, "geteuid"):
        return ""
    me, seen = os.geteuid(), 0
    try:
        for root, dirs, files in os.walk(memory):
            for name in [".", *dirs, *files]:
                seen += 1
                owner = os.lstat(os.path.join(root, name)).st_uid
                if owner != me:
                    return (f" (its files belong to {_user_name(owner)}, and this process runs as {_user_name(me)}: "
                            f"give them to this user, `chown -R {me} {memory}`)")
                if seen >= most:
                    return ""
    except OSError:
        return ""
    return ""


def _user_name(uid: int) -> str:
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:  # a container's user with no entry in /etc/passwd
        return f"uid {uid}"



def _check_qdrant_url(url: str, option: str = "--qdrant-url") -> None:
    """BadParameter unless `url` is an http(s) URL with a host (`localhost:6333` would be a directory's name)."""
    from urllib.parse import urlsplit

    if url == ":memory:" or url.startswith("qdrant-local:"):  # open_store's test and local modes
        return
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # e.g. a port out of range, an unclosed [IPv6 address
        ok = False
    if not ok:
        raise typer.BadParameter(f"{without_secrets(url)!r} is not a Qdrant server URL: give it as http://host:6333",
                                 param_hint=option)


def _bad_metadata(memory: Path, qdrant_url: str | None, exc: ValueError) -> str:
    from retrieval.store import META_FILE

    if isinstance(exc, UnicodeDecodeError):
        detail = "not UTF-8 text"
    else:
        first = exc.errors()[0]  # type: ignore[attr-defined]
        loc = ".".join(str(x) for x in first["loc"])
        detail = f"{loc}: {first['msg']}" if loc else first["msg"]
        if len(exc.errors()) > 1:  # type: ignore[attr-defined]
            detail += f"; and {len(exc.errors()) - 1} more problems"  # type: ignore[attr-defined, operator]
    if qdrant_url is not None:
        return (f"the vmem metadata of the collection at {without_secrets(qdrant_url)} is not valid ({detail}): "
                "build the memory again in a new collection")
    return (f"{memory / META_FILE}, the memory's metadata, is corrupt ({detail}): restore it from a backup, "
            "or build the memory again in a new directory")


def _qdrant_problem(url: str, exc: Exception) -> str | None:
    """What went wrong talking to the Qdrant server, or None if `exc` is not about that."""
    from qdrant_client.http.exceptions import UnexpectedResponse

    # One that could not be reached, or failed (5xx), is the store's MemoryUnavailableError, said as it is.
    if isinstance(exc, UnexpectedResponse):
        status = f"{exc.status_code} {exc.reason_phrase}".strip()
        return (f"the server at {without_secrets(url)} answered {status}, not as a Qdrant server does: check the URL "
                "(http://host:6333)")
    return None


def feature_cache_root(cache: Path | None) -> Path:
    """Where eval, tune and experiments cache dataset features: --cache, else the default. A BadParameter naming
    the ways to move it where it cannot be made or written (an unwritable or unknown home had been a traceback
    after the dataset was read)."""
    from eval.harness import default_feature_cache_dir

    root: Path | str = cache or "the default folder"
    try:
        root = cache.expanduser() if cache else default_feature_cache_dir()  # as FeatureCache takes it
        # Checked, not made: the cache makes it when first used, and a command refused later leaves nothing.
        existing = next(p for p in (root, *root.absolute().parents) if os.path.lexists(p))
        if not existing.is_dir():  # a file, or a link leading nowhere (mkdir would then raise FileExistsError)
            raise NotADirectoryError(20, "not a directory", str(existing))
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(13, "permission denied", str(existing))
    except OSError as exc:
        raise typer.BadParameter(f"dataset features cannot be cached at {root} ({os_error_reason(exc)}): give "
                                 "--cache DIR, or set VMEM_FEATURE_CACHE or VMEM_HOME to a writable folder",
                                 param_hint="--cache") from None
    return root


def unread_file_said(exc: Exception) -> str:
    """A file given that could not be read, as a refusal says it: a DatasetError's own words; an OSError as `cannot
    read names.tsv (No such file or directory)`, its name shown as `visible` does, where its text had been Python's
    `[Errno 2] No such file or directory: 'names.tsv'` (the name by repr)."""
    if not isinstance(exc, OSError):
        return str(exc)
    name = f" {visible(os.fsdecode(exc.filename))}" if isinstance(exc.filename, str | bytes) else ""
    return f"cannot read{name} ({os_error_reason(exc)})"


def read_classes_option(classes: Path | None) -> dict[str, str] | None:
    """A `--classes` file (WordNet id to name), or BadParameter naming the option."""
    from eval.datasets import read_classes_file

    try:
        return read_classes_file(classes) if classes else None
    except (DatasetError, OSError) as exc:
        raise typer.BadParameter(unread_file_said(exc), param_hint="--classes") from exc


def check_label_filter(mem, labels: list[str]) -> None:
    """BadParameter for a --label the memory lacks (or whose points are all hard-pruned): it would leave every
    answer empty. Names which label a name given instead belongs to, and some of the labels there are."""
    if not labels or not (unknown := mem.unknown_labels(labels)):
        return
    raise typer.BadParameter(mem.unknown_labels_message(unknown, LISTED_BY), param_hint="--label")


def require_points(mem, searchable: bool = True) -> None:
    """BadParameter unless the memory holds points a search can return (searching an empty one fails deep inside);
    any points, not `searchable`."""
    from vmem import NothingToSearchError

    total = mem.store.count()
    if total == 0 or (searchable and mem.store.count(searchable=True) == 0):
        where = f"the memory at {without_secrets(mem.store.location)}"
        raise typer.BadParameter(str(NothingToSearchError.of(total, where,
                                                             add="add labelled images with vmem build first")))


def parse_tags(tags: list[str] | None) -> dict[str, str]:
    """`--tag KEY=VALUE` options as a dict; BadParameter for one without a key and `=`."""
    out: dict[str, str] = {}
    for t in tags or []:
        key, eq, value = t.partition("=")
        if not eq or not key.strip():
            raise typer.BadParameter(f"{t!r} is not KEY=VALUE: tags are key=value pairs, e.g. --tag split=train",
                                     param_hint="--tag")
        out[key] = value
    return out


def dataset_format(path: Path, fmt: str) -> str:
    """`fmt`, except that a .csv file left at the default imagefolder layout is a path,label manifest, as
    `vmem build` reads it (an ImageFolder is a directory, never a file)."""
    if fmt == "imagefolder" and path.suffix.lower() == ".csv" and path.is_file():
        return "csv"
    return fmt


def true_label(source: Path, roots: list[Path]) -> str:
    """An image's label by folder: the folder under the given root that holds it (nested images too), or its parent."""
    for root in roots:
        if source.is_relative_to(root) and len(parts := source.relative_to(root).parts) > 1:
            return canonical_label(parts[0])
    return canonical_label(source.parent.name)


def finish_classify(results: list, failed: list, images: list[Path], skips_said: bool = False,
                    known_labels: set[str] | None = None) -> int:
    """Name each skipped image (once: not if `skips_said`), exit 1 if none was classified; how many folder names
    agree with the answer.

    The count is for --truth-from-dirs: an image's label by folder as `true_label` reads it. With `known_labels`
    (the memory's), a note names the folders that are no label of it: their images can never be right, and an
    accuracy of 0 % had come with no word why (a class just forgotten, a folder named by the label's name).
    """
    for f in [] if skips_said else failed:
        typer.echo(f"skipped {failure_line(f.source, f.reason, escaped=True)}", err=True)
    if not results:
        typer.echo(f"no image could be classified ({len(failed)} skipped): give image files (JPEG, PNG, ...) "
                   "or folders of them", err=True)
        raise typer.Exit(1)
    truths = true_labels(results, images)
    known = {canonical_label(lab) for lab in known_labels} if known_labels is not None else set()
    if known_labels is not None and (unknown := Counter(t for t in truths if t not in known)):
        shown = ", ".join(f"{quoted(t)} ({n:,})" for t, n in unknown.most_common(5))
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        n_unknown = sum(unknown.values())
        are = "is" if n_unknown == 1 else "are"
        folders = "a folder that is" if len(unknown) == 1 else "folders that are"
        typer.echo(f"note: {n_unknown:,} of the {counted(len(truths), 'image')} {are} in {folders} no label of this "
                   f"memory, and {are} counted wrong: {shown}{more} (vmem labels lists its labels)", err=True)
    return sum(answers_right(results, truths))


def true_labels(results: list, images: list[Path]) -> list[str]:
    """Each answer's label by its folder (--truth-from-dirs), as `true_label` reads it, canonically spelled."""
    # Absolute, with links left as they are: an image's path is the folder given plus its place under it (a
    # relative or linked folder resolved did not hold the images named through it: every answer counted wrong).
    roots = [Path(os.path.abspath(p)) for p in images if p.is_dir()]
    # Compared as read canonically: an older memory holds a Mac's folder "café" decomposed
    return [true_label(Path(os.path.abspath(r.source or "")), roots) for r in results]


def answers_right(results: list, truths: list[str]) -> list[bool]:
    """Whether each answer's label is its folder's (`true_labels`)."""
    return [truth == canonical_label(r.label or "") for truth, r in zip(truths, results, strict=True)]


def expand_images(paths: list[Path], sample: int | None = None, seed: int = 0) -> list[Path]:
    """Files as given; directories expanded to their images (recursively, sorted)."""
    out: list[Path] = []
    unread: list[Path] = []
    for p in paths:
        if p.is_dir():
            files = files_under(p)
            # A link to no file (its target gone, or a loop) is kept, to be skipped with its reason, not dropped unsaid
            out += [f for f in files if is_image_path(f) and (f.is_file() or f.is_symlink())]
            unread += [f for f in files if f.is_file() and is_unread_file(f)]
        else:
            out.append(p)
    if unread:
        typer.echo(f"note: {unread_files_message(unread)}", err=True)
    if sample is not None:
        # Drawn from the files in one order, whatever the order of the arguments (and each file once): the same
        # folders given the other way round drew another sample with the same seed.
        everything = sorted(dict.fromkeys(out))
        if sample < len(everything):
            out = sorted(random.Random(seed).sample(everything, sample))
    return out


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is (`sigterm_as_interrupt`): caught wherever Ctrl-C is, and told from it where the
    two end differently (a service asked to stop as it starts)."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`timeout`, `docker stop`, a CI job's limit, Kubernetes) ends the command as Ctrl-C does: a build's
    adds are journaled and the message says how to resume (it had killed the process with the adds unjournaled);
    `vmem serve` closes its memory once uvicorn has finished the requests in flight."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise Terminated

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
