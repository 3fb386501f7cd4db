"""PNG plots of a `Scores`: accuracy against k per rule, hit rate against k, neighbour reliability by rank,
each class's accuracy, hardest first, and how far the answer's confidence can be trusted (risk-coverage,
reliability diagram)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .scoring import Scores
from .selective import Selective, decision_name

log = logging.getLogger(__name__)


def _pyplot() -> Any:
    """matplotlib.pyplot, imported when a plot is drawn: imported with this module, it cost every vmem command
    (which all import eval) most of a second of start-up."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _save(fig, path: Path) -> Path:
    _fall_back_to_fonts_that_have_the_characters(fig)
    with warnings.catch_warnings():  # one per character, twice a plot: said once instead (above)
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.tight_layout()
        if _wrap_titles_to_fit(fig):
            fig.tight_layout()  # room above the axes for the lines added
        fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def _wrap_titles_to_fit(fig) -> bool:
    """Each axes' title broken into lines that fit in the figure (whether one was): a title is drawn whole, centred
    over its axes, so one wider than the room on either side of the axes' centre was cut at the figure's edges (a
    run's dataset and memory named by long paths)."""
    import textwrap

    renderer = fig.canvas.get_renderer()
    wrapped = False
    for ax in fig.get_axes():
        text = ax.title.get_text()
        centre = (ax.bbox.x0 + ax.bbox.x1) / 2 - fig.bbox.x0
        room = 0.96 * 2 * min(centre, fig.bbox.width - centre)
        width = ax.title.get_window_extent(renderer).width
        if not text or width <= room:
            continue
        longest = max(len(line) for line in text.splitlines())
        chars = max(10, int(longest * room / width))  # its characters' mean width, as drawn
        ax.title.set_text("\n".join(textwrap.fill(line, chars, break_long_words=True, break_on_hyphens=False)
                                     for line in text.splitlines()))
        wrapped = True
    return wrapped


_font_chars: dict[str, set[int]] | None = None  # each installed font family's characters, read once
_said_missing: set[str] = set()


def _installed_font_chars() -> dict[str, set[int]]:
    global _font_chars
    if _font_chars is None:
        from matplotlib import font_manager, ft2font

        _font_chars = {}
        for entry in font_manager.fontManager.ttflist:
            if entry.name.startswith("Last Resort"):  # a box for every character: the boxes this avoids
                continue
            try:
                _font_chars.setdefault(entry.name, set()).update(ft2font.FT2Font(entry.fname).get_charmap())
            except (OSError, RuntimeError, ValueError):  # a font file FreeType cannot read
                continue
    return _font_chars


def _fall_back_to_fonts_that_have_the_characters(fig) -> None:
    """Text in characters the default font lacks (labels and names in Chinese, Japanese, ...) is drawn in an
    installed font that has them: matplotlib draws with DejaVu Sans alone, so 猫 was a box even where a CJK font
    is installed. Characters no installed font has are said once (a log warning), not as a UserWarning a
    character."""
    from matplotlib import font_manager, ft2font
    from matplotlib.text import Text

    texts = [t for t in fig.findobj(Text) if t.get_text()]
    used = {ord(c) for t in texts for c in t.get_text() if not c.isspace()}
    default = font_manager.findfont(font_manager.FontProperties())
    missing = used - set(ft2font.FT2Font(default).get_charmap())
    if not missing:
        return
    families = [font_manager.get_font(default).family_name]
    for family, chars in _installed_font_chars().items():
        if missing & chars and family not in families:
            families.append(family)
            missing -= chars
    if len(families) > 1:
        for t in texts:
            t.set_fontfamily(families)
    if unsaid := sorted(chr(c) for c in missing if chr(c) not in _said_missing):
        _said_missing.update(unsaid)
        shown = ", ".join(f"{c} (U+{ord(c):04X})" for c in unsaid[:10]) + (" ..." if len(unsaid) > 10 else "")
        log.warning("the plots draw these characters of labels or names as boxes, for no installed font has them: %s; "
                    "install a font that does (for Chinese, Japanese and Korean: Noto Sans CJK, Debian's "
                    "fonts-noto-cjk) and run eval again (its features are cached). The CSV and JSON files hold the "
                    "text itself", shown)


def plot_accuracy_vs_k(scores: Scores, path: str | Path, title: str = "") -> Path:
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.2))
    ks = range(1, scores.k_max + 1)
    for i, (name, curve) in enumerate(scores.accuracy.items()):
        # A marker each: colours alone leave two rules alike to a colour-blind reader, or in print
        ax.plot(ks, [100 * a for a in curve], label=name, linestyle="--" if name.endswith("+soft") else "-",
                marker=MARKERS[i % len(MARKERS)], markevery=max(1, scores.k_max // 10), markersize=4)
    ax.set_xlabel("k (neighbours voting)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or f"accuracy against k ({scores.n_queries} queries)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, Path(path))


def plot_hit_rate(scores: Scores, path: str | Path, title: str = "") -> Path:
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.2))
    ks = range(1, scores.k_max + 1)
    ax.plot(ks, [100 * h for h in scores.hit_rate], label="right label among first k")
    best = max(scores.best.values(), key=lambda b: b.best_accuracy)
    ax.axhline(100 * best.best_accuracy, color="grey", linestyle=":", label=f"best vote ({best.rule}, k={best.best_k})")
    ax.set_xlabel("k")
    ax.set_ylabel("hit rate (%)")
    ax.set_title(title or "hit rate against k")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, Path(path))


def plot_neighbor_reliability(scores: Scores, path: str | Path, title: str = "") -> Path:
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.2))
    ax.plot(range(len(scores.neighbor_accuracy)), [100 * a for a in scores.neighbor_accuracy])
    ax.set_xlabel("neighbour rank i (0 = nearest)")
    ax.set_ylabel("accuracy of neighbour i's label alone (%)")
    ax.set_title(title or "neighbour reliability against rank")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_per_class(scores: Scores, path: str | Path, names: dict[str, str] | None = None, title: str = "",
                   marked: int = 6) -> Path:
    """Every class's accuracy under one decision, sorted (an area, so 21k classes draw as well as 200), the
    accuracy over all queries as a line, and the `marked` hardest classes named."""
    assert scores.per_class is not None
    pc, names = scores.per_class, names or {}
    acc = sorted(100 * c.accuracy for c in pc.classes)
    fig, ax = _pyplot().subplots(figsize=(7.2, 4.2))
    ax.fill_between(range(len(acc)), acc, step="mid", alpha=0.5)
    ax.step(range(len(acc)), acc, where="mid", linewidth=0.8)
    overall = 100 * sum(c.correct for c in pc.classes) / max(1, sum(c.queries for c in pc.classes))
    ax.axhline(overall, color="grey", linestyle=":", label=f"all queries: {overall:.1f}%")
    # Sorted hardest first, the upper left is empty: the hardest classes are named there.
    hardest = "\n".join(f"{names.get(c.label, c.label)}: {100 * c.accuracy:.0f}%" for c in pc.classes[:marked])
    ax.text(0.02, 0.97, f"hardest:\n{hardest}", transform=ax.transAxes, va="top", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "linewidth": 0.5})
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a class's place, not 2.5 of one
    ax.set_xlabel(f"class, hardest to easiest ({len(acc)} classes)")
    ax.set_ylabel("accuracy of its queries (%)")
    ax.set_ylim(0, 100)
    decision = f"{pc.rule} voting, k={pc.k}"
    ax.set_title(f"{title} ({decision})" if title else f"per-class accuracy ({decision})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, Path(path))


def plot_risk_coverage(sel: Selective, path: str | Path, title: str = "") -> Path:
    """Accuracy of the answers kept against the share kept, as the confidence threshold rises (right to left),
    with the thresholds that reach each target accuracy marked."""
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.2))
    pts = sel.risk_coverage
    ax.plot([100 * p.coverage for p in pts], [100 * p.accuracy for p in pts], marker="o", markersize=2,
            label=decision_name(sel))
    for j, a in enumerate(x for x in sel.at_accuracy if x.accuracy is not None):
        ax.plot([100 * a.coverage], [100 * (a.accuracy or 0.0)], marker=MARKERS[(j + 1) % len(MARKERS)],
                linestyle="none", color="black", label=f"{100 * a.target:g}%: min confidence {a.min_confidence:.3g}, "
                f"{100 * a.coverage:.1f}% kept")
    ax.set_xlabel("answers kept (% of queries)")
    ax.set_ylabel("accuracy of the answers kept (%)")
    ax.set_xlim(0, 100)
    ax.set_title(title or f"risk-coverage (confidence: the {sel.confidence})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, Path(path))


def plot_reliability(sel: Selective, path: str | Path, title: str = "") -> Path:
    """The reliability diagram: each confidence bin's accuracy against its mean confidence (the diagonal is a
    calibrated confidence), the bins' queries as bars beneath, and the ECE."""
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.2))
    full = [b for b in sel.reliability if b.queries]
    ax.plot([0, 100], [0, 100], color="grey", linestyle=":", label="calibrated")
    ax.plot([100 * b.mean_confidence for b in full], [100 * b.accuracy for b in full],  # type: ignore[operator]
            marker="o", label=f"{decision_name(sel)}: ECE {sel.ece:.3f}")
    share = ax.twinx()
    share.bar([100 * (b.lower + b.upper) / 2 for b in sel.reliability],
              [100 * b.queries / max(1, sel.queries) for b in sel.reliability],
              width=100 / max(1, len(sel.reliability)) * 0.9, alpha=0.2, color="grey")
    share.set_ylabel("queries in the bin (%)")
    ax.set_zorder(share.get_zorder() + 1)  # the curve above the bars
    ax.patch.set_visible(False)
    ax.set_xlabel(f"confidence: the {sel.confidence} (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_title(title or "reliability diagram")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, Path(path))


def plot_curves(
    xs: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
) -> Path:
    """Generic line plot for experiments (one line per named curve)."""
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.2))
    for name, ys in curves.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
    from matplotlib.ticker import LogFormatter

    for on, axis, scale in ((logx, ax.xaxis, ax.set_xscale), (logy, ax.yaxis, ax.set_yscale)):
        if on:
            scale("log")
            # Plain numbers (600, 40): matplotlib's own labels read "6 x 10^2", and its minor ones, "3 x 10^1" and
            # "4 x 10^1" side by side, ran into each other on an axis of less than two decades.
            axis.set_major_formatter(LogFormatter())
            axis.set_minor_formatter(LogFormatter(minor_thresholds=(2, 0.5)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, Path(path))


def plot_histograms(
    edges: Sequence[float],
    groups: dict[str, Sequence[int]],
    path: str | Path,
    xlabel: str,
    title: str = "",
    lines: dict[str, float] | None = None,
) -> Path:
    """Histograms over the same bins, each group as shares of its own members (groups of unequal size compare),
    with labelled vertical lines (a threshold)."""
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.2))
    for i, (name, counts) in enumerate(groups.items()):
        total = max(1, sum(counts))
        ax.stairs([100 * c / total for c in counts], edges, label=f"{name} ({total:,})", fill=i == 0,
                  alpha=0.45 if i == 0 else 1.0, linewidth=1.5, hatch=None if i == 0 else "//")
    for j, (name, x) in enumerate((lines or {}).items()):
        ax.axvline(x, color="black", linestyle=("--", ":", "-.")[j % 3], label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of the group (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


# The files `plot_all` may write, after its prefix.
PLOT_FILES = ("accuracy_vs_k.png", "hit_rate_vs_k.png", "neighbor_reliability.png", "per_class_accuracy.png",
              "risk_coverage.png", "reliability.png")


def plot_trust(sel: Selective, out_dir: str | Path, prefix: str, title: str) -> list[Path]:
    """The risk-coverage curve and the reliability diagram of one decision's confidence."""
    out = Path(out_dir)
    return [plot_risk_coverage(sel, out / f"{prefix}risk_coverage.png", f"{title}: risk-coverage"),
            plot_reliability(sel, out / f"{prefix}reliability.png", f"{title}: reliability")]


def plot_all(scores: Scores, out_dir: str | Path, prefix: str = "", title: str = "",
             names: dict[str, str] | None = None) -> list[Path]:
    out = Path(out_dir)
    written = [
        plot_accuracy_vs_k(scores, out / f"{prefix}accuracy_vs_k.png", title),
        plot_hit_rate(scores, out / f"{prefix}hit_rate_vs_k.png", title and f"{title}: hit rate"),
        plot_neighbor_reliability(scores, out / f"{prefix}neighbor_reliability.png",
                                  title and f"{title}: neighbour reliability"),
    ]
    if scores.per_class is not None and scores.per_class.classes:
        written.append(plot_per_class(scores, out / f"{prefix}per_class_accuracy.png", names,
                                      title and f"{title}: per-class accuracy"))
    if scores.selective is not None and scores.selective.queries:
        written.append(plot_risk_coverage(scores.selective, out / f"{prefix}risk_coverage.png",
                                          title and f"{title}: risk-coverage"))
        written.append(plot_reliability(scores.selective, out / f"{prefix}reliability.png",
                                        title and f"{title}: reliability"))
    return written
