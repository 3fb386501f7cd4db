"""Text shown to people (a terminal, the page): escaped once, so that it reads as what it is, and unambiguously."""

from __future__ import annotations

import codecs
import itertools
import json
import re

from retrieval.text import not_utf8_problem, quoted, visible, visible_json

_ESCAPE = re.compile(r"[ntr]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}")


def read_back(shown: str) -> str:
    """The text `visible` showed as `shown`, read as docs/service.md tells a person to read it: a run of backslashes
    before what reads as an escape is the text's own backslashes doubled, then (an odd one left) an escape; any
    other backslash is itself."""
    out, i = [], 0
    while i < len(shown):
        if shown[i] != "\\":
            out.append(shown[i])
            i += 1
            continue
        j = i
        while j < len(shown) and shown[j] == "\\":
            j += 1
        if (tail := _ESCAPE.match(shown, j)) is None:
            out.append(shown[i:j])
            i = j
            continue
        out.append("\\" * ((j - i) // 2))
        if (j - i) % 2:
            out.append(codecs.decode(shown[j - 1:tail.end()], "unicode_escape"))
            i = tail.end()
        else:
            i = j
    return "".join(out)


def test_a_label_typed_as_an_escape_reads_other_than_the_character_it_names():
    # "\u202etac" (the override, then "tac") is shown as the escape; the same six characters typed are another label
    assert visible("\u202etac") == "\\u202etac"
    assert visible("\\u202etac") == "\\\\u202etac"
    assert visible("tab\\there") == "tab\\\\there" and visible("tab\there") == "tab\\there"


def test_a_backslash_that_starts_no_escape_is_shown_as_it_is():
    # Windows paths read as they are, unless a folder's name would read as an escape (\new: a newline)
    assert visible("C:\\data\\cats") == "C:\\data\\cats"
    assert visible("\\\\server\\share") == "\\\\server\\share"
    assert visible("C:\\new") == "C:\\\\new"
    assert visible("plain") == "plain" and visible("نیم\u200cرخ") == "نیم\u200cرخ"  # a joiner that joins


def test_every_text_shown_reads_back_as_itself():
    # Every string of up to 4 of these characters, some of which make escapes of each other: none is shown as
    # another is, and each reads back as itself
    alphabet = ["\\", "x", "1", "b", "\x1b", "n", "\n", "\u202e", "u"]
    texts = ["".join(t) for n in range(5) for t in itertools.product(alphabet, repeat=n)]
    texts += ["\\u202etac", "C:\\data\\new", "\\\\server\\share", "a\\\u200cb", "\\U0001f600", "😀\\\U000e0001"]
    for text in texts:
        assert read_back(visible(text)) == text, text


def test_a_message_quotes_a_label_as_it_is_shown_not_as_repr_writes_it():
    # repr escapes a joiner that shows and doubles every backslash: a message named a label other than it is shown
    assert quoted("نیم\u200cرخ") == "'نیم\u200cرخ'" and repr("نیم\u200cرخ") != quoted("نیم\u200cرخ")
    assert quoted("C:\\data") == "'C:\\data'" and quoted("\u202etac") == "'\\u202etac'"


def test_a_folder_name_that_is_not_utf8_is_shown_by_its_bytes_and_never_as_another_name():
    import os

    # Its bytes as \xe9, by visible's rule: a name holding the four characters \xe9 too had read as one without them
    # ('a\\xe9\\xe9' for both of these, by repr)
    folders = [os.fsdecode(b"a\\xe9\xe9"), os.fsdecode(b"a\xe9\\xe9"), os.fsdecode(b"a\xe9\xe9")]
    said = [not_utf8_problem("photo.png", ["cats", folder]) for folder in folders]
    assert said[0] == ("its label folder 'a\\\\xe9\\xe9' is not UTF-8 text (bytes of another encoding): rename it "
                       "in UTF-8")
    assert [s.split("'")[1] for s in said] == ["a\\\\xe9\\xe9", "a\\xe9\\\\xe9", "a\\xe9\\xe9"]
    assert visible("caf\udce9") == "caf\\xe9" != visible("café") and visible("\ud800") == "\\ud800"


def test_a_character_and_a_byte_of_the_same_number_are_shown_apart():
    import os

    # U+00AD (a soft hyphen: unseen) and U+0085 (a control) are escaped, and Python writes them \xad and \x85: as a
    # Latin-1 folder's bytes 0xAD and 0x85 are written. Two folders read as one; a character is \u00ad now.
    for n in (0x85, 0xAD, 0xFF):
        assert visible(f"caf{chr(n)}") != visible(os.fsdecode(b"caf" + bytes([n]))), hex(n)
    assert visible("caf\u00ad") == "caf\\u00ad" and visible(os.fsdecode(b"caf\xad")) == "caf\\xad"
    assert visible("\x1b\x7f") == "\\x1b\\x7f" and read_back(visible("caf\u00ad\x85")) == "caf\u00ad\x85"


def test_settings_shown_as_json_read_back_exactly_and_show_no_override():
    settings = {"source_roots": ["C:\\new", "/photos/\u202egpj", "/photos/猫"], "note": "a\\u202e"}
    shown = visible_json(settings)
    assert "\u202e" not in shown and "猫" in shown and json.loads(shown) == settings
