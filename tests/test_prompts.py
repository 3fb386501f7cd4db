"""Prompt templates: YAML files validated on load, found by name, hashed; what each one puts in a request."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from prompts import (
    MAX_TEMPLATE_BYTES,
    MissingVariablesError,
    PromptTemplate,
    TemplateLoadError,
    TemplateRegistry,
    UnknownTemplateError,
    default_registry,
    load_template_file,
)
from reranker import (
    GeminiReranker,
    RerankNeighbor,
    RerankRequest,
    ThumbnailCache,
    build_prompt,
    candidate_labels,
    encode_query,
)
from vmem.cli import app

MINIMAL = "name: mine\nversion: 1\nsystem: Classify the image.\n"


def write(tmp_path, name: str, text: str):
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return p


# ------------------------------------------------------------------ the built-ins


@pytest.mark.parametrize("name, images, agentic", [
    ("neighbors-v1", True, False),
    ("labels-only", False, False),
    ("agentic-v1", True, True),
])
def test_builtin_templates_load(name, images, agentic):
    t = TemplateRegistry().get(name)
    assert (t.name, t.version, t.neighbor_images, t.agentic) == (name, 1, images, agentic)
    assert len(t.content_hash) == 16 and t.ref == f"{name}@1"


def test_the_default_template_is_the_papers_setup():
    assert TemplateRegistry().get(None).name == "neighbors-v1"


def test_the_hash_changes_with_any_edit_and_only_then():
    t = TemplateRegistry().get("neighbors-v1")
    assert t.model_copy().content_hash == t.content_hash
    edited = PromptTemplate.model_validate({**t.model_dump(), "answer": "Reply with the label."})
    assert edited.content_hash != t.content_hash


def test_a_template_round_trips_through_yaml(tmp_path):
    t = TemplateRegistry().get("agentic-v1")
    assert load_template_file(write(tmp_path, "agentic-v1", t.to_yaml())) == t


# ------------------------------------------------------------------ loading and validation


@pytest.mark.parametrize("text, message", [
    (MINIMAL + "colour: red\n", "colour (line 4): unknown field (the fields are name, version,"),
    ("name: mine\nversion: 1\n", "system: Field required"),
    (MINIMAL + "neighbor: 'Neighbour $rank is $labl'\n", "neighbor (line 4): uses $labl, which it may not"),
    (MINIMAL + "answer: 'one of $candidate_lines'\n", "answer (line 4): uses $candidate_lines"),
    (MINIMAL + "tools: [web_search]\n", "tools.0 (line 4): Input should be 'exemplars' or 'more_neighbors'"),
    ("name: mine\nversion: 0\nsystem: x\n", "version (line 2): Input should be greater than or equal to 1"),
    ("name: [unclosed\n", "not valid YAML"),
    ("- a list\n", "a template is a YAML mapping of fields (name: ..., version: ..., system: ...), not a list"),
    # `vmem templates show mine > mine.yaml`: the shell empties the file before it is read ("got NoneType")
    ("", "the file is empty: a template is a YAML mapping of fields (name: ..., version: ..., system: ...)"),
    ("# only a comment\n", "the file is empty"),
    ("Classify the image.\n", "a template is a YAML mapping of fields (name: ..., version: ..., system: ...), "
                             "not text"),
    ("name: other\nversion: 1\nsystem: x\n", "must match its file name 'mine'"),
    # a bare `$` would only fail when a request is built; `$$` is the literal dollar sign
    (MINIMAL + "answer: 'Costs $5 per answer'\n", "answer (line 4): has a `$` that starts no variable"),
    # YAML's plain reading took `true` as version 1, and kept the last of two `system:` keys
    ("name: mine\nversion: true\nsystem: x\n", "version (line 2): Input should be a valid integer"),
    (MINIMAL + "system: a second instruction\n", "the key 'system' is given twice"),
])
def test_invalid_templates_are_refused_on_load_with_a_clear_message(tmp_path, text, message):
    with pytest.raises(TemplateLoadError, match=r"mine\.yaml") as err:
        load_template_file(write(tmp_path, "mine", text))
    assert message in str(err.value)


def test_a_templates_error_names_the_line_and_the_field_it_was_likely_meant_to_be(tmp_path):
    # A template copied from neighbors-v1 and edited: the docs spell "neighbours", the field is `neighbor`, and
    # pydantic's words ("Extra inputs are not permitted", "Value error, bad variables") said neither where nor what.
    text = ("name: mine\nversion: 1\n"
            "system: |-\n  Classify the image.\n  Mind the $colour.\n"
            "neighbour: 'Example $rank: $label'\n"
            "neighbor: 'Example $rank of $n_candidates: $label'\n"
            "colour: red\n")
    with pytest.raises(TemplateLoadError) as err:
        load_template_file(write(tmp_path, "mine", text))
    assert err.value.reason.splitlines() == [
        "invalid template:",
        "  system (line 3): uses $colour, which it may not (allowed: $n_candidates, $n_neighbors)",
        "  neighbor (line 7): uses $n_candidates, which it may not (allowed: $id, $label, $rank, $similarity, "
        "$weight)",
        "  neighbour (line 6): unknown field (did you mean neighbor?)",
        "  colour (line 8): unknown field (the fields are name, version, description, system, intro, show_neighbors, "
        "neighbor_images, max_neighbors, neighbor, neighbor_missing, query, candidates, candidate_line, answer, "
        "tools, max_steps, tool_instructions, exemplar_line)"]
    with pytest.raises(TemplateLoadError) as err:
        load_template_file(write(tmp_path, "my-template", "name: My Template\nversion: 1\nsystem: x\n"))
    assert err.value.reason == ("invalid template:\n  name (line 1): 'My Template' is not a template name: lowercase "
                                "letters, digits, `.`, `_` and `-`, starting with a letter or digit (and the file "
                                "named after it)")
    # YAML's own errors name the file, where they had said `in "<unicode string>"`
    with pytest.raises(TemplateLoadError) as err:
        load_template_file(write(tmp_path, "open", 'name: open\nversion: 1\nsystem: "Classify.\n'))
    assert 'in "open.yaml", line 3, column 9' in err.value.reason and "<unicode string>" not in err.value.reason
    # ... and a byte that is not UTF-8 is found by line and column, not by its offset in the file
    (tmp_path / "latin.yaml").write_bytes(b"name: latin\nversion: 1\nsystem: caf\xe9\n")
    with pytest.raises(TemplateLoadError) as err:
        load_template_file(tmp_path / "latin.yaml")
    assert err.value.reason == "not UTF-8 text (byte 0xe9 at line 3, column 12): save the template as UTF-8"


def test_tool_instructions_without_tools_are_refused_not_left_out_of_the_prompt(tmp_path):
    # agentic-v1 copied with its tools taken out, to compare without them: its tool_instructions ("You may use
    # tools for at most 3 rounds") were silently never sent, the prompt no longer what the file said.
    agentic = TemplateRegistry().get("agentic-v1").to_yaml().replace("agentic-v1", "no-tools")
    text = agentic.replace("tools:\n- exemplars\n- more_neighbors\n", "")
    assert "tool_instructions:" in text and "tools:" not in text
    with pytest.raises(TemplateLoadError) as err:
        load_template_file(write(tmp_path, "no-tools", text))
    line = text.splitlines().index(next(x for x in text.splitlines() if x.startswith("tool_instructions:"))) + 1
    assert err.value.reason == (
        f"invalid template:\n  tool_instructions (line {line}): it is sent only with tools (agentic mode): give "
        "`tools: [exemplars, more_neighbors]` (either or both), or leave tool_instructions out")
    # Without its tool_instructions it loads, and the prompt is what the file says; labels-only, as written out
    # with every field (an empty tool_instructions among them), loads as before
    load_template_file(write(tmp_path, "no-tools", text.replace(
        next(x for x in text.splitlines() if x.startswith("tool_instructions:")) + "\n", "")))
    labels_only = TemplateRegistry().get("labels-only")
    assert load_template_file(write(tmp_path, "labels-only", labels_only.to_yaml())) == labels_only


def test_rendering_without_a_variable_names_it():
    t = TemplateRegistry().get("neighbors-v1")
    with pytest.raises(MissingVariablesError, match=r"needs \$rank, \$similarity"):
        t.render("neighbor", label="cat")
    assert t.render("neighbor", rank=1, label="cat", similarity="0.900") == \
        'Example 1, labelled "cat" (similarity 0.900):'


# ------------------------------------------------------------------ the registry


def test_an_unknown_name_lists_the_available_templates():
    with pytest.raises(UnknownTemplateError) as err:
        TemplateRegistry().get("neighbours-v1")
    assert str(err.value).startswith(
        "unknown template 'neighbours-v1'; available: agentic-v1, labels-only, neighbors-v1")


def test_an_empty_name_is_unknown_not_the_default():
    # `vmem classify --rerank --template "$TEMPLATE"` with the variable unset: the run had silently used neighbors-v1
    # (an experiment sweep's row measured the wrong prompt); no name at all (None) is still the default.
    with pytest.raises(UnknownTemplateError, match=r"^unknown template ''; available: agentic-v1, labels-only"):
        TemplateRegistry().get("")
    assert TemplateRegistry().get(None).name == "neighbors-v1"
    rr = GeminiReranker(api_key="test-key", cache=False)  # what VisualMemory.classify asks before any image is embedded
    try:
        with pytest.raises(UnknownTemplateError):
            rr.template("")
    finally:
        rr.close()


def test_user_templates_come_from_VMEM_TEMPLATES_DIR_and_override_builtins(tmp_path, monkeypatch):
    write(tmp_path, "mine", MINIMAL)
    write(tmp_path, "labels-only", "name: labels-only\nversion: 7\nsystem: Ours.\nneighbor_images: false\n")
    monkeypatch.setenv("VMEM_TEMPLATES_DIR", str(tmp_path))
    reg = default_registry()
    assert reg.names() == ["agentic-v1", "labels-only", "mine", "neighbors-v1"]
    assert reg.entry("labels-only").origin == "user" and reg.get("labels-only").version == 7
    assert reg.entry("neighbors-v1").origin == "builtin"


def test_a_templates_dir_that_does_not_exist_is_reported_not_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("VMEM_TEMPLATES_DIR", str(tmp_path / "tempaltes"))
    reg = default_registry()
    assert "neighbors-v1" in reg  # the built-ins still load
    assert "tempaltes: not a directory" in str(reg.errors["$VMEM_TEMPLATES_DIR"])


def test_a_template_added_after_start_is_found(tmp_path):
    reg = TemplateRegistry(tmp_path)
    write(tmp_path, "late", MINIMAL.replace("mine", "late"))
    assert reg.get("late").name == "late"


def test_a_template_mended_or_edited_while_running_is_read_again(tmp_path):
    write(tmp_path, "mine", MINIMAL + "answer: 'Costs $5 per answer'\n")  # broken: a bare `$`
    reg = TemplateRegistry(tmp_path)
    with pytest.raises(TemplateLoadError):
        reg.get("mine")
    write(tmp_path, "mine", MINIMAL + "answer: 'Costs $$5 per answer'\n")  # mended
    first = reg.get("mine")
    assert first.answer == "Costs $$5 per answer"
    write(tmp_path, "mine", MINIMAL + "answer: 'Costs $$6 per answer.'\n")  # edited
    assert reg.get("mine").answer == "Costs $$6 per answer." and reg.get("mine").content_hash != first.content_hash
    assert reg.get("mine") is reg.get("mine")  # unchanged files are not read again


def test_an_edit_of_the_same_length_within_one_mtime_tick_is_read_again(tmp_path):
    # Size and modification time alone had missed it: an edit saved within the file system's timestamp tick of
    # the one before (a script writing twice, an editor saving twice quickly), or by a tool that keeps the
    # mtime, left a running service answering with the old prompt.
    path = write(tmp_path, "mine", MINIMAL + "answer: 'Costs $$5 per answer'\n")
    reg = TemplateRegistry(tmp_path)
    assert reg.get("mine").answer == "Costs $$5 per answer"
    before = path.stat()
    write(tmp_path, "mine", MINIMAL + "answer: 'Costs $$6 per answer'\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    assert reg.get("mine").answer == "Costs $$6 per answer"
    assert reg.get("mine") is reg.get("mine")  # and read once, not at each request


def test_a_templates_hash_is_computed_once_and_a_copy_with_edits_has_its_own():
    t = PromptTemplate.model_validate({**TemplateRegistry().get("neighbors-v1").model_dump(), "version": 2})
    assert t.content_hash is t.content_hash  # cached on the template: a request asks it several times
    edited = t.model_copy(update={"answer": "Reply with the label."})
    assert edited.content_hash != t.content_hash
    assert edited.content_hash == PromptTemplate.model_validate(edited.model_dump()).content_hash


def test_a_template_file_over_the_size_limit_is_a_load_error_naming_the_file_and_the_limit(tmp_path):
    # A prompt of megabytes is a mistake (a log pasted in, the wrong file): it had been loaded, hashed at each
    # request and sent to the model at each re-rank.
    big = write(tmp_path, "big", MINIMAL + "intro: |\n" + "  a line of a log pasted in by mistake\n" * 8000)
    assert big.stat().st_size > MAX_TEMPLATE_BYTES
    with pytest.raises(TemplateLoadError, match=r"big\.yaml: the file is over the limit of 256 KB for a template"):
        load_template_file(big)
    reg = TemplateRegistry(tmp_path)  # the others still load
    assert "neighbors-v1" in reg and "over the limit of 256 KB" in str(reg.errors["big"])
    just = write(tmp_path, "just", MINIMAL.replace("mine", "just") + "intro: |\n" + "  a long prompt line\n" * 600)
    assert load_template_file(just).intro.count("\n") == 600  # long prompts below it load


def test_a_template_without_neighbours_refuses_fields_about_the_neighbours_it_would_show(tmp_path):
    # They had been silently ignored (neighbor_images, max_neighbors) or printed 0 ($n_neighbors).
    path = write(tmp_path, "mine", MINIMAL.replace("Classify the image.", "Look at $n_neighbors examples.")
                 + "show_neighbors: false\nneighbor_images: true\nmax_neighbors: 5\n")
    with pytest.raises(TemplateLoadError) as err:
        load_template_file(path)
    assert err.value.reason == (
        "invalid template:\n  template: show_neighbors is false (no neighbours in the prompt), yet neighbor_images is "
        "true, and no neighbour image is sent; max_neighbors is 5, and no neighbour is listed; system uses "
        "$n_neighbors, which is always 0: show the neighbours, or leave those out")
    # show_neighbors: false alone means no neighbour images either, and reads back from its own YAML
    labels_only = load_template_file(write(tmp_path, "mine", MINIMAL + "show_neighbors: false\n"))
    assert not labels_only.neighbor_images
    assert load_template_file(write(tmp_path, "mine", labels_only.to_yaml())) == labels_only


def test_a_template_that_is_not_utf8_is_a_load_error_not_a_crash(tmp_path):
    (tmp_path / "latin.yaml").write_bytes(b"name: latin\nversion: 1\nsystem: caf\xe9\n")
    reg = TemplateRegistry(tmp_path)  # the others still load
    assert "neighbors-v1" in reg and "not UTF-8 text" in str(reg.errors["latin"])
    with pytest.raises(TemplateLoadError, match="save the template as UTF-8"):
        reg.get("latin")


def test_a_broken_user_template_does_not_hide_the_others(tmp_path):
    write(tmp_path, "broken", "name: broken\nversion: 1\n")
    reg = TemplateRegistry(tmp_path)
    assert "neighbors-v1" in reg and "broken" in reg.errors
    with pytest.raises(TemplateLoadError, match="system: Field required"):
        reg.get("broken")


def test_a_broken_user_template_with_a_builtins_name_is_an_error_not_the_builtin(tmp_path):
    # The user meant to pin their own neighbors-v1: silently answering with the built-in would hide it.
    write(tmp_path, "neighbors-v1", "name: neighbors-v1\nversion: 9\n")
    reg = TemplateRegistry(tmp_path)
    with pytest.raises(TemplateLoadError, match="system: Field required"):
        reg.get("neighbors-v1")


def test_a_yaml_and_a_yml_of_one_name_are_both_refused_naming_the_two_files(tmp_path):
    # Which one did the author mean? The .yml had silently won; now neither is used, nor the built-in.
    write(tmp_path, "neighbors-v1", "name: neighbors-v1\nversion: 2\nsystem: Mine.\n")
    (tmp_path / "neighbors-v1.yml").write_text("name: neighbors-v1\nversion: 3\nsystem: Mine, edited.\n")
    reg = TemplateRegistry(tmp_path)
    assert "neighbors-v1" not in reg and "labels-only" in reg
    with pytest.raises(TemplateLoadError) as err:
        reg.get("neighbors-v1")
    assert "neighbors-v1.yaml and neighbors-v1.yml both define the template 'neighbors-v1'; keep one" in str(err.value)
    res = CliRunner().invoke(app, ["templates", "list"], env={"VMEM_TEMPLATES_DIR": str(tmp_path)})
    assert "template neighbors-v1 cannot be used:" in res.output and "neighbors-v1.yml both define" in res.output
    (tmp_path / "neighbors-v1.yml").unlink()  # one kept: it is used
    assert reg.get("neighbors-v1").version == 2


def test_a_templates_problem_shows_the_names_and_files_it_quotes_escaped(tmp_path):
    # A file name and a requested name are the user's text: U+202E in one turned the rest of the error backwards.
    folder = tmp_path / "my\u202etemplates"
    folder.mkdir()
    write(folder, "mine\u202ev2", MINIMAL)  # its name says "mine"
    (folder / "extra.yaml").write_text("name: extra\nversion: 1\nsystem: A.\nsystem\u202e: B.\n")
    reg = TemplateRegistry(folder)
    with pytest.raises(TemplateLoadError) as err:
        reg.get("mine\u202ev2")
    assert str(err.value) == (f"{tmp_path}/my\\u202etemplates/mine\\u202ev2.yaml: the template's name 'mine' must "
                              "match its file name 'mine\\u202ev2'")
    assert err.value.reason.startswith("the template's name") and err.value.path == folder / "mine\u202ev2.yaml"
    with pytest.raises(TemplateLoadError, match=r"system\\u202e \(line 4\): unknown field \(did you mean system\?\)"):
        reg.get("extra")
    with pytest.raises(UnknownTemplateError) as unknown:
        reg.get("no\u202eone")
    assert str(unknown.value).startswith("unknown template 'no\\u202eone'; available:")
    assert "(user templates are read from " + str(tmp_path) + "/my\\u202etemplates)" in str(unknown.value)
    res = CliRunner().invoke(app, ["templates", "list"], env={"VMEM_TEMPLATES_DIR": str(folder)})
    assert "\u202e" not in res.output and "template mine\\u202ev2 cannot be used: " in res.output


def test_a_template_that_cannot_be_read_says_why_without_its_path(tmp_path, monkeypatch):
    # The reason is what the service tells a client, without the server's path: an OSError with no words of its
    # own (strerror empty) read "[Errno 5] : '/srv/.../mine.yaml'" in it.
    (tmp_path / "folder.yaml").mkdir()
    write(tmp_path, "mine", MINIMAL)
    reg = TemplateRegistry(tmp_path)
    with pytest.raises(TemplateLoadError) as err:
        reg.get("folder")
    assert err.value.reason == "cannot read template (Is a directory)"
    real_open = Path.open

    def open_without_words(self: Path, *args: object, **kwargs: object) -> object:
        if self.name == "mine.yaml":
            raise OSError(errno.EIO, "", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", open_without_words)
    with pytest.raises(TemplateLoadError) as err:
        load_template_file(tmp_path / "mine.yaml")
    assert err.value.reason == f"cannot read template ({os.strerror(errno.EIO)})"
    assert str(err.value) == f"{tmp_path}/mine.yaml: cannot read template ({os.strerror(errno.EIO)})"


def test_a_yaml_error_quotes_the_templates_line_escaped(tmp_path):
    # YAML's error shows the line it stopped at: the file's own text, whose U+202E turned the rest of the error
    # (vmem templates list, a classify's refusal, the service's 422) backwards, as a name in it had before.
    write(tmp_path, "twice", "name: twice\nversion: 1\nsystem: A.\nsystem: B\u202e is new.\n")
    write(tmp_path, "open", 'name: open\nversion: 1\nsystem: "A\u202e\n')
    reg = TemplateRegistry(tmp_path)
    for name, said in (("twice", "the key 'system' is given twice"), ("open", "while scanning a quoted scalar")):
        with pytest.raises(TemplateLoadError) as err:
            reg.get(name)
        assert said in err.value.reason and "\u202e" not in str(err.value), str(err.value)
        assert "\\u202e" in err.value.reason and "\n" in err.value.reason  # escaped, its lines kept as lines
    res = CliRunner().invoke(app, ["templates", "list"], env={"VMEM_TEMPLATES_DIR": str(tmp_path)})
    assert "\u202e" not in res.output and "system: B\\u202e is new." in res.output


def test_a_dollar_sign_is_written_as_two():
    t = PromptTemplate(name="mine", version=1, system="Classify.", answer="Costs $$5; pick one of $n_candidates.")
    assert t.render("answer", n_candidates=2) == "Costs $5; pick one of 2."


# ------------------------------------------------------------------ what a template sends


@pytest.fixture
def neighbour_request(tmp_path):
    paths = []
    for i in range(30):
        p = tmp_path / f"n{i}.png"
        Image.new("RGB", (300, 200), (i * 8, 100, 200 - i * 6)).save(p)
        paths.append(p)
    neighbors = [RerankNeighbor(id=f"id{i}", label=["cat", "dog", "fox"][i % 3], source=str(p),
                                similarity=0.9 - i / 100, weight=1 / (2 + i), rank=i) for i, p in enumerate(paths)]
    return RerankRequest(image=Image.new("RGB", (640, 480), (5, 5, 5)), neighbors=neighbors,
                         scores={"cat": 0.5, "dog": 0.3, "fox": 0.2}, vote_label="cat")


def built(name, req, thumbs=None):
    t = TemplateRegistry().get(name)
    thumbs = thumbs if thumbs is not None else ThumbnailCache(64)
    return build_prompt(t, req, candidate_labels(req), encode_query(req, 512), thumbs)


def test_neighbors_v1_sends_every_neighbour_image_then_the_query(neighbour_request):
    p = built("neighbors-v1", neighbour_request)
    assert p.images == 31 and len(p.shown) == 30
    texts = [part.text for part in p.parts if part.text]
    assert texts[1] == 'Example 1, labelled "cat" (similarity 0.900):'
    assert "This is the query image to classify:" in texts
    # the image after the query line is the query itself (not a neighbour thumbnail)
    q = next(i for i, part in enumerate(p.parts) if part.text == "This is the query image to classify:")
    assert p.parts[q + 1].inline_data.data == encode_query(neighbour_request, 512).jpeg


def test_labels_only_sends_the_candidates_with_vote_scores_and_one_image(neighbour_request):
    p = built("labels-only", neighbour_request)
    assert p.images == 1 and p.shown == []
    assert any("- cat (vote 0.50)\n- dog (vote 0.30)\n- fox (vote 0.20)" in (part.text or "") for part in p.parts)


def test_agentic_v1_shows_at_most_20_neighbours_and_its_tool_budget(neighbour_request):
    p = built("agentic-v1", neighbour_request)
    assert len(p.shown) == 20 and p.images == 21
    assert any("at most 3 rounds" in (part.text or "") for part in p.parts)


def test_weight_prints_the_vote_rules_weight_to_three_significant_digits(neighbour_request):
    from retrieval import neighbor_weights

    # The softmax vote's weights at tau 0.01: exp((similarity - 1) / tau), 4.5e-05 for the nearest (0.9). They had
    # printed as 0.000, every one of them.
    sims = np.array([n.similarity for n in neighbour_request.neighbors])
    for n, w in zip(neighbour_request.neighbors, neighbor_weights(sims, "softmax", tau=0.01), strict=True):
        n.weight = float(w)
    t = PromptTemplate(name="weighed", version=1, system="Classify.", neighbor_images=False, max_neighbors=3,
                       neighbor="$rank: $label, vote weight $weight")
    p = build_prompt(t, neighbour_request, candidate_labels(neighbour_request), encode_query(neighbour_request, 64),
                     ThumbnailCache(64))
    assert [part.text for part in p.parts[:3]] == [
        "1: cat, vote weight 4.54e-05", "2: dog, vote weight 1.67e-05", "3: fox, vote weight 6.14e-06"]
    neighbour_request.neighbors[0].weight = 1 / 2  # rank voting's, at alpha 2
    p = build_prompt(t, neighbour_request, candidate_labels(neighbour_request), encode_query(neighbour_request, 64),
                     ThumbnailCache(64))
    assert p.parts[0].text == "1: cat, vote weight 0.5"


def test_candidates_follow_the_vote_and_the_label_filter(neighbour_request):
    assert candidate_labels(neighbour_request) == ["cat", "dog", "fox"]
    neighbour_request.labels = ["fox", "dog"]
    assert candidate_labels(neighbour_request) == ["dog", "fox"]


def test_thumbnails_are_resized_to_the_longest_side(neighbour_request):
    import io

    p = built("neighbors-v1", neighbour_request, ThumbnailCache(96))
    sizes = [Image.open(io.BytesIO(part.inline_data.data)).size for part in p.parts if part.inline_data]
    assert sizes[0] == (96, 64) and sizes[-1] == (512, 384)


def test_a_big_jpegs_thumbnail_is_decoded_at_a_reduced_scale_and_looks_the_same(tmp_path):
    import io

    from reranker import encode_jpeg
    from retrieval import load_image

    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    photo = tmp_path / "phone.jpg"
    coarse.resize((4000, 3000), Image.Resampling.BICUBIC).save(photo, quality=90)
    thumb = Image.open(io.BytesIO(ThumbnailCache(256).get(str(photo))))
    full = Image.open(io.BytesIO(encode_jpeg(load_image(photo), 256)))
    assert thumb.size == full.size == (256, 192)
    assert np.abs(np.asarray(thumb, dtype=int) - np.asarray(full, dtype=int)).mean() < 2


# ------------------------------------------------------------------ CLI


def test_cli_lists_and_shows_templates(tmp_path, monkeypatch):
    write(tmp_path, "mine", MINIMAL)
    monkeypatch.setenv("VMEM_TEMPLATES_DIR", str(tmp_path))
    runner = CliRunner()
    res = runner.invoke(app, ["templates", "list"])
    assert res.exit_code == 0
    names = [line.split()[0] for line in res.output.splitlines()]
    assert names == ["agentic-v1", "labels-only", "mine", "neighbors-v1"]
    assert "user" in res.output.splitlines()[2]
    res = runner.invoke(app, ["templates", "show", "mine"])
    assert res.exit_code == 0 and res.output.splitlines()[0].startswith("# mine@1 (user)")
    assert yaml.safe_load(res.output)["system"] == "Classify the image."
    res = runner.invoke(app, ["templates", "path"])
    assert res.exit_code == 0 and res.output.strip() == str(tmp_path)


def test_cli_show_of_an_unknown_template_is_a_usage_error():
    res = CliRunner().invoke(app, ["templates", "show", "nope"])
    flat = " ".join(res.output.replace("│", " ").split())  # the error box wraps lines
    assert res.exit_code == 2 and "available: agentic-v1, labels-only, neighbors-v1" in flat


def test_vmem_serve_says_at_start_which_templates_it_cannot_offer(tmp_path, encoder):
    # A service started with a broken template among the researcher's had said nothing of it: the template showed
    # only in GET /v1/templates, or as a 422 when a request named it. Its start now says which, and why, as
    # `vmem templates list` does; the other templates are offered. (A port taken stops it before the warm-up.)
    from tests._reliability_fixtures import VMEM, subprocess_env, tiny_memory
    from tests.conftest import REPO

    templates = tmp_path / "templates"
    templates.mkdir()
    write(templates, "mine", MINIMAL)
    write(templates, "broken", "name: broken\nversion: 1\nsystem: Classify.\nneighbour: 'Example $rank'\n")
    location = tmp_path / "memory"
    tiny_memory(encoder, str(location)).close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = subprocess_env(VMEM_AUTH_DISABLED="true", VMEM_TEMPLATES_DIR=str(templates))
        done = subprocess.run([*VMEM, "serve", "--memory", str(location), "--port", str(taken.getsockname()[1])],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    said = done.stderr
    assert f"warning: template broken cannot be used: {templates}/broken.yaml: invalid template:\n" \
           "  neighbour (line 4): unknown field (did you mean neighbor?)\n" in said, said
    assert "template mine" not in said, said


def test_vmem_templates_list_and_vmem_serve_word_a_templates_problem_alike(tmp_path):
    # One said "broken template X", the other "template X is not offered", each with its own branch for the folder.
    from vmem.cli.serve import _template_warnings

    write(tmp_path, "broken", "name: broken\nversion: 1\nsystem: Classify.\nneighbour: 'Example $rank'\n")
    for folder, said in [
        (tmp_path, f"template broken cannot be used: {tmp_path}/broken.yaml: invalid template:\n"
                   "  neighbour (line 4): unknown field (did you mean neighbor?)"),
        (tmp_path / "missing", f"$VMEM_TEMPLATES_DIR: {tmp_path}/missing: not a directory: none of your templates "
                               "were loaded"),
    ]:
        listed = CliRunner().invoke(app, ["templates", "list"], env={"VMEM_TEMPLATES_DIR": str(folder)}).stderr
        assert listed == said + "\n"
        assert _template_warnings(TemplateRegistry(folder)) == [f"warning: {said}"]


def test_hidden_files_in_the_templates_folder_are_not_templates(tmp_path):
    # An editor's lock file beside the template being edited (Emacs writes `.#mine.yaml`, a link to nothing) had
    # been listed as a broken template, and warned of at a service's start. A name cannot start with a dot.
    write(tmp_path, "mine", MINIMAL)
    (tmp_path / ".#mine.yaml").symlink_to("me@host.1234:1700000000")
    (tmp_path / ".mine.yaml").write_text(MINIMAL)  # a hidden copy
    reg = TemplateRegistry(tmp_path)
    assert "mine" in reg and reg.errors == {}
    res = CliRunner().invoke(app, ["templates", "list"], env={"VMEM_TEMPLATES_DIR": str(tmp_path)})
    assert res.exit_code == 0 and "broken" not in res.output, res.output
