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

Where the time goes: the host's interpreter is a small sh wrapper around
/usr/bin/python3 (every case runs one Python process on the host: the module,
or the shell module that runs the pipeline). It logs when that process started
and ended, and the CPU time of it and its children (`times`). What is left of a
run's wall time is the controller's (ansible start-up, building the module's
payload, reading the result) and SSH's. The wrapper costs every case the same
two `date` calls.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from netstate_lab import Lab
from netstate_lab.lab import HOST_PYTHON

ROOT = Path(__file__).resolve().parents[2]
SOCKETS = int(os.environ.get("NETSTATE_BENCH_MODULE_SOCKETS", "300000"))
RUNS = 5  # best of 5: one round is a fresh 300k-socket host, and single runs vary by 10-20% here
# the lab host shares this machine's filesystem, so the wrapper and its log are plain local files;
# `times` runs in the wrapper's own shell (not a subshell): its second line is the children's CPU time
WRAPPER = """#!/bin/sh
start=$(date +%s.%N)
{python} "$@"
rc=$?
end=$(date +%s.%N)
echo "$start $end" >> {log}
times >> {log}
exit $rc
"""
_TIMES = re.compile(r"(\d+)m([\d.]+)s")


def _host_times(log):
    """(wall, CPU) seconds of the run's one Python process on the host, from the wrapper's log lines."""
    stamps, _shell, children = log.read_text(encoding="ascii").splitlines()
    log.unlink()
    start, end = map(float, stamps.split())
    return end - start, sum(int(minutes) * 60 + float(seconds) for minutes, seconds in _TIMES.findall(children))


def _timed(cmd, env, log):
    """(wall, host wall, host CPU) seconds of one ansible run."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return (took, *_host_times(log))


def _round(bindir, env, round_index, took, seen, *, wrapper, log):
    """One fresh lab host with a fresh mix; every case once, starting with a different case each round."""
    lab = Lab.create(hosts=1, ssh=True)
    try:
        host = lab.hosts[0]
        scenario = host.start_scenario("mix", count=SOCKETS, timeout=600)
        inv = str(lab.inventory_path)
        adhoc = [str(bindir / "ansible"), "-i", inv, host.alias, "-e", f"ansible_python_interpreter={wrapper}"]
        cases = {
            "module defaults": [*adhoc, "-m", "netstate.tcp.tcp_state_facts"],
            "module owners: []": [*adhoc, "-m", "netstate.tcp.tcp_state_facts", "-a", '{"owners": []}'],
            "ss | awk": [*adhoc, "-m", "ansible.builtin.shell", "-a", "ss -tan | awk '{print $1}' | sort | uniq -c"],
        }
        _timed([*adhoc, "-m", "ansible.builtin.ping"], env, log)  # warm-up: host key, control socket, byte code
        names = list(cases)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            took[name].append(_timed(cases[name], env, log))
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
    wrapper, log = Path(tmp) / "python3", Path(tmp) / "host-times.log"
    wrapper.write_text(WRAPPER.format(python=HOST_PYTHON, log=log), encoding="ascii")
    wrapper.chmod(0o755)
    took = {"module defaults": [], "module owners: []": [], "ss | awk": []}
    seen = []
    try:
        for round_index in range(RUNS):
            _round(bindir, env, round_index, took, seen, wrapper=wrapper, log=log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = min(seen)
    best = {name: min(run[0] for run in runs) for name, runs in took.items()}
    median = {name: statistics.median(run[0] for run in runs) for name, runs in took.items()}
    # medians of the parts: (wall, on the host, host CPU, controller and SSH)
    parts = {
        name: [statistics.median(values) for values in zip(*[(w, hw, cpu, w - hw) for w, hw, cpu in runs])]
        for name, runs in took.items()
    }
    for name, value in best.items():
        print(f"{name}: {value:.2f} s (median {median[name]:.2f} s)", flush=True)
    pipe, pipe_median = best["ss | awk"], median["ss | awk"]
    cells = {name: name.replace("|", "\\|") for name in best}  # a pipe would end the Markdown cell
    rows = "\n".join(
        f"| {cells[name]} | {value:.2f} s | {value / pipe:.2f}x | {median[name]:.2f} s | "
        f"{median[name] / pipe_median:.2f}x |"
        for name, value in best.items()
    )
    split = "\n".join(
        f"| {cells[name]} | {wall:.2f} s | {host:.2f} s | {cpu:.2f} s | {rest:.2f} s |"
        for name, (wall, host, cpu, rest) in parts.items()
    )
    return (
        f"## tcp_state_facts through Ansible at {total:,} sockets\n\n"
        f"{RUNS} rounds, each on a fresh SSH lab host with a fresh `mix` scenario (its TIME_WAIT sockets expire "
        "60 s after they are made), running every case once in an order rotated per round, after one warm-up "
        f"ping; best of {RUNS} each (the target's figure), and the median of {RUNS} for comparison.\n\n"
        "| run | best | vs ss \\| awk | median | vs ss \\| awk |\n| --- | ---: | ---: | ---: | ---: |\n"
        f"{rows}\n\n"
        f"- module defaults / ss | awk: {best['module defaults'] / pipe:.2f}x (target <= 1.0x)\n\n"
        f"Where the time goes, medians of the same {RUNS} runs: the host's Python process (the module, or the shell "
        "module and its pipeline) from start to end, its CPU time with its children's, and the rest of the run: "
        "the controller (ansible start-up, building the module's payload, reading the result) and SSH.\n\n"
        "| run | wall | on the host | host CPU | controller and SSH |\n| --- | ---: | ---: | ---: | ---: |\n"
        f"{split}\n"
    )
