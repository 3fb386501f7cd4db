"""The `vmem` command line: a thin layer over `vmem.VisualMemory`."""

from __future__ import annotations

import codecs
import inspect
import io
import json
import logging
import sys

import typer
from typer.core import TyperGroup

from retrieval import FeaturizerError, MemoryError, MemoryInUseError, MemoryUnavailableError
from retrieval.files import NoHomeError

from . import answers, experiment, keys, memory, prune, templates
from . import dmn as dmn_cmd
from . import eval as eval_cmd
from ._common import EXIT_TEMPORARY, SERVED_ROUTES, served_note
from .bench import bench_app
from .serve import serve
from .tune import tune


class _Commands(TyperGroup):
    """vmem's commands. A Qdrant server that stops answering partway through one ends it with what happened and
    what to do, not a traceback: opening such a memory already says so, and this covers every call after it."""

    def main(self, *args, **kwargs):
        _flags_without_a_type(self)
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
    "classify": "the answers printed are whole; the images after them were not classified",
    "dmn": "the answers printed are whole; the images after them were not classified nor written to the stream",
}


def _flags_without_a_type(command) -> None:
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
    for sub in getattr(command, "commands", {}).values():
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
app.command()(memory.build)
app.command()(memory.classify)
app.command()(memory.forget)
app.command()(memory.relabel)
app.command()(memory.info)
app.command()(memory.labels)
app.command()(memory.names)
app.command()(memory.points)
app.command()(memory.export)
app.command(name="import")(memory.import_)
app.command()(memory.history)
app.command()(answers.answers)
app.command()(memory.copy)
app.command()(memory.backup)
app.command()(memory.erase)
app.add_typer(templates.app, name="templates")
app.command()(serve)
app.command()(keys.key)
app.add_typer(bench_app, name="bench")
app.command(name="eval")(eval_cmd.eval)
app.command()(prune.prune)
app.command()(prune.suspects)
app.command()(experiment.experiment)
app.command()(tune)
app.add_typer(dmn_cmd.app, name="dmn")


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


_summaries_on_one_line(app)


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
