"""lm-eval vs this harness on IFEval, and ``deltamem adapter=null`` vs lm-eval's ``hf``: the cross-checks of
issue 28, written to ``reports/lm_eval_crosscheck.md``.

    python -m benchmarks.lm_eval_crosscheck [--limit 8] [--max-new-tokens 1500] [--threads 1]

(b) For ``vanilla`` (lm-eval: its own ``hf`` model) and the shipped MSW adapter (lm-eval: ``deltamem``,
context protocol) it runs the harness's ``task=ifeval`` on a ``task.limit`` subset, then lm-eval's own IFEval
task fed from the same local file (``harness/lm_eval_tasks/ifeval_local.yaml``) on exactly those prompts, both
greedy with the same token budget, batch 1, one prefill per prompt (``method.reuse_prefix=false``, so the
harness prefills as lm-eval does). Per prompt: are the responses the same, the strict/loose flags of each
side, and each side's flags recomputed on the *other* side's response (the scorers agree when these match
whatever the responses), generated tokens and the generation time; plus the end-to-end wall time of each
command. (a) ``deltamem adapter=null`` against ``hf``: log-likelihoods of the vanilla responses and greedy
generations, which must be identical.

Each side runs in its own process, one after the other, so they share the machine's conditions.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import random
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TASK = "ifeval_local"
LM_EVAL_MODELS = {"vanilla": ("hf", {}), "deltamem_msw": ("deltamem", {"adapter": "shipped", "variant": "msw"})}


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


# --------------------------------------------------------------------------- harness side
def run_harness(method: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    results = work / "harness"
    cmd = [sys.executable, "-m", "harness", f"method={method}", "task=ifeval", f"task.limit={args.limit}",
           f"task.generation.max_new_tokens={args.max_new_tokens}", "method.batch_size=1", "method.reuse_prefix=false",
           f"run.results_dir={results}", f"run.threads={args.threads}", "run.progress=false", "run.force=true"]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(args.threads), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load = (load, os.getloadavg()[0])
    if proc.returncode != 0:
        raise RuntimeError(f"harness run failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    record = next(p.parent for p in (results / "ifeval" / method).glob("**/header.json"))
    header = json.loads((record / "header.json").read_text())
    rows = [json.loads(line) for line in (record / "samples.jsonl").read_text().splitlines() if line.strip()]
    samples = {}
    for r in rows:
        samples[str(r["sample_id"]).split("/", 1)[1]] = {
            "response": r["prediction"], "new_tokens": r["new_tokens"], "seconds": r["latency_s"],
            "prompt": r["question"], "gold": r["gold"]}
    return {"command": "python -m " + " ".join(cmd[2:]), "wall_s": wall, "load": load, "samples": samples,
            "data": header.get("data"),
            "timings": header.get("timings"), "record": str(record)}


# --------------------------------------------------------------------------- lm-eval side (child process)
def lm_eval_child(method: str, keys: list[str], args: argparse.Namespace, out: Path) -> None:
    """Runs in its own process: lm-eval's evaluate loop on the prompts ``keys`` (route 1, a model instance)."""
    import torch

    torch.set_num_threads(args.threads)
    import lm_eval
    from lm_eval.tasks import TaskManager

    from harness.deltamem_loading import resolve_pretrained
    from harness.lm_eval_model import DeltaMemLM

    t0 = time.perf_counter()
    name, extra = LM_EVAL_MODELS[method]
    if name == "hf":
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=resolve_pretrained("smollm2_135m")[0], device="cpu", batch_size=1)
    else:
        lm = DeltaMemLM(pretrained="smollm2_135m", device="cpu", batch_size=1, **extra)
    load_s = time.perf_counter() - t0
    timed: dict[tuple[int, ...], tuple[float, int]] = {}
    generate = lm._model_generate

    def timed_generate(context, max_length, stop, **kw):  # batch 1: one call per prompt
        t = time.perf_counter()
        out_ids = generate(context, max_length, stop, **kw)
        new = out_ids[0, context.shape[1]:].tolist()
        if new and new[-1] == lm.eot_token_id:
            new = new[:-1]
        timed[tuple(context[0].tolist())] = (time.perf_counter() - t, len(new))
        return out_ids

    lm._model_generate = timed_generate
    rows = [json.loads(line) for line in ifeval_file().read_text().splitlines() if line.strip()]
    index = {str(r["key"]): i for i, r in enumerate(rows)}
    t1 = time.perf_counter()
    res = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=TaskManager(include_path=str(
        ROOT / "harness" / "lm_eval_tasks")), samples={TASK: sorted(index[k] for k in keys)},
        apply_chat_template=True, gen_kwargs={"max_gen_toks": args.max_new_tokens}, log_samples=True)
    eval_s = time.perf_counter() - t1
    samples = {}
    for s in res["samples"][TASK]:
        context = s["arguments"][0][0]  # (chat-templated prompt, generation kwargs) of the one request
        seconds, new_tokens = timed[tuple(lm.tok_batch_encode([context])[0][0].tolist())]
        samples[str(s["doc"]["key"])] = {
            "response": s["resps"][0][0], "seconds": seconds, "new_tokens": new_tokens,
            "strict": list(s["inst_level_strict_acc"]), "loose": list(s["inst_level_loose_acc"]),
            "prompt_text": context}
    data = ifeval_file()
    out.write_text(json.dumps({"load_s": load_s, "eval_s": eval_s, "samples": samples,
                               "data": {"path": str(data), "sha256": hashlib.sha256(data.read_bytes()).hexdigest()},
                               "results": res["results"][TASK], "model_info": res["config"].get("deltamem")},
                              default=str))


def ifeval_file() -> Path:
    """The file lm-eval's side reads (from the task YAML itself, so the doc indices cannot point elsewhere)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(ROOT / "harness" / "lm_eval_tasks" / f"{TASK}.yaml", resolve_func=False)
    return ROOT / cfg["dataset_kwargs"]["data_files"]["train"]


def run_lm_eval(method: str, keys: list[str], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / f"lm_eval_{method}.json"
    cmd = [sys.executable, "-m", "benchmarks.lm_eval_crosscheck", "--child", method, "--keys", ",".join(keys),
           "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads), "--out", str(out)]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(args.threads), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"lm-eval run failed:\n{proc.stderr[-3000:]}")
    data = json.loads(out.read_text())
    data["wall_s"] = wall
    data["load"] = (load, os.getloadavg()[0])
    return data


# --------------------------------------------------------------------------- comparison
def compare(method: str, harness: dict[str, Any], lme: dict[str, Any]) -> dict[str, Any]:
    from tasks.ifeval.task import follow_flags

    rows = []
    for key, h in sorted(harness["samples"].items(), key=lambda kv: int(kv[0])):
        e = lme["samples"][key]
        ids, kwargs = h["gold"]["instruction_id_list"], h["gold"]["kwargs"]
        h_strict, h_loose = follow_flags(h["prompt"], ids, kwargs, h["response"])
        # the other side's scorer on this side's response: harness's checkers on lm-eval's words and back
        x_strict, x_loose = follow_flags(h["prompt"], ids, kwargs, e["response"])
        lm_eval_flags = (list(e["strict"]), list(e["loose"]))
        note = None
        if [x_strict, x_loose] != [lm_eval_flags[0], lm_eval_flags[1]]:
            seen, varying = lm_eval_outcomes(h["prompt"], ids, kwargs, e["response"])
            note = {"draws": sum(seen.values()), "varying": varying,
                    "outcomes": [[list(map(list, o)), c] for o, c in seen.most_common()],
                    "harness_among_them": (tuple(x_strict), tuple(x_loose)) in seen}
        rows.append({"note": note, "key": key, "same_response": h["response"] == e["response"],
                     "same_after_strip": h["response"] == e["response"].strip(),
                     "common_prefix_chars": _common_prefix(h["response"], e["response"].strip()),
                     "harness": (h_strict, h_loose), "lm_eval": (e["strict"], e["loose"]),
                     "harness_on_lm_eval_response": (x_strict, x_loose),
                     "tokens": (h["new_tokens"], e["new_tokens"]), "seconds": (h["seconds"], e["seconds"])})
    n = len(rows)
    same = [r for r in rows if r["same_after_strip"]]
    return {
        "method": method, "rows": rows, "n": n, "same_responses": len(same), "keys": [r["key"] for r in rows],
        "flags_agree_when_same": sum(r["harness"] == r["lm_eval"] for r in same),
        "flags_agree_when_same_up_to_lm_eval_draws": sum(r["harness"] == r["lm_eval"] or bool(
            r["note"] and r["note"]["harness_among_them"]) for r in same),
        "scorers_agree": sum(r["harness_on_lm_eval_response"] == r["lm_eval"] for r in rows),
        "scorers_agree_up_to_lm_eval_draws": sum(r["harness_on_lm_eval_response"] == r["lm_eval"]
                                                 or bool(r["note"] and r["note"]["harness_among_them"]) for r in rows),
        "strict": (sum(all(r["harness"][0]) for r in rows) / n, sum(all(r["lm_eval"][0]) for r in rows) / n),
        "loose": (sum(all(r["harness"][1]) for r in rows) / n, sum(all(r["lm_eval"][1]) for r in rows) / n),
        "gen_s_per_prompt": (sum(r["seconds"][0] for r in rows) / n, sum(r["seconds"][1] for r in rows) / n),
        "s_per_token": (sum(r["seconds"][0] for r in rows) / max(1, sum(r["tokens"][0] for r in rows)),
                        sum(r["seconds"][1] for r in rows) / max(1, sum(r["tokens"][1] for r in rows))),
        "wall_s_per_prompt": (harness["wall_s"] / n, lme["wall_s"] / n),
        "load": (harness.get("load"), lme.get("load")), "data": (harness.get("data"), lme.get("data")),
        "harness_command": harness["command"], "lm_eval_info": lme.get("model_info"),
        "lm_eval_aggregate": lme["results"],
    }


def lm_eval_outcomes(prompt: str, ids: list[str], kwargs: list[dict], response: str, draws: int = 200
                     ) -> tuple[Counter, list[str]]:
    """lm-eval's own checkers, unseeded as lm-eval runs them, re-applied ``draws`` times to one response: the
    (strict, loose) outcomes and how often, and the instructions whose flag varies. A few checkers draw a random
    argument when the data's is unusable (``keywords:letter_frequency`` with a letter that is no letter), so
    lm-eval's flag for them is a coin toss; the harness seeds ``random`` per prompt instead."""
    from tasks.ifeval.task import checkers

    utils, _ = checkers()
    inp = utils.InputExample(key=0, instruction_id_list=list(ids), prompt=prompt, kwargs=[dict(k) for k in kwargs])
    state = random.getstate()
    random.seed(0)  # the probe itself is reproducible
    try:
        seen = Counter((tuple(utils.test_instruction_following_strict(inp, response).follow_instruction_list),
                        tuple(utils.test_instruction_following_loose(inp, response).follow_instruction_list))
                       for _ in range(draws))
    finally:
        random.setstate(state)
    varying = [f"{iid} {json.dumps({k: v for k, v in kw.items() if v})}" for j, (iid, kw) in enumerate(zip(ids, kwargs))
               if len({o[0][j] for o in seen}) > 1 or len({o[1][j] for o in seen}) > 1]
    return seen, varying


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def check_null_adapter(vanilla_lm_eval: dict[str, Any], threads: int, gen_prompts: int = 2,
                       gen_tokens: int = 64) -> dict[str, Any]:
    """(a): ``deltamem adapter=null`` vs ``hf`` on the embedded backbone, on the same requests."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from harness.deltamem_loading import resolve_pretrained
    from harness.lm_eval_model import DeltaMemLM

    torch.set_num_threads(threads)
    hf = HFLM(pretrained=resolve_pretrained("smollm2_135m")[0], device="cpu", batch_size=2)
    dm = DeltaMemLM(pretrained="smollm2_135m", adapter=None, device="cpu", batch_size=2)
    samples = [vanilla_lm_eval["samples"][k] for k in sorted(vanilla_lm_eval["samples"], key=int)]
    pairs = [(s["prompt_text"], s["response"]) for s in samples if s["response"]]
    reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    a, b = hf.loglikelihood(reqs, disable_tqdm=True), dm.loglikelihood(reqs, disable_tqdm=True)
    gen_args = {"until": [], "max_gen_toks": gen_tokens, "do_sample": False}
    greqs = [Instance("generate_until", {}, (s["prompt_text"], dict(gen_args)), i) for i, s in enumerate(samples[:gen_prompts])]
    ga, gb = hf.generate_until(greqs, disable_tqdm=True), dm.generate_until(greqs, disable_tqdm=True)
    return {"loglik_requests": len(pairs), "loglik_identical": a == b,
            "max_abs_diff": max(abs(x[0] - y[0]) for x, y in zip(a, b)),
            "greedy_flags_identical": [x[1] for x in a] == [y[1] for y in b],
            "continuation_tokens": sum(len(hf.tok_encode(c)) for _, c in pairs),
            "gen_requests": len(greqs), "gen_tokens": gen_tokens, "gen_identical": ga == gb}


# --------------------------------------------------------------------------- report
def _up_to_draws(c: dict[str, Any], key: str) -> str:
    extra = c[f"{key}_up_to_lm_eval_draws"] - c[key]
    return f" (+{extra} where lm-eval's checker draws a random argument, see below)" if extra else ""


def _flags(f: list[bool]) -> str:
    return "".join("✓" if x else "✗" for x in f)


def write_report(path: Path, comparisons: list[dict[str, Any]], null_check: dict[str, Any],
                 run_args: dict[str, int], commit: str) -> None:
    args = argparse.Namespace(**run_args)
    lines = [f"# lm-eval cross-check ({date.today().isoformat()}, commit {commit})", "",
             "`python -m benchmarks.lm_eval_crosscheck "
             f"--limit {args.limit} --max-new-tokens {args.max_new_tokens} --threads {args.threads}`: embedded "
             "SmolLM2-135M-Instruct, fp32, CPU, "
             f"{args.threads} torch thread(s), greedy, batch 1, {args.max_new_tokens} new tokens at most. The harness "
             f"runs `task=ifeval` on its `task.limit={args.limit}` subset (keys {', '.join(comparisons[0]['keys'])}) with `method.batch_size=1 method.reuse_prefix=false`; "
             "lm-eval runs its own IFEval task read from the same `input_data.jsonl` "
             "(`harness/lm_eval_tasks/ifeval_local.yaml`, `--apply_chat_template`) on exactly those prompts, through "
             "`simple_evaluate(model=<instance>)` in a separate process. Vanilla on lm-eval is its own `hf` model; "
             "MSW is `deltamem` with `adapter=shipped` (context protocol).", "",
             "## (a) `deltamem adapter=null` vs `hf`", "",
             f"- log-likelihood of the {null_check['loglik_requests']} vanilla responses below as continuations of their "
             f"chat prompts ({null_check['continuation_tokens']} continuation tokens), batch 2: identical "
             f"**{null_check['loglik_identical']}** (max |Δ| {null_check['max_abs_diff']:.3g}); is-greedy flags identical "
             f"{null_check['greedy_flags_identical']}",
             f"- greedy generation, {null_check['gen_requests']} prompts × {null_check['gen_tokens']} tokens, batch 2: "
             f"identical **{null_check['gen_identical']}**", "",
             "## (b) IFEval: lm-eval's task vs the harness's `task=ifeval`", ""]
    lines += ["| method | prompts | same response | flags agree where the response is the same | harness scorer on "
              "lm-eval's response = lm-eval's flags | prompt strict, harness / lm-eval | prompt loose, harness / lm-eval "
              "| generation s/prompt, harness / lm-eval | s/token, harness / lm-eval | end-to-end wall s/prompt "
              "(process start, model load, run), harness / lm-eval |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        lines.append(
            f"| {c['method']} | {c['n']} | {c['same_responses']}/{c['n']} | {c['flags_agree_when_same']}/"
            f"{c['same_responses']}{_up_to_draws(c, 'flags_agree_when_same')} | {c['scorers_agree']}/{c['n']}{_up_to_draws(c, 'scorers_agree')} | {c['strict'][0]:.3f} / {c['strict'][1]:.3f} | "
            f"{c['loose'][0]:.3f} / {c['loose'][1]:.3f} | {c['gen_s_per_prompt'][0]:.1f} / {c['gen_s_per_prompt'][1]:.1f} | "
            f"{c['s_per_token'][0]:.3f} / {c['s_per_token'][1]:.3f} | {c['wall_s_per_prompt'][0]:.1f} / "
            f"{c['wall_s_per_prompt'][1]:.1f} |")
    data = comparisons[0].get("data") if comparisons else None
    if data and all(data):
        same = "the same bytes" if data[0].get("sha256") == data[1].get("sha256") else "DIFFERENT bytes"
        lines += ["", f"Data: the harness read `{data[0].get('path')}`, lm-eval `{data[1].get('path')}`: {same} "
                  f"(SHA-256 {str(data[1].get('sha256'))[:16]}…)."]
    loads = [x for c in comparisons for side in (c.get("load") or ()) if side for x in side]
    if loads:
        lines += ["", f"The machine (2 cores) was shared with other jobs: the 1-minute load average ranged "
                  f"{min(loads):.1f}–{max(loads):.1f} around these runs, so the times carry that noise; the runs of a "
                  "method follow each other, harness first."]
    for c in comparisons:
        lines += ["", f"### {c['method']}", "", f"Harness: `{c['harness_command']}`", "",
                  "| key | response | harness strict / loose | lm-eval strict / loose | harness on lm-eval's response "
                  "| new tokens, harness / lm-eval | generation s, harness / lm-eval |", "|---|---|---|---|---|---|---|"]
        for r in c["rows"]:
            resp = ("same" if r["same_response"] else "same after strip" if r["same_after_strip"]
                    else f"differs after {r['common_prefix_chars']} chars")
            lines.append(f"| {r['key']} | {resp} | {_flags(r['harness'][0])} / {_flags(r['harness'][1])} | "
                         f"{_flags(r['lm_eval'][0])} / {_flags(r['lm_eval'][1])} | "
                         f"{_flags(r['harness_on_lm_eval_response'][0])} / {_flags(r['harness_on_lm_eval_response'][1])} | "
                         f"{r['tokens'][0]} / {r['tokens'][1]} | {r['seconds'][0]:.1f} / {r['seconds'][1]:.1f} |")
        for r in c["rows"]:
            if r["note"]:
                n = r["note"]
                outcomes = ", ".join(f"{_flags(o[0])} / {_flags(o[1])} {k}×" for o, k in n["outcomes"])
                lines += ["", f"Key {r['key']}: the scorers part on the same response because lm-eval's own is not "
                          f"deterministic here ({'; '.join(n['varying']) or 'no single instruction varies'}): re-scoring "
                          f"lm-eval's response {n['draws']} times with its unseeded checkers gives {outcomes}. The "
                          "harness seeds Python's `random` per prompt (`tasks/ifeval/task.py`), so it always gets one "
                          f"of them{'' if n['harness_among_them'] else ' — NOT here: a real disagreement'}."]
    lines += ["", "Flags are per instruction (✓ followed). Generation time is the model's generate call per prompt "
              "(harness: the sample's `latency_s`; lm-eval: its `_model_generate` call, timed around it); the "
              "end-to-end figure divides each command's whole wall time by the number of prompts.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default="vanilla,deltamem_msw")
    ap.add_argument("--work", default="/tmp/lm_eval_crosscheck", help="records and raw outputs go here")
    ap.add_argument("--report", default=str(ROOT / "reports" / "lm_eval_crosscheck.md"))
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="only rewrite the report from a finished run's crosscheck.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--keys", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        lm_eval_child(args.child, args.keys.split(","), args, Path(args.out))
        return
    if args.render:
        saved = json.loads(Path(args.render).read_text())
    else:
        saved = run_all(args)
    comparisons = [compare(m, r["harness"], r["lm_eval"]) for m, r in saved["raw"].items()]
    write_report(Path(args.report), comparisons, saved["null_check"], saved["args"], saved["commit"])
    print(Path(args.report).read_text())


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Both sides for every method, then (a); everything the report needs goes to ``<work>/crosscheck.json``."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    raw = {}
    for method in args.methods.split(","):
        print(f"[crosscheck] {method}: harness", flush=True)
        h = run_harness(method, args, work)
        print(f"[crosscheck] {method}: lm-eval on keys {sorted(h['samples'], key=int)}", flush=True)
        raw[method] = {"harness": h, "lm_eval": run_lm_eval(method, sorted(h["samples"], key=int), args, work)}
    print("[crosscheck] (a) adapter=null vs hf", flush=True)
    null_check = check_null_adapter(raw["vanilla" if "vanilla" in raw else next(iter(raw))]["lm_eval"], args.threads)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    saved = {"raw": raw, "null_check": null_check, "commit": commit,
             "args": {k: getattr(args, k) for k in ("limit", "max_new_tokens", "threads")}}
    (work / "crosscheck.json").write_text(json.dumps(saved, indent=1, default=str))
    return saved


if __name__ == "__main__":
    main()
