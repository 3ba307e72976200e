"""Printing a :class:`Report`: the table the command writes by default, and the stacked-bar figure
of ``--png`` (matplotlib is imported only then, from the ``[plot]`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence

from xen_driver.breakdown.model import CLOCKS, BreakdownError, Phase, Report, phase_list

SHORT = {"domain_build": "build", "clickos_push": "push", "driver_other": "drv_other", "scheduling": "sched"}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_table(report: Report) -> str:
    phases = report.phases
    head = ["alloc", "task", "status"] + [SHORT.get(p.name, p.name) for p in phases]
    body: list[list[str]] = []
    for r in report.rows:
        status = r.client_status + (f" r{r.restarts}" if r.restarts else "")
        body.append([r.alloc_id[:8], r.task, status] + [_fmt(r.phases.get(p.name)) for p in phases])
    started = [r for r in report.rows if r.started]
    if len(started) > 1:
        summary = report.summary()
        for stat in ("median", "p90"):
            body.append([stat, "", f"n={len(started)}"] + [_fmt((summary[p.name] or {}).get(stat)) for p in phases])
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    what = f"job {report.job_id}" if report.kind == "job" else f"allocation {report.target} (job {report.job_id})"
    out = [
        f"{what} at {report.address}, namespace {report.namespace}:"
        f" {len(report.rows)} {report.driver} task(s), times in ms"
    ]
    out += ["", line(head), *(line(b) for b in body), ""]
    by_clock: dict[str, list[str]] = {}
    for p in phases:
        by_clock.setdefault(p.clock, []).append(p.name)
    out.append("clocks:")
    for clock, names in by_clock.items():
        out.append(f"  {clock:<14} {', '.join(names)}: {CLOCKS[clock]}")
    notes = [f"  {r.alloc_id[:8]} {r.task}: {n}" for r in report.rows for n in r.notes]
    if report.skipped:
        notes.append(f"  skipped {len(report.skipped)} allocation(s) without a {report.driver} task")
    if notes:
        out += ["notes:", *notes]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ figure

PLOT_MISSING = "--png needs matplotlib: pip install 'nomad-driver-xen[plot]'"


def plot_stacked(
    bars: Sequence[tuple[str, dict[str, float | None]]],
    path: str,
    *,
    title: str,
    subtitle: str = "",
    phases: Sequence[Phase] | None = None,
) -> None:
    """A stacked bar per entry of ``bars`` (label, phase → ms), phases bottom-up in order; the
    ``total`` phase is written above each bar instead of stacked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BreakdownError(PLOT_MISSING) from None

    if phases is None:
        names: list[str] = []
        for _, values in bars:
            names.extend(n for n in values if n not in names)
        phases = phase_list(names)
    stacked = [p for p in phases if p.name != "total" and any((v.get(p.name) or 0) > 0 for _, v in bars)]
    peak = max((sum((v.get(p.name) or 0) for p in stacked) for _, v in bars), default=0.0)
    scale, unit = (1000.0, "s") if peak >= 5000 else (1.0, "ms")
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(bars) + 4.0), 5.5))
    xs = list(range(len(bars)))
    bottoms = [0.0] * len(bars)
    for i, p in enumerate(stacked):
        heights = [(v.get(p.name) or 0.0) / scale for _, v in bars]
        ax.bar(
            xs,
            heights,
            0.6,
            bottom=bottoms,
            label=f"{p.name} ({p.clock})",
            color=cmap(i % 20),
            edgecolor="white",
            linewidth=0.5,
        )
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    for x, (_, values), top in zip(xs, bars, bottoms, strict=True):
        total = values.get("total")
        text = f"{total / scale:.2f} {unit}" if total is not None else f"Σ {top:.2f} {unit}"
        ax.annotate(text, (x, top), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(
        xs, [label for label, _ in bars], rotation=30 if len(bars) > 6 else 0, ha="right" if len(bars) > 6 else "center"
    )
    ax.set_ylabel(f"time ({unit})")
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(
        handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="phase (clock)"
    )
    ax.margins(y=0.08)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise BreakdownError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def report_bars(report: Report) -> list[tuple[str, dict[str, float | None]]]:
    """One bar per started task, plus the medians when there are several."""
    bars: list[tuple[str, dict[str, float | None]]] = [
        (r.alloc_id[:8] + (f"/{r.task}" if len({x.task for x in report.rows}) > 1 else ""), dict(r.phases))
        for r in report.rows
        if r.started
    ]
    if len(bars) > 1:
        summary = report.summary()
        bars.append(("median", {n: (s or {}).get("median") for n, s in summary.items()}))
    return bars
