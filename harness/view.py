"""``python -m harness.view``: one self-contained HTML file to read the answers of several runs side by side.

    python -m harness.view --task locomo                                  # every LoCoMo record
    python -m harness.view results/locomo/vanilla/smollm2_135m/seed-42-162827eaa1 \\
        results/locomo/bm25_rag/smollm2_135m/seed-42-55f20cee53 --out /tmp/locomo.html

The page holds its data, style and script inline (a Content-Security-Policy forbids anything else), so it
opens offline in any browser and can be mailed around. It shows the run list (main metric with its 95%
episode-bootstrap interval, protocol, cost per question), the questions with each shown run's prediction,
score and what the method put into the prompt, filters, search and sorting, and the paired difference of
two chosen runs. That difference is computed by the page with ``harness.compare``'s definition (the same
Mersenne Twister draws as Python's ``random.Random(0)``), so any two runs can be paired without
precomputing every pair; the browser test checks it equals :func:`harness.compare.paired_comparison`.

Only the records are read: GPQA records hold no question or option text, and neither does the page.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness.frame import CORRECT_AT, Run, find_records, gold_text, load_runs, prompt_fields
from harness.metrics import bootstrap_ci, clustered_stderr, mean
from harness.records import strict_json
from harness.types import SampleRecord

ASSETS = Path(__file__).with_name("view_assets")
BASELINE = "vanilla"
DEFAULT_SHOWN = 4  # runs side by side when the records were not named one by one; more only squeeze the columns


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(float(x), digits)


def prompt_note(info: dict[str, Any], context_tokens: int) -> str:
    """What the method put into the prompt (or into its memory instead), in a few words."""
    f = prompt_fields(info)
    parts = []
    if f["retrieved"] is not None:
        parts.append(f"{f['retrieved']} pieces: {f['in_prompt_ids']}")
    if f["compression_ratio"] is not None:
        parts.append(f"compressed {f['compression_ratio']:.2f}×")
    if f["tokens_written"] is not None:
        parts.append(f"memory: {int(f['tokens_written']):,} tokens written")
    if context_tokens:
        parts.append(f"{context_tokens:,} context tokens" + (" (truncated)" if f["context_truncated"] else ""))
    elif f["retrieved"] is None and f["tokens_written"] is None:
        parts.append("no context")
    if f["stopped"] is False:
        parts.append("ran to the token limit")
    return " · ".join(parts)


def _extracted_note(s: SampleRecord) -> str | None:
    """The extracted answer when it says more than the prediction: every rule's letter for GPQA, the first line
    for HotpotQA; LoCoMo's lower-cased copy of the prediction is left out."""
    if s.extracted_by:
        return ", ".join(f"{rule} {letter or '–'}" for rule, letter in s.extracted_by.items())
    if s.extracted is None:
        return None
    squash = lambda t: "".join(ch for ch in str(t).lower() if ch.isalnum())  # noqa: E731
    return None if squash(s.extracted) == squash(s.prediction) else str(s.extracted)


def _cost(run: Run) -> dict[str, Any]:
    samples = list(run.samples.values())

    def avg(values: list[float]) -> float | None:
        return _round(mean(values), 2) if values else None

    fields = [prompt_fields(s.method_info or {}) for s in samples]
    timings = run.header.get("timings") or {}
    timed = sum(int(s.get("samples", 0)) for s in timings.get("sessions", []))
    wall = timings.get("wall_s_total")
    return {"prompt_tokens": avg([s.prompt_tokens for s in samples]),
            "context_tokens": avg([s.context_tokens for s in samples]),
            "new_tokens": avg([s.new_tokens for s in samples]),
            "retrieved": avg([f["retrieved"] for f in fields if f["retrieved"] is not None]),
            "compression": avg([f["compression_ratio"] for f in fields if f["compression_ratio"] is not None]),
            "tokens_written": avg([f["tokens_written"] for f in fields if f["tokens_written"] is not None]),
            "wall_s_per_question": _round(wall / timed, 2) if wall and timed else None}


def _summary(values: list[float], episodes: list[str], iters: int) -> dict[str, Any]:
    if not values:
        return {"n": 0, "mean": None, "stderr": None, "ci": None}
    return {"n": len(values), "mean": mean(values), "stderr": clustered_stderr(values, episodes),
            "ci": list(bootstrap_ci(values, episodes, iters=iters))}


def order_runs(runs: list[Run]) -> list[Run]:
    """The reports' order: the frozen backbone first, then by method label and protocol."""
    return sorted(runs, key=lambda r: (r.identity["method"] != BASELINE, str(r.identity["method"]),
                                       r.identity["protocol"], r.identity["subset"], r.identity["config_hash"] or ""))


def viewer_data(runs: list[Run], *, iters: int = 2000, shown: list[int] | None = None) -> dict[str, Any]:
    """Everything the page needs, column-wise (one list per field, aligned to the sorted question ids) so that
    four LoCoMo runs stay near a megabyte and the page indexes without building objects per row."""
    tasks = sorted({str(r.identity["task"]) for r in runs})
    if len(tasks) != 1:
        raise ValueError(f"a viewer shows one task; these records are of {tasks} (give --task)")
    primary = Counter(r.header.get("primary_metric") for r in runs).most_common(1)[0][0]
    metrics = sorted({m for r in runs for s in r.samples.values() for m in s.scores})
    # compare.py pairs samples in sorted-id order, and the page's float sums must run in the same order
    ids = sorted({sid for r in runs for sid in r.samples})
    first = {sid: r.samples[sid] for r in reversed(runs) for sid in r.samples}  # the first run holding each id wins
    questions = {"id": ids, "episode": [first[i].episode_id for i in ids],
                 "category": [None if first[i].category is None else str(first[i].category) for i in ids],
                 "question": [first[i].question for i in ids], "gold": [gold_text(first[i].gold) for i in ids]}
    out_runs = []
    for r in runs:
        held = [r.samples.get(i) for i in ids]
        summaries = {}
        for m in metrics:
            pairs = [(float(s.scores[m]), s.episode_id) for s in held if s is not None and s.scores.get(m) is not None]
            summaries[m] = _summary([p[0] for p in pairs], [p[1] for p in pairs], iters)
        extracted = [None if s is None else _extracted_note(s) for s in held]
        out_runs.append({
            **{k: r.identity[k] for k in ("run", "method", "method_name", "protocol", "control", "backbone", "seed",
                                          "config_hash", "status", "subset", "record")},
            "n": len(r.samples), "expected": r.header.get("n_samples_expected"),
            "summary": summaries, "cost": _cost(r),
            "pred": [None if s is None else s.prediction for s in held],
            "extracted": extracted if any(e is not None for e in extracted) else None,
            "scores": {m: [None if s is None or s.scores.get(m) is None else float(s.scores[m]) for s in held]
                       for m in metrics},
            "ptok": [None if s is None else s.prompt_tokens for s in held],
            "info": [None if s is None else prompt_note(s.method_info or {}, s.context_tokens) for s in held],
        })
    return {
        "task": tasks[0], "primary_metric": primary, "metrics": metrics, "correct_at": CORRECT_AT,
        "iters": iters, "generated": time.strftime("%Y-%m-%d %H:%M"),
        # Python >= 3.12 sums floats with Neumaier's compensation; the page sums the way this Python does
        "compensated_sum": sys.version_info >= (3, 12),
        "text_withheld": all(q is None for q in questions["question"]),
        "shown": shown if shown is not None else list(range(min(DEFAULT_SHOWN, len(runs)))),
        "questions": questions, "runs": out_runs,
    }


def render_html(data: dict[str, Any]) -> str:
    # "<" escaped inside the JSON, so no string in a record can close the script element
    blob = json.dumps(strict_json(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    blob = blob.replace("<", "\\u003c")
    css = (ASSETS / "viewer.css").read_text()
    js = (ASSETS / "viewer.js").read_text()
    title = f"{data['task']}: {len(data['runs'])} runs, {len(data['questions']['id'])} questions"
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            # nothing may be fetched: the file must work offline and leak nothing when opened
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{title}</title>\n"
            f"<style>\n{css}</style></head>\n<body>\n<div id=\"app\"><p>Loading {title}…</p></div>\n"
            f"<script type=\"application/json\" id=\"data\">{blob}</script>\n<script>\n{js}</script>\n"
            "</body></html>\n")


def choose_records(records: list[str], results: str, task: str | None) -> list[Run]:
    runs = load_runs(records or find_records(results, task))
    if task:
        runs = [r for r in runs if r.identity["task"] == task]
    tasks = Counter(str(r.identity["task"]) for r in runs)
    if len(tasks) > 1:
        raise ValueError("the records are of several tasks (" + ", ".join(f"{t}: {n}" for t, n in sorted(tasks.items()))
                         + "); a viewer shows one: give --task")
    return runs if records else order_runs(runs)


def build_viewer(records: list[str], out: Path | None = None, *, results: str = "results", task: str | None = None,
                 iters: int = 2000) -> tuple[Path, dict[str, Any]]:
    """Write the viewer to ``out`` (default ``reports/viewer/<task>.html``); returns its path and its data."""
    runs = choose_records(records, results, task)
    if not runs:
        raise ValueError(f"no readable records in {records or Path(results) / (task or '')}")
    # records named one by one are all meant to be seen; a whole results folder starts with the first few
    data = viewer_data(runs, iters=iters, shown=list(range(len(runs))) if records else None)
    out = out or Path("reports") / "viewer" / f"{data['task']}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(data), encoding="utf-8")
    return out, data


def measure(html: Path, png: Path | None) -> dict[str, Any]:
    """Time to interactive and the cost of filtering, read back from the page in headless Chromium."""
    from harness.browser import dump_dom, find_chromium, screenshot

    binary = find_chromium()
    if binary is None:
        raise RuntimeError("no Chromium found (install the chromium package or set HARNESS_CHROMIUM)")
    started = time.perf_counter()
    dom = dump_dom(binary, html, "bench=1")
    wall = time.perf_counter() - started
    ready = re.search(r'data-ready-ms="([\d.]+)"', dom)
    bench = re.search(r'<pre id="bench"[^>]*>(.*?)</pre>', dom, re.S)
    result = {"ready_ms": float(ready.group(1)) if ready else None, "browser_wall_s": round(wall, 2),
              "bench": json.loads(bench.group(1).replace("&quot;", '"')) if bench else None}
    if png is not None:
        screenshot(binary, html, png)
        result["screenshot"] = str(png)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write one self-contained HTML viewer of run records.")
    ap.add_argument("records", nargs="*", help="record folders (default: every record of --task under --results)")
    ap.add_argument("--results", default="results")
    ap.add_argument("--task", default=None)
    ap.add_argument("--out", default=None, help="HTML file (default: reports/viewer/<task>.html)")
    ap.add_argument("--iters", type=int, default=2000, help="bootstrap resamples of the intervals")
    ap.add_argument("--measure", action="store_true",
                    help="open the page in headless Chromium and print its time to interactive and filter timings")
    ap.add_argument("--screenshot", default=None, help="also write a screenshot (PNG; needs Chromium)")
    args = ap.parse_args(argv)
    try:
        path, data = build_viewer(args.records, Path(args.out) if args.out else None, results=args.results,
                                  task=args.task, iters=args.iters)
    except ValueError as exc:
        print(f"[view] error: {exc}", file=sys.stderr)
        return 2
    size = path.stat().st_size
    print(f"[view] {len(data['runs'])} runs, {len(data['questions']['id'])} questions -> {path} "
          f"({size / 1e6:.2f} MB); open it in any browser")
    if args.measure or args.screenshot:
        try:
            m = measure(path, Path(args.screenshot) if args.screenshot else None)
        except (RuntimeError, OSError) as exc:
            print(f"[view] could not measure: {exc}", file=sys.stderr)
            return 1
        print(f"[view] time to interactive {m['ready_ms']:.0f} ms in headless Chromium "
              f"(browser start to DOM dump {m['browser_wall_s']:.1f} s)")
        if m["bench"]:
            print("[view] render after a change, ms: " + ", ".join(f"{k} {v}" for k, v in m["bench"].items()))
        if m.get("screenshot"):
            print(f"[view] screenshot -> {m['screenshot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
