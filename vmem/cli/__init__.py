"""The `vmem` command line: a thin layer over `vmem.VisualMemory`."""

from __future__ import annotations

import codecs
import importlib
import inspect
import io
import json
import logging
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any

import typer
import typer.main
from typer.core import TyperGroup

from retrieval import FeaturizerError, MemoryError, MemoryInUseError, MemoryUnavailableError
from retrieval.files import NoHomeError
from retrieval.store import WaitInterrupted

from ._common import EXIT_TEMPORARY, SERVED_ROUTES, Terminated, served_note

# vmem's commands, in the order `vmem --help` lists them (typer's: commands, then groups), each as its module in
# vmem.cli and the function, or the group's Typer. A command's module is imported, and the command built from its
# function's signature, when it is run or listed (`_LazyCommands`): typer built all of them at every start.
_COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("memory", "build"), "classify": ("memory", "classify"), "forget": ("memory", "forget"),
    "relabel": ("memory", "relabel"), "info": ("memory", "info"), "labels": ("memory", "labels"),
    "names": ("memory", "names"), "points": ("memory", "points"), "export": ("memory", "export"),
    "import": ("memory", "import_"), "history": ("memory", "history"), "answers": ("answers", "answers"),
    "copy": ("memory", "copy"), "backup": ("memory", "backup"), "diff": ("diff", "diff"), "erase": ("memory", "erase"),
    "serve": ("serve", "serve"), "key": ("keys", "key"), "eval": ("eval", "eval"), "prune": ("prune", "prune"),
    "suspects": ("prune", "suspects"), "experiment": ("experiment", "experiment"), "tune": ("tune", "tune"),
}
_GROUPS: dict[str, tuple[str, str]] = {
    "templates": ("templates", "app"), "bench": ("bench", "bench_app"), "dmn": ("dmn", "app"),
}


class _LazyCommands(MutableMapping[str, Any]):  # typer's click commands (its own copy of click from typer 0.29)
    """A group's commands by name, each built when first looked up: `vmem info` builds `info` only, `vmem
    --version` none, `vmem --help` (which lists them all) every one."""

    def __init__(self) -> None:
        self._built: dict[str, Any] = {}
        self._names = [*_COMMANDS, *_GROUPS]

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            if name not in self._names:
                raise KeyError(name)
            self._built[name] = _built_command(name)
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command
        if name not in self._names:
            self._names.append(name)

    def __delitem__(self, name: str) -> None:
        self._names.remove(name)
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names


def _built_command(name: str) -> Any:
    """One of vmem's commands as typer builds it in `app` (through typer's own entry, for each typer version's
    arguments: a group of this command alone, with app's markup)."""
    one = typer.Typer(rich_markup_mode=app.rich_markup_mode)
    if name in _COMMANDS:
        module, function = _COMMANDS[name]
        one.command(name=name)(getattr(importlib.import_module(f".{module}", __name__), function))
    else:
        module, group = _GROUPS[name]
        one.add_typer(getattr(importlib.import_module(f".{module}", __name__), group), name=name)
    _summaries_on_one_line(one)
    command = typer.main.get_group(one).commands[name]
    _flags_without_a_type(command)
    return command


class _Commands(TyperGroup):
    """vmem's commands. A Qdrant server that stops answering partway through one ends it with what happened and
    what to do, not a traceback: opening such a memory already says so, and this covers every call after it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _LazyCommands()

    def main(self, *args, **kwargs):
        _flags_without_a_type(self, commands_too=False)  # each command as it is built
        _escape_what_stdout_cannot_encode()
        return super().main(*args, **kwargs)

    def invoke(self, ctx: typer.Context):  # type: ignore[override]  # click passes typer's Context, a subclass
        try:
            return super().invoke(ctx)
        except MemoryUnavailableError as exc:
            typer.echo(f"Error: {exc}. What was done before it stopped answering is kept: run the command again "
                       "once it answers (vmem build carries on where it stopped)", err=True)
            raise typer.Exit(EXIT_TEMPORARY) from exc
        except MemoryError as exc:  # e.g. open in another process: the command was right, so no usage text
            served = (served_note(exc.folder, ctx.invoked_subcommand)
                      if isinstance(exc, MemoryInUseError) and exc.folder is not None else "")
            if served and isinstance(exc, MemoryInUseError) and ctx.invoked_subcommand in SERVED_ROUTES:
                # The service's route is what to do: "stop it, or put the memory on a Qdrant server" is not
                typer.echo(f"Error: {exc.fact}: it is {served}", err=True)
            else:
                typer.echo(f"Error: {exc}", err=True)
                if served:
                    typer.echo(f"It is {served}", err=True)
            raise typer.Exit(EXIT_TEMPORARY if isinstance(exc, MemoryInUseError) else 1) from exc
        except FeaturizerError as exc:  # loaded on first use (a resumed build, eval, tune): VMEM_DEVICE, weights
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(2) from exc  # as the commands that load it up front refuse it
        except NoHomeError as exc:  # vmem's default folders have no place (a container's unknown user)
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(1) from exc
        except WaitInterrupted as exc:  # stopped while only waiting for a memory: it was not touched
            said = str(exc) if not isinstance(exc.interrupt, Terminated) else (
                f"stopped (SIGTERM) {str(exc).removeprefix('interrupted ')}")
            typer.echo(f"{said}: nothing was done to it; run the command again", err=True)
            raise typer.Exit(130) from None  # as any interrupted command, SIGTERM too
        except KeyboardInterrupt:  # typer's own handling exits 130 without a word; vmem build says more itself
            typer.echo(f"interrupted: {_INTERRUPTED.get(ctx.invoked_subcommand or '', _INTERRUPTED[''])}", err=True)
            raise typer.Exit(130) from None


def _json_escapes(exc: UnicodeError) -> tuple[str, int]:
    """Characters an encoding lacks, written as JSON escapes them (`\\u732b`; an emoji as its two surrogates)."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    return "".join(json.dumps(c)[1:-1] for c in exc.object[exc.start:exc.end]), exc.end


def _escape_what_stdout_cannot_encode() -> None:
    """A terminal or pipe that is not UTF-8 (LANG=de_DE.ISO-8859-1) gets what it cannot encode escaped: a label
    such as `猫` ended the command in a UnicodeEncodeError. As JSON escapes, so that `--json` stays JSON. stderr
    escapes so already (Python's own `backslashreplace`); ASCII, click writes as UTF-8."""
    stream = sys.stdout
    encoding = getattr(stream, "encoding", None)
    if not isinstance(stream, io.TextIOWrapper) or not encoding:
        return
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return
    if name not in ("utf-8", "ascii") and stream.errors == "strict":
        codecs.register_error("vmem-json-escapes", _json_escapes)
        stream.reconfigure(errors="vmem-json-escapes")


# What an interrupted command leaves, and how to go on.
_INTERRUPTED = {
    "": "what was done before it stopped is kept; run the command again to finish",
    "copy": "the destination holds the points copied so far; run the same copy again to copy the rest (points "
            "copied already are skipped)",
    "backup": "nothing was left under the backup's name: run the command again",
    "forget": "run the same command again: points forgotten already are not chosen again, and --erase erases "
              "every point forgotten so far",
    "relabel": "run the same command again: points relabelled already are left as they are",
    "export": "nothing was written (a file that was there is as it was): run the command again",
    "import": "the memory holds the points imported so far (journaled); run the same command again to import the "
              "rest (points already in it are skipped)",
    "classify": "the answers printed are whole, and a --csv sheet holds each of them; the images after them were "
                "not classified: with --csv, run the same command with --resume to classify only those",
    "dmn": "the answers printed are whole; the images after them were not classified nor written to the stream",
}


def _flags_without_a_type(command, commands_too: bool = True) -> None:
    """Typer's option tables show each option's type, and a flag's as `<bool>`, as if `--json` took a value.
    A flag takes none: its type column is left empty."""
    for param in command.params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    made_help_option = command.get_help_option  # --help is made anew for each run, not kept in params

    def help_option(ctx):
        option = made_help_option(ctx)
        if option is not None and option.metavar is None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values() if commands_too else ():
        _flags_without_a_type(sub)


app = typer.Typer(
    name="vmem",
    cls=_Commands,
    rich_markup_mode="rich",
    help="Visual-memory image classification: build a memory of labelled images, classify, forget.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _summaries_on_one_line(commands: typer.Typer) -> None:
    """`vmem --help` lists each command by its docstring's first paragraph, and rich markup keeps that
    paragraph's line breaks: a docstring wrapped at 120 columns broke mid-sentence in the list. Joined here."""
    for info in commands.registered_commands:
        text = info.help or (info.callback.__doc__ if info.callback else None)
        if info.short_help is None and text:
            info.short_help = " ".join(inspect.cleandoc(text).split("\n\n")[0].split())
    for group in commands.registered_groups:
        if group.typer_instance is not None:
            _summaries_on_one_line(group.typer_instance)


def _print_version(asked: bool) -> None:
    if asked:
        from vmem import __version__

        typer.echo(f"vmem {__version__}")
        raise typer.Exit()


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="log progress details"),
          version: bool = typer.Option(False, "--version", help="print vmem's version and exit",
                                       callback=_print_version, is_eager=True)) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    # Their INFO lines name every request's URL, credentials in a base URL and ?key= included (vmem's own
    # messages leave them out), and google-genai's repeat one line per call: -v is about vmem's work.
    for chatty in ("httpx", "httpx2", "httpcore", "httpcore2", "google_genai"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


__all__ = ["app"]
