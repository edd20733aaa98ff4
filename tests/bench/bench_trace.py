"""Churn tracing overhead: a lab churner's rate with and without tcp_state_facts' tracer.

A lab host runs the `churn_client` scenario (one process connecting and closing first at a paced
rate, its server in a second process) at each target rate, bounded in count (rate x SECONDS) and
by the scenario's timeout: once alone, once while a tracer (_trace.collect_churn, the module's
code) runs in the same host. Recorded: the churner's achieved rate both ways and the loss
(target <= 5 %), what the tracer counted against the churner's own count, lost events, and the
tracer's peak RSS (the kernel buffer is bounded separately: buffer_size_kb per CPU).
NETSTATE_BENCH_TRACE_SMALL=1 runs one small rate only (a check that the bench works).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ansible_collections.netstate.tcp.plugins.module_utils import _trace
from netstate_lab import Lab

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from trace_probes import start_tracer, tracer_result, wait_done, wait_tracing

SMALL = os.environ.get("NETSTATE_BENCH_TRACE_SMALL") == "1"
RATES = (500,) if SMALL else (1000, 5000, 10000)
SECONDS = 2 if SMALL else 5
ROUNDS = 1 if SMALL else 2


def churn(host, rate, traced, alone_rate=None):
    count = rate * SECONDS
    tracer = None
    if traced:
        # the trace must outlast the churn: sized from the rate the churner reached alone
        window = min(60, count / max(1.0, alone_rate or rate) * 3 + 5)
        tracer = start_tracer(host, window, [host.netns_inode])
        wait_tracing(tracer.pid)
    sc = host.start_scenario("churn_client", count=count, rate=rate, hold=60, timeout=SECONDS * 10 + 30)
    done = wait_done(sc, timeout=SECONDS * 10 + 60)["done"]
    sc.stop()
    result = tracer_result(tracer) if tracer else None
    return sc, done, result


def run() -> str:
    rows = []
    with Lab.create(hosts=1, ssh=False) as lab:
        host = lab.hosts[0]
        for rate in RATES:
            # alone and traced alternate, ROUNDS times each; the best rate of each way counts (the least
            # disturbed by whatever else the machine runs)
            alone_runs, traced_runs = [], []
            for _round in range(ROUNDS):
                alone_runs.append(churn(host, rate, traced=False)[1])
                traced_runs.append(churn(host, rate, traced=True, alone_rate=alone_runs[-1]["rate"]))
            alone = max(alone_runs, key=lambda done: done["rate"])
            sc, traced, result = max(traced_runs, key=lambda run: run[1]["rate"])
            churn_fact = result["churn"][str(host.netns_inode)]
            mine = next((p for p in churn_fact["processes"] if p["pid"] == sc.pid), None)
            loss = 1 - traced["rate"] / alone["rate"] if alone["rate"] else None
            row = {
                "target": rate,
                "alone": alone["rate"],
                "traced": traced["rate"],
                "loss": loss,
                "made": traced["connections"],
                "counted": mine["connects"] if mine else 0,
                "lost_events": churn_fact["lost_events"],
                "events": churn_fact["events"],
                "maxrss_mib": result["maxrss_kib"] / 1024,
                "cpu_share": result["cpu_seconds"] / churn_fact["seconds"],
            }
            print(row, flush=True)
            rows.append(row)
    cpus = os.cpu_count() or 1
    per_cpu_kb = _trace.buffer_kb_per_cpu(cpus)
    lines = [
        "## Churn tracing overhead (tcp_state_facts trace)",
        "",
        f"`churn_client` in a lab host for {SECONDS} s per target rate, alone and while the tracer runs, "
        f"alternating, best of {ROUNDS} each (target: the churner loses at most 5 % of its rate; tracer memory "
        f"bounded). The kernel's trace buffer is bounded apart: {per_cpu_kb} KiB per CPU, {per_cpu_kb * cpus} KiB "
        "in total here.",
        "",
        "| target conn/s | alone conn/s | traced conn/s | rate loss | connections | counted by the tracer "
        "| events (host-wide) | lost events | tracer CPU | tracer peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        loss = f"{r['loss'] * 100:.1f} %" if r["loss"] is not None else "n/a"
        lines.append(
            f"| {r['target']} | {r['alone']:.0f} | {r['traced']:.0f} | {loss} | {r['made']} | {r['counted']} "
            f"| {r['events']} | {r['lost_events']} | {r['cpu_share'] * 100:.0f} % of a CPU "
            f"| {r['maxrss_mib']:.1f} MiB |"
        )
    return "\n".join(lines) + "\n"
