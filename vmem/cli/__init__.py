"""The `vmem` command line: a thin layer over `vmem.VisualMemory`."""

from __future__ import annotations

import logging

import typer

from . import dmn as dmn_cmd
from . import eval as eval_cmd
from . import experiment, memory, prune, templates
from .bench import bench_app
from .serve import serve
from .tune import tune

app = typer.Typer(
    name="vmem",
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
app.command()(memory.points)
app.command()(memory.history)
app.command()(memory.copy)
app.add_typer(templates.app, name="templates")
app.command()(serve)
app.add_typer(bench_app, name="bench")
app.command(name="eval")(eval_cmd.eval)
app.command()(prune.prune)
app.command()(prune.suspects)
app.command()(experiment.experiment)
app.command()(tune)
app.add_typer(dmn_cmd.app, name="dmn")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="log progress details")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


__all__ = ["app"]
