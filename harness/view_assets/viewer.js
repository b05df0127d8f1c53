"use strict";
// The harness's record viewer. Data: the JSON block written by harness/view.py, one list per field aligned to
// the sorted question ids. Every string from a record reaches the page through textContent, never as markup.
(() => {
  const D = JSON.parse(document.getElementById("data").textContent);
  const Q = D.questions, R = D.runs, N = Q.id.length;
  const PAGE_SIZES = [25, 50, 100, 200];

  // ------------------------------------------------------------------ statistics, as harness/metrics.py has them
  // The paired interval must equal harness.compare's to the last bit, so these copy Python's arithmetic: the
  // summation order (and, from Python 3.12, sum()'s Neumaier compensation) and random.Random(0)'s draws.

  function sumState() { return { s: 0, c: 0 }; }
  function sumAdd(st, x) {
    if (!D.compensated_sum) { st.s += x; return; }
    const t = st.s + x;
    st.c += Math.abs(st.s) >= Math.abs(x) ? (st.s - t) + x : (x - t) + st.s;
    st.s = t;
  }
  function sumEnd(st) { return D.compensated_sum && st.c && isFinite(st.c) ? st.s + st.c : st.s; }
  function pySum(xs) { const st = sumState(); for (const x of xs) sumAdd(st, x); return sumEnd(st); }
  function pyMean(xs) { return xs.length ? pySum(xs) / xs.length : NaN; }

  // MT19937 seeded as CPython seeds it from an int (init_by_array with the int's 32-bit words).
  function pyRandom(seed) {
    const mt = new Uint32Array(624);
    mt[0] = 19650218;
    for (let i = 1; i < 624; i++) mt[i] = (Math.imul(1812433253, mt[i - 1] ^ (mt[i - 1] >>> 30)) + i) >>> 0;
    const key = [seed >>> 0];
    let i = 1, j = 0;
    for (let k = Math.max(624, key.length); k; k--) {
      mt[i] = ((mt[i] ^ Math.imul(mt[i - 1] ^ (mt[i - 1] >>> 30), 1664525)) + key[j] + j) >>> 0;
      i++; j++;
      if (i >= 624) { mt[0] = mt[623]; i = 1; }
      if (j >= key.length) j = 0;
    }
    for (let k = 623; k; k--) {
      mt[i] = ((mt[i] ^ Math.imul(mt[i - 1] ^ (mt[i - 1] >>> 30), 1566083941)) - i) >>> 0;
      i++;
      if (i >= 624) { mt[0] = mt[623]; i = 1; }
    }
    mt[0] = 0x80000000;
    let idx = 624;
    const twist = () => {
      for (let kk = 0; kk < 624; kk++) {
        const y = (mt[kk] & 0x80000000) | (mt[(kk + 1) % 624] & 0x7fffffff);
        mt[kk] = mt[(kk + 397) % 624] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      idx = 0;
    };
    const next32 = () => {
      if (idx >= 624) twist();
      let y = mt[idx++];
      y ^= y >>> 11; y ^= (y << 7) & 0x9d2c5680; y ^= (y << 15) & 0xefc60000; y ^= y >>> 18;
      return y >>> 0;
    };
    // random.randrange(n) for 0 < n < 2**31: getrandbits(n.bit_length()) until below n
    return { randbelow(n) { const k = 32 - Math.clz32(n); let r; do { r = next32() >>> (32 - k); } while (r >= n); return r; } };
  }

  const byCodeUnit = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

  function clusteredStderr(values, clusters) {
    const n = values.length;
    if (n < 2) return NaN;
    const m = pyMean(values);
    const sums = new Map();
    values.forEach((x, i) => sums.set(clusters[i], (sums.get(clusters[i]) ?? 0) + (x - m)));
    const g = sums.size;
    if (g < 2) return Math.sqrt(pySum(values.map((x) => (x - m) * (x - m))) / (n - 1) / n);
    return Math.sqrt(g / (g - 1) * pySum([...sums.values()].map((s) => s * s))) / n;
  }

  function bootstrapCI(values, clusters, iters, seed = 0, alpha = 0.05) {
    let groups = new Map();
    values.forEach((x, i) => { if (!groups.has(clusters[i])) groups.set(clusters[i], []); groups.get(clusters[i]).push(x); });
    if (groups.size < 2) groups = new Map(values.map((x, i) => [String(i), [x]]));
    const lists = [...groups.keys()].sort(byCodeUnit).map((k) => groups.get(k));
    const rng = pyRandom(seed), stats = new Float64Array(iters);
    for (let it = 0; it < iters; it++) {
      const st = sumState();
      let count = 0;
      for (let p = 0; p < lists.length; p++) {
        const g = lists[rng.randbelow(lists.length)];
        for (const x of g) sumAdd(st, x);
        count += g.length;
      }
      stats[it] = count ? sumEnd(st) / count : NaN;
    }
    stats.sort();
    return [stats[Math.trunc(alpha / 2 * iters)], stats[Math.min(iters - 1, Math.trunc((1 - alpha / 2) * iters))]];
  }

  // harness.compare.paired_comparison on the questions both runs hold
  function paired(a, b, metric) {
    const sa = R[a].scores[metric], sb = R[b].scores[metric];
    const xa = [], xb = [], d = [], eps = [], cats = new Map();
    let shared = 0, missing = 0;
    for (let i = 0; i < N; i++) {
      if (R[a].pred[i] === null || R[b].pred[i] === null) continue;
      shared++;
      if (sa[i] === null || sb[i] === null) { missing++; continue; }
      const k = d.length, c = String(Q.category[i] ?? "None");
      xa.push(sa[i]); xb.push(sb[i]); d.push(sa[i] - sb[i]); eps.push(Q.episode[i]);
      if (!cats.has(c)) cats.set(c, []);
      cats.get(c).push(k);
    }
    if (!shared) return { error: "the two runs share no questions" };
    if (missing) return { error: `${metric} is missing from ${missing} of the ${shared} shared questions` };
    const episodes = new Set(eps).size;
    return {
      n: d.length, episodes, a: pyMean(xa), b: pyMean(xb), mean: pyMean(d),
      stderr: clusteredStderr(d, eps), ci: bootstrapCI(d, eps, D.iters),
      aBetter: d.filter((x) => x > 0).length, bBetter: d.filter((x) => x < 0).length, ties: d.filter((x) => x === 0).length,
      byCat: [...cats.keys()].sort(byCodeUnit).map((c) => {
        const ks = cats.get(c);
        return { c, n: ks.length, a: pyMean(ks.map((k) => xa[k])), b: pyMean(ks.map((k) => xb[k])), d: pyMean(ks.map((k) => d[k])) };
      }),
    };
  }

  // ------------------------------------------------------------------ state, kept in the URL fragment
  const defaults = () => ({
    show: D.shown.slice(), a: D.shown[0] ?? 0, b: D.shown.length > 1 ? D.shown[1] : 0, metric: D.primary_metric,
    cat: "", outcome: "", q: "", sort: "id", page: 0, size: 50, thr: D.correct_at, bench: false,
  });
  let S = defaults();
  const validRun = (k) => Number.isInteger(k) && k >= 0 && k < R.length;

  function readHash() {
    const s = defaults(), p = new URLSearchParams(location.hash.slice(1));
    if (p.has("show")) s.show = p.get("show").split(",").filter((x) => x !== "").map(Number).filter(validRun);
    for (const k of ["a", "b", "page", "size"]) if (p.has(k) && Number.isInteger(Number(p.get(k)))) s[k] = Number(p.get(k));
    if (!validRun(s.a)) s.a = 0;
    if (!validRun(s.b)) s.b = 0;
    if (!PAGE_SIZES.includes(s.size)) s.size = 50;
    for (const k of ["cat", "outcome", "q", "sort"]) if (p.has(k)) s[k] = p.get(k);
    if (p.has("metric") && D.metrics.includes(p.get("metric"))) s.metric = p.get("metric");
    if (p.has("thr") && isFinite(Number(p.get("thr")))) s.thr = Number(p.get("thr"));
    s.bench = p.get("bench") === "1";
    return s;
  }

  function writeHash() {
    const d = defaults(), p = new URLSearchParams();
    for (const k of ["a", "b", "metric", "cat", "outcome", "q", "sort", "page", "size", "thr"]) if (S[k] !== d[k]) p.set(k, S[k]);
    if (S.show.join(",") !== d.show.join(",")) p.set("show", S.show.join(","));
    try { history.replaceState(null, "", "#" + p.toString()); } catch (e) { /* some browsers refuse it for file: URLs */ }
  }

  // ------------------------------------------------------------------ helpers
  const el = (tag, attrs = {}, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "text") e.textContent = v;
      else if (k === "cls") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
    return e;
  };
  const f100 = (x, d = 2) => (x === null || x === undefined || Number.isNaN(x) ? "–" : (100 * x).toFixed(d));
  const s100 = (x, d = 2) => (x === null || x === undefined || Number.isNaN(x) ? "–" : (x >= 0 ? "+" : "−") + Math.abs(100 * x).toFixed(d));
  const int = (x) => (x === null || x === undefined ? "–" : Math.round(x).toLocaleString("en-US"));
  const holds = (k, i) => R[k].pred[i] !== null;
  const score = (k, i) => R[k].scores[S.metric][i];
  const right = (k, i) => { const v = score(k, i); return v !== null && v >= S.thr; };
  const wrong = (k, i) => { const v = score(k, i); return v !== null && v < S.thr; };
  const grade = (v) => (v === null ? "" : v >= S.thr ? "ok" : v > 0 ? "part" : "bad");
  const categories = [...new Set(Q.category.filter((c) => c !== null))].sort(byCodeUnit);
  const lowered = new Map();  // run -> lower-cased predictions, built on the first search
  const lowerOf = (k) => { if (!lowered.has(k)) lowered.set(k, R[k].pred.map((p) => (p === null ? "" : p.toLowerCase()))); return lowered.get(k); };
  let qLower = null;

  // ------------------------------------------------------------------ rows: filter, then sort
  function outcomeTest() {
    const o = S.outcome, a = S.a, b = S.b;
    if (o === "ab") return (i) => right(a, i) && wrong(b, i);
    if (o === "ba") return (i) => wrong(a, i) && right(b, i);
    if (o === "neq") return (i) => (right(a, i) && wrong(b, i)) || (wrong(a, i) && right(b, i));
    const m = /^([rw])(\d+)$/.exec(o);
    if (m && validRun(Number(m[2]))) return m[1] === "r" ? (i) => right(Number(m[2]), i) : (i) => wrong(Number(m[2]), i);
    return null;
  }

  function sortKey() {
    const desc = S.sort.startsWith("-"), key = desc ? S.sort.slice(1) : S.sort;
    const m = /^([sp])(\d+)$/.exec(key);
    let f = null;
    if (key === "cat") f = (i) => Q.category[i] ?? "";
    else if (key === "d") f = (i) => (score(S.a, i) === null || score(S.b, i) === null ? null : score(S.a, i) - score(S.b, i));
    else if (m && validRun(Number(m[2]))) f = m[1] === "s" ? (i) => score(Number(m[2]), i) : (i) => R[Number(m[2])].ptok[i];
    return { f, desc, key };
  }

  function rows() {
    const test = outcomeTest(), needle = S.q.trim().toLowerCase(), show = S.show;
    if (needle && !qLower) qLower = Q.id.map((id, i) => `${id}\n${Q.question[i] ?? ""}\n${Q.gold[i] ?? ""}`.toLowerCase());
    const preds = needle ? show.map(lowerOf) : [];
    const out = [];
    for (let i = 0; i < N; i++) {
      if (!show.some((k) => holds(k, i))) continue;
      if (S.cat && Q.category[i] !== S.cat) continue;
      if (test && !test(i)) continue;
      if (needle && !qLower[i].includes(needle) && !preds.some((p) => p[i].includes(needle))) continue;
      out.push(i);
    }
    const { f, desc } = sortKey();
    if (f) {
      const v = new Map(out.map((i) => [i, f(i)]));
      out.sort((i, j) => {
        const x = v.get(i), y = v.get(j);
        if (x === null || y === null) return x === y ? 0 : x === null ? 1 : -1;  // missing last either way
        return (x < y ? -1 : x > y ? 1 : 0) * (desc ? -1 : 1);
      });
    } else if (desc) out.reverse();
    return out;
  }

  // ------------------------------------------------------------------ the page
  const app = document.getElementById("app");
  app.textContent = "";
  const title = el("h1", { text: `${D.task}: ${R.length} run${R.length === 1 ? "" : "s"}, ${N.toLocaleString("en-US")} questions` });
  const sub = el("div", { cls: "muted", text: `Written ${D.generated} by python -m harness.view from the run records. ` +
    (D.text_withheld ? "This task's records withhold question and option text; questions are shown by id." : "") });
  const runsBox = el("section", { id: "runs" });
  const pairBox = el("section", { id: "pair" });
  const controls = el("section", { cls: "controls", id: "controls" });
  const pagerTop = el("div", { cls: "pager" });
  const table = el("table", { cls: "rows", id: "rows" });
  const pagerBottom = el("div", { cls: "pager" });
  const bench = el("pre", { id: "bench", hidden: true });
  app.append(title, sub, runsBox, pairBox, controls, pagerTop, table, pagerBottom, bench);

  function costText(c) {
    const parts = [`prompt ${int(c.prompt_tokens)}`, `context ${int(c.context_tokens)}`, `generated ${int(c.new_tokens)}`];
    if (c.retrieved !== null) parts.push(`retrieved ${c.retrieved}`);
    if (c.compression !== null) parts.push(`compression ${c.compression}×`);
    if (c.tokens_written !== null) parts.push(`written ${int(c.tokens_written)}`);
    if (c.wall_s_per_question !== null) parts.push(`${c.wall_s_per_question} s`);
    return parts.join(" · ");
  }

  function renderRuns() {
    const head = el("tr", {}, el("th", { text: "show" }), el("th", { text: "A" }), el("th", { text: "B" }), el("th", { text: "run" }),
      el("th", { text: "protocol" }), el("th", { text: "status" }), el("th", { cls: "num", text: `${S.metric} ×100` }),
      el("th", { cls: "num", text: "95% interval" }), el("th", { cls: "num", text: "± SE" }),
      el("th", { text: "cost per question (tokens, wall s)" }), el("th", { text: "record" }));
    const body = R.map((r, k) => {
      const sm = r.summary[S.metric] || {};
      const shown = S.show.includes(k);
      const status = `${r.status}${r.subset ? " †" : ""}, ${r.n.toLocaleString("en-US")}${r.expected ? "/" + r.expected.toLocaleString("en-US") : ""}`;
      return el("tr", { cls: shown ? "shown run" : "run", "data-run": k },
        el("td", {}, el("input", { type: "checkbox", checked: shown, "aria-label": `show ${r.run}`, onchange: (e) => {
          S.show = e.target.checked ? [...S.show, k].sort((x, y) => x - y) : S.show.filter((x) => x !== k);
          S.page = 0; update();
        } })),
        el("td", {}, el("input", { type: "radio", name: "run-a", checked: S.a === k, "aria-label": `A = ${r.run}`, onchange: () => { S.a = k; update(); } })),
        el("td", {}, el("input", { type: "radio", name: "run-b", checked: S.b === k, "aria-label": `B = ${r.run}`, onchange: () => { S.b = k; update(); } })),
        el("td", { cls: "label", text: r.run }),
        el("td", { text: r.protocol + (r.control ? `, control: ${r.control.replace(/_/g, " ")}` : "") }),
        el("td", { text: status }),
        el("td", { cls: "num mean", text: f100(sm.mean) }),
        el("td", { cls: "num", text: sm.ci ? `[${f100(sm.ci[0])}, ${f100(sm.ci[1])}]` : "–" }),
        el("td", { cls: "num", text: f100(sm.stderr) }),
        el("td", { text: costText(r.cost) }),
        el("td", { cls: "rec", text: `${r.record} (${r.backbone}, seed ${r.seed})` }));
    });
    runsBox.replaceChildren(el("h2", { text: "Runs" }), el("table", { cls: "runs" }, el("thead", {}, head), el("tbody", {}, ...body)),
      el("div", { cls: "note", text: "Interval: 95% bootstrap resampling whole episodes (harness.metrics.bootstrap_ci); SE clustered by episode. " +
        "Cost: mean prompt, context and generated tokens per question, what the method retrieved, compressed or wrote, and the run's wall time per question (ingest included). † a subset of the task." }));
  }

  function renderPair() {
    const a = S.a, b = S.b, p = paired(a, b, S.metric);
    const head = el("h2", { text: `Paired difference A − B (${S.metric} ×100), as python -m harness.compare computes it` });
    if (p.error) { pairBox.replaceChildren(head, el("div", { cls: "err", text: p.error })); return; }
    pairBox.setAttribute("data-n", p.n);
    pairBox.setAttribute("data-mean", String(p.mean));
    pairBox.setAttribute("data-stderr", String(p.stderr));
    pairBox.setAttribute("data-lo", String(p.ci[0]));
    pairBox.setAttribute("data-hi", String(p.ci[1]));
    const unit = p.episodes > 1 ? "episode" : "sample";
    const cats = el("table", {}, el("tr", {}, el("th", { text: "category" }), el("th", { text: "n" }), el("th", { text: "A" }), el("th", { text: "B" }), el("th", { text: "A − B" })),
      ...p.byCat.map((c) => el("tr", {}, el("td", { text: c.c }), el("td", { text: c.n }), el("td", { text: f100(c.a) }), el("td", { text: f100(c.b) }), el("td", { text: s100(c.d) }))));
    pairBox.replaceChildren(head,
      el("div", { text: `A ${R[a].run}: ${f100(p.a)} · B ${R[b].run}: ${f100(p.b)} · on the ${p.n.toLocaleString("en-US")} questions both hold (${p.episodes} episode${p.episodes === 1 ? "" : "s"})` }),
      el("div", { cls: "big", id: "pair-diff", text: `${s100(p.mean)} ± ${f100(p.stderr)}, 95% ${unit}-bootstrap interval [${s100(p.ci[0])}, ${s100(p.ci[1])}]` }),
      el("div", { text: `A better on ${p.aBetter}, B better on ${p.bBetter}, tied on ${p.ties}` }), cats);
  }

  function select(id, label, options, value, onchange) {
    const s = el("select", { id, onchange: (e) => onchange(e.target.value) },
      ...options.map(([v, t]) => el("option", { value: v, selected: v === value, text: t })));
    return el("label", {}, `${label} `, s);
  }

  function renderControls() {
    const name = (k) => R[k].run;
    const outcomes = [["", "all"], ["ab", `A right, B wrong`], ["ba", `A wrong, B right`], ["neq", "A and B differ"],
      ...S.show.flatMap((k) => [[`r${k}`, `${name(k)}: right`], [`w${k}`, `${name(k)}: wrong`]])];
    const sorts = [["id", "question id"], ["cat", "category"], ["-d", "A − B, largest first"], ["d", "A − B, smallest first"],
      ...S.show.flatMap((k) => [[`-s${k}`, `${name(k)} score, high first`], [`s${k}`, `${name(k)} score, low first`],
        [`-p${k}`, `${name(k)} prompt tokens, most first`]])];
    const search = el("input", { type: "search", id: "search", value: S.q, placeholder: "question, gold, prediction",
      oninput: (e) => { S.q = e.target.value; S.page = 0; updateRows(); } });
    controls.replaceChildren(
      select("metric", "metric", D.metrics.map((m) => [m, m + (m === D.primary_metric ? " (primary)" : "")]), S.metric, (v) => { S.metric = v; update(); }),
      select("cat", "category", [["", "all"], ...categories.map((c) => [c, `${c} (${Q.category.filter((x) => x === c).length})`])], S.cat, (v) => { S.cat = v; S.page = 0; updateRows(); }),
      select("outcome", "answers", outcomes, S.outcome, (v) => { S.outcome = v; S.page = 0; updateRows(); }),
      el("label", {}, "right when score ≥ ", el("input", { type: "number", id: "thr", min: 0, max: 1, step: 0.05, value: S.thr, style: "width:5em",
        onchange: (e) => { S.thr = Number(e.target.value); update(); } })),
      el("label", {}, "search ", search),
      select("sort", "sort", sorts, S.sort, (v) => { S.sort = v; S.page = 0; updateRows(); }),
      select("size", "per page", PAGE_SIZES.map((n) => [String(n), String(n)]), String(S.size), (v) => { S.size = Number(v); S.page = 0; updateRows(); }));
  }

  function header(text, key) {
    const now = S.sort.replace(/^-/, ""), desc = S.sort.startsWith("-");
    const th = el("th", { cls: key ? "sortable" : "", text });
    if (key) {
      if (now === key) th.append(el("span", { cls: "arrow", text: desc ? " ▼" : " ▲" }));
      th.addEventListener("click", () => { S.sort = now === key && !desc ? "-" + key : key; S.page = 0; updateRows(); });
    }
    return th;
  }

  function runCell(k, i) {
    if (!holds(k, i)) return el("td", { cls: "cell-run" }, el("span", { cls: "absent", text: "not in this run" }));
    const v = score(k, i), r = R[k];
    const pred = el("div", { cls: "clamp pred", text: r.pred[i] === "" ? "(empty)" : r.pred[i], onclick: (e) => e.currentTarget.classList.toggle("open") });
    const ext = r.extracted && r.extracted[i] !== null ? el("div", { cls: "ext", text: `extracted: ${r.extracted[i]}` }) : null;
    const meta = el("div", { cls: "meta" }, el("span", { cls: `score ${grade(v)}`, text: v === null ? "–" : f100(v, 1) }),
      ` ${int(r.ptok[i])} prompt tokens · ${r.info[i]}`);
    return el("td", { cls: `cell-run ${grade(v)}`, "data-run": k }, pred, ext, meta);
  }

  function updateRows() {
    const t0 = performance.now();
    const list = rows(), pages = Math.max(1, Math.ceil(list.length / S.size));
    S.page = Math.min(Math.max(0, S.page), pages - 1);
    const from = S.page * S.size, page = list.slice(from, from + S.size);
    const cols = el("colgroup", {}, el("col", { cls: "c-id" }), el("col", { cls: "c-q" }), el("col", { cls: "c-gold" }), el("col", { cls: "c-cat" }),
      ...S.show.map(() => el("col", {})), S.a !== S.b ? el("col", { cls: "c-d" }) : null);
    const head = el("tr", {}, header("#", "id"), header(D.text_withheld ? "question (id; text withheld)" : "question", null), header("gold", null),
      header("category", "cat"), ...S.show.map((k) => header(R[k].run, `s${k}`)), S.a !== S.b ? header("A − B", "d") : null);
    const body = page.map((i) => {
      const q = Q.question[i];
      const d = score(S.a, i) !== null && score(S.b, i) !== null ? score(S.a, i) - score(S.b, i) : null;
      return el("tr", { cls: "q", "data-id": Q.id[i], "data-category": Q.category[i] ?? "" },
        el("td", { cls: "qid", text: String(i + 1) }),
        el("td", {}, el("div", { cls: "qid", text: Q.id[i] }), q === null ? null : el("div", { cls: "clamp", text: q, onclick: (e) => e.currentTarget.classList.toggle("open") })),
        el("td", {}, el("div", { cls: "clamp", text: Q.gold[i] ?? "", onclick: (e) => e.currentTarget.classList.toggle("open") })),
        el("td", { text: Q.category[i] ?? "" }),
        ...S.show.map((k) => runCell(k, i)),
        S.a !== S.b ? el("td", { text: d === null ? "–" : s100(d, 1) }) : null);
    });
    table.replaceChildren(cols, el("thead", {}, head), el("tbody", {}, ...body));
    table.setAttribute("data-matching", list.length);
    for (const pager of [pagerTop, pagerBottom]) {
      pager.replaceChildren(
        el("button", { text: "‹ previous", disabled: S.page === 0, onclick: () => { S.page--; updateRows(); } }),
        el("span", { cls: "count", text: list.length ? `questions ${from + 1}–${from + page.length} of ${list.length.toLocaleString("en-US")} matching` : "no question matches" }),
        el("button", { text: "next ›", disabled: S.page >= pages - 1, onclick: () => { S.page++; updateRows(); } }),
        el("span", { cls: "muted", text: `page ${S.page + 1} of ${pages}` }));
    }
    writeHash();
    return performance.now() - t0;
  }

  function update() {
    if (!S.show.length) S.show = [S.a];
    renderRuns();
    renderPair();
    renderControls();
    return updateRows();
  }

  // ------------------------------------------------------------------ start, and the optional timing run
  S = readHash();
  update();
  document.documentElement.setAttribute("data-ready-ms", performance.now().toFixed(1));
  window.addEventListener("hashchange", () => { S = readHash(); update(); });

  if (S.bench) {
    // what a reader does, each timed to the finished DOM: choose a category, a right/wrong filter, search, sort, page on
    const initial = { ...S }, times = {};
    const time = (name, change, full) => { change(); const t0 = performance.now(); full ? update() : updateRows(); times[name] = Number((performance.now() - t0).toFixed(1)); };
    for (const c of categories) time(`category ${c}`, () => { S.cat = c; });
    time("all categories", () => { S.cat = ""; });
    time("A right, B wrong", () => { S.outcome = "ab"; });
    time("search", () => { S.outcome = ""; S.q = "the"; });
    time("sort by A score", () => { S.q = ""; S.sort = `-s${S.a}`; });
    time("next page", () => { S.page = 1; });
    time("swap A and B (paired bootstrap)", () => { [S.a, S.b] = [S.b, S.a]; }, true);
    S = initial;
    S.bench = true;
    update();
    bench.textContent = JSON.stringify(times);
  }
})();
