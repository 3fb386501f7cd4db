"""A prompt template: a validated object stored as YAML, chosen by name.

Each text field is a `string.Template` (`$label`, `${rank}`); the variables a field may use are
fixed below, and a template that uses any other is refused when it is loaded, not when the model
is about to be called.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from retrieval.files import os_error_reason
from retrieval.text import quoted, visible

ToolName = Literal["exemplars", "more_neighbors"]
MAX_TEMPLATE_BYTES = 256 * 1024  # a prompt far larger is a mistake (a log pasted in, the wrong file), not a prompt

# Which variables each text field may use. `rank` and `index` are 1-based for the model's benefit.
FIELD_VARIABLES: dict[str, frozenset[str]] = {
    "system": frozenset({"n_neighbors", "n_candidates"}),
    "intro": frozenset({"n_neighbors", "n_candidates"}),
    "neighbor": frozenset({"rank", "label", "similarity", "weight", "id"}),
    "neighbor_missing": frozenset({"rank", "label", "similarity", "weight", "id"}),
    "query": frozenset({"n_neighbors", "n_candidates"}),
    "candidates": frozenset({"candidate_lines", "candidate_list", "n_candidates"}),
    "candidate_line": frozenset({"label", "score", "rank"}),
    "answer": frozenset({"n_candidates"}),
    "tool_instructions": frozenset({"max_steps", "n_candidates"}),
    "exemplar_line": frozenset({"index", "label", "similarity", "id"}),
}


class TemplateError(ValueError):
    """Base of every template problem (unknown name, unreadable file, bad field)."""


class TemplateLoadError(TemplateError):
    """A template file could not be read, parsed or validated: `reason`, after the file's path (`visible`) when
    there is one. The service says `reason` alone, without its own path to the file."""

    def __init__(self, reason: str, path: Path | None = None) -> None:
        super().__init__(f"{visible(str(path))}: {reason}" if path is not None else reason)
        self.reason, self.path = reason, path


class UnknownTemplateError(TemplateError, KeyError):
    """No template has this name; the message lists the ones that exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class MissingVariablesError(TemplateError):
    """A field was rendered without a value for every variable it uses."""


def _identifiers(text: str) -> set[str]:
    names = set()
    for _, named, braced, _ in string.Template.pattern.findall(text):
        if named or braced:
            names.add(named or braced)
    return names


def _stray_dollar(text: str) -> bool:
    """A `$` that starts no variable (`$5`, `$ `, `${`): `substitute` would raise on it when rendering."""
    return any(m.group("invalid") is not None for m in string.Template.pattern.finditer(text))


class PromptTemplate(BaseModel):
    """How the re-ranker talks to the VLM: instruction, neighbour presentation, candidates, answer.

    The user turn is built in this order: `intro`, then per neighbour its `neighbor` line followed by
    its image (or `neighbor_missing` when the image cannot be read), then `query` and the query image,
    then `candidates` and `answer`. With `tools`, the model may call them (agentic mode) for up to
    `max_steps` rounds before it must answer.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=64)
    version: StrictInt = Field(ge=1, description="bump on any change that could change answers")  # `true` is no 1
    description: str = ""
    system: str = Field(min_length=1, description="the system instruction")
    intro: str = ""
    show_neighbors: bool = Field(default=True, description="list the neighbours at all (labels-only lists none)")
    neighbor_images: bool = Field(default=True, description="send each neighbour's thumbnail after its line")
    max_neighbors: int | None = Field(default=None, ge=1, le=1000, description="show at most this many neighbours")
    neighbor: str = 'Neighbour $rank: "$label" (similarity $similarity)'
    neighbor_missing: str = 'Neighbour $rank: "$label" (similarity $similarity; image unavailable)'
    query: str = "The image to classify:"
    candidates: str = "Candidate labels:\n$candidate_lines"
    candidate_line: str = "- $label"
    answer: str = "Answer with exactly one of the candidate labels."
    tools: list[ToolName] = Field(default_factory=list, description="agentic mode when not empty")
    max_steps: int = Field(default=3, ge=0, le=10, description="tool-calling rounds before the answer is forced")
    tool_instructions: str = ""
    exemplar_line: str = 'Exemplar $index of "$label" (similarity $similarity)'

    @field_validator(*FIELD_VARIABLES)
    @classmethod
    def _known_variables(cls, text: str, info: ValidationInfo) -> str:
        """Each text field's variables, checked on the field: an error names the field (and, from a file, its line)."""
        allowed = FIELD_VARIABLES[str(info.field_name)]
        problems = []
        if _stray_dollar(text):
            problems.append("has a `$` that starts no variable (write `$$` for a dollar sign)")
        if unknown := _identifiers(text) - allowed:
            problems.append(f"uses {', '.join('$' + u for u in sorted(unknown))}, which it may not "
                            f"(allowed: {', '.join('$' + a for a in sorted(allowed))})")
        if problems:
            raise ValueError("; ".join(problems))
        return text

    @field_validator("tool_instructions")
    @classmethod
    def _tools_to_instruct(cls, text: str, info: ValidationInfo) -> str:
        """Tool instructions are sent only in agentic mode: without tools, the prompt had silently left them out."""
        if text.strip() and "tools" in info.data and not info.data["tools"]:
            raise ValueError("it is sent only with tools (agentic mode): give `tools: [exemplars, more_neighbors]` "
                             "(either or both), or leave tool_instructions out")
        return text

    @model_validator(mode="before")
    @classmethod
    def _no_neighbor_images_by_default_without_neighbors(cls, data: Any) -> Any:
        """Without neighbours, neighbor_images is false unless given: the default true was never sent, and a
        template's YAML (`vmem templates show`) would say it, to be refused when read back."""
        if isinstance(data, dict) and data.get("show_neighbors") is False and "neighbor_images" not in data:
            return {**data, "neighbor_images": False}
        return data

    @model_validator(mode="after")
    def _nothing_of_neighbors_not_shown(self) -> PromptTemplate:
        """With show_neighbors false, fields about the neighbours shown had been silently ignored (neighbor_images,
        max_neighbors) or printed 0 ($n_neighbors): the author meant something the prompt does not do."""
        if self.show_neighbors:
            return self
        problems = []
        if self.neighbor_images:
            problems.append("neighbor_images is true, and no neighbour image is sent")
        if self.max_neighbors is not None:
            problems.append(f"max_neighbors is {self.max_neighbors}, and no neighbour is listed")
        if using := [f for f in ("system", "intro", "query") if "n_neighbors" in _identifiers(getattr(self, f))]:
            problems.append(f"{', '.join(using)} {'uses' if len(using) == 1 else 'use'} $n_neighbors, which is "
                            "always 0")
        if problems:
            raise ValueError(f"show_neighbors is false (no neighbours in the prompt), yet {'; '.join(problems)}: "
                             "show the neighbours, or leave those out")
        return self

    @property
    def agentic(self) -> bool:
        return bool(self.tools)

    def uses(self, variable: str) -> bool:
        """Whether any text field prints `$variable`."""
        return any(variable in _identifiers(getattr(self, field)) for field in FIELD_VARIABLES)

    @property
    def ref(self) -> str:
        """`name@version`, as recorded with every result."""
        return f"{self.name}@{self.version}"

    @functools.cached_property
    def content_hash(self) -> str:
        """sha256 of the canonical content: any edit changes it, so cached answers never go stale. Computed once:
        the template is frozen (nothing changes a loaded one), and a request asked it several times (7 ms per MB
        of template each)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> PromptTemplate:
        copied = super().model_copy(update=update, deep=deep)
        if update:  # the copy's fields differ: not the hash of this one's
            copied.__dict__.pop("content_hash", None)
        return copied

    def render(self, field: str, **values: Any) -> str:
        """Fill one text field; raises `MissingVariablesError` naming what was not given."""
        text = getattr(self, field)
        missing = _identifiers(text) - values.keys()
        if missing:
            raise MissingVariablesError(
                f"template {self.ref}: field {field!r} needs {', '.join('$' + m for m in sorted(missing))}")
        return string.Template(text).substitute({k: str(v) for k, v in values.items()})

    def to_yaml(self) -> str:
        """The template as YAML that `load_template_file` reads back (multi-line text as `|` blocks)."""
        return yaml.dump(self.model_dump(mode="json"), Dumper=_BlockDumper, sort_keys=False, allow_unicode=True,
                         width=100)


class _BlockDumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice (the plain one keeps the last, so a pasted second `system:`
    silently replaced the first), and noting the line of each top-level key, for errors to say where."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.key_lines: dict[str, int] = {}

    def construct_document(self, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    self.key_lines.setdefault(str(key_node.value), key_node.start_mark.line + 1)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {quoted(str(key))} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _field_problem(error: Any, key_lines: dict[str, int]) -> str:
    """One validation error as a line a template's author can act on: the field, its line in the file where it is
    there, and what is wrong, in words (an unknown field with the one it was likely meant to be)."""
    loc = [str(x) for x in error["loc"]]
    field = loc[0] if loc else ""
    where = visible(".".join(loc)) or "template"
    if field in key_lines:
        where += f" (line {key_lines[field]})"
    if error["type"] == "extra_forbidden":
        # "neighbour" (the docs' spelling) for the field `neighbor`: the likely one named, else every field
        near = difflib.get_close_matches(field, PromptTemplate.model_fields, n=1, cutoff=0.6)
        said = f"did you mean {near[0]}?" if near else f"the fields are {', '.join(PromptTemplate.model_fields)}"
        return f"{where}: unknown field ({said})"
    if error["type"] == "string_pattern_mismatch" and field == "name":
        return (f"{where}: {quoted(str(error['input']))} is not a template name: lowercase letters, digits, `.`, `_` "
                "and `-`, starting with a letter or digit (and the file named after it)")
    if error["type"] == "value_error":  # our own validator's words, without pydantic's "Value error, "
        return f"{where}: {error['ctx']['error']}"
    return f"{where}: {error['msg']}"


def load_template_file(path: str | Path) -> PromptTemplate:
    """Read and validate one `<name>.yaml`; every failure becomes one `TemplateLoadError`, which names the line
    where the file has one to name.

    Args:
        path: a YAML file whose `name` equals its file stem.

    Raises:
        TemplateLoadError: unreadable, not YAML, not a mapping, invalid fields, or name != stem.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:  # no more than the limit and a byte read: a FIFO, /dev/zero had been read forever
            raw = f.read(MAX_TEMPLATE_BYTES + 1)
    except OSError as exc:
        # In words without its path: the service says the reason to a client, without the server's path
        raise TemplateLoadError(f"cannot read template ({os_error_reason(exc)})", p) from exc
    if len(raw) > MAX_TEMPLATE_BYTES:
        raise TemplateLoadError(f"the file is over the limit of {MAX_TEMPLATE_BYTES // 1024} KB for a template: a "
                                "prompt that large is likely the wrong file, or text pasted in by mistake", p)
    try:  # read as read_text reads it: any line ending a "\n"
        text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        column = exc.start - (exc.object.rfind(b"\n", 0, exc.start) + 1) + 1
        raise TemplateLoadError(f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at line {line}, column "
                                f"{column}): save the template as UTF-8", p) from exc
    loader = _UniqueKeyLoader(text)  # a SafeLoader: no object tags
    loader.name = p.name  # YAML's errors say `in "mine.yaml", line 3`, not "<unicode string>" (read as text: quoted)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:  # its snippet quotes the file's own lines: each escaped, as the names above
        raise TemplateLoadError("not valid YAML ({})".format("\n".join(map(visible, str(exc).split("\n")))),
                                p) from exc
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        fields = "a template is a YAML mapping of fields (name: ..., version: ..., system: ...)"
        if data is None:  # `vmem templates show mine > mine.yaml` empties the file before it is read
            raise TemplateLoadError(f"the file is empty: {fields}", p)
        what = {list: "a list", str: "text", int: "a number", float: "a number", bool: "true or false"}
        raise TemplateLoadError(f"{fields}, not {what.get(type(data), type(data).__name__)}", p)
    try:
        template = PromptTemplate.model_validate(data)
    except ValidationError as exc:  # a key's name is the file's text: shown escaped (an unknown key is named)
        lines = [_field_problem(e, loader.key_lines) for e in exc.errors()]
        raise TemplateLoadError("invalid template:\n  " + "\n  ".join(lines), p) from exc
    if template.name != p.stem:
        raise TemplateLoadError(f"the template's name {quoted(template.name)} must match its file name "
                                f"{quoted(p.stem)}", p)
    return template
