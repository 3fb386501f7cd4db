"""`vmem templates list|show|path`: the re-ranker's prompt templates, built-in and your own."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from prompts import TEMPLATES_DIR_ENV, TemplateError, TemplateRegistry
from retrieval.text import visible

app = typer.Typer(name="templates", help="List and inspect the re-ranker's prompt templates.", no_args_is_help=True)


@app.command("list")
def list_templates(json_out: Annotated[bool, typer.Option("--json", help="one JSON object per template")] = False,
                   ) -> None:
    """List the available templates (user templates from $VMEM_TEMPLATES_DIR override built-ins)."""
    reg = TemplateRegistry()
    for e in reg.entries():
        t = e.template
        if json_out:
            typer.echo(json.dumps({"name": t.name, "version": t.version, "hash": t.content_hash, "origin": e.origin,
                                   "agentic": t.agentic, "path": str(e.path), "description": t.description},
                                  ensure_ascii=False))
        else:
            typer.echo(f"{t.name:<16} v{t.version:<3} {e.origin:<8} {t.content_hash}  {visible(t.description)}")
    for problem in reg.problems():
        typer.echo(problem, err=True)


@app.command()
def show(name: Annotated[str, typer.Argument(help="template name, e.g. neighbors-v1")]) -> None:
    """Print one template as YAML, with where it comes from and its content hash."""
    try:
        entry = TemplateRegistry().entry(name)
    except TemplateError as exc:
        raise typer.BadParameter(str(exc), param_hint="NAME") from exc
    t = entry.template
    typer.echo(f"# {t.ref} ({entry.origin}) {visible(str(entry.path))}\n# hash {t.content_hash}")
    typer.echo(entry.path.read_text(encoding="utf-8").rstrip())


@app.command()
def path() -> None:
    """Print the directory user templates are read from (set it with $VMEM_TEMPLATES_DIR); exit 1 when it is unset,
    so that a script can tell."""
    reg = TemplateRegistry()
    if reg.user_dir is None:
        typer.echo(f"no user template directory: set ${TEMPLATES_DIR_ENV} to a folder of YAML templates "
                   "(vmem templates show NAME prints one to start from)", err=True)
        raise typer.Exit(1)
    typer.echo(str(reg.user_dir))
