"""`vmem key`: make a named API key for the service's keys file (VMEM_API_KEYS_FILE), or revoke one."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, BinaryIO

import typer


class May(StrEnum):
    """What a key may do (server.keys.SCOPES)."""

    edit = "edit"
    rerank = "rerank"


def key(
    name: Annotated[str, typer.Argument(help="the key's name, journaled as who made each edit with it")],
    file: Annotated[Path, typer.Option("--file", envvar="VMEM_API_KEYS_FILE", dir_okay=False,
                                       help="the keys file (made if missing) \\[default: $VMEM_API_KEYS_FILE]")],
    may: Annotated[list[May] | None, typer.Option(
        help="what the key may do, repeatable: edit (every endpoint that takes a key but a re-ranked classify), "
             "rerank \\[default: both]")] = None,
    revoke: Annotated[bool, typer.Option("--revoke", help="remove the key of this name instead")] = False,
) -> None:
    """Make a new API key for the service: its line (its name and hash) is added to the keys file, the key printed."""
    import os

    from retrieval.files import os_error_reason, write_atomically
    from server.keys import KeysFileError, keys_file_text, keys_in, new_key_line

    def rewrite(text: str) -> None:
        # Through a link to the file it leads to (the service reads it so), and keeping its mode: the file renamed
        # over it would otherwise stand in the link's place, with the umask's mode
        target = file.resolve()
        mode = target.stat().st_mode & 0o7777 if target.exists() else None

        def write(fh: BinaryIO) -> None:
            fh.write(text.encode())
            if mode is not None:
                os.fchmod(fh.fileno(), mode)

        try:
            write_atomically(target, write)
        except OSError as exc:  # a folder not there or not writable: said, not a traceback, and no key printed
            raise typer.BadParameter(f"{file} cannot be written ({os_error_reason(exc)})",
                                     param_hint="--file") from None

    try:  # read once: the lines kept are those whose names were checked
        text = keys_file_text(file) if file.exists() else ""
        names = [k.name for k in keys_in(file, text)]
    except KeysFileError as exc:
        raise typer.BadParameter(f"{exc}: mend it first", param_hint="--file") from None
    if revoke:
        if name not in names:
            raise typer.BadParameter(f"{file} holds no key named {name}", param_hint="NAME")
        lines = text.splitlines(keepends=True)
        # Its line only (the service reads the file again as it changes); comments and other lines stay as they were
        rewrite("".join(line for line in lines if line.split("#", 1)[0].split()[:1] != [name]))
        typer.echo(f"revoked {name}: {file} holds its hash no more", err=True)
        return
    if name in names:
        raise typer.BadParameter(f"{file} holds a key named {name} already: give another name (to rotate a key, "
                                 f"add the new one, move its clients to it, then vmem key {name} --revoke)",
                                 param_hint="NAME")
    try:
        made, line = new_key_line(name, tuple(m.value for m in may or ()))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="NAME") from None
    # Written whole, then renamed: the service reading it meanwhile sees the file before or after, never half
    rewrite(text + ("\n" if text and not text.endswith("\n") else "") + line + "\n")
    typer.echo(made)
    typer.echo(f"added {name} to {file} (its hash, not the key): give the key above to its client, as X-API-Key",
               err=True)
