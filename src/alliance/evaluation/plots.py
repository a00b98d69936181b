"""The plots of the HTML run report, drawn with matplotlib and encoded as embeddable PNG images.

Each function takes accuracies already read from the metrics, as percentages (NaN where a score
is absent: a line or bar gap), and returns an :class:`Image` whose ``src`` is a base64
``data:image/png`` URI, so the page that shows it needs no file beside it.

Plots are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never through
pyplot, so drawing changes no global matplotlib state. Hospital names are drawn in DejaVu Sans,
falling back glyph by glyph to an installed CJK font for Chinese names; where none is installed
those glyphs draw as boxes and matplotlib's warning about them is silenced.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import math
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from matplotlib import font_manager
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

__all__ = ["Image", "rounds_plot", "sites_plot", "union_plot"]

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
_LOCAL, _FEDERATED, _POOLED = "#E69F00", "#0072B2", "#009E73"
_ROUND_LINES = (("Top-10", "#0072B2", "o"), ("Top-3", "#56B4E9", "s"),
                ("Top-1", "#CC79A7", "^"))  # fmt: skip
# Tried after DejaVu Sans, glyph by glyph, so Chinese hospital names draw where such a font exists.
_CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
                 "WenQuanYi Micro Hei", "Microsoft YaHei", "PingFang SC", "SimHei")  # fmt: skip
_DPI = 144


@dataclass(frozen=True)
class Image:
    """A plot as a ``data:`` URI, shown ``width`` CSS pixels wide: equal text sizes across plots."""

    src: str
    width: int


def rounds_plot(
    rounds: Sequence[float],
    *,
    top10: Sequence[float],
    top3: Sequence[float],
    top1: Sequence[float],
    pooled: float,
    best_local: float,
) -> Image:
    """Top-1/3/10 accuracy after each round, with the pooled and best single-hospital top-10.

    Parameters
    ----------
    rounds
        The round numbers, the x axis.
    top10, top3, top1
        The federated model's accuracy after each round, in percent.
    pooled, best_local
        Top-10 accuracy of the pooled and of the best single-hospital model, in percent, drawn
        as dashed lines; NaN leaves the line out.
    """
    fig = Figure(figsize=(10, 4.2), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    marker = len(rounds) <= 30
    for ys, (label, colour, symbol) in zip((top10, top3, top1), _ROUND_LINES, strict=True):
        ax.plot(rounds, ys, color=colour, marker=symbol if marker else None, label=label)
    references = ((pooled, "Pooled", _POOLED), (best_local, "Best single hospital", _LOCAL))
    for value, label, colour in references:
        if not math.isnan(value):
            ax.axhline(value, color=colour, linestyle="--", label=f"{label}, top-10 ({value:.1f}%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Round")
    _percent_axis(ax, "Accuracy on all test cases", top=100)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _png(fig)


def sites_plot(
    names: Sequence[str],
    n_test: Sequence[int | None],
    *,
    local: Sequence[float],
    federated: Sequence[float],
    pooled: Sequence[float],
) -> Image:
    """Per hospital, top-10 accuracy on its own test cases of its own, federated and pooled models.

    Parameters
    ----------
    names
        Hospital names, one bar group each, in the order drawn.
    n_test
        Each hospital's number of test cases, shown above its bars when known.
    local, federated, pooled
        Each hospital's top-10 accuracy under each model, in percent.
    """
    fig = Figure(figsize=(_width(len(names)), 5.8), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    bars = ((local, "Hospital's own model", _LOCAL), (federated, "Federated", _FEDERATED),
            (pooled, "Pooled", _POOLED))  # fmt: skip
    width = 0.27
    for offset, (values, label, colour) in zip((-width, 0.0, width), bars, strict=True):
        xs = [i + offset for i in range(len(names))]
        container = ax.bar(xs, values, width, label=label, color=colour)
        texts = ["" if math.isnan(v) else f"{v:.0f}" for v in values]
        ax.bar_label(container, texts, padding=2, fontsize=7 if len(names) > 6 else 8)
    for i, n in enumerate(n_test):  # above the bars: the tick labels are crowded already
        if n is not None:
            ax.text(i, 112, f"n = {n:,}", ha="center", fontsize=8.5, color="#57606a")
    _name_ticks(ax, [_short_name(name) for name in names])
    _percent_axis(ax, "Top-10 accuracy, hospital's own test cases", top=118)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=3, frameon=False)
    return _png(fig)


def union_plot(names: Sequence[str], own: Sequence[float], *, federated: float) -> Image:
    """Top-10 accuracy on all test cases of each hospital's own model and of the federated one.

    Parameters
    ----------
    names
        The hospitals whose own model was scored on all test cases.
    own
        Each one's top-10 accuracy there, in percent.
    federated
        The federated model's top-10 accuracy on the same cases, in percent; NaN leaves its bar
        and dashed line out.
    """
    fig = Figure(figsize=(_width(len(names) + 1), 5.4), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    values = list(own)
    labels = [_short_name(name) for name in names]
    colours = [_LOCAL] * len(names)
    if not math.isnan(federated):
        values, labels = [*values, federated], [*labels, "Federated model"]
        colours.append(_FEDERATED)
        ax.axhline(federated, color=_FEDERATED, linestyle="--", linewidth=1.2)
    container = ax.bar(range(len(values)), values, 0.6, color=colours)
    texts = ["" if math.isnan(v) else f"{v:.1f}%" for v in values]
    ax.bar_label(container, texts, padding=2, fontsize=8)
    _name_ticks(ax, labels)
    _percent_axis(ax, "Top-10 accuracy on all test cases", top=108)
    return _png(fig)


# --- drawing and encoding ------------------------------------------------------------------------


@functools.cache
def _name_families() -> tuple[str, ...]:
    installed = {font.name for font in font_manager.fontManager.ttflist}
    return ("DejaVu Sans", *(family for family in _CJK_FAMILIES if family in installed))


@contextlib.contextmanager
def _missing_glyphs_allowed() -> Iterator[None]:
    """Without a CJK font a Chinese name draws as boxes; the HTML tables still show it in full."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"Glyph \d+ .* missing from font", UserWarning)
        yield


def _png(fig: Figure) -> Image:
    """Encode the figure, then clear it to free its memory (no pyplot registry holds it)."""
    buffer = io.BytesIO()
    width = round(fig.get_figwidth() * 96)
    try:
        with _missing_glyphs_allowed():
            # A figure outside pyplot prints PNG through the Agg canvas; no backend is selected.
            fig.savefig(buffer, format="png", metadata={"Software": None})
    finally:
        fig.clear()
    return Image(
        "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), width
    )


def _percent_axis(ax: Axes, label: str, *, top: float) -> None:
    """A 0-100% axis; ``top`` above 100 leaves room for labels over the bars."""
    ax.set_ylabel(label)
    ax.set_ylim(0, top)
    ax.set_yticks(range(0, 101, 20))
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _name_ticks(ax: Axes, labels: Sequence[str]) -> None:
    # Steeper when crowded: rotated blocks of wrapped text then stay clear of their neighbours.
    rotation = 35 if len(labels) <= 6 else 55
    ax.set_xticks(range(len(labels)), labels, rotation=rotation, ha="right", rotation_mode="anchor")
    for tick in ax.get_xticklabels():
        tick.set_fontfamily(list(_name_families()))
        tick.set_multialignment("right")


def _width(n_bars: int) -> float:
    """Figure width in inches: 10 (the page width) up to twelve hospitals, wider beyond."""
    return max(10.0, 0.75 * n_bars + 1.5)


def _short_name(name: str) -> str:
    return textwrap.fill(name, 22, max_lines=3, placeholder="…")
