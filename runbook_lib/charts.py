"""Charts for the report, returned as matplotlib Figures (no pyplot state, no backend switching)."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .topology import SLOTS


def slot_distribution(before: dict[str, int], after: dict[str, int], title: str = "Slots per master") -> Figure:
    """Grouped bars of slots per master before and after, with the even share as a line."""
    names = list(dict.fromkeys(list(before) + list(after)))
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    x = range(len(names))
    width = 0.38
    ax.bar([i - width / 2 for i in x], [before.get(n, 0) for n in names], width, label="before", color="#9aa5b1")
    ax.bar([i + width / 2 for i in x], [after.get(n, 0) for n in names], width, label="after", color="#2f6fb0")
    ax.axhline(SLOTS / len(names), color="#c0392b", linestyle="--", linewidth=1, label=f"even share ({SLOTS / len(names):.0f})")
    ax.set_xticks(list(x), names, rotation=15, fontsize=8)
    ax.set_ylabel("hash slots")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def batch_progress(batches: list[dict]) -> Figure:
    """Per batch: slots moved (bars) and seconds taken (line, right axis)."""
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    numbers = [b["batch"] for b in batches]
    ax.bar(numbers, [b["slots"] for b in batches], color="#2f6fb0", label="slots moved")
    ax.set_xlabel("batch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("slots moved")
    ax2 = ax.twinx()
    ax2.plot(numbers, [b["seconds"] for b in batches], color="#e67e22", marker="o", markersize=3, label="seconds")
    ax2.set_ylabel("seconds")
    ax.set_title("Migration per batch")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, ["slots moved", "seconds"], fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig
