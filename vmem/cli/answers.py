"""`vmem answers`: the logged decisions a memory point took part in (the answer log, `vmem.answer_log`)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from retrieval.files import os_error_reason
from retrieval.store import MemoryStoreError, is_embedded_location, normalize_source, point_id_for
from retrieval.text import without_secrets

from ..answer_log import AnswerQuery, Skipped, decisions, embedded_forgets, forget_times, log_files
from ..visual_memory import _utc_iso, parse_point_id
from ._common import DEFAULT_MEMORY, one_line, open_memory


class Via(StrEnum):
    """Who asked, as a logged answer's `via` says."""

    http = "http"
    cli = "cli"
    python = "python"


def answers(
    log: Annotated[Path, typer.Option("--log", help="the answer log (VMEM_ANSWER_LOG, vmem classify --answer-log); "
                                                    "its rotated files (LOG.1, LOG.2, ...) are read too")],
    point: Annotated[list[str] | None, typer.Option(
        "--point", help="only decisions this point (its id) was a neighbour of; repeatable")] = None,
    source: Annotated[list[str] | None, typer.Option(
        help="only decisions the point of this image (its path or URI, as added) was a neighbour of; repeatable")
    ] = None,
    forgotten: Annotated[str | None, typer.Option(
        help="the memory (its folder, or a Qdrant server's URL, http://host:6333) whose journal says what was "
             "forgotten: only its decisions that used points forgotten since, each with when (a memory folder a "
             "service holds is read too)")] = None,
    qdrant_url: Annotated[str | None, typer.Option(
        "--qdrant-url", help="--forgotten this server's memory (http://host:6333)")] = None,
    via: Annotated[Via | None, typer.Option(help="only decisions asked through http, cli or python")] = None,
    by: Annotated[str | None, typer.Option(help="only decisions asked with the API key of this name (a re-rank "
                                                "over HTTP)")] = None,
    label: Annotated[str | None, typer.Option(help="only decisions that gave this label")] = None,
    unsure: Annotated[bool, typer.Option("--unsure", help="only decisions flagged unsure: under the "
                                                          "min_confidence asked for, for a person to check")] = False,
    since: Annotated[str | None, typer.Option(help="only decisions from this date or time on (2026-12-05, "
                                                   "2026-12-05T14:30; UTC unless it names a zone)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per decision: the logged line, and "
                                                          "`used`: the neighbours that matched")] = False,
) -> None:
    """The logged decisions a memory point took part in, in the order answered: when, asked how, the image, the
    label, and the point's rank and similarity. `--forgotten MEMORY`: those that used points the memory has
    forgotten since."""
    if log.expanduser().is_dir():
        raise typer.BadParameter(f"{log} is a folder: give the answer log's file", param_hint="--log")
    if not log_files(log):
        raise typer.BadParameter(f"no answer log at {log}", param_hint="--log")
    try:
        ids = [parse_point_id(p) for p in point or []]
    except ValueError:
        raise typer.BadParameter("not a point id (a UUID, as `vmem classify --json` prints in `neighbors`)",
                                 param_hint="--point") from None
    ids += [point_id_for(normalize_source(s)) for s in source or []]
    try:
        after = _utc_iso(since) if since is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    if qdrant_url is not None and forgotten is not None:
        raise typer.BadParameter(f"give --forgotten {without_secrets(qdrant_url)} (the server's memory) or "
                                 f"--forgotten {forgotten}, not both", param_hint="--qdrant-url")
    key, times = None, None
    # A server's memory is named by its URL (a Path had made http:// of it http:/, a folder that is not there)
    server = qdrant_url or (forgotten if forgotten is not None and not is_embedded_location(forgotten) else None)
    if server is not None:
        with open_memory(DEFAULT_MEMORY, server) as mem:
            key, times = mem.store.key, forget_times(mem.history(op="forget"))
    elif forgotten is not None:
        try:  # read from its files: a memory a running service holds is not opened again
            key, times = embedded_forgets(forgotten)
        except MemoryStoreError as exc:
            raise typer.BadParameter(str(exc), param_hint="--forgotten") from None
    query = AnswerQuery(points=frozenset(ids) if ids else None, forgotten=times, memory=key,
                        via=None if via is None else via.value, label=label,
                        since=after, by=by, unsure=unsure)
    skipped = Skipped()
    found = 0
    try:
        for answer, used in decisions(log, query, skipped):
            found += 1
            typer.echo(json.dumps({**answer, "used": used}, ensure_ascii=False) if json_out else _line(answer, used))
    except BrokenPipeError:  # stdout's reader left (`| head`): click ends it quietly, as any command so piped
        raise
    except OSError as exc:  # a file of the log this user may not read
        raise typer.BadParameter(f"cannot read {exc.filename or log} ({os_error_reason(exc)})", param_hint="--log"
                                 ) from None
    if skipped.lines:
        many = skipped.lines != 1
        typer.echo(f"skipped {skipped.lines} line{'s' if many else ''} that {'are' if many else 'is'} no answer "
                   f"(torn by a crash mid-write), the first at {skipped.where}", err=True)
    if not found:
        typer.echo("no logged decisions match", err=True)


def _line(answer: dict, used: list[dict]) -> str:
    """One decision, tab-separated: when, asked how, the image, the label, the points that made it match."""
    who = " ".join(str(x) for x in (answer.get("via"), answer.get("client"),
                                    answer.get("by") and f"(key {answer['by']})") if x)
    image = answer.get("filename") or answer.get("source") or ""
    if answer.get("image_sha256"):
        image = f"{image} (sha256 {answer['image_sha256'][:12]})".strip()
    how = " [cached]" if answer.get("cached") else ""
    how += " [re-ranked]" if answer.get("reranked") else ""
    if answer.get("unsure"):  # flagged for a person; lines logged before answers said how sure have no such field
        sure = answer.get("confidence")
        how += f" [unsure: confidence {sure:.3f} under {answer.get('min_confidence')}]" if isinstance(
            sure, int | float) else " [unsure]"
    cited = "; ".join(f"{n['id']} ({n['label']}, rank {n['rank']}, similarity {n['similarity']:.3f})"
                      + (f" forgotten {n['forgotten_at'][:19].replace('T', ' ')}" if n.get("forgotten_at") else "")
                      for n in used)
    return "\t".join(x for x in (str(answer.get("at", ""))[:19].replace("T", " "), one_line(who), one_line(image),
                                 f"-> {one_line(answer.get('label'))}{how}", one_line(cited)) if x)
