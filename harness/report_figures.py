"""Figures of the main rows: per task, scores with 95 % intervals as sorted horizontal bars (``main.png``), and
score against prompt cost on a log axis (``cost_quality.png``). Every label and legend stays inside the canvas
(``tests/harness/test_report_figures.py`` checks the extents of all the figure's artists)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

PANEL_COLUMNS = ("IFEval", "HotpotQA F1", "GPQA-D", "MAB", "LoCoMo")


def _panels(cells, suite) -> list[tuple[str, str, list[tuple[str, Any]]]]:
    """(backbone, column header, [(method, MainCell)]) for every column with at least one result."""
    from harness import report_main as rm

    out = []
    for backbone in sorted({k[0] for k in cells}):
        rows, _ = rm.build_rows(cells, backbone, suite)
        for header in PANEL_COLUMNS:
            done = [(r["method"], r["cells"][header]) for r in rows if r["cells"][header].status == "complete"]
            if done:
                out.append((backbone, header, done))
    return out


def _varies(values: list[float], ratio: float = 1.1) -> bool:
    return len(values) > 1 and max(values) > ratio * min(values)


def _grid(n: int, min_width: float = 0.0):
    import matplotlib.pyplot as plt

    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(5.2 * cols, min_width), 3.4 * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def write_figures(cells, out: Path, suite: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.report_main import FLOOR

    panels = _panels(cells, suite)
    if not panels:
        return []
    multi = len({b for b, _, _ in panels}) > 1
    fig, axes = _grid(len(panels))
    for ax, (backbone, header, done) in zip(axes, panels):
        done = sorted(done, key=lambda mc: mc[1].value)
        ys = range(len(done))
        err = [1.96 * 100 * c.stderr if c.stderr is not None and math.isfinite(c.stderr) else 0 for _, c in done]
        colors = ["#bbbbbb" if m == FLOOR else ("#4c72b0" if not m.startswith("deltamem") else "#dd8452")
                  for m, _ in done]
        # a record holding fewer questions than the suite asks is not comparable with the others: the table's
        # [k/n] goes on its label and its bar is hatched
        bars = ax.barh(list(ys), [100 * c.value for _, c in done], xerr=err, color=colors, capsize=2)
        for bar, (_, c) in zip(bars, done):
            if c.short:
                bar.set_hatch("///")
                bar.set_alpha(0.6)
        ax.set_yticks(list(ys), [m + (" (q. only)" if m == FLOOR else "") + c.coverage for m, c in done],
                      fontsize=8)
        ax.set_xlabel("score ×100 (95 % interval)", fontsize=8)
        ax.set_title(f"{header}" + (f" — {backbone}" if multi else ""), fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Main rows per task (δ-mem orange, question-only floor grey)\n"
                 "hatched, [k/n]: a record of only k of the n questions", fontsize=9)
    fig.savefig(out / "main.png", dpi=120)
    plt.close(fig)

    # A task where every method reads the same prompt (IFEval, GPQA-D: no context) has nothing to show on the
    # cost axis; its panel is left out and the title says so.
    spread = [p for p in panels if _varies([c.prompt_tokens for _, c in p[2] if c.prompt_tokens])]
    flat = [p[1] for p in panels if p not in spread] if spread else []
    panels = spread or panels
    methods = sorted({m for _, _, done in panels for m, _ in done})
    fig, axes = _grid(len(panels), min_width=8.0)
    # tab10 hues, each with its own marker: tab20 pairs a light and a dark shade of one hue, hard to tell apart
    cmap = plt.get_cmap("tab10")
    style = {m: (cmap(i % 10), "os^Dvp*hX<>"[i % 11]) for i, m in enumerate(methods)}
    for ax, (backbone, header, done) in zip(axes, panels):
        for m, c in done:
            if c.prompt_tokens:
                ax.scatter([c.prompt_tokens], [100 * c.value], color=style[m][0], marker=style[m][1], s=36, label=m)
        ax.set_xscale("log")
        ax.set_xlabel("prompt tokens per question (log)", fontsize=8)
        ax.set_ylabel("score ×100", fontsize=8)
        ax.set_title(f"{header}" + (f" — {backbone}" if multi else ""), fontsize=10)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=style[m][0], marker=style[m][1], linestyle="", label=m) for m in methods]
    # about 1.9 inches per legend entry at this font size: as many columns as the canvas holds
    per_row = max(1, min(len(methods), int(fig.get_figwidth() // 1.9)))
    fig.legend(handles=handles, loc="outside lower center", ncol=per_row, fontsize=8, frameon=False)
    title = "Quality against prompt cost per task (main rows)"
    if flat:
        title += f"; not drawn: {', '.join(dict.fromkeys(flat))} (every method reads the same prompt)"
    fig.suptitle(title, fontsize=10)
    fig.savefig(out / "cost_quality.png", dpi=120)
    plt.close(fig)
    return [out / "main.png", out / "cost_quality.png"]
