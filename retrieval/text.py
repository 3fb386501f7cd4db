"""Labels, names and paths shown as one line of text."""

from __future__ import annotations

import unicodedata


def escape_control_characters(text: str) -> str:
    """`text` with each control character (a newline, tab, escape, NUL) written as Python escapes it (`\\n`), so that
    it starts no line of its own: in a prompt's list of labels, or in a tab-separated line of output."""
    if not any(unicodedata.category(c) == "Cc" for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode() if unicodedata.category(c) == "Cc" else c for c in text)


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
