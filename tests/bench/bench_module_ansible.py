"""tcp_state_facts through Ansible against the ss | awk pipeline through Ansible, on one 300k-socket host.

One SSH lab host runs the lab's `mix` scenario (~300k sockets: ESTABLISHED,
TIME_WAIT, CLOSE_WAIT, FIN_WAIT2, LISTEN). In the same run, over the same SSH
inventory, Ansible runs:

  module defaults   ansible -m netstate.tcp.tcp_state_facts (owners of CLOSE_WAIT and LISTEN: the /proc walk)
  module owners: [] the same without the owner walk
  ss | awk          ansible -m ansible.builtin.shell -a "ss -tan | awk '{print $1}' | sort | uniq -c"

RUNS rounds, each on a fresh lab host with a fresh mix (its TIME_WAIT sockets
expire 60 s after they are made, so one mix would shrink from round to round),
each running every case once, in an order rotated per round; best of RUNS each.
Every case pays the same SSH and module start-up, so the ratio is the module's
cost against the pipeline's where an operator would really use either (the
fleet issue's target: defaults <= 1.0x).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from netstate_lab import Lab

ROOT = Path(__file__).resolve().parents[2]
SOCKETS = int(os.environ.get("NETSTATE_BENCH_MODULE_SOCKETS", "300000"))
RUNS = 5  # best of 5: one round is a fresh 300k-socket host, and single runs vary by 10-20% here


def _timed(cmd, env):
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return took


def _round(bindir, env, round_index, took, seen):
    """One fresh lab host with a fresh mix; every case once, starting with a different case each round."""
    lab = Lab.create(hosts=1, ssh=True)
    try:
        host = lab.hosts[0]
        scenario = host.start_scenario("mix", count=SOCKETS, timeout=600)
        inv = str(lab.inventory_path)
        adhoc = [str(bindir / "ansible"), "-i", inv, host.alias]
        cases = {
            "module defaults": [*adhoc, "-m", "netstate.tcp.tcp_state_facts"],
            "module owners: []": [*adhoc, "-m", "netstate.tcp.tcp_state_facts", "-a", '{"owners": []}'],
            "ss | awk": [*adhoc, "-m", "ansible.builtin.shell", "-a", "ss -tan | awk '{print $1}' | sort | uniq -c"],
        }
        _timed([*adhoc, "-m", "ansible.builtin.ping"], env)  # warm-up: host key, control socket, byte code
        names = list(cases)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            took[name].append(_timed(cases[name], env))
        seen.append(sum(scenario.report["expected"].values()))
        scenario.stop()
    finally:
        lab.destroy()


def run() -> str:
    bindir = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
    tmp = tempfile.mkdtemp(prefix="netstate-bench-module-")
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".build" / "collections"),
        ANSIBLE_HOME=str(Path(tmp) / "ansible-home"),
    )
    took = {"module defaults": [], "module owners: []": [], "ss | awk": []}
    seen = []
    try:
        for round_index in range(RUNS):
            _round(bindir, env, round_index, took, seen)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = min(seen)
    best = {name: min(values) for name, values in took.items()}
    median = {name: statistics.median(values) for name, values in took.items()}
    for name, value in best.items():
        print(f"{name}: {value:.2f} s (median {median[name]:.2f} s)", flush=True)
    pipe, pipe_median = best["ss | awk"], median["ss | awk"]
    cells = {name: name.replace("|", "\\|") for name in best}  # a pipe would end the Markdown cell
    rows = "\n".join(
        f"| {cells[name]} | {value:.2f} s | {value / pipe:.2f}x | {median[name]:.2f} s | "
        f"{median[name] / pipe_median:.2f}x |"
        for name, value in best.items()
    )
    return (
        f"## tcp_state_facts through Ansible at {total:,} sockets\n\n"
        f"{RUNS} rounds, each on a fresh SSH lab host with a fresh `mix` scenario (its TIME_WAIT sockets expire "
        "60 s after they are made), running every case once in an order rotated per round, after one warm-up "
        f"ping; best of {RUNS} each (the target's figure), and the median of {RUNS} for comparison.\n\n"
        "| run | best | vs ss \\| awk | median | vs ss \\| awk |\n| --- | ---: | ---: | ---: | ---: |\n"
        f"{rows}\n\n"
        f"- module defaults / ss | awk: {best['module defaults'] / pipe:.2f}x (target <= 1.0x)\n"
    )
