"""Labels, names and paths shown as one line of text."""

from __future__ import annotations

import unicodedata


def escape_control_characters(text: str) -> str:
    """`text` with each control character (a newline, tab, escape, NUL) written as Python escapes it (`\\n`), so that
    it starts no line of its own: in a prompt's list of labels, or in a tab-separated line of output."""
    if not any(unicodedata.category(c) == "Cc" for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode() if unicodedata.category(c) == "Cc" else c for c in text)
