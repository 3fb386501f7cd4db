"""The docs' examples are true: every `vmem` command line in README.md and docs/**/*.md parses against the real
command line (its subcommands, options, option values and arguments, and that what it needs is given), without
running it. Looked for: shell code blocks' lines, a shell comment's command line (one giving an option: `# page
after page: vmem points --all --json`), and inline spans that run vmem (`vmem labels`, `for f in *.jpg; do vmem
classify "$f"; done`). A span names a command and may leave out what it needs; a line's `...` stands for it.

A line that shows a mistake on purpose is marked `<!-- docs-check: wrong on purpose -->` on the line before it
(a fenced block: before its fence), and left out.
"""

from __future__ import annotations

import ast
import collections.abc
import functools
import importlib
import inspect
import re
import shlex
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Union, get_args, get_origin, get_type_hints

import numpy as np
import pytest
import typer.main

from tests._lite0_once import lite0_loaded_once  # noqa: F401 - autouse
from vmem.cli import app

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "console", "shell"}
WRONG_ON_PURPOSE = "<!-- docs-check: wrong on purpose -->"
# A value that stands for one: a shell variable ($M), a placeholder (K, FILE.npz, IMAGE_OR_DIR) or <one>.
PLACEHOLDER = re.compile(r"\$|<|^[A-Z][A-Z0-9_]*(\.\w+)?$")
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}
# A span that runs vmem: `vmem classify ...`, or a shell line's command (`for f in *.jpg; do vmem classify "$f";
# done`, `VMEM_KEY=k vmem serve`), not a message quoting one (`process 8140 (vmem build data) since ...`)
SHELL_VMEM = re.compile(r"(?:^|[;&|]\s*|\$\(|\b(?:do|then|else|time|exec|nohup|sudo)\s+|^(?:[A-Z_][A-Z0-9_]*=\S*\s+)+)"
                        r"vmem\s")
ELIDED = "..."
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
    # `do vmem classify "$f"; done`: a `;` closing a word ends its command as a spaced one does
    tokens = [part for token in tokens for part in
              ([token[:-1], ";"] if token.endswith(";") and len(token) > 1 else [token])]
    for raw in tokens:
        if skip_next:
            skip_next = False
            continue
        if raw in ("...", "…") and current is not None:  # `vmem classify ... --json`: what it needs, left out
            current.append(ELIDED)
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
        # A comment's command line (`# ...: vmem points --all --json > points.jsonl`), told from prose that names a
        # command (`# vmem serve holds it`) by an option given
        for k in range(start, end):
            said = re.search(r"(?:^|\s)#(.*)$", lines[k])
            shown = re.search(r"(?:^|[\s;&|(])(vmem\s.*)$", said.group(1)) if said else None
            if shown is None or _marked(lines, k) or not re.search(r"\s-", shown.group(1)):
                continue
            for words in _split_commands(shown.group(1), variables):
                found.append(DocCommand(f"{name}:{k + 1}", " ".join(shown.group(1).split()), tuple(words)))
    # Inline spans may wrap onto the next line: found in each paragraph's text.
    paragraph: list[tuple[int, str]] = []
    for number, line in [*prose, (len(lines), "")]:
        if line.strip() and (not paragraph or paragraph[-1][0] == number - 1):
            paragraph.append((number, line))
            continue
        text = "\n".join(line for _, line in paragraph)
        for span in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
            code = " ".join(span.group(1).split())
            if not SHELL_VMEM.search(code):
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
    `inline`: prose's mention of an option (`vmem build --featurizer`) stands for it with any value, and of a
    command (`vmem build`, `vmem experiment NAME`) for it with what it needs, but for arguments it gives some of
    (`vmem diff A` is no command). A line's `...` stands for what it needs."""
    needs = "none" if ELIDED in words else "arguments" if inline else "all"
    words = tuple(w for w in words if w != ELIDED)
    said = _problems_of(words, needs)
    if inline and said and said[0].endswith(f"Option '{words[-1]}' requires an argument."):
        return _problems_of((*words, "VALUE"), needs)
    return said


@functools.cache
def _vmem():
    return typer.main.get_command(app)


def _problems_of(words: tuple[str, ...], needs: str = "all") -> list[str]:
    """`needs`: which of what the command needs are looked for: "all" (its arguments and required options),
    "arguments" (all its arguments, where some are given) or "none"."""
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
        # What it cannot run without (`vmem diff A B`'s B, `vmem backup --to DIR`), but where an environment
        # variable may give it (`vmem key`'s --file, VMEM_API_KEYS_FILE)
        given = {name for name, value in opts.items() if value not in (None, (), [])}
        arguments = [p for p in command.get_params(ctx) if p.param_type_name == "argument"]
        looked_for = [] if needs == "none" else arguments if needs == "arguments" else command.get_params(ctx)
        if needs == "arguments" and not given & {p.name for p in arguments}:
            looked_for = []
        missing = [param.opts[0] if param.param_type_name == "option" else (param.metavar or param.name or "").upper()
                   for param in looked_for if param.required and param.name not in given and not param.envvar]
        return [f"{ctx.command_path}: {', '.join(missing)} not given"] if missing else []


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
    ("vmem diff A", "vmem diff: B not given"),
    ("vmem backup", "vmem backup: --to not given"),
    ("vmem backup --to DIR", None),
    ("vmem classify ... --answer-log answers.jsonl", None),
    ("vmem key show", None),  # its --file may be VMEM_API_KEYS_FILE's
    ("for f in *.jpg; do vmem classify \"$f\"; done", None),
    ("for f in *.jpg; do vmem classify \"$f\" --colour; done", "No such option: --colour"),
])
def test_a_wrong_line_is_told_apart_from_a_right_one(line, said):
    [words] = _split_commands(line)
    problems = problems_of(tuple(words))
    if said is None:
        assert problems == []
    else:
        assert problems and said in problems[0], problems


@pytest.mark.parametrize(("span", "said"), [
    ("vmem build", None),  # a command named, not run
    ("vmem experiment NAME", None),
    ("vmem classify --json", None),
    ("vmem diff A", "vmem diff: B not given"),  # some of its arguments given: all of them are
])
def test_prose_names_a_command_without_what_it_needs(span, said):
    [words] = _split_commands(span)
    problems = problems_of(tuple(words), inline=True)
    if said is None:
        assert problems == []
    else:
        assert problems and said in problems[0], problems


def test_comments_and_shell_lines_show_commands_too(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text("A loop, `for f in *.jpg; do vmem classify \"$f\"; done`, and a message quoting one,\n"
                   "`process 8140 (vmem build data -m memory) since 2026-12-07`.\n\n"
                   "```\nvmem points [--json]\n       [--all]   # page after page: vmem points --all --jsn\n"
                   "vmem backup --to DIR   # vmem serve holds is backed up through it\n```\n", encoding="utf-8")
    assert [(c.where, c.words) for c in doc_commands(doc)] == [
        ("doc.md:1", ("classify", "$f")), ("doc.md:5", ("points", "--json", "--all")),
        ("doc.md:6", ("points", "--all", "--jsn")), ("doc.md:7", ("backup", "--to", "DIR"))]


def test_a_line_marked_wrong_on_purpose_is_left_out(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text(f"Run `vmem info --json`.\n{WRONG_ON_PURPOSE}\n`vmem info --colour` is refused.\n\n"
                   "```bash\nvmem classify x.jpg --k 5 \\\n    --json   # both\n```\n", encoding="utf-8")
    assert [(c.where, c.words) for c in doc_commands(doc)] == [
        ("doc.md:1", ("info", "--json")), ("doc.md:6", ("classify", "x.jpg", "--k", "5", "--json"))]


# ---------------------------------------------------------------- README's Python, run for real

def readme_python_blocks() -> list[tuple[int, str]]:
    """README's ```python blocks: (the line of each block's first line, its code)."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() == "```python":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            blocks.append((i + 2, "\n".join(lines[i + 1:end]) + "\n"))
    return blocks


def run_block(code: str, names: dict, first_line: int, renamed: dict[str, str] | None = None) -> dict:
    """A README block run as written, but for the string literals in `renamed` (a server's address, an encoder
    this machine has no weights for) and the names it takes as given (`photo_bytes`), which the test supplies.
    A failure points at README's own line."""
    for said, meant in (renamed or {}).items():
        assert said in code, f"README's block at line {first_line} no longer says {said}"
        code = code.replace(said, meant)
    exec(compile("\n" * (first_line - 1) + code, str(REPO / "README.md"), "exec"), names)
    return names


def _real_images(root: Path, split: str, wnid: str, n: int) -> list[Path]:
    return sorted((root / split / wnid).rglob("*.JPEG"))[:n]


TABBY, EGYPTIAN, PERSIAN, LION, BISON = "n02123045", "n02124075", "n02123394", "n02129165", "n02410509"


@pytest.fixture
def readme_place(tmp_path, tiny_imagenet, monkeypatch):
    """A folder as README's Python API block expects one: ./memory (real Tiny-ImageNet images, EfficientNet-Lite0,
    the cats under their ImageNet ids, Persian cats as `kitty`), cat.jpg, photo.jpg (a copy of a stored image,
    saved again), new/okapi1.jpg and new/okapi2.jpg (two new images) and feats.npz (vectors made elsewhere)."""
    from PIL import Image

    from retrieval import LabelledImage, load_featurizer
    from retrieval.feature_cache import FeatureCache
    from vmem import VisualMemory

    monkeypatch.chdir(tmp_path)
    items = [LabelledImage(str(p), label) for wnid, label in
             ((TABBY, TABBY), (EGYPTIAN, EGYPTIAN), (PERSIAN, "kitty"), (LION, LION)) for p in
             _real_images(tiny_imagenet, "train", wnid, 6)]
    with VisualMemory.open("memory", featurizer="efficientnet-lite0", create=True, reranker=None) as mem:
        report = mem.build(items)
        assert report.added == len(items)
    (tmp_path / "cat.jpg").write_bytes(_real_images(tiny_imagenet, "val", TABBY, 1)[0].read_bytes())
    Image.open(items[0].source).convert("RGB").save(tmp_path / "photo.jpg", quality=90)
    (tmp_path / "new").mkdir()
    for i, p in enumerate(_real_images(tiny_imagenet, "val", BISON, 2), 1):
        (tmp_path / "new" / f"okapi{i}.jpg").write_bytes(p.read_bytes())
    elsewhere = _real_images(tiny_imagenet, "train", BISON, 3)
    featurizer = load_featurizer("efficientnet-lite0", device="cpu")
    X, _, failed = FeatureCache(tmp_path / "features", featurizer).features_for([str(p) for p in elsewhere])
    assert not failed
    np.savez("feats.npz", vectors=np.asarray(X, dtype=np.float32), labels=np.array(["bison"] * len(elsewhere)),
             sources=np.array([str(p) for p in elsewhere]))
    return tmp_path


@pytest.mark.realdata
def test_readme_python_api_block_runs_as_written(readme_place, tiny_imagenet):
    (first, code), *_ = readme_python_blocks()
    photo_bytes = _real_images(tiny_imagenet, "val", LION, 1)[0].read_bytes()
    names = run_block(code, {"photo_bytes": photo_bytes}, first, renamed={
        # No Qdrant server here: the copy goes to an embedded memory's folder, as copy_to takes either.
        '"http://qdrant:6333")': f'"{readme_place / "copied"}")',
        # Vectors made elsewhere are named by their encoder: here Lite0's, which this memory holds.
        'featurizer="dinov2-small"': 'featurizer="efficientnet-lite0"',
    })
    res = names["res"]
    assert res.why_not is not None  # the block's second classify asked why not the tabby
    assert names["page"].points and all(p.label == "okapi" for p in names["page"].points)
    assert (readme_place / "okapi.npz").is_file() and (readme_place / "copied").is_dir()
    from vmem import VisualMemory

    # What the block did stayed done: okapis forgotten, the kitties renamed cat, the bison imported.
    with VisualMemory.open(readme_place / "memory", reranker=None) as again:
        labels = {p.label for p in again.points(limit=1000).points}
    assert "okapi" not in labels and "kitty" not in labels and {"cat", "bison", "giraffe"} <= labels


@pytest.mark.realdata
def test_readme_building_block_runs_as_written(tmp_path, tiny_imagenet, monkeypatch):
    (first, code) = readme_python_blocks()[1]
    monkeypatch.chdir(tmp_path)
    for wnid in (TABBY, LION):  # data/train as class folders, with Tiny-ImageNet's classes.tsv beside them
        (tmp_path / "data" / "train" / wnid).mkdir(parents=True)
        for p in _real_images(tiny_imagenet, "train", wnid, 5):
            (tmp_path / "data" / "train" / wnid / p.name).symlink_to(p)
    (tmp_path / "data" / "classes.tsv").symlink_to(tiny_imagenet / "classes.tsv")
    from vmem import VisualMemory

    paths = [str(p) for p in _real_images(tiny_imagenet, "val", LION, 3)]
    names = run_block(code, {"VisualMemory": VisualMemory, "paths": paths}, first)
    mem, results, failed = names["mem"], names["results"], names["failed"]
    try:
        assert names["report"].added == 10 and not failed and len(results) == 3
        assert mem.label_names[TABBY] == names["names"][TABBY]
    finally:
        mem.close()


@pytest.mark.realdata
def test_readme_own_encoder_module_builds_a_memory(tmp_path, tiny_imagenet, monkeypatch):
    """The `python:` plugin block, with the user's own MyResNet (here a tiny one) and its weights beside it."""
    import torch
    from typer.testing import CliRunner

    (first, code) = readme_python_blocks()[2]
    assert code.startswith("# my_encoders.py")
    my_resnet = textwrap.dedent('''
        import torch

        class MyResNet(torch.nn.Module):  # the reader's own network: pooled colours, a 2048-d layer, a head
            def __init__(self):
                super().__init__()
                self.body = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                                torch.nn.Linear(48, 2048))
                self.fc = torch.nn.Linear(2048, 10)

            def forward(self, x):
                return self.fc(self.body(x))
    ''')
    (tmp_path / "my_encoders.py").write_text(my_resnet + code, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_encoders", raising=False)
    ns: dict = {}
    exec(my_resnet, ns)
    torch.manual_seed(0)
    torch.save(ns["MyResNet"]().state_dict(), tmp_path / "weights.pt")
    for wnid in (TABBY, LION):
        (tmp_path / "photos" / wnid).mkdir(parents=True)
        for p in _real_images(tiny_imagenet, "train", wnid, 3):
            (tmp_path / "photos" / wnid / p.name).symlink_to(p)
    from vmem.cli import app as vmem_app

    try:
        built = CliRunner().invoke(vmem_app, ["build", "photos/", "--featurizer", "python:my_encoders:resnet_features",
                                              "--workers", "0"])
    finally:
        sys.modules.pop("my_encoders", None)
    assert built.exit_code == 0, built.output
    from vmem import VisualMemory

    with VisualMemory.open("memory", reranker=None) as mem:  # ./memory, the default
        assert len(mem.points(limit=100).points) == 6
        assert mem.store.meta.featurizer.name == "python:my_encoders:resnet_features"


# ---------------------------------------------------------------- the docstrings' >>> examples, read

PACKAGES = ("vmem", "retrieval", "reranker", "prompts", "server", "eval")


@dataclass
class Example:
    module: str
    where: str  # retrieval/voting.py:126
    code: str  # one statement: its `>>>` line and `...` continuations


def docstring_examples() -> list[Example]:
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            lines = path.read_text(encoding="utf-8").splitlines()
            for i, line in enumerate(lines):
                if (start := re.match(r"^\s*>>> ?(.*)$", line)) is None:
                    continue
                code = [start.group(1)]
                for more in lines[i + 1:]:
                    if (going := re.match(r"^\s*\.\.\. ?(.*)$", more)) is None:
                        break
                    code.append(going.group(1))
                found.append(Example(module, f"{path.relative_to(REPO).as_posix()}:{i + 1}", "\n".join(code)))
    return found


def docs_python_examples() -> list[Example]:
    """The docs' ```python blocks, statement by statement (README's are also run, above)."""
    found = []
    for doc in DOCS:
        lines = doc.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.strip() != "```python":
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            code = "\n".join(lines[i + 1:end])
            for statement in ast.parse(code).body:
                found.append(Example("vmem", f"{doc.relative_to(REPO).as_posix()}:{i + 1 + statement.lineno}",
                                     ast.get_source_segment(code, statement) or ""))
    return found


def _statement(code: str) -> ast.Module | None:
    """The example as Python: a compound statement's header (`for x in y:`) is given an empty body."""
    code = re.sub(r"\s+#.*$", "", code, flags=re.M) if "#" in code else code
    for attempt in (code, code.rstrip() + "\n    pass"):
        try:
            return ast.parse(attempt)
        except SyntaxError:
            continue
    return None


def _returned(function) -> object:
    """What a function is annotated to return: a class, a tuple[...] or list[...], or None if not known."""
    if isinstance(function, type):
        return function
    try:
        hints = get_type_hints(function)
    except Exception:
        return None
    returned = hints.get("return")
    if get_origin(returned) in (Union, types.UnionType):
        kinds = [a for a in get_args(returned) if a is not type(None)]
        returned = kinds[0] if len(kinds) == 1 else None
    return returned


class _Reader:
    """Reads one module's examples in order, as a person does: what each name holds follows from the imports and
    the assignments before it (`page = mem.points(...)`: a PointPage), and `mem` is a VisualMemory."""

    def __init__(self, module: str) -> None:
        from vmem import VisualMemory

        self.names: dict[str, object] = {}
        for package in PACKAGES:  # what a package exports may be named in another's example (VisualMemory)
            self.names.update({k: v for k, v in vars(importlib.import_module(package)).items()
                               if not k.startswith("_")})
        self.names.update(vars(importlib.import_module(module)))
        self.kinds: dict[str, object] = {"mem": VisualMemory}
        self.checked = 0

    def kind_of(self, node: ast.expr) -> object:
        if isinstance(node, ast.Name):
            return self.kinds.get(node.id)
        if isinstance(node, ast.Call):
            function = self.callable_of(node.func)
            return _returned(function[0]) if function else None
        return None

    def callable_of(self, node: ast.expr) -> tuple[object, bool] | None:
        """The function a call calls, and whether it is called on an instance (its `self` not written)."""
        if isinstance(node, ast.Name):
            found = self.names.get(node.id)
            return (found, False) if callable(found) else None
        if isinstance(node, ast.Attribute):
            owner = self.kind_of(node.value)
            if owner is None and isinstance(node.value, ast.Name):  # a module or class by name: np.load, Cls.open
                holder = self.names.get(node.value.id)
                if holder is not None and hasattr(holder, node.attr):
                    return getattr(holder, node.attr), False
                return None
            if not isinstance(owner, type):
                return None
            if not hasattr(owner, node.attr):
                raise AttributeError(f"{owner.__qualname__} has no attribute {node.attr}")
            static = inspect.getattr_static(owner, node.attr)
            if isinstance(static, property):
                return None
            return getattr(owner, node.attr), not isinstance(static, (classmethod, staticmethod))
        return None

    def problems(self, example: Example) -> list[str]:
        tree = _statement(example.code)
        if tree is None:
            return [f"{example.where}: not Python: {example.code}"]
        said = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                exec(compile(ast.Module([node], []), example.where, "exec"), self.names)
            if not isinstance(node, ast.Call):
                continue
            try:
                found = self.callable_of(node.func)
            except AttributeError as exc:
                said.append(f"{example.where}: {exc}")
                continue
            if found is None or any(isinstance(a, ast.Starred) for a in node.args) or None in [
                    k.arg for k in node.keywords]:
                continue
            function, on_instance = found
            try:
                signature = inspect.signature(function)
            except (TypeError, ValueError):  # a builtin without one
                continue
            self.checked += 1
            try:
                signature.bind(*([None] if on_instance and not isinstance(function, type) else []),
                               *[None] * len(node.args), **{k.arg: None for k in node.keywords if k.arg})
            except TypeError as exc:
                said.append(f"{example.where}: {ast.unparse(node)}: {exc} ({getattr(function, '__qualname__', '')}"
                            f"{signature})")
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                self._remember(node.targets[0], self.kind_of(node.value))
            elif isinstance(node, ast.For):
                self._remember(node.target, None)
        return said

    def _remember(self, target: ast.expr, kind: object) -> None:
        if isinstance(target, ast.Name):
            self.kinds[target.id] = kind if isinstance(kind, type) else None
        elif isinstance(target, (ast.Tuple, ast.List)):
            parts = get_args(kind) if get_origin(kind) is tuple else [get_args(kind)[0]] * len(target.elts) \
                if get_origin(kind) in (list, collections.abc.Sequence) and get_args(kind) else []
            for i, element in enumerate(target.elts):
                self._remember(element, parts[i] if i < len(parts) else None)


def test_the_docstrings_examples_call_what_there_is_as_it_is_called():
    """Each `>>>` line's calls, and each statement of the docs' Python blocks, read (not run): the function or
    method exists and takes the arguments given."""
    examples = docstring_examples()
    assert len(examples) > 60
    examples += docs_python_examples()
    said: list[str] = []
    checked = 0
    readers: dict[str, _Reader] = {}
    for example in examples:
        reader = readers.setdefault(example.module, _Reader(example.module))
        said += reader.problems(example)
    checked = sum(r.checked for r in readers.values())
    assert not said, "\n".join(said)
    assert checked >= 100, checked  # most calls are found: a reader that resolved none would pass
