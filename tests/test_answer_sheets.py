"""`vmem classify --csv --review-csv` on a long run: the sheets grow part by part, as a reader following them
(`tail -f`) sees, and hold every answer of the parts done."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

from tests.conftest import FEATURE_CACHE, REPO
from vmem import VisualMemory
from vmem.cli import app
from vmem.cli.answer_sheets import AnswerSheets
from vmem.cli.memory import classify_in_parts


def answer(i: int, unsure: bool = False) -> SimpleNamespace:
    return SimpleNamespace(source=f"/photos/IMG_{i:04d}.JPG", label="fox", label_name="red fox", confidence=0.4,
                           unsure=unsure, unsure_reason="under min_confidence 0.5" if unsure else None)


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline="")))


def test_a_reader_following_the_sheets_sees_each_part_added(tmp_path: Path):
    answers, queue = tmp_path / "answers.csv", tmp_path / "queue.csv"
    sheets = AnswerSheets.checked(answers, queue, min_confidence=0.5)
    assert sheets is not None
    with answers.open(newline="", encoding="utf-8") as follower, queue.open(newline="", encoding="utf-8") as q:
        assert rows(follower.read()) == [["path", "label", "label_name", "confidence", "unsure", "reason"]]
        assert rows(q.read()) == [["path", "label", "suggested_name", "confidence"]]
        sheets.add([answer(0), answer(1, unsure=True)])
        # The same open file reads on where it stopped: the rows were added to it, not written to a new file
        assert [r[0] for r in rows(follower.read())] == ["/photos/IMG_0000.JPG", "/photos/IMG_0001.JPG"]
        sheets.add([answer(2, unsure=True)])
        assert rows(follower.read()) == [["/photos/IMG_0002.JPG", "fox", "red fox", "0.400000", "true",
                                          "under min_confidence 0.5"]]
        assert [r[0] for r in rows(q.read())] == ["/photos/IMG_0001.JPG", "/photos/IMG_0002.JPG"]
    assert sheets.summary().startswith(f"3 answers written to {answers}; 2 unsure ones to {queue}")
    with answers.open(newline="", encoding="utf-8-sig") as f:  # as vmem build and a spreadsheet read it
        assert [r["path"] for r in csv.DictReader(f)] == [f"/photos/IMG_{i:04d}.JPG" for i in range(3)]


def run(*args: object, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
    assert result.exit_code == code, result.output
    return result


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


SEASON = 60  # photos: a run of 15 parts of 4, so a Ctrl-C after the second part stops it well before its end


@pytest.fixture(scope="module")
def camera_trap(tiny_imagenet, tmp_path_factory) -> tuple[Path, Path]:
    """A memory of 3 classes (10 images each) and a season's folder of SEASON new photos."""
    root = tmp_path_factory.mktemp("trap")
    classes = sorted(p.name for p in (tiny_imagenet / "train").iterdir())[:3]
    for split, n in (("train", 10), ("season", SEASON // 3)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for f in sorted((tiny_imagenet / ("train" if split == "train" else "val") / c).iterdir())[:n]:
                (root / split / c / f.name).symlink_to(f)
    run("build", root / "train", "--memory", root / "memory", "--featurizer", "efficientnet-lite0", "--workers", "0",
        "--feature-cache", FEATURE_CACHE)
    return root / "memory", root / "season"


def test_a_run_stopped_by_ctrl_c_is_resumed_without_classifying_again(camera_trap, tmp_path):
    memory, season = camera_trap
    answers, queue = tmp_path / "answers.csv", tmp_path / "queue.csv"
    command = ["classify", season, "--memory", memory, "--exact", "--k", "10", "--min-confidence", "0.6",
               "--csv", answers, "--review-csv", queue, "--batch-size", "4"]
    proc = subprocess.Popen([sys.executable, "-m", "vmem", *map(str, command)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and (not answers.exists() or len(answers.read_bytes().splitlines()) < 1 + 4 + 8):
        # until two parts are answered
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command with --resume to classify only those" in err
    before = read_rows(answers)  # whole rows, readable as the run left them
    assert 12 <= len(before) < SEASON, "the run ended before Ctrl-C reached it"
    # The same command without --resume would begin the sheet afresh: refused, the answers kept
    out = run(*command, code=2)
    assert f"{answers} holds {len(before)} answers of a run that did not finish" in out.output
    assert "add --resume to go on with it" in out.output
    assert read_rows(answers) == before
    with answers.open("ab") as f:  # and a kill in the middle of a part's write had cut its last row short
        f.write(str(season / "n0_cut_short.JPEG").encode() + b",n014")

    out = run(*command, "--resume")
    assert f"resuming: {len(before)} of the {SEASON} images are answered in {answers} already; classifying the " \
           f"other {SEASON - len(before)}" in out.stderr
    assert f"{SEASON - len(before)} answers added to {answers} ({SEASON} in all)" in out.stderr
    # stderr no terminal (a log): a line each part says how far the run is, and how fast
    assert re.search(rf"classify: [0-9]+ of {SEASON - len(before)} images \([0-9.]+%\), [0-9.]+ images/s, about "
                     r"[0-9.]+ (s|min|h) left", out.stderr), out.stderr
    rows = read_rows(answers)
    assert rows[:len(before)] == before
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in season.glob("*/*"))  # each once, none cut
    # The sheets are what one run without a stop writes
    whole = tmp_path / "whole.csv"
    run(*command[:-6], "--min-confidence", "0.6", "--csv", whole, "--review-csv", tmp_path / "whole-queue.csv",
        "--batch-size", "4")
    assert sorted(map(str, rows)) == sorted(map(str, read_rows(whole)))
    assert sorted(map(str, read_rows(queue))) == sorted(map(str, read_rows(tmp_path / "whole-queue.csv")))
    assert "are answered" in run(*command, "--resume").stderr  # nothing left: said, exit 0


def test_resume_holds_the_run_to_the_settings_its_sheet_was_answered_with(camera_trap, tmp_path, monkeypatch):
    memory, season = camera_trap
    answers = tmp_path / "answers.csv"
    some = sorted(season.glob("*/*"))[:3]
    monkeypatch.chdir(memory.parent)
    run("classify", *some, "--memory", memory.name, "--k", "10", "--csv", answers)
    # The memory named otherwise (absolute, from another folder) is the same memory
    monkeypatch.chdir(tmp_path)
    out = run("classify", *some, "--memory", memory, "--k", "10", "--csv", answers, "--resume")
    assert "3 of the 3 images are answered" in out.stderr
    out = run("classify", season, "--memory", memory, "--k", "5", "--csv", answers, "--resume", code=2)
    assert "was answered with other settings (k 10 then, 5 now)" in out.output
    assert len(read_rows(answers)) == 3  # nothing lost
    out = run("classify", season, "--memory", memory, "--resume", code=2)
    assert "give --csv FILE too" in out.output
    # A sheet a vmem before --resume wrote (4f6c9ae: no settings beside it), resumed after an upgrade
    answers.with_name("answers.csv.vmem-run.json").unlink()
    out = run("classify", season, "--memory", memory, "--k", "10", "--csv", answers, "--resume", code=2)
    assert "no answers.csv.vmem-run.json beside it (`vmem dmn classify`, and a vmem before --resume (4f6c9ae and " \
           "older), write sheets without one" in \
        " ".join(out.output.replace("│", "").split())
    assert len(read_rows(answers)) == 3
    other = tmp_path / "other.csv"
    other.write_bytes(b"name,score\r\na,1\r\n")
    out = run("classify", season, "--memory", memory, "--csv", other, "--resume", code=2)
    assert "is not a sheet vmem classify wrote" in out.output
    assert other.read_bytes() == b"name,score\r\na,1\r\n"


def test_a_resume_with_only_failed_images_left_ends_as_the_whole_run_would(camera_trap, tmp_path):
    memory, season = camera_trap
    folder = tmp_path / "card"
    folder.mkdir()
    for image in sorted(season.glob("*/*"))[:2]:
        (folder / image.name).symlink_to(image)
    (folder / "IMG_0003.JPG").write_bytes(b"a card's torn file")
    answers = tmp_path / "answers.csv"
    command = ["classify", folder, "--memory", memory, "--k", "10", "--min-confidence", "0.6", "--csv", answers]
    run(*command)  # 2 answered, 1 skipped: exit 0
    out = run(*command, "--resume")  # only the one that failed is left, and fails again: not exit 1
    assert "none of the 1 image left could be classified (skipped, above); 0 answers added to" in out.stderr
    assert "(2 in all)" in out.stderr and "no image could be classified" not in out.stderr


def test_a_run_resumed_from_another_folder_through_a_link_answers_no_image_again(camera_trap, tmp_path, monkeypatch):
    # The photos are on a card, and ~/photos links to it: the first run was given them from there by relative
    # paths (the sheet holds the card's own path: a process's working folder has its links resolved), the resumed
    # one from the home folder as ~/photos/DCIM
    memory, season = camera_trap
    card, home = tmp_path / "card", tmp_path / "home"
    (card / "DCIM").mkdir(parents=True)
    home.mkdir()
    for image in sorted(season.glob("*/*"))[:3]:
        (card / "DCIM" / image.name).symlink_to(image)
    (home / "photos").symlink_to(card)
    answers = home / "answers.csv"
    first_two = sorted(p.name for p in (card / "DCIM").iterdir())[:2]
    monkeypatch.chdir(home / "photos")
    run("classify", *[f"DCIM/{name}" for name in first_two], "--memory", memory, "--k", "10", "--csv", answers)
    monkeypatch.chdir(home)
    out = run("classify", "photos/DCIM", "--memory", memory, "--k", "10", "--csv", answers, "--resume")
    assert "resuming: 2 of the 3 images are answered" in out.stderr
    rows = read_rows(answers)
    assert sorted(os.path.basename(r["path"]) for r in rows) == sorted(p.name for p in (card / "DCIM").iterdir())


def test_an_image_given_through_a_link_and_dot_dot_is_written_as_the_file_classified(camera_trap, tmp_path,
                                                                                     monkeypatch):
    # ~/photos/card links to /mnt/card/DCIM: photos/card/../x.jpg opens /mnt/card/x.jpg, which the sheet named
    # ~/photos/x.jpg (another image there, or none), taking `card/..` out by the name
    memory, season = camera_trap
    shot, other = sorted(season.glob("*/*"))[:2]
    mnt, home = tmp_path / "mnt" / "card", tmp_path / "home"
    (mnt / "DCIM").mkdir(parents=True)
    (home / "photos").mkdir(parents=True)
    (mnt / "x.jpg").symlink_to(shot)
    (home / "photos" / "x.jpg").symlink_to(other)
    (home / "photos" / "card").symlink_to(mnt / "DCIM")
    monkeypatch.chdir(home)
    answers = tmp_path / "answers.csv"
    out = run("classify", "photos/card/../x.jpg", "--memory", memory, "--k", "10", "--csv", answers, "--json")
    assert [r["path"] for r in read_rows(answers)] == [str(mnt / "x.jpg")]
    assert json.loads(out.stdout)["source"] == "photos/card/../x.jpg"  # the answer names it as it was given


def test_a_run_resumed_through_a_link_takes_its_queue_and_memory_given_so_as_the_same(camera_trap, tmp_path,
                                                                                       monkeypatch):
    # As above, the queue beside the photos on the card and the memory copied there, each given as the run was:
    # by relative paths from inside ~/photos, then through the link from the home folder. The same files, so the
    # same settings: the resume goes on (it was refused, "answered with other settings (memory ... review_csv
    # '.../card/queue.csv' then, '.../home/photos/queue.csv' now)")
    memory, season = camera_trap
    card, home = tmp_path / "card", tmp_path / "home"
    (card / "DCIM").mkdir(parents=True)
    home.mkdir()
    for image in sorted(season.glob("*/*"))[:3]:
        (card / "DCIM" / image.name).symlink_to(image)
    (card / "memory").symlink_to(memory)  # the memory's folder a link of its own: named, not resolved
    (home / "photos").symlink_to(card)
    answers = home / "answers.csv"
    first_two = sorted(p.name for p in (card / "DCIM").iterdir())[:2]
    monkeypatch.chdir(home / "photos")
    run("classify", *[f"DCIM/{name}" for name in first_two], "--memory", "memory", "--k", "10", "--csv", answers,
        "--review-csv", "queue.csv", "--min-confidence", "0.99")
    monkeypatch.chdir(home)
    out = run("classify", "photos/DCIM", "--memory", "photos/memory", "--k", "10", "--csv", answers,
              "--review-csv", "photos/queue.csv", "--min-confidence", "0.99", "--resume")
    assert "resuming: 2 of the 3 images are answered" in out.stderr
    assert len(read_rows(answers)) == 3 and len(read_rows(card / "queue.csv")) <= 3
    # Another memory, though, is still another memory: a link is named, not followed
    (card / "other").symlink_to(memory)
    refused = run("classify", "photos/DCIM", "--memory", "photos/other", "--k", "10", "--csv", answers,
                  "--review-csv", "photos/queue.csv", "--min-confidence", "0.99", "--resume", code=2)
    assert "answered with other settings (memory" in refused.output


def test_a_long_run_keeps_of_each_answer_only_what_its_summaries_read(camera_trap):
    memory, season = camera_trap
    with VisualMemory.open(memory) as mem, redirect_stdout(io.StringIO()) as printed:
        results, failed = classify_in_parts(mem, sorted(season.glob("*/*"))[:20], desc="classify", batch_size=8,
                                            rerank=False, json_out=True, k=10, min_confidence=0.6)
    said = [json.loads(line) for line in printed.getvalue().splitlines()]
    assert len(said) == len(results) == 20 and not failed
    assert all(len(a["neighbors"]) == 10 for a in said)  # printed whole
    for r, a in zip(results, said, strict=True):  # kept: no neighbours, the label's own score
        assert (r.source, r.label, r.confidence, r.unsure, r.neighbors) == (
            a["source"], a["label"], a["confidence"], a["unsure"], [])


def test_a_finished_run_s_sheet_is_begun_afresh_and_an_unfinished_one_is_not(tmp_path: Path):
    answers = tmp_path / "answers.csv"
    sheets = AnswerSheets.checked(answers, None, None)
    assert sheets is not None
    sheets.begin({"memory": str(tmp_path / "memory"), "k": 10})
    sheets.add([answer(0), answer(1)])  # then the run is stopped: no finish
    sheets.close()  # as its process ends
    with pytest.raises(typer.BadParameter, match="holds 2 answers of a run that did not finish"):
        AnswerSheets.checked(answers, None, None)
    assert [r["path"] for r in read_rows(answers)] == ["/photos/IMG_0000.JPG", "/photos/IMG_0001.JPG"]
    resumed = AnswerSheets.checked(answers, None, None, resume=True)
    assert resumed is not None
    resumed.begin({"memory": str(tmp_path / "memory"), "k": 10})
    resumed.add([answer(2)])
    resumed.finish()
    resumed.close()
    AnswerSheets.checked(answers, None, None)  # a finished run's sheet: run again, it begins afresh
    assert read_rows(answers) == []


def test_a_row_a_kill_cut_short_in_a_path_s_line_break_is_cut_off(tmp_path: Path):
    answers = tmp_path / "answers.csv"
    sheets = AnswerSheets.checked(answers, None, None)
    assert sheets is not None
    sheets.begin({"k": 10})
    in_two_lines = SimpleNamespace(**{**vars(answer(0)), "source": "/photos/day 1\nIMG_0000.JPG"})
    sheets.add([in_two_lines])
    sheets.close()
    with answers.open("ab") as f:  # the next part's write cut in its first path's line break
        f.write(b'"/photos/day 1\n')
    resumed = AnswerSheets.checked(answers, None, None, resume=True)
    assert resumed is not None and resumed.done == {"/photos/day 1\nIMG_0000.JPG"}
    resumed.begin({"k": 10})
    resumed.add([answer(1)])
    assert [r["path"] for r in read_rows(answers)] == ["/photos/day 1\nIMG_0000.JPG", "/photos/IMG_0001.JPG"]


def test_a_kill_between_a_part_s_two_writes_leaves_no_unsure_answer_out_of_the_queue(tmp_path, monkeypatch):
    from vmem.cli import answer_sheets

    answers, queue = tmp_path / "answers.csv", tmp_path / "queue.csv"
    sheets = AnswerSheets.checked(answers, queue, min_confidence=0.5)
    assert sheets is not None
    sheets.add([answer(0, unsure=True), answer(1)])
    appended = answer_sheets.append_rows

    def killed_after_the_first_write(path, rows):
        appended(path, rows)
        raise KeyboardInterrupt  # as a kill -9 there: the part's second sheet not written

    monkeypatch.setattr(answer_sheets, "append_rows", killed_after_the_first_write)
    with pytest.raises(KeyboardInterrupt):
        sheets.add([answer(2, unsure=True), answer(3), answer(4, unsure=True)])
    sheets.close()  # its process ends
    monkeypatch.setattr(answer_sheets, "append_rows", appended)

    resumed = AnswerSheets.checked(answers, queue, min_confidence=0.5, resume=True)
    assert resumed is not None
    resumed.add([answer(i, unsure=i % 2 == 0) for i in range(5) if answer(i).source not in resumed.done])
    # Each unsure answer queued once, as a run without a kill queues them
    assert [r["path"] for r in read_rows(queue)] == [answer(i).source for i in (0, 2, 4)]
    assert sorted(r["path"] for r in read_rows(answers)) == [answer(i).source for i in range(5)]
    # Said as of the answers: those added, and the queue's in all
    assert resumed.summary().startswith(f"3 answers added to {answers} (5 in all); 2 unsure ones to {queue} (3 in "
                                        "all) for a person to check")



def test_a_resume_whose_settings_file_is_not_ours_is_refused_saying_why(tmp_path: Path):
    answers = tmp_path / "answers.csv"
    sheets = AnswerSheets.checked(answers, None, None)
    assert sheets is not None
    sheets.begin({"k": 10})
    sheets.add([answer(0)])
    sheets.close()
    kept = answers.with_name("answers.csv.vmem-run.json")
    kept.write_text('["k", 10]', encoding="utf-8")  # JSON, but not the settings a run keeps
    resumed = AnswerSheets.checked(answers, None, None, resume=True)
    assert resumed is not None
    with pytest.raises(typer.BadParameter, match=r"is not readable \(Input should be an object\); give another --csv"):
        resumed.begin({"k": 10})
    resumed.close()
    assert [r["path"] for r in read_rows(answers)] == ["/photos/IMG_0000.JPG"]  # nothing lost
    assert kept.read_text(encoding="utf-8") == '["k", 10]'


def test_a_server_s_credentials_are_not_kept_beside_the_sheet(tmp_path: Path):
    answers = tmp_path / "answers.csv"
    url = "https://reader:hunter2@qdrant.example.com:6333/?api_key=s3cret"
    sheets = AnswerSheets.checked(answers, None, None)
    assert sheets is not None
    sheets.begin({"memory": url, "k": 10})
    kept = answers.with_name("answers.csv.vmem-run.json").read_text(encoding="utf-8")
    assert "hunter2" not in kept and "s3cret" not in kept
    assert json.loads(kept)["memory"] == "https://qdrant.example.com:6333/"
    sheets.add([answer(0)])
    sheets.close()
    resumed = AnswerSheets.checked(answers, None, None, resume=True)
    assert resumed is not None
    with pytest.raises(typer.BadParameter) as refused:  # nor said when a resume is refused
        resumed.begin({"memory": url.replace("hunter2", "other"), "k": 5})
    assert "k 10 then, 5 now" in str(refused.value) and "hunter2" not in str(refused.value)
    assert "memory" not in str(refused.value)  # another password for the same server is the same memory


def test_a_second_run_given_a_sheet_another_run_writes_is_refused(tmp_path: Path):
    answers = tmp_path / "answers.csv"
    first = AnswerSheets.checked(answers, None, None)
    assert first is not None
    first.begin({"k": 10})
    for resume in (False, True):  # begun afresh, it had emptied the sheet under the first; resumed, answered its
        with pytest.raises(typer.BadParameter, match="another vmem classify is writing"):  # images again
            AnswerSheets.checked(answers, None, None, resume=resume)
    first.add([answer(0)])
    first.finish()
    first.close()  # the first run ends
    again = AnswerSheets.checked(answers, None, None)
    assert again is not None
    again.close()


def test_a_sheet_another_command_wrote_again_is_not_resumed_as_the_run_before_it(camera_trap, tmp_path):
    # vmem dmn classify writes the same sheets as vmem classify and keeps no settings beside them: the settings of
    # the vmem classify run that had written the sheet before stayed, and `vmem classify --resume` took the dmn
    # rule's answers as its own, classifying only the images they left out.
    memory, season = camera_trap
    answers = tmp_path / "answers.csv"
    some = sorted(season.glob("*/*"))[:3]
    run("classify", *some, "--memory", memory, "--k", "10", "--csv", answers)
    run("dmn", "classify", *some, "--memory", memory, "--mode", "memory-only", "--csv", answers)
    out = run("classify", *some, "--memory", memory, "--k", "10", "--csv", answers, "--resume", code=2)
    said = " ".join(out.output.replace("│", "").split())  # a rich box, wrapped where the terminal is narrow
    assert "cannot tell which settings answered" in said and "vmem dmn classify" in said
    assert len(read_rows(answers)) == 3  # nothing lost


def test_a_second_run_given_a_sheet_another_run_is_writing_is_refused(camera_trap, tmp_path):
    # A run holds its --csv sheet (a flock) while it writes it: another given it, resumed or not (a --wait had it
    # read the sheet early and answer again all the first answered meanwhile), is refused at once, the sheet kept.
    # Held here as a running classify holds it: a real run beside this one finished before it was asked, at times.
    import fcntl

    memory, season = camera_trap
    answers = tmp_path / "answers.csv"
    some = sorted(season.glob("*/*"))[:3]
    run("classify", *some, "--memory", memory, "--k", "10", "--csv", answers)
    before = answers.read_bytes()
    fd = os.open(answers, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for resume in ((), ("--resume",)):
            out = run("classify", *some, "--memory", memory, "--k", "10", "--csv", answers, *resume, code=2)
            assert "another vmem classify is writing" in " ".join(out.output.replace("│", "").split())
        assert answers.read_bytes() == before
    finally:
        os.close(fd)
