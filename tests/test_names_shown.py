"""Every line of vmem build, classify and eval that names a file or a label shows it as `retrieval.text.visible`
does: a newline in a file's name starts no line of its own, a U+202E turns no line around, a joiner that shows is
itself. The names are someone else's (a folder unpacked from a zip, a colleague's labels)."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from retrieval import DatasetError, LabelledImage, scan_imagefolder, unique_sources
from tests.conftest import make_image, make_scene
from vmem.cli import app

PERSIAN = "نیم\u200cرخ"  # a non-joiner between two Arabic-script letters: part of the word, shown as itself


def vmem(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


@pytest.fixture
def memory(tmp_path):
    """A memory of two labels, one of which holds U+202E ("a\\u202eb", as a folder named so makes it)."""
    photos = tmp_path / "photos"
    for i, label in enumerate(["cats", "a\u202eb"]):
        (photos / label).mkdir(parents=True)
        for j in range(2):
            (photos / label / f"{j}.png").write_bytes(make_scene(10 * i + j))
    out = vmem("build", str(photos), "--memory", str(tmp_path / "memory"), "--featurizer", "efficientnet-lite0")
    assert out.exit_code == 0, out.output
    return tmp_path / "memory"


def test_classify_names_an_image_it_skipped_as_every_other_line_names_a_file(memory, tmp_path):
    # The skipped image's line was the one printed raw: its name's newline split it in two, its U+202E turned it
    queries = tmp_path / "queries"
    queries.mkdir()
    (queries / "ok.png").write_bytes(make_scene(0))
    (queries / "broken\nname.png").write_bytes(b"not an image")
    (queries / "gnp.\u202ecat.png").write_bytes(b"not an image either")
    out = vmem("classify", str(queries), "--memory", str(memory))
    assert out.exit_code == 0, out.output
    assert "\u202e" not in out.stderr and "\nname.png" not in out.stderr
    skipped = sorted(line for line in out.stderr.splitlines() if line.startswith("skipped "))
    assert skipped == [f"skipped {queries}/broken\\nname.png: not a recognised image format (JPEG, PNG, WebP, GIF, "
                       "BMP, TIFF, ICO or AVIF)",
                       f"skipped {queries}/gnp.\\u202ecat.png: not a recognised image format (JPEG, PNG, WebP, GIF, "
                       "BMP, TIFF, ICO or AVIF)"]
    assert out.stdout.splitlines()[0].startswith(f"{queries}/ok.png\tcats\t")  # the answers' lines, as they were


def test_evals_table_shows_a_label_as_classify_shows_it(memory, tmp_path):
    # The hardest classes' table escaped control characters only: a label's U+202E turned its row around
    out = vmem("eval", "--dataset", str(memory.parent / "photos"), "--memory", str(memory), "--out",
               str(tmp_path / "run"), "--no-plots")
    assert out.exit_code == 0, out.output
    assert "\u202e" not in out.output and "\u202e" not in (tmp_path / "run" / "table.md").read_text()
    assert "| a\\u202eb | 2 |" in out.stdout


def test_a_builds_report_quotes_a_label_as_shown_not_as_repr_writes_it(lite0, tmp_path):
    # repr escaped the joiner of a Persian label that the build's other lines show as itself
    from retrieval import build_memory, open_store

    (tmp_path / "a.png").write_bytes(make_image((200, 30, 30), fmt="PNG"))
    store = open_store(tmp_path / "memory", lite0.spec)
    build_memory(store, lite0, [LabelledImage(str(tmp_path / "a.png"), PERSIAN)], num_workers=0)
    again = build_memory(store, lite0, [LabelledImage(str(tmp_path / "a.png"), "C:\\data")], num_workers=0)
    store.close()
    assert f"  {tmp_path}/a.png: stored '{PERSIAN}', listed 'C:\\data'" in again.summary().splitlines()


def test_a_file_listed_with_two_labels_is_named_escaped(tmp_path):
    source = f"{tmp_path}/gnp.\u202ecat\n.png"
    with pytest.raises(DatasetError) as exc:
        unique_sources([LabelledImage(source, "cats"), LabelledImage(source, PERSIAN)])
    assert str(exc.value).startswith(f"1 image is listed with two labels: {tmp_path}/gnp.\\u202ecat\\n.png "
                                     f"('cats' and '{PERSIAN}')")


def test_the_files_a_folders_walk_leaves_out_are_named_escaped(tmp_path, caplog):
    # A loose image at the root, a link to no file, and a file not named as an image: each warning named it raw, or
    # (the last) with its control characters escaped but a U+202E as it is
    (tmp_path / "set" / "cats").mkdir(parents=True)
    (tmp_path / "set" / "cats" / "a.png").write_bytes(make_image(fmt="PNG"))
    (tmp_path / "set" / "loose\u202e.png").write_bytes(make_image(fmt="PNG"))
    (tmp_path / "set" / "cats" / "gone\u202e.png").symlink_to(tmp_path / "nowhere\n.png")
    (tmp_path / "set" / "cats" / "Icon\u202e.heic").write_bytes(b"a photo vmem does not decode")
    with caplog.at_level(logging.WARNING):
        scan_imagefolder(tmp_path / "set")
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "\u202e" not in said and "\n.png" not in said
    assert "(loose\\u202e.png)" in said and "gone\\u202e.png -> " in said and "nowhere\\n.png" in said
    assert "(Icon\\u202e.heic)" in said


def test_a_manifest_and_a_names_file_are_named_escaped_with_the_text_they_hold(tmp_path):
    # A dataset's files are named by whoever made them, and hold their text: both were said raw, or by repr
    from retrieval import read_label_names, read_labelled

    empty = tmp_path / "set\u202e.csv"
    empty.write_text("path,label\n")
    with pytest.raises(DatasetError) as exc:
        read_labelled(empty)
    assert str(exc.value) == (f"{tmp_path}/set\\u202e.csv lists no images: add a path,label row for each image "
                              "under its header")
    headless = tmp_path / "headless.csv"
    headless.write_text(f"file,{PERSIAN}\n")
    with pytest.raises(DatasetError) as exc:
        read_labelled(headless)
    assert str(exc.value).endswith(f"expected a header with columns path,label; got 'file', '{PERSIAN}'")
    names = tmp_path / "classes.tsv"
    names.write_text("cats\tcat\nn01\u202e\t\n")
    with pytest.raises(DatasetError) as exc:
        read_label_names(names)
    assert str(exc.value) == f"{names}:2: expected a label and its name, got ['n01\\u202e', '']"


def test_a_classify_sheet_is_named_escaped_in_its_refusals_and_summary(tmp_path):
    import typer

    from vmem.cli.answer_sheets import AnswerSheets

    sheet = tmp_path / "answers\u202e.csv"
    sheet.write_text("not\u202e,a sheet\n")
    with pytest.raises(typer.BadParameter) as exc:
        AnswerSheets.checked(sheet, None, None, resume=True)
    assert str(exc.value.message).startswith(f"{tmp_path}/answers\\u202e.csv is not a sheet vmem classify wrote "
                                             "(its first row is 'not\\u202e,a sheet', not ")
    # A run that did not finish: its sheet, and the settings' file beside it, named in the refusal to empty it
    sheet.write_text("path,label,label_name,confidence,unsure,reason\n/photos/a.jpg,cats,,0.9,false,\n")
    (tmp_path / "answers\u202e.csv.vmem-run.json").write_text('{"finished": false}')
    with pytest.raises(typer.BadParameter) as exc:
        AnswerSheets.checked(sheet, None, None)
    said = str(exc.value.message)
    assert said.startswith(f"{tmp_path}/answers\\u202e.csv holds 1 answer of a run that did not finish")
    assert "(and answers\\u202e.csv.vmem-run.json beside it)" in said
    sheets = AnswerSheets.checked(tmp_path / "new\u202e.csv", tmp_path / "queue\n.csv", 0.5)
    assert sheets is not None
    with sheets:
        assert sheets.summary() == (f"0 answers written to {tmp_path}/new\\u202e.csv; 0 unsure ones to {tmp_path}/"
                                    "queue\\n.csv for a person to check: correct a label or empty it to skip the "
                                    f"image, then `vmem build {tmp_path}/queue\\n.csv` adds them")


def test_a_classify_sheets_unreadable_settings_are_said_in_words(tmp_path):
    # Its OSError was quoted whole, "... is not readable ([Errno 21] Is a directory: '/.../answers.csv.vmem-run
    # .json')": the file a second time, by repr
    import typer

    from vmem.cli.answer_sheets import AnswerSheets

    sheet = tmp_path / "answers.csv"
    sheet.write_text("path,label,label_name,confidence,unsure,reason\n/photos/a.jpg,cats,,0.9,false,\n")
    (tmp_path / "answers.csv.vmem-run.json").mkdir()
    sheets = AnswerSheets.checked(sheet, None, None, resume=True)
    assert sheets is not None
    with sheets, pytest.raises(typer.BadParameter) as exc:
        sheets.begin({"memory": "memory", "k": 10})  # a resumed run's settings, compared with those kept
    said = str(exc.value.message)
    assert f"{tmp_path}/answers.csv.vmem-run.json is not readable (Is a directory); give another --csv" in said, said
    assert "Errno" not in said


def test_an_export_or_answer_log_path_that_cannot_be_written_is_named_escaped(memory, tmp_path):
    # Both refusals named the path the user typed raw: a folder name holding a newline split the message in two
    odd = tmp_path / "no\nsuch\u202efolder"
    exported = vmem("export", str(odd / "points.npz"), "--memory", str(memory))
    assert exported.exit_code == 2
    assert "no\\nsuch\\u202efolder is not a folder" in exported.output and "no\nsuch" not in exported.output
    (tmp_path / "a\nb.npz").write_bytes(b"")
    kept = vmem("export", str(tmp_path / "a\nb.npz"), "--memory", str(memory))
    assert kept.exit_code == 2 and "a\\nb.npz exists: give --force" in kept.output
    logged = vmem("classify", str(tmp_path / "photos" / "cats" / "0.png"), "--memory", str(memory),
                  "--answer-log", str(odd / "answers.jsonl"))
    assert logged.exit_code == 2
    assert "cannot write" in logged.output and "no\\nsuch\\u202efolder" in logged.output
    assert "no\nsuch" not in logged.output
