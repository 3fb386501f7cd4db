"""Kill a vmem edit just before one of its writes, and check what it leaves: the crash sweep of docs/reliability.md.

For an edit command (`vmem forget --label cat`, `vmem relabel --to feline --label cat`, ...) and a memory:

1. on a copy of the memory, the command runs whole, its writes counted (`killpoint_hook/sitecustomize.py`: each
   file opened for writing, rename, unlink, folder made, and the engine's update, optimize, flush, close);
2. for each kill point N, on a fresh copy, the command runs again and is killed (SIGKILL) just before write N;
   the memory is reopened (which settles what the journal noted) and checked:
   - it agrees with itself: it opens, ids are unique, its count equals its points and the sum of its labels';
   - its journal agrees with it: the points new since the edit began are counted, per label, by its new add
     entries, no more and no fewer; every point gone is cited by a new forget entry, every point whose label changed
     by a relabel entry to that label, every label whose name changed by a name entry, the vectors of deleted
     points gone from its files by an erase entry (where the command erases: vmem's own index upkeep rewrites
     segments too), pruning's marks or report changed by a prune or unprune entry, tuned vote settings or search
     settings changed by a tune or settings entry that says what the memory holds, and no new entry cites a
     point it did not forget or relabel, nor an erase the files do not show; no note of an edit in progress is
     left;
3. the command runs again, whole, and the memory must equal the one of step 1: its points, labels, payloads (but
   the times of the edits), vectors, label names, the thumbnails and uploads left, and the points the journal says
   were forgotten and relabelled.

    python scripts/killpoints.py MEMORY -- forget --label cat
    python scripts/killpoints.py MEMORY --points 0 -- relabel --to feline --label cat     # every write
    python scripts/killpoints.py MEMORY -- copy {memory} /tmp/elsewhere                  # where --memory goes

`{memory}` in the command stands for the copy's folder; without it `--memory COPY` is added at the end. Exits 1
if any kill point left a problem. The memory itself is never edited.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HOOK = Path(__file__).resolve().parent / "killpoint_hook"
CHILD_TIMEOUT_S = 600


@dataclass
class Snapshot:
    """A memory as the checks compare it."""

    points: dict[str, dict[str, Any]]  # id: payload but the times of edits, and the vector
    files: list[str]  # thumbnails and kept uploads
    forgotten: set[str] = field(default_factory=set)  # ids the journal's forget entries cite (new ones only)
    relabelled: dict[str, str] = field(default_factory=dict)  # id: label its newest new relabel entry gave
    names: dict[str, str] = field(default_factory=dict)  # the memory's label names
    named: set[str] = field(default_factory=set)  # labels new name entries named or dropped names of
    pending: int = 0  # notes of edits in progress left in journal.pending/
    erased: bool = False  # a new erase entry
    deleted_held: bool = False  # whether the files hold vectors of deleted points (an erase removes them)
    pruning: Any = None  # the memory's pruning report (vmem prune)
    pruned: bool = False  # a new prune or unprune entry
    added: Counter[str] = field(default_factory=Counter)  # points per label new add entries count
    vote: Any = None  # the memory's tuned vote settings and what they were tuned on (vmem tune)
    search: dict[str, Any] = field(default_factory=dict)  # its search settings (hnsw_ef, rescore)
    tunes: list[dict[str, Any]] = field(default_factory=list)  # the details of new tune entries, oldest first
    searches: list[dict[str, Any]] = field(default_factory=list)  # and of new settings entries


def snapshot(memory: Path, journal_before: set[tuple[Any, ...]] | None = None) -> tuple[Snapshot, list[str]]:
    """Open the memory as a user would next (settling its journal) and read it; with the problems found in it."""
    from retrieval import open_store
    from retrieval.journal import PENDING_DIR

    problems = []
    with open_store(memory) as store:
        points = [p for batch in store.scroll(with_vectors=True) for p in batch]
        ids = [p.id for p in points]
        if not len(ids) == len(set(ids)) == store.count():
            problems.append(f"{len(ids)} points scrolled, {len(set(ids))} ids, {store.count()} counted")
        if sum(store.label_counts().values()) != store.count():
            problems.append(f"label counts sum to {sum(store.label_counts().values())}, {store.count()} counted")
        entries = [e for e in store.journal.read() if journal_before is None or e.key() not in journal_before]
        names = dict(store.meta.label_names)
        deleted_held = not store.holds_no_deleted_vectors()
        pruning = store.meta.settings.get("pruning")
        vote = (store.meta.settings.get("vote"), store.meta.settings.get("tuning"))
        search = {name: getattr(store.meta.index, name) for name in ("hnsw_ef", "rescore")}
    snap = Snapshot(
        points={p.id: {**{k: v for k, v in p.payload.items() if not k.endswith("_at")},
                       "vector": [round(float(x), 3) for x in (p.vector if p.vector is not None else [])]}
                for p in points},
        files=sorted(str(f.relative_to(memory)) for d in ("thumbnails", "uploads") if (memory / d).is_dir()
                     for f in (memory / d).rglob("*") if f.is_file()),
        pending=len(list((memory / PENDING_DIR).glob("*.json"))) if (memory / PENDING_DIR).is_dir() else 0,
        names=names, deleted_held=deleted_held, erased=any(e.op == "erase" for e in entries), pruning=pruning,
        pruned=any(e.op in ("prune", "unprune") for e in entries), vote=vote, search=search)
    for e in sorted(entries, key=lambda e: e.at):
        if e.op == "add":
            snap.added.update(e.labels)
        elif e.op == "tune":
            snap.tunes.append(e.detail)
        elif e.op == "settings":
            snap.searches.append(e.detail)
        elif e.op == "forget":
            snap.forgotten |= set(e.ids)
        elif e.op == "relabel":
            snap.relabelled |= dict.fromkeys(e.ids, e.to or "")
        elif e.op == "name":
            snap.named |= {*e.detail.get("names", {}), *e.detail.get("dropped", ())}
    return snap, problems


def journal_keys(memory: Path) -> set[tuple[Any, ...]]:
    from retrieval.journal import JOURNAL_FILE, FileJournal

    return {e.key() for e in FileJournal(memory / JOURNAL_FILE).read()}


def agrees_with_journal(before: Snapshot, after: Snapshot, erases: bool = False) -> list[str]:
    """What the journal misses or claims of the edit from `before` to `after` (`erases`: the edit erases)."""
    problems = []
    if erases and before.deleted_held and not after.deleted_held and not after.erased:
        problems.append("the files no longer hold the vectors of deleted points, and no erase entry says so")
    if after.erased and after.deleted_held:
        problems.append("an erase entry, and the files still hold vectors of deleted points")
    gone = before.points.keys() - after.points.keys()
    if missed := gone - after.forgotten:
        problems.append(f"{len(missed)} points gone that no forget entry cites (e.g. {min(missed)})")
    if claimed := after.forgotten - gone:
        problems.append(f"a forget entry cites {len(claimed)} points not forgotten (e.g. {min(claimed)})")
    changed = {i: p["label"] for i, p in after.points.items() if i in before.points
               and before.points[i]["label"] != p["label"]}
    if missed := {i for i, label in changed.items() if after.relabelled.get(i) != label}:
        problems.append(f"{len(missed)} points relabelled that no relabel entry to their label cites "
                        f"(e.g. {min(missed)})")
    if claimed := {i for i in after.relabelled if i not in changed}:
        problems.append(f"a relabel entry cites {len(claimed)} points not relabelled (e.g. {min(claimed)})")
    def marks(payload: dict[str, Any]) -> tuple[Any, ...]:  # as pruning reads them (absent: none)
        return bool(payload.get("excluded")), payload.get("prune_count"), payload.get("reliability", 1.0)

    # A relabel clears the marks of its points too (its entry says so): only the points whose label it kept.
    if (before.pruning != after.pruning or any(
            marks(before.points[i]) != marks(p) for i, p in after.points.items()
            if i in before.points and before.points[i]["label"] == p["label"])) and not after.pruned:
        problems.append("pruning's marks or report changed, and no prune or unprune entry says so")
    renamed = {label for label in before.names.keys() | after.names.keys()
               if before.names.get(label) != after.names.get(label)}
    if missed := renamed - after.named:
        problems.append(f"{len(missed)} labels named anew that no name entry names (e.g. {min(missed)})")
    added = Counter(p["label"] for i, p in after.points.items() if i not in before.points)
    if missed := added - after.added:
        problems.append(f"{sum(missed.values())} points added that no add entry counts (e.g. of {min(missed)!r})")
    if claimed := after.added - added:
        problems.append(f"add entries count {sum(claimed.values())} points not added (e.g. of {min(claimed)!r})")
    if before.vote != after.vote and not after.tunes:
        problems.append("the tuned vote settings changed, and no tune entry says so")
    if after.tunes and (None if after.tunes[-1].get("reset") else after.tunes[-1].get("vote")) != after.vote[0]:
        problems.append("the newest tune entry says other vote settings than the memory's")
    if before.search != after.search and not after.searches:
        problems.append("search settings changed, and no settings entry says so")
    if after.searches and any(after.search.get(name) != value
                              for name, value in after.searches[-1].get("search", {}).items()):
        problems.append("the newest settings entry says other search settings than the memory's")
    if after.pending:
        problems.append(f"{after.pending} notes of edits in progress left in the journal after the opening")
    return problems


def differences(killed: Snapshot, whole: Snapshot) -> list[str]:
    """How a memory killed and run again differs from the one run whole."""
    problems = []
    if killed.points.keys() != whole.points.keys():
        problems.append(f"points: {len(killed.points.keys() - whole.points.keys())} more, "
                        f"{len(whole.points.keys() - killed.points.keys())} fewer than run whole")
    elif changed := [i for i in killed.points if killed.points[i] != whole.points[i]]:
        problems.append(f"{len(changed)} points differ from run whole (e.g. {changed[0]})")
    if (killed.pruning or {}).keys() != (whole.pruning or {}).keys():
        problems.append("the memory's pruning report differs from run whole")
    if killed.names != whole.names:
        problems.append("label names differ from run whole")
    if (killed.vote, killed.search) != (whole.vote, whole.search):
        problems.append("vote or search settings differ from run whole")
    if killed.added != whole.added:
        problems.append("the journal's added points per label differ from run whole")
    if killed.files != whole.files:
        problems.append(f"files left: {sorted(set(killed.files) ^ set(whole.files))[:3]} differ from run whole")
    if killed.forgotten != whole.forgotten:
        problems.append("the journal's forgotten points differ from run whole")
    if killed.relabelled != whole.relabelled:
        problems.append("the journal's relabelled points differ from run whole")
    if (killed.erased, killed.deleted_held) != (whole.erased, whole.deleted_held):
        problems.append("the journal's erase, or the vectors of deleted points in the files, differ from run whole")
    return problems


def run_edit(command: Sequence[str], memory: Path, kill_at: int = 0, log: Path | None = None,
             hooked: bool = True) -> subprocess.CompletedProcess[str]:
    """The vmem command on `memory`, hooked to count its writes (and die before write `kill_at`)."""
    args = [a.replace("{memory}", str(memory)) for a in command]
    if not any("{memory}" in a for a in command):
        args += ["--memory", str(memory)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([*([str(HOOK)] if hooked else []), str(REPO)])}
    if hooked:
        env |= {"VMEM_KILL_UNDER": str(memory), "VMEM_KILL_AT": str(kill_at), "VMEM_KILL_LOG": str(log or "")}
    return subprocess.run([sys.executable, "-m", "vmem", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=CHILD_TIMEOUT_S)


def kill_points(writes: Sequence[str], most: int, seed: int, matching: str | None = None) -> list[int]:
    """Every write (those matching the regular expression `matching`) where there are at most `most` (or `most`
    is 0), else the first, the last and a draw."""
    chosen = [n for n, w in enumerate(writes, 1) if matching is None or re.search(matching, w)]
    if not most or len(chosen) <= most:
        return chosen
    drawn = random.Random(seed).sample(chosen[1:-1], most - 2)
    return sorted({chosen[0], chosen[-1], *drawn})


@dataclass
class KillPoint:
    n: int
    write: str
    outcome: str  # killed, or finished (fewer writes this time)
    problems: list[str]


def sweep(memory: Path, command: Sequence[str], work: Path, most: int = 14, seed: int = 0,
          matching: str | None = None, say: Any = print) -> list[KillPoint]:
    """The whole check (the module's docstring) of `command` on copies of `memory` under `work`."""
    work.mkdir(parents=True, exist_ok=True)
    before, problems = snapshot(_copy(memory, work / "before"))
    if problems:
        raise SystemExit(f"the memory does not agree with itself before any kill: {'; '.join(problems)}")
    keys = journal_keys(work / "before")
    log = work / "writes.tsv"
    log.unlink(missing_ok=True)
    whole_run = run_edit(command, _copy(memory, work / "whole"), log=log)
    if whole_run.returncode:
        raise SystemExit(f"the command failed run whole ({whole_run.returncode}):\n{whole_run.stderr[-2000:]}")
    writes = [line.split("\t", 1)[1].replace(str(work / "whole"), "{memory}")
              for line in log.read_text().splitlines()] if log.exists() else []
    whole, problems = snapshot(work / "whole", keys)
    if problems or (problems := agrees_with_journal(before, whole, whole.erased)):
        raise SystemExit(f"the command run whole leaves a memory that disagrees: {'; '.join(problems)}")
    points = kill_points(writes, most, seed, matching)
    say(f"{len(writes)} writes run whole; killing before {len(points)} of them")
    found = []
    for n in points:
        copy = _copy(memory, work / f"killed-{n}")
        child = run_edit(command, copy, kill_at=n)
        outcome = "killed" if child.returncode == -signal.SIGKILL else f"finished ({child.returncode})"
        try:
            after, problems = snapshot(copy, keys)
            problems += agrees_with_journal(before, after, whole.erased)
            # Run again, it may refuse with nothing left to do (a relabel of a label no point has now): what
            # matters is that it ends as run whole.
            again = run_edit(command, copy, hooked=False)
            if again.returncode:
                outcome += f", run again: exit {again.returncode}"
            problems += differences(snapshot(copy, keys)[0], whole)
        except Exception as exc:  # it does not open: the worst a kill can leave
            problems = [f"{type(exc).__name__}: {exc}"]
        point = KillPoint(n, writes[n - 1] if n <= len(writes) else "?", outcome, problems)
        found.append(point)
        say(f"{n:>4}  {point.write:<60}  {outcome}  "
            f"{'; '.join(problems) or 'ok'}")
        shutil.rmtree(copy, ignore_errors=True)
    return found


def _copy(memory: Path, to: Path) -> Path:
    shutil.rmtree(to, ignore_errors=True)
    shutil.copytree(memory, to, symlinks=True)
    return to


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("memory", type=Path, help="the memory to edit copies of (never edited itself)")
    parser.add_argument("--points", type=int, default=14,
                        help="kill points at most: the first and last write and a draw (0: every write)")
    parser.add_argument("--seed", type=int, default=0, help="the draw of kill points")
    parser.add_argument("--matching", help="only the writes this regular expression finds in their line "
                                           "(`engine update|journal`), as the command run whole lists them")
    parser.add_argument("--work", type=Path, help="where the copies go (default: a temporary folder, removed)")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if not command:
        parser.error("give the vmem command after --, as `-- forget --label cat`")
    with tempfile.TemporaryDirectory(prefix="vmem-killpoints-") as tmp:
        found = sweep(args.memory.expanduser().absolute(), command, args.work or Path(tmp), args.points, args.seed,
                      args.matching)
    bad = [p for p in found if p.problems]
    print(f"{len(found)} kill points, {len(bad)} with problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
