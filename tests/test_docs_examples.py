"""The docs' examples are true: every `vmem` command line in README.md and docs/**/*.md parses against the real
command line (its subcommands, options, option values and arguments), without running it.

A line that shows a mistake on purpose is marked `<!-- docs-check: wrong on purpose -->` on the line before it
(a fenced block: before its fence), and left out.
"""

from __future__ import annotations

import functools
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import get_args, get_origin

import pytest
import typer.main

from vmem.cli import app

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "console", "shell"}
WRONG_ON_PURPOSE = "<!-- docs-check: wrong on purpose -->"
# A value that stands for one: a shell variable ($M), a placeholder (K, FILE.npz, IMAGE_OR_DIR) or <one>.
PLACEHOLDER = re.compile(r"\$|<|^[A-Z][A-Z0-9_]*(\.\w+)?$")
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}
REDIRECTS = re.compile(r"^\d?(>>?|<)(&\d)?$")


@dataclass(frozen=True)
class DocCommand:
    where: str  # README.md:112
    text: str  # the line as the doc shows it (continuations joined)
    words: tuple[str, ...]  # what follows `vmem`
    inline: bool = False  # a span in prose, which may name an option without its value: `vmem forget --like`

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


def _split_commands(text: str, variables: dict[str, list[str]] | None = None) -> list[list[str]]:
    """The `vmem` commands of one shell line or synopsis, each as its words after `vmem`. Brackets and parentheses
    group a synopsis's choices (`[--memory DIR | --qdrant-url URL]`), so a `|` inside them is "or"; outside them it
    is a pipe, and `&&`, `;` and redirections end a command as in the shell."""
    try:
        tokens = shlex.split(text.replace("\\|", "|"), comments=True)
    except ValueError:  # an unbalanced quote in prose: what is before it
        tokens = text.split()
    commands: list[list[str]] = []
    current: list[str] | None = None
    depth = 0
    skip_next = False
    for raw in tokens:
        if skip_next:
            skip_next = False
            continue
        raw = raw.removesuffix("...").removesuffix("…")  # `[--label L]...`, `IMAGE_OR_DIR...`: one or more
        opened = len(raw) - len(raw.lstrip("[("))
        token = raw.strip("[]()")
        closed = len(raw) - len(raw.rstrip("])"))
        depth += opened
        if depth == 0 and raw in SHELL_OPERATORS:
            current = None
        elif depth == 0 and REDIRECTS.match(raw):
            skip_next = raw.rstrip("&0123456789") in (">", ">>", "<") and not raw.endswith(("&1", "&2"))
        elif current is None:
            if token == "vmem":
                current = []
                commands.append(current)
        elif token in ("", "|"):
            pass
        elif token.startswith("-") and re.search(r"[|/]-", token):  # --excluded|--searchable, --hnsw-ef/--rescore
            current.extend(re.split(r"[|/](?=-)", token))
        elif token.startswith("$") and token[1:] in (variables or {}):
            current.extend((variables or {})[token[1:]])
        else:
            current.append(token)
        depth = max(depth - closed, 0)
    return commands


def _uncommented(line: str) -> str:
    """A shell line without its comment (`#` starting a word: `hf:/models/vit#cls` is no comment)."""
    return re.sub(r"(^|\s)#.*$", "", line).rstrip()


def _marked(lines: list[str], index: int) -> bool:
    return index > 0 and WRONG_ON_PURPOSE in lines[index - 1]


def doc_commands(path: Path) -> list[DocCommand]:
    """Every `vmem` command a doc shows: in shell code blocks (a line's continuations joined: a trailing `\\`, or
    a synopsis's indented `[--option]` lines), lines that start with `vmem ` in unlabelled blocks, and inline code
    spans that start with `vmem `."""
    name = path.relative_to(REPO).as_posix()
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    # A doc's `M="--memory-dataset $D/train ..."`: its $M stands for those words.
    variables = {m[1]: shlex.split(m[2]) for m in re.finditer(r"(?<![\w$])([A-Z][A-Z0-9_]*)=\"([^\"]*)\"", text)}
    found: list[DocCommand] = []
    prose: list[tuple[int, str]] = []  # the lines outside code blocks, numbered
    i = 0
    while i < len(lines):
        fence = re.match(r"^\s*```(\w*)", lines[i])
        if not fence:
            prose.append((i, lines[i]))
            i += 1
            continue
        language, start, skip = fence.group(1), i + 1, _marked(lines, i)
        end = next((j for j in range(start, len(lines)) if lines[j].strip().startswith("```")), len(lines))
        i = end + 1
        if skip or (language and language not in SHELL_BLOCKS):
            continue
        j = start
        while j < end:
            first, text = j, _uncommented(lines[j])
            j += 1
            if language == "" and not text.startswith("vmem "):
                continue
            # A line goes on past a trailing `\`, and a synopsis past its indented `[--option]` and comment lines
            while j < end and (text.endswith("\\") or ("vmem" in text and re.match(r"^\s+(\[|#)", lines[j]))):
                text = text.removesuffix("\\") + " " + _uncommented(lines[j]).strip()
                j += 1
            if _marked(lines, first):
                continue
            for words in _split_commands(text, variables):
                found.append(DocCommand(f"{name}:{first + 1}", " ".join(text.split()), tuple(words)))
    # Inline spans may wrap onto the next line: found in each paragraph's text.
    paragraph: list[tuple[int, str]] = []
    for number, line in [*prose, (len(lines), "")]:
        if line.strip() and (not paragraph or paragraph[-1][0] == number - 1):
            paragraph.append((number, line))
            continue
        text = "\n".join(line for _, line in paragraph)
        for span in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
            code = " ".join(span.group(1).split())
            if not code.startswith("vmem "):
                continue
            row = paragraph[0][0] + text.count("\n", 0, span.start())
            if _marked(lines, row) or WRONG_ON_PURPOSE in text[text.rfind("\n", 0, span.start()) + 1:span.start()]:
                continue
            for words in _split_commands(code, variables):
                found.append(DocCommand(f"{name}:{row + 1}", code, tuple(words), inline=True))
        paragraph = [(number, line)] if line.strip() else []
    return sorted(found, key=lambda c: int(c.where.rsplit(":", 1)[1]))


def _literal_values(value: object) -> list[str]:
    values = value if isinstance(value, (list, tuple)) else [value]
    out: list[str] = []
    for v in values:
        out.extend(_literal_values(v) if isinstance(v, (list, tuple)) else [str(v)])
    return [v for v in out if not PLACEHOLDER.search(v)]


def _message(exc: Exception) -> str:
    format_message = getattr(exc, "format_message", None)  # click's errors: what the command line would say
    return " ".join((format_message() if format_message else str(exc)).split())


def _checked(param) -> bool:
    """Whether a value the doc gives is converted here: a choice's or a number's (a path's would be looked for)."""
    described = getattr(param, "type_descriptor", None)
    if described is None:
        return False
    annotation = described.annotation
    if get_origin(annotation) in (list, tuple) and get_args(annotation):
        annotation = get_args(annotation)[0]
    return described.is_choice or annotation in (int, float)


def problems_of(words: tuple[str, ...], inline: bool = False) -> list[str]:
    """What the real command line says of `vmem WORDS`, parsed as it parses them (click's parser over typer's
    commands) but neither run nor converted: a placeholder stands for any value. Empty: it would be taken.
    `inline`: prose's mention of an option (`vmem build --featurizer`) stands for it with any value."""
    said = _problems_of(words)
    if inline and said and said[0].endswith(f"Option '{words[-1]}' requires an argument."):
        return _problems_of((*words, "VALUE"))
    return said


@functools.cache
def _vmem():
    return typer.main.get_command(app)


def _problems_of(words: tuple[str, ...]) -> list[str]:
    command = _vmem()
    ctx = None
    name = "vmem"
    args = list(words)
    while True:
        ctx = command.context_class(command, info_name=name, parent=ctx)
        try:
            opts, rest, _ = command.make_parser(ctx).parse_args(args=list(args))
        except Exception as exc:  # click's UsageError: no such option, an option without its value, ...
            return [f"{ctx.command_path}: {_message(exc)}"]
        said = []
        for param in command.get_params(ctx):
            if param.name not in opts or not _checked(param):
                continue
            choice = param.type_descriptor.is_choice
            for value in _literal_values(opts[param.name]):
                for one in value.split("|") if choice else [value]:  # a synopsis's `--vote rank|plurality`
                    try:
                        param.get_runtime_param().coerce([one] if param.multiple or param.nargs == -1 else one,
                                                         param=param, ctx=ctx)
                    except Exception as exc:
                        said.append(f"{ctx.command_path} {param.opts[0]} {one}: {_message(exc)}")
        if said:
            return said
        if hasattr(command, "get_command"):  # a group: its subcommand comes next
            if not rest:
                return []
            wanted = rest[0].split("|")  # `vmem templates list|show|path`
            missing = [w for w in wanted if command.get_command(ctx, w) is None]
            if missing:
                return [f"{ctx.command_path}: no command {', '.join(missing)}"]
            if len(wanted) > 1:
                return []
            name, command, args = wanted[0], command.get_command(ctx, wanted[0]), rest[1:]
            continue
        if rest:
            return [f"{ctx.command_path}: takes no more arguments, given {' '.join(rest)}"]
        return []


ALL = [c for path in DOCS for c in doc_commands(path)]


def test_the_docs_show_many_command_lines():
    # The extraction itself: a change to the docs' layout that hid every line from this test would pass it.
    assert len(ALL) > 300
    assert {c.where.split(":")[0] for c in ALL} >= {"README.md", "docs/service.md", "docs/benchmarks.md",
                                                      "docs/results/eval.md"}


def test_every_vmem_command_line_in_the_docs_is_one_vmem_takes():
    said = {c: problems_of(c.words, c.inline) for c in ALL}
    wrong = [f"{c}\n    {'; '.join(problems)}" for c, problems in said.items() if problems]
    assert not wrong, f"{len(wrong)} of {len(ALL)} command lines in the docs are not vmem's:\n" + "\n".join(wrong)


@pytest.mark.parametrize(("line", "said"), [
    ("vmem classify photo.jpg --k 10 --json", None),
    ("vmem build DATASET [--memory ./memory | --qdrant-url URL] [--vectors-dtype float16|float32]", None),
    ("vmem points --all --json > points.jsonl", None),
    ("vmem templates list|show|path", None),
    ("vmem classify photo.jpg --top 3", "No such option: --top"),
    ("vmem classify photo.jpg --vote majority", "'majority' is not one of"),
    ("vmem classify photo.jpg --k ten", "Invalid value for '--k'"),
    ("vmem forget --label", "requires an argument"),
    ("vmem templates remove x", "no command remove"),
    ("vmem classfy photo.jpg", "no command classfy"),
    ("vmem diff A B C", "takes no more arguments, given C"),
])
def test_a_wrong_line_is_told_apart_from_a_right_one(line, said):
    [words] = _split_commands(line)
    problems = problems_of(tuple(words))
    if said is None:
        assert problems == []
    else:
        assert problems and said in problems[0], problems


def test_a_line_marked_wrong_on_purpose_is_left_out(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text(f"Run `vmem info --json`.\n{WRONG_ON_PURPOSE}\n`vmem info --colour` is refused.\n\n"
                   "```bash\nvmem classify x.jpg --k 5 \\\n    --json   # both\n```\n", encoding="utf-8")
    assert [(c.where, c.words) for c in doc_commands(doc)] == [
        ("doc.md:1", ("info", "--json")), ("doc.md:6", ("classify", "x.jpg", "--k", "5", "--json"))]
