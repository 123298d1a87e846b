#!/usr/bin/env python3
"""Turns target/bench/results.json (written by `cargo bench --bench e2e -- compare`, see
benches/run.sh) into a markdown report with the ratios K2/Flink, K2/Spark, K2/baseline and
PNG plots: throughput bars, CPU per message bars, event-to-alert latency CDFs and
event-to-visible bars.

    .venv/bin/python benches/report.py [--results target/bench/results.json] [--out target/bench]
"""

import argparse
import datetime
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "k2-w1": "K2, 1 worker",
    "k2-w2": "K2, 2 workers",
    "baseline": "COST baseline (1 thread)",
    "flink": "Flink 2.1.1 (p=2)",
    "spark": "Spark 4.0.0 (local[2])",
    "k2-arbitrage": "K2 arbitrage (2 workers)",
    "flink-arbitrage": "Flink arbitrage (p=2)",
    "k2-bronze": "K2 bronze (2 workers)",
    "spark-bronze": "Spark bronze",
}
COLORS = {
    "k2-w1": "#1f77b4",
    "k2-w2": "#17becf",
    "baseline": "#7f7f7f",
    "flink": "#d62728",
    "spark": "#ff7f0e",
    "k2-arbitrage": "#1f77b4",
    "flink-arbitrage": "#d62728",
    "k2-bronze": "#1f77b4",
    "spark-bronze": "#ff7f0e",
}
AIMS = {"flink": 5.0, "spark": 8.0, "alert_p99_ms": 5, "alert_rate": 100_000, "visible_p99_ms": 1500, "cost": 1.3}


def fmt(x, digits=0, unit=""):
    if x is None:
        return "–"
    if isinstance(x, (int, float)):
        if digits == 0:
            return f"{x:,.0f}{unit}"
        return f"{x:,.{digits}f}{unit}"
    return str(x)


def ratio(a, b, digits=2):
    if a is None or b is None or b == 0:
        return None
    return round(a / b, digits)


def median(v):
    v = sorted(v)
    n = len(v)
    return None if n == 0 else (v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2)


def summarize(tp):
    """Medians per engine over the complete runs on the big topic, and the marginal figures against the
    small one (the same as the harness computes; recomputed here so that the report follows the runs)."""
    out = {}
    small_n = tp.get("small_messages")
    for e in ["k2-w1", "k2-w2", "baseline", "flink", "spark"]:
        runs = [r for r in tp["runs"] if r["engine"] == e and r["tag"] == "big" and r.get("complete")]
        if not runs:
            out[e] = {"runs": 0}
            continue
        s = {"runs": len(runs)}
        for k in ["msgs_per_s", "engine_msgs_per_s", "cpu_s", "cpu_s_per_million", "msgs_per_cpu_s",
                  "peak_rss_mib", "broker_cpu_s", "broker_cores", "wall_s"]:
            s[k] = median([r[k] for r in runs if r.get(k) is not None])
        small = [r for r in tp["runs"] if r["engine"] == e and r["tag"] == "small" and r.get("complete")]
        if small and small_n:
            dn = tp["messages"] - small_n
            dcpu = s["cpu_s"] - median([r["cpu_s"] for r in small])
            dwall = s["wall_s"] - median([r["wall_s"] for r in small])
            s["marginal_cpu_s_per_million"] = round(dcpu / dn * 1e6, 2)
            s["marginal_msgs_per_cpu_s"] = round(dn / max(dcpu, 1e-3))
            s["marginal_msgs_per_s"] = round(dn / max(dwall, 1e-3))
        out[e] = s
    return out


def throughput_section(doc, out, lines, figures):
    tp = doc.get("throughput")
    if not tp:
        return {}
    s = tp["summary"] = summarize(tp)
    engines = [e for e in ["k2-w1", "k2-w2", "baseline", "flink", "spark"] if s.get(e, {}).get("runs")]
    lines.append(f"## Throughput: bronze ingest of {tp['messages']:,} preloaded Binance messages\n")
    lines.append(
        "One engine at a time, each reading the same topic (4 partitions) to its end into Iceberg with "
        "exactly-once commits. Medians over the runs. *msg/s* is messages over the whole process's wall "
        "time (start-up included); *engine msg/s* uses the engine's own clock. CPU is user+system of the "
        "engine's whole process tree; *marginal* is the difference between this topic and one a quarter its "
        "size, so start-up (JVM, JIT, catalog) drops out. Broker CPU is the broker process over the same "
        "span, in CPU-seconds and in cores (CPU-s per wall second).\n"
    )
    lines.append(
        "| engine | runs | msg/s | engine msg/s | CPU-s per M msgs | msgs per CPU-s | marginal CPU-s per M "
        "| marginal msgs per CPU-s | peak RSS MiB | broker CPU-s (cores) |"
    )
    lines.append("|" + " --- |" * 10)
    for e in engines:
        r = s[e]
        lines.append(
            f"| {LABELS[e]} | {r['runs']} | {fmt(r.get('msgs_per_s'))} | {fmt(r.get('engine_msgs_per_s'))} "
            f"| {fmt(r.get('cpu_s_per_million'), 2)} | {fmt(r.get('msgs_per_cpu_s'))} "
            f"| {fmt(r.get('marginal_cpu_s_per_million'), 2)} | {fmt(r.get('marginal_msgs_per_cpu_s'))} "
            f"| {fmt(r.get('peak_rss_mib'))} | {fmt(r.get('broker_cpu_s'), 1)} ({fmt(r.get('broker_cores'), 2)}) |"
        )
    incomplete = [r for r in tp["runs"] if not r.get("complete")]
    if incomplete:
        lines.append("")
        lines.append(
            "Incomplete runs (left out of the medians): "
            + ", ".join(f"{r['engine']} {r['tag']} ({r.get('messages')} msgs, rows {r.get('rows')})" for r in incomplete)
        )
    lines.append("")

    ratios = {}
    rows = []
    for k2 in ["k2-w1", "k2-w2"]:
        if k2 not in s or not s[k2].get("runs"):
            continue
        for peer in ["flink", "spark", "baseline"]:
            if not s.get(peer, {}).get("runs"):
                continue
            r = {
                "msgs_per_cpu_s": ratio(s[k2].get("msgs_per_cpu_s"), s[peer].get("msgs_per_cpu_s")),
                "marginal_msgs_per_cpu_s": ratio(
                    s[k2].get("marginal_msgs_per_cpu_s"), s[peer].get("marginal_msgs_per_cpu_s")
                ),
                "msgs_per_s": ratio(s[k2].get("msgs_per_s"), s[peer].get("msgs_per_s")),
                "engine_msgs_per_s": ratio(s[k2].get("engine_msgs_per_s"), s[peer].get("engine_msgs_per_s")),
                "peak_rss": ratio(s[k2].get("peak_rss_mib"), s[peer].get("peak_rss_mib")),
            }
            ratios[f"{k2}/{peer}"] = r
            rows.append(
                f"| {LABELS[k2]} / {LABELS[peer]} | {fmt(r['msgs_per_cpu_s'], 2, '×')} "
                f"| {fmt(r['marginal_msgs_per_cpu_s'], 2, '×')} | {fmt(r['msgs_per_s'], 2, '×')} "
                f"| {fmt(r['engine_msgs_per_s'], 2, '×')} | {fmt(r['peak_rss'], 2, '×')} |"
            )
    lines.append("### Ratios (K2 ÷ peer; above 1 means K2 does more per CPU-second / per second)\n")
    lines.append("| ratio | msgs per CPU-s | marginal msgs per CPU-s | msg/s | engine msg/s | peak RSS |")
    lines.append("|" + " --- |" * 6)
    lines.extend(rows)
    lines.append("")

    # Plots: msg/s and msgs per CPU-s.
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = [LABELS[e].replace(" (", "\n(") for e in engines]
    for ax, key, title in [
        (axes[0], "msgs_per_s", "messages / s (whole process)"),
        (axes[1], "msgs_per_cpu_s", "messages per CPU-second"),
    ]:
        vals = [s[e].get(key) or 0 for e in engines]
        bars = ax.bar(range(len(engines)), vals, color=[COLORS[e] for e in engines])
        marg = [s[e].get("marginal_" + key) for e in engines]
        if any(m for m in marg):
            ax.scatter(range(len(engines)), [m or 0 for m in marg], marker="_", s=400, color="black",
                       label="marginal (start-up excluded)", zorder=3)
            ax.legend(fontsize=7, loc="upper right")
        ax.set_xticks(range(len(engines)), names, fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.bar_label(bars, labels=[f"{v/1000:,.0f}k" for v in vals], fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"Bronze ingest, {tp['messages']:,} msgs, 2 cores", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out, "throughput.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    figures.append(path)
    lines.append("![throughput](throughput.png)\n")
    return ratios


def per_s(count, seconds):
    if count is None or not seconds:
        return None
    return count / seconds


def latency_section(doc, out, lines, figures):
    lat = doc.get("latency")
    if not lat:
        return {}
    plan = doc.get("plan", {})
    runs = lat["runs"]
    alerts = [r for r in runs if r["engine"].endswith("arbitrage")]
    visible = [r for r in runs if r["engine"].endswith("bronze")]
    lines.append("## Latency: open-loop feed at fixed offered rates\n")
    lines.append(
        f"`k2 produce` offers each rate for {plan.get('feed_s')} s (both exchanges, {plan.get('symbols')} symbols, "
        f"no duplicates or malformed messages), each engine on its own fresh topics, one engine at a time. "
        f"Join parameters, identical for K2 and Flink: Δ = {plan.get('delta_ms')} ms, threshold "
        f"{plan.get('threshold_bps')} bps net of fees (Binance 2 bps, Kraken 5 bps), out-of-orderness 2000 ms, "
        f"2 workers / parallelism 2. *Event-to-alert* = the alert record's LogAppendTime − the Kafka produce "
        f"time of the later trade of the pair; *steady* leaves out alerts whose later trade came in the first "
        f"{plan.get('warmup_s')} s. *expected* is a brute-force oracle over the same topics (event times in "
        f"ms, as both joins compare them); an engine below 100 % had not caught up when the run ended, so its percentiles "
        f"understate its latency. *produce→detect* is the alert's own `detected_ms` − `produce_ms` (the "
        f"engine's wall clock when it built the alert): the rest of the latency is the alert's way to the "
        f"broker. *Broker CPU-s* is the broker's over the engine's run, which the feed's producer shares the "
        f"two cores with too. *Threads* is the engine's most at once; *switches/s* its context switches per "
        f"second of run, over all its threads (voluntary + involuntary).\n"
    )
    lines.append(
        "| engine | offered msg/s | achieved | alerts / expected | p50 ms | p99 ms | p99.9 ms | max ms "
        "| steady p99 ms | produce→detect p50 / p99 ms | engine CPU-s | broker CPU-s | threads | switches/s "
        "(involuntary) | drain s |"
    )
    lines.append("|" + " --- |" * 15)
    for r in alerts:
        a = r.get("alert_latency", {})
        al, st, dt = a.get("all") or {}, a.get("steady") or {}, a.get("produce_to_detect") or {}
        lines.append(
            f"| {LABELS[r['engine']]} | {fmt(r['offered_rate'])} | {fmt(r.get('achieved_rate'))} "
            f"| {fmt(a.get('alerts'))} / {fmt(r.get('expected_alerts'))} ({fmt(r.get('complete_pct'), 1)} %) "
            f"| {fmt(al.get('p50'))} | {fmt(al.get('p99'))} | {fmt(al.get('p999'))} | {fmt(al.get('max'))} "
            f"| {fmt(st.get('p99'))} | {fmt(dt.get('p50'))} / {fmt(dt.get('p99'))} | {fmt(r.get('cpu_s'), 1)} "
            f"| {fmt(r.get('broker_cpu_s'), 1)} | {fmt(r.get('peak_threads'))} "
            f"| {fmt(r.get('switches_per_s'))} ({fmt(per_s(r.get('involuntary_switches'), r.get('wall_s')))}) "
            f"| {fmt(r.get('drained_s'), 1)} |"
        )
    lines.append("")
    ratios = {}
    rates = sorted({r["offered_rate"] for r in alerts})
    rows = []
    for rate in rates:
        k = next((r for r in alerts if r["engine"] == "k2-arbitrage" and r["offered_rate"] == rate), None)
        f = next((r for r in alerts if r["engine"] == "flink-arbitrage" and r["offered_rate"] == rate), None)
        if not k or not f:
            continue
        ka, fa = k["alert_latency"].get("all") or {}, f["alert_latency"].get("all") or {}
        r = {q: ratio(fa.get(q), ka.get(q)) for q in ["p50", "p99", "p999"]}
        r["cpu"] = ratio(f.get("cpu_s"), k.get("cpu_s"))
        ratios[str(rate)] = r
        rows.append(
            f"| {fmt(rate)} | {fmt(r['p50'], 2, '×')} | {fmt(r['p99'], 2, '×')} | {fmt(r['p999'], 2, '×')} "
            f"| {fmt(r['cpu'], 2, '×')} | {fmt(k.get('complete_pct'), 1)} % / {fmt(f.get('complete_pct'), 1)} % |"
        )
    if rows:
        lines.append("Ratios Flink ÷ K2 (above 1: K2 is faster / cheaper):\n")
        lines.append("| offered msg/s | p50 | p99 | p99.9 | CPU-s over the run | complete K2 / Flink |")
        lines.append("|" + " --- |" * 6)
        lines.extend(rows)
        lines.append("")

    lines.append(
        "Event-to-visible in Iceberg: each row's Kafka timestamp to the commit time of the snapshot that "
        "first holds it, over every row, as each engine reports it (K2's run report; Spark's from the "
        "table's metadata; *steady* = Spark without its first warm-up seconds). Binance only, 5 symbols. "
        "Flink bronze is a bounded job here, so its visibility latency is not measured.\n"
    )
    lines.append("| engine | offered msg/s | achieved | p50 ms | p99 ms | max ms | steady p50 / p99 ms | CPU-s | note |")
    lines.append("|" + " --- |" * 9)
    for r in visible:
        l = (r.get("report") or {}).get("latency_ms") or {}
        st = l.get("steady") or {}
        note = ""
        if r["engine"] == "spark-bronze":
            rep = r.get("report") or {}
            note = f"trigger {rep.get('trigger')} ms, lag at end {rep.get('last_max_offsets_behind', '–')}"
        lines.append(
            f"| {LABELS[r['engine']]} | {fmt(r['offered_rate'])} | {fmt(r.get('achieved_rate'))} | {fmt(l.get('p50'))} "
            f"| {fmt(l.get('p99'))} | {fmt(l.get('max'))} | {fmt(st.get('p50'))} / {fmt(st.get('p99'))} "
            f"| {fmt(r.get('cpu_s'), 1)} | {note} |"
        )
    lines.append("")

    # CDF plot of event-to-alert latency: x = latency (log), y = quantile on a tail scale.
    if alerts:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        styles = ["-", "--", ":", "-."]
        for r in alerts:
            cdf = ((r.get("alert_latency") or {}).get("all") or {}).get("cdf")
            if not cdf:
                continue
            i = rates.index(r["offered_rate"]) if r["offered_rate"] in rates else 0
            xs = [max(p[1], 0.5) for p in cdf]
            ys = [1.0 / max(1.0 - p[0], 1e-4) for p in cdf]
            ax.step(xs, ys, where="post", color=COLORS[r["engine"]], linestyle=styles[i % len(styles)],
                    label=f"{LABELS[r['engine']]}, {r['offered_rate']/1000:.0f}k msg/s")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_yticks([1, 2, 10, 100, 1000], ["0", "50 %", "90 %", "99 %", "99.9 %"])
        ax.axvline(AIMS["alert_p99_ms"], color="gray", linewidth=0.8, linestyle=":")
        ax.set_xlabel("event-to-alert latency, ms (log)")
        ax.set_ylabel("percentile")
        ax.grid(True, which="both", linewidth=0.3)
        ax.legend(fontsize=7)
        ax.set_title("Arbitrage: event-to-alert latency CDF", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out, "alert_latency_cdf.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        figures.append(path)
        lines.append("![alert latency CDF](alert_latency_cdf.png)\n")
    if visible:
        fig, ax = plt.subplots(figsize=(7, 3.4))
        labels, p50s, p99s, cols = [], [], [], []
        for r in visible:
            l = (r.get("report") or {}).get("latency_ms") or {}
            labels.append(f"{LABELS[r['engine']]}\n{r['offered_rate']/1000:.0f}k/s")
            p50s.append(l.get("p50") or 0)
            p99s.append(l.get("p99") or 0)
            cols.append(COLORS[r["engine"]])
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], p50s, width=0.4, color=cols, alpha=0.55, label="p50")
        ax.bar([x + 0.2 for x in xs], p99s, width=0.4, color=cols, label="p99")
        ax.axhline(AIMS["visible_p99_ms"], color="gray", linewidth=0.8, linestyle=":", label="aim: p99 1.5 s")
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_ylabel("ms")
        ax.legend(fontsize=7)
        ax.set_title("Bronze: event-to-visible in Iceberg (p50 light, p99 dark)", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out, "visible_latency.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        figures.append(path)
        lines.append("![visible latency](visible_latency.png)\n")
    return ratios


def headline(tp_ratios):
    """The gap, first: K2 (1 worker) ÷ COST in CPU per message, and K2 ÷ Flink and ÷ Spark in
    messages per CPU-second (whole process / marginal), from this run's throughput medians."""
    out = []
    cost = tp_ratios.get("k2-w1/baseline")
    if cost and cost.get("msgs_per_cpu_s"):
        out.append(
            f"**K2 ÷ COST, CPU per message (1 worker): {1 / cost['msgs_per_cpu_s']:.2f}×** "
            f"(aim ≤ 1.3×; marginal {fmt(1 / cost['marginal_msgs_per_cpu_s'] if cost.get('marginal_msgs_per_cpu_s') else None, 2, '×')})  "
        )
    for peer in ["flink", "spark"]:
        best = max(
            (tp_ratios[k] for k in (f"k2-w1/{peer}", f"k2-w2/{peer}") if tp_ratios.get(k, {}).get("msgs_per_cpu_s")),
            key=lambda r: r["msgs_per_cpu_s"],
            default=None,
        )
        if best:
            out.append(
                f"**K2 ÷ {peer.capitalize()}, msgs per CPU-s: {best['msgs_per_cpu_s']:.2f}× whole process, "
                f"{fmt(best['marginal_msgs_per_cpu_s'], 2, '×')} marginal**  "
            )
    return out + [""] if out else out


def aims_section(doc, tp_ratios, lines):
    lines.append("## Aims (targets for the report, never asserted)\n")
    lines.append("| aim | measured | met |")
    lines.append("| --- | --- | --- |")
    s = (doc.get("throughput") or {}).get("summary") or {}
    for peer, aim in [("flink", AIMS["flink"]), ("spark", AIMS["spark"])]:
        best = None
        for k2 in ["k2-w1", "k2-w2"]:
            r = tp_ratios.get(f"{k2}/{peer}")
            if r and r["msgs_per_cpu_s"] is not None and (best is None or r["msgs_per_cpu_s"] > best[1]):
                best = (k2, r["msgs_per_cpu_s"], r["marginal_msgs_per_cpu_s"])
        if best:
            lines.append(
                f"| ≥ {aim:g}× {peer.capitalize()} in msgs per CPU-s (bronze) | {best[1]:.2f}× ({LABELS[best[0]]}); "
                f"marginal {fmt(best[2], 2, '×')} | {'yes' if best[1] >= aim else 'no'} |"
            )
    lat = (doc.get("latency") or {}).get("runs") or []
    k2a = [r for r in lat if r["engine"] == "k2-arbitrage"]
    if k2a:
        top = max(k2a, key=lambda r: r["offered_rate"])
        p99 = ((top.get("alert_latency") or {}).get("all") or {}).get("p99")
        lines.append(
            f"| arbitrage p99 event-to-alert ≤ 5 ms at 100k msg/s | {fmt(p99)} ms at {fmt(top['offered_rate'])} msg/s "
            f"offered ({fmt(top.get('complete_pct'), 1)} % of alerts) | "
            f"{'yes' if p99 is not None and p99 <= 5 and top['offered_rate'] >= 100_000 else 'no'} |"
        )
    k2b = [r for r in lat if r["engine"] == "k2-bronze"]
    if k2b:
        worst = max(((r.get("report") or {}).get("latency_ms") or {}).get("p99") or 0 for r in k2b)
        lines.append(
            f"| event-to-visible p99 ≤ 1.5 s | worst p99 {fmt(worst)} ms over rates "
            f"{', '.join(fmt(r['offered_rate']) for r in k2b)} | {'yes' if worst <= 1500 else 'no'} |"
        )
    r = tp_ratios.get("k2-w1/baseline")
    if r and r["msgs_per_cpu_s"]:
        cost = 1 / r["msgs_per_cpu_s"]
        lines.append(
            f"| 1 worker within 1.3× of the COST baseline | K2 uses {cost:.2f}× the baseline's CPU per message "
            f"(marginal {fmt(1 / r['marginal_msgs_per_cpu_s'] if r['marginal_msgs_per_cpu_s'] else None, 2)}×); "
            f"wall-clock rate {fmt(r['msgs_per_s'], 2)}× the baseline's | {'yes' if cost <= 1.3 else 'no'} |"
        )
    lines.append("")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="target/bench/results.json")
    ap.add_argument("--out", default="target/bench")
    args = ap.parse_args()
    with open(args.results) as f:
        doc = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    m = doc.get("machine", {})
    plan = doc.get("plan", {})
    when = datetime.datetime.fromtimestamp(doc.get("written_ms", 0) / 1000, datetime.timezone.utc)
    lines = [
        "# K2 Stream vs COST baseline, Flink and Spark\n",
        f"Run of {when:%Y-%m-%d %H:%M} UTC, mode `{plan.get('mode')}`, commit `{m.get('commit')}`. "
        f"Machine: {m.get('cores')} cores ({m.get('cpu')}), {m.get('mem_gib')} GiB, kernel {m.get('kernel')}, "
        f"{m.get('java')}, {m.get('rustc')}; Kafka {m.get('kafka')}, shared by every engine.\n",
    ]
    figures = []
    body = []
    tp_ratios = throughput_section(doc, args.out, body, figures)
    lat_ratios = latency_section(doc, args.out, body, figures)
    lines.extend(headline(tp_ratios))
    lines.extend(body)
    aims_section(doc, tp_ratios, lines)
    prof = doc.get("profile") or {}
    b, a = prof.get("bronze") or {}, prof.get("arbitrage") or {}
    if b.get("top"):
        lines.append(f"## Profile: K2 bronze, 1 worker, {fmt(b.get('messages'))} messages (`perf record`, flat)\n")
        lines.append("```")
        lines.extend(b["top"][:32])
        lines.append("```\n")
    if a.get("top"):
        lines.append(
            f"## Profile: K2 arbitrage, 2 workers, live feed at {fmt(a.get('offered_rate'))} msg/s "
            f"({fmt(a.get('cpu_s'), 1)} CPU-s over {fmt(a.get('wall_s'), 1)} s; `perf record`, flat)\n"
        )
        lines.append("```")
        lines.extend(a["top"][:32])
        lines.append("```\n")
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write("\n".join(lines))
    doc["ratios"] = {"throughput": tp_ratios, "latency_flink_over_k2": lat_ratios}
    with open(args.results, "w") as f:
        json.dump(doc, f, indent=2)
    print(os.path.join(args.out, "report.md"))
    for p in figures:
        print(p)


if __name__ == "__main__":
    main()
