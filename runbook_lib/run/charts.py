"""Charts for the report, returned as matplotlib Figures (no pyplot state, no backend switching)."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from runbook_lib.cluster.topology import SLOTS


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


def batch_latency(table, baseline_p99_ms: float | None, decisions: list | None = None,
                  budget_pct: float = 10.0) -> Figure:
    """Per batch window: probe p50/p99 against the budget band, throughput, and where the throttle slowed down. Each
    point pools a whole batch window with few samples; the verdict's own chart is `acceptance_latency`."""
    rows = table[table["batch"].notna()] if len(table) else table
    fig = Figure(figsize=(8, 4.2))
    ax, ax_ops = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    if len(rows):
        ax.plot(rows["batch"], rows["p99_ms"], marker="o", markersize=3, color="#c0392b", label="p99")
        ax.plot(rows["batch"], rows["p50_ms"], marker="o", markersize=3, color="#2f6fb0", label="p50")
        ax_ops.bar(rows["batch"], rows["ops_per_s"], color="#9aa5b1", label="requests/s")
        errors = rows[rows["errors"] > 0]
        ax.scatter(errors["batch"], errors["p99_ms"], color="black", marker="x", zorder=5, label="failed requests")
    if baseline_p99_ms:
        ax.axhspan(0, baseline_p99_ms * (1 + budget_pct / 100), color="#e3f4e1",
                   label=f"budget: baseline p99 +{budget_pct:g} %")
        ax.axhline(baseline_p99_ms, color="#27ae60", linestyle="--", linewidth=1)
    for d in decisions or []:
        if d.action in ("slow down", "pause"):
            ax.axvline(d.batch, color="#e67e22", linewidth=1, alpha=0.6)
    ax.set_ylabel("latency (ms)")
    ax.set_title("Client latency per batch window, pauses and gate waits included (not the verdict's statistic: "
                 "60_validate judges the samples while slots moved, pooled); orange lines: throttle slowed down",
                 fontsize=9, wrap=True)
    ax.legend(fontsize=7, loc="upper right")
    ax_ops.set_ylabel("req/s")
    ax_ops.set_xlabel("batch")
    ax_ops.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def pace_timeline(series, decisions: list[dict], baseline_p99_ms: float | None = None) -> Figure:
    """The budget pace over time: clients' p99 per second against the budget band (top); slots/s handed over, the
    pace the governor set and keys/s (bottom); orange lines where it backed off, grey where it paused."""
    fig = Figure(figsize=(8, 4.6))
    ax, ax_pace = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    t = series["t"] if len(series) else []
    if len(series):
        ax.plot(t, series["p99_ms"], color="#c0392b", linewidth=1, label="client p99 per second")
        limit = series["limit_ms"].dropna()
        if len(limit):
            ax.fill_between(t, 0, series["limit_ms"], color="#e3f4e1", step="post", label="within the budget")
        ax_pace.bar(t, series["slots_per_s"], width=1.0, align="edge", color="#9aa5b1", label="slots/s handed over")
        ax_pace.step(t, series["pace_slots_per_s"], where="post", color="#2f6fb0", label="pace set (slots/s)")
        ax_keys = ax_pace.twinx()
        ax_keys.plot(t, series["keys_per_s"].rolling(5, min_periods=1).mean(), color="#8e44ad", linewidth=1,
                     label="keys/s (5 s mean)")
        ax_keys.set_ylabel("keys/s")
        ax_keys.legend(fontsize=7, loc="upper right")
    if baseline_p99_ms:
        ax.axhline(baseline_p99_ms, color="#27ae60", linestyle="--", linewidth=1, label="baseline p99")
    if len(series) and series["limit_ms"].notna().any():
        ax.set_ylim(0, min(float(series["p99_ms"].max()) * 1.05, float(series["limit_ms"].max()) * 4))
    start = decisions[0]["ts"] if decisions else 0.0
    first_open = series.attrs.get("t0", start) if len(series) else start
    labelled: set[str] = set()
    for d in decisions:
        if d["action"] in ("back off", "pause"):
            name = "backed off" if d["action"] == "back off" else "paused"
            ax_pace.axvline(d["ts"] - first_open, color="#e67e22" if name == "backed off" else "#555555",
                            linewidth=0.7, alpha=0.6, label=None if name in labelled else name)
            labelled.add(name)
    ax.set_ylabel("latency (ms)")
    ax.set_title("Budget pace: client p99 against the budget, and the pace it allowed")
    ax.legend(fontsize=7, loc="upper left")
    ax_pace.set_ylabel("slots/s")
    ax_pace.set_xlabel("seconds since the first slot opened")
    ax_pace.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def acceptance_latency(latency: dict) -> Figure:
    """The latency verdict drawn from its own numbers (acceptance.json), the way a dashboard shows it: p99 of every
    request per fixed 10 s window across the migration, against the reference the verdict used (the control of the
    quiet spells, or the pre-move baseline), the budget over it (and the article's +10 % when that differs), and the
    pooled p99 while slots moved with its interval; the worst window is marked."""
    fig = Figure(figsize=(8, 3.8))
    ax = fig.subplots()
    if not latency.get("measured"):
        ax.text(0.5, 0.5, "latency NOT MEASURED\n(no traffic probe, or no request while slots moved)",
                ha="center", va="center", fontsize=12, color="#a30000", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    ref, budget, name = latency["reference_p99_ms"], latency["budget_pct"], latency["reference"]
    windows = [w for w in latency.get("windows") or [] if w["p99_ms"] is not None]
    t0 = windows[0]["start"] if windows else 0.0
    ax.axhline(ref, color="#27ae60", linestyle="--", linewidth=1,
               label=f"{'control (quiet spells)' if name == 'control' else 'baseline'} p99 {ref:.2f} ms")
    ax.axhline(ref * (1 + budget / 100), color="#c0392b", linewidth=1.5,
               label=f"budget the verdict used: {name} +{budget:g} %")
    article = latency["article_budget_pct"]
    if article != budget:
        ax.axhline(ref * (1 + article / 100), color="#e67e22", linestyle=":", linewidth=1.5,
                   label=f"the article's limit: {name} +{article:g} % ({latency['article_verdict']})")
    if name == "control" and latency.get("baseline_p99_ms"):
        ax.axhline(latency["baseline_p99_ms"], color="#999", linestyle=":", linewidth=1,
                   label=f"pre-move baseline p99 {latency['baseline_p99_ms']:.2f} ms (beside, not judged)")
    if latency.get("low") is not None and latency.get("high") is not None:
        ax.axhspan(ref * latency["low"], ref * latency["high"], color="#2f6fb0", alpha=0.18,
                   label=f"verdict: p99 while slots moved {latency['during_p99_ms']:.2f} ms, 95 % interval")
    ax.axhline(latency["during_p99_ms"], color="#2f6fb0", linewidth=1.5)
    if windows:
        ax.step([w["start"] - t0 for w in windows], [w["p99_ms"] for w in windows], where="post", color="#555",
                linewidth=1.2, label="p99 per 10 s window (every request)")
        worst = latency.get("worst_window")
        if worst:
            ax.plot([worst["start"] - t0 + 5], [worst["p99_ms"]], marker="v", color="#a30000", linestyle="",
                    label=f"worst window {worst['start_utc']} UTC")
    ax.set_xlabel("seconds since the first 10 s window of the migration")
    ax.set_ylabel("client latency p99 (ms)")
    shown = max([w["p99_ms"] for w in windows] + [ref * (latency.get("high") or 1), ref * (1 + article / 100),
                                                   latency["during_p99_ms"]])
    limit = ref * (1 + budget / 100)
    if limit > 3 * shown:
        ax.set_ylim(0, shown * 1.4)
        ax.annotate(f"budget line at {limit:.1f} ms, above the chart", xy=(0.99, 0.97), xycoords="axes fraction",
                    ha="right", va="top", fontsize=8, color="#c0392b")
    else:
        ax.set_ylim(bottom=0)
    ratio = latency.get("ratio")
    change = f"{(ratio - 1) * 100:+.0f} %" if ratio is not None else "n/a"
    ax.set_title(f"Latency verdict: {latency['verdict'].upper()}: p99 while slots moved {change} vs {name} "
                 f"(budget +{budget:g} %)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig
