"""Labels, names and paths shown as one line of text."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Collection, Iterable

# A label may be as long as a file name (255 bytes: up to 255 characters) or a manifest's cell: every label the CLI
# builds can be filtered, forgotten and relabelled over HTTP (at 200, a 230-character folder's class could not).
MAX_LABEL_CHARS = 1024


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and `noun`, plural unless `n` is 1, as a message says a count: '1 image', '0 images', '1,200 points';
    `plural` where an added s does not make it ('entry', 'entries'). A user who sends one image reads of one image.

    >>> counted(1, "image"), counted(0, "label"), counted(1200, "point"), counted(2, "entry", "entries")
    ('1 image', '0 labels', '1,200 points', '2 entries')
    """
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def control_character(text: str) -> str | None:
    """The first control character in `text`, if any: labels, names and file names are one line of text."""
    return next((c for c in text if unicodedata.category(c) == "Cc"), None)


def label_problem(label: str) -> str | None:
    """Why `label` cannot be a label given to `add` or `relabel` (None: it can): what HTTP refuses, refused on
    every surface, so that a label made through Python or the CLI can be reached through the service. A newline
    in a label broke the re-ranker's list of candidates into lines of instructions."""
    if (bad := control_character(label)) is not None:
        return f"label {quoted(label[:40])} holds the control character {quoted(bad)}: a label is one line of text"
    if len(label) > MAX_LABEL_CHARS:
        return f"label {quoted(label[:40])}... is {len(label):,} characters: at most {MAX_LABEL_CHARS:,}"
    return None


def escape_control_characters(text: str) -> str:
    """`text` with each control character (a newline, tab, escape, NUL) written as Python escapes it (`\\n`), so that
    it starts no line of its own: in a prompt's list of labels, or in a tab-separated line of output."""
    if not any(unicodedata.category(c) == "Cc" for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode() if unicodedata.category(c) == "Cc" else c for c in text)


# What a terminal shows other than as it is: control characters (Cc: a newline, an escape sequence), format
# characters (Cf: U+202E RIGHT-TO-LEFT OVERRIDE and the other bidi controls U+202A-202E and U+2066-2069, the zero-
# width U+200B-200F, U+2060-2064, U+FEFF, tags), the line and paragraph separators U+2028 and U+2029, and lone
# surrogates (Cs: how Python reads the bytes of a file name that are not UTF-8, which no terminal can print).
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def visible(text: str) -> str:
    """`text` as a terminal should show it: each character that is not shown as itself written as Python escapes it
    (`\\n`, `\\x1b`, `\\u202e`). "\\u202etac" reads "cat" on screen, and a zero-width space makes "cat\\u200b" a
    label other than "cat" that reads the same: a label, name, source or journal line of someone else's making
    printed by the CLI reads as it is. A joiner that joins (`_joins`) is shown as itself. A byte of a file name that
    is not UTF-8 (read by Python as a lone surrogate) is written as the byte, `\\xe9`. For text a person reads
    only; JSON and the stored text stay exact.

    Unambiguous: the text's own backslashes are doubled where what follows them would read as an escape (`n`, `t`,
    `r`, `xHH`, `uHHHH`, `UHHHHHHHH`, or a character escaped), so a label typed as the six characters `\\u202e`
    shows `\\\\u202e`, not as the override itself does; elsewhere a backslash is itself, so that `C:\\data` and
    `\\\\server\\share` read as they are (`C:\\new` shows `C:\\\\new`). Escape once, the raw text: shown text
    escaped again shows its escapes' backslashes doubled."""
    if "\\" not in text and not any(unicodedata.category(c) in _HIDDEN_CATEGORIES for c in text):
        return text
    escaped = [unicodedata.category(c) in _HIDDEN_CATEGORIES and not _joins(text, i) for i, c in enumerate(text)]
    out = []
    for i, c in enumerate(text):
        if escaped[i]:
            out.append(_escape(c))
        elif c == "\\":
            j = i + 1
            while j < len(text) and text[j] == "\\":  # a run of backslashes is doubled whole, or not at all
                j += 1
            out.append("\\\\" if j < len(text) and (escaped[j] or _ESCAPE_TAIL.match(text, j)) else c)
        else:
            out.append(c)
    return "".join(out)


def quoted(text: str) -> str:
    """`text` quoted in a sentence shown to a person (an error, a note): 'cat', escaped by `visible`. In place of
    `repr`, which escapes a joiner that shows (a Persian label read "نیم\\u200cرخ"), doubles every backslash of a
    Windows path, and escaped again by a message's `visible` read "\\\\u202e"."""
    return f"'{visible(text)}'"


def visible_json(value: object) -> str:
    """`value` as one line of JSON a person reads: other scripts as they are, and what `visible` escapes written as
    JSON escapes it (`\\u202e`). JSON's own rule (every backslash doubled, `C:\\\\data`) is unambiguous already:
    `visible` of the JSON doubled its backslashes again where an escape followed."""
    text = json.dumps(value, ensure_ascii=False)
    if not any(unicodedata.category(c) in _HIDDEN_CATEGORIES for c in text):
        return text
    return "".join(json.dumps(c)[1:-1] if unicodedata.category(c) in _HIDDEN_CATEGORIES and not _joins(text, i)
                   else c for i, c in enumerate(text))


def without_secrets(text: str) -> str:
    """`text` with any URL's user and password, and its query (`?key=`, `?api_key=`), taken out: for what is
    shown or written down (a message, a log, a file beside a run) of a URL that may hold them."""
    return re.sub(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]*@", r"\g<scheme>", re.sub(
        r"(://[^\s?#]*)\?[^\s#]*", r"\1", text))


def _escape(c: str) -> str:
    """One character `visible` escapes, as Python escapes it; a byte `surrogateescape` read as U+DC80-U+DCFF as
    that byte (`\\xe9`), as `utf8_text` writes it. A character U+0080-U+00FF (a C1 control, a soft hyphen) is
    written `\\u0085`, not Python's `\\x85`: that is the byte 0x85's, and a folder named with either had read as
    the other."""
    if "\udc80" <= c <= "\udcff":
        return f"\\x{ord(c) - 0xDC00:02x}"
    if "\x80" <= c <= "\xff":
        return f"\\u{ord(c):04x}"
    return c.encode("unicode_escape").decode()


# What follows the backslash of an escape `visible` writes (unicode_escape's, for the characters it escapes)
_ESCAPE_TAIL = re.compile(r"[ntr]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}")


ZWNJ, ZWJ = "\u200c", "\u200d"
# Scripts whose letters join, where a ZERO WIDTH NON-JOINER between two of them changes how they are drawn
_JOINING_SCRIPTS = ("ARABIC", "SYRIAC", "NKO", "MONGOLIAN", "MANDAIC", "ADLAM", "HANIFI ROHINGYA")


def _joins(text: str, i: int) -> bool:
    """Whether the joiner at `text[i]` is part of how its text is written, and shows (IDNA's CONTEXTJ rules, RFC
    5892 A.1 and A.2, nearly): after a virama (Devanagari, Bengali, Malayalam...); a non-joiner between two letters of
    a joining script (Persian "نیم‌رخ"); a joiner inside an emoji sequence (a family: 👨‍👩‍👧). Escaped, every such
    label printed by the CLI, from a memory that vmem had printed as it was, read as escapes."""
    c = text[i]
    if c not in (ZWNJ, ZWJ) or i == 0 or i == len(text) - 1:
        return False
    before, after = text[i - 1], text[i + 1]
    if unicodedata.combining(before) == 9:  # a virama
        return True
    if c == ZWNJ:
        return _in_joining_script(_base(text, i, -1)) and _in_joining_script(_base(text, i, 1))
    return unicodedata.category(_base(text, i, -1)) == "So" and unicodedata.category(after) == "So"


def _base(text: str, i: int, step: int) -> str:
    """The character next to `text[i]` that way, past marks, variation selectors and emoji skin tones."""
    j = i + step
    while 0 <= j < len(text) and (unicodedata.category(text[j]) in ("Mn", "Me", "Sk")
                                  or "\ufe00" <= text[j] <= "\ufe0f"):
        j += step
    return text[j] if 0 <= j < len(text) else ""


def _in_joining_script(c: str) -> bool:
    return bool(c) and unicodedata.category(c).startswith("L") and unicodedata.name(c, "").startswith(
        _JOINING_SCRIPTS)


def canonical_label(text: str) -> str:
    """A label as the memory stores it: Unicode NFC, outer spaces stripped. macOS writes a folder "café" as NFD
    (e + a combining accent), keyboards and browsers as NFC: the same text on screen, two labels to the store,
    so a class split in two and a query folder's truth never matched. An outer space is no part of a label:
    `relabel --to` and HTTP strip it, and a folder " cat " could never be reached again."""
    return unicodedata.normalize("NFC", text).strip()


def label_forms(text: str) -> list[str]:
    """The forms a label given by a person may be stored under, the canonical first: a memory built before
    labels were made canonical holds them as its folders spelled them (NFD, outer spaces)."""
    canonical = canonical_label(text)
    return list(dict.fromkeys([canonical, text, unicodedata.normalize("NFD", canonical)]))


def as_held(labels: Iterable[str], held: Collection[str]) -> dict[str, str]:
    """Each label as the memory holding `held` spells it: itself when held, else a held form of it (`label_forms`),
    else a held label that reads the same canonically (" padded " for "padded"), else itself. An older memory
    holds its folders as they were spelled; labels read today are canonical."""
    by_canonical: dict[str, str] = {}
    for lab in sorted(held):
        by_canonical.setdefault(canonical_label(lab), lab)
    return {lab: lab if lab in held else next((f for f in label_forms(lab) if f in held),
                                              by_canonical.get(canonical_label(lab), lab))
            for lab in labels}


def utf8_text(text: str | None) -> str | None:
    """`text`, with the bytes of a file name that is not UTF-8 (which Python reads as lone surrogates) written as
    `\\xe9`: JSON, a terminal and a point's payload take it, where the surrogates stopped `classify --json` at
    that image, and a build before anything was added. `text` itself when it is UTF-8."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # surrogates that were never bytes of a name
            raw = text.encode("utf-8", "backslashreplace")
        return raw.decode("utf-8", "backslashreplace")


def not_utf8_problem(source: str, labels: Iterable[str]) -> str | None:
    """Why an image's path or label folder cannot be stored or reported as text (None: both are UTF-8). Linux
    lets a file name be any bytes (Python reads the rest as surrogates), but a point's id, payload, journal and
    eval's files are UTF-8: one such name had stopped a whole build, and ended an evaluation in a traceback."""
    if utf8_text(source) != source:
        what = "its path"
    elif (bad := next((lab for lab in labels if utf8_text(lab) != lab), None)) is not None:
        # quoted: its bytes as `\xe9`, and a backslash of its own doubled before what would read as one (`\\xe9`)
        what = f"its label folder {quoted(bad)}"
    else:
        return None
    return f"{what} is not UTF-8 text (bytes of another encoding): rename it in UTF-8"


SHOWN_ITEMS = 5


def short_repr(obj: object, items: int = SHOWN_ITEMS) -> str:
    """A pydantic model's or a dataclass's repr with each list and dict longer than `items` cut to its first `items`
    and a count of the rest: what a notebook shows of a forget of 10,000 points, whose whole repr ran to 400,000
    characters of point ids. Every field is still there, whole (`.ids`, `.model_dump()`)."""
    if hasattr(obj, "__repr_args__"):  # pydantic: the fields it shows (repr=True), computed ones included
        args = [(name, value) for name, value in obj.__repr_args__()]
    else:
        import dataclasses

        args = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr]  # type: ignore[arg-type]
    shown = ", ".join(f"{name}={_short(value, items)}" if name else _short(value, items) for name, value in args)
    return f"{type(obj).__name__}({shown})"


def _short(value: object, items: int) -> str:
    if isinstance(value, dict):
        parts = [f"{k!r}: {_short(v, items)}" for k, v in list(value.items())[:items]]
        more = [f"... {len(value) - items} more"] if len(value) > items else []
        return "{" + ", ".join(parts + more) + "}"
    if isinstance(value, list | tuple):
        parts = [_short(v, items) for v in value[:items]]
        more = [f"... {len(value) - items} more"] if len(value) > items else []
        one = "," if isinstance(value, tuple) and len(value) == 1 else ""
        opening, closing = ("[", "]") if isinstance(value, list) else ("(", ")")
        return opening + ", ".join(parts + more) + one + closing
    return repr(value)
