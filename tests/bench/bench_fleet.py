"""Fleet over SSH: the audit against Ansible's own per-host floor (`ansible -m ping`).

A lab of 30 SSH hosts (network namespaces with their own sshd) gets, with the
same inventory and the same forks in the same run:

- `ansible -m ping` (Ansible's floor: connect, ship a module, run it);
- `ansible -m netstate.tcp.tcp_state_facts` ad hoc;
- `playbooks/audit.yml` without prom, and with prom (node_exporter textfile on
  each host).

Each case runs once to warm up, then RUNS rounds run every case in turn (a drift in the
machine's load then reaches every case alike); the median wall time is reported, with the
ratios the fleet issue targets: audit <= 1.25x ping, audit with prom <= 1.1x audit.
One more audit with prom is timed phase by phase (from its PLAY/TASK lines):
where the audit's time over ping goes (start-up, each task, the end).
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

HOSTS = int(os.environ.get("NETSTATE_BENCH_FLEET_HOSTS", "30"))  # smaller for a quick check
FORKS = 5
RUNS = int(os.environ.get("NETSTATE_BENCH_FLEET_RUNS", "5"))
ROOT = Path(__file__).resolve().parents[2]


def _env(tmp):
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".build" / "collections"),
        # Keep Ansible's own files (local tmp, control paths) out of ~/.ansible.
        ANSIBLE_HOME=str(Path(tmp) / "ansible-home"),
        ANSIBLE_FORKS=str(FORKS),
    )
    return env


def _timed(cmd, env, cwd):
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return took


def _phases(cmd, env, cwd):
    """[(phase, seconds)]: start-up until the first PLAY line, each PLAY/TASK until the next line, the end."""
    start = time.perf_counter()
    marks = [("start-up (ansible-playbook until the first play)", start)]
    with subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        for line in proc.stdout:
            if line.startswith(("PLAY [", "TASK [", "PLAY RECAP")):
                marks.append((line.strip().rstrip("*").strip(), time.perf_counter()))
    marks.append(("end", time.perf_counter()))
    return [(name, marks[i + 1][1] - at) for i, (name, at) in enumerate(marks[:-1])]


def _medians(cases, env, cwd):
    """{case: median wall time} of RUNS rounds, each round running every case in turn."""
    took = {name: [] for name in cases}
    for _round in range(RUNS):
        for name, cmd in cases.items():
            took[name].append(_timed(cmd, env, cwd))
    return {name: statistics.median(values) for name, values in took.items()}


def run() -> str:
    bindir = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
    ansible, playbook = str(bindir / "ansible"), str(bindir / "ansible-playbook")
    tmp = tempfile.mkdtemp(prefix="netstate-bench-fleet-")
    lab = Lab.create(hosts=HOSTS, ssh=True)
    try:
        env = _env(tmp)
        inv = str(lab.inventory_path)
        # Lab hosts share this machine's file system: the textfile directory is the bench's own.
        prom_dir = str(Path(tmp) / "textfile")
        out = str(Path(tmp) / "reports")
        audit = [playbook, "-i", inv, str(ROOT / "playbooks" / "audit.yml"), "-e", f"audit_output_dir={out}"]
        cases = {
            "ping": [ansible, "-i", inv, "lab", "-m", "ansible.builtin.ping"],
            "module ad hoc": [ansible, "-i", inv, "lab", "-m", "netstate.tcp.tcp_state_facts"],
            "audit": [*audit, "-e", "audit_hosts=lab"],
            "audit with prom": [
                *audit,
                "-e",
                "audit_hosts=lab",
                "-e",
                '{"audit_formats": ["json", "md", "html", "csv", "prom"]}',
                "-e",
                f"audit_prom_dir={prom_dir}",
            ],
        }
        # Warm up every case once (ssh host keys, control sockets, Python byte code, the textfile
        # directory and the first report) so no case pays its first run alone.
        for cmd in cases.values():
            _timed(cmd, env, tmp)
        took = _medians(cases, env, tmp)
        for name, value in took.items():
            print(f"{name}: {value:.2f} s", flush=True)
        phases = _phases(cases["audit with prom"], env, tmp)
    finally:
        lab.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    ping = took["ping"]
    rows = "\n".join(f"| {name} | {value:.2f} s | {value / ping:.2f}x |" for name, value in took.items())
    return (
        f"## fleet: {HOSTS} lab hosts over SSH, forks {FORKS}\n\n"
        f"Median of {RUNS} rounds, each running every case in turn, same inventory and forks, after one "
        "warm-up run of each case.\n\n"
        "| run | wall time | vs ping |\n| --- | ---: | ---: |\n"
        f"{rows}\n\n"
        f"- audit / ping: {took['audit'] / ping:.2f}x (target <= 1.25x)\n"
        f"- audit with prom / audit: {took['audit with prom'] / took['audit']:.2f}x (target <= 1.1x)\n\n"
        "Where one audit with prom spends its time (one run, PLAY/TASK lines as they are printed):\n\n"
        "| phase | seconds |\n| --- | ---: |\n"
        + "\n".join(f"| {name.replace('|', '/')} | {seconds:.2f} |" for name, seconds in phases)
        + "\n"
    )
