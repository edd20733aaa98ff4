"""Helpers for the tracing tests: run a tracer in a lab host, look at tracefs instances from outside.

tracefs is not mounted on this machine's host mount table (and must stay so): every look at it
happens in a throwaway private mount namespace (`unshare -m`, propagation private by default).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(REPO, ".build", "collections")
INSTANCE = re.compile(r"^netstate-(\d+)-[0-9a-f]+$")

# Runs inside a lab host: one trace session, then the churn fact of each namespace inode given.
TRACER = r"""
import json, resource, sys
from ansible_collections.netstate.tcp.plugins.module_utils import _trace
seconds = float(sys.argv[1])
inodes = [int(x) for x in sys.argv[2:]]
warnings = []
try:
    trace = _trace.collect_churn(seconds, warnings=warnings)
except _trace.TraceUnavailable as err:
    print(json.dumps({"unavailable": str(err), "warnings": warnings}))
    sys.exit(0)
churn = {str(i): trace.for_namespace(i, None, 10) for i in inodes}
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu = usage.ru_utime + usage.ru_stime
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so it would report the parent's peak
with open("/proc/self/status") as status:
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"churn": churn, "warnings": warnings, "maxrss_kib": hwm, "cpu_seconds": cpu}))
"""

_LOOK = (
    "mount -t tracefs nodev /sys/kernel/tracing || exit 3; cd /sys/kernel/tracing/instances || exit 3; "
    'for d in netstate-*; do [ -d "$d" ] && echo "$d $(cat $d/events/sock/inet_sock_set_state/enable)"; done; true'
)


def tracefs_instances():
    """{name: event enabled (bool)} of the netstate-* tracefs instances, seen from a private mount namespace."""
    res = subprocess.run(["unshare", "-m", "sh", "-c", _LOOK], capture_output=True, text=True, timeout=30, check=False)
    if res.returncode:
        raise RuntimeError(f"cannot look at tracefs: {res.stderr.strip()}")
    found = {}
    for line in res.stdout.splitlines():
        name, _sep, enabled = line.partition(" ")
        found[name] = enabled.strip() == "1"
    return found


def instances_of(pids):
    """The netstate-* instances whose owner pid is one of `pids`."""
    pids = {int(p) for p in pids}
    return [name for name in tracefs_instances() if INSTANCE.match(name) and int(INSTANCE.match(name).group(1)) in pids]


def env():
    environ = dict(os.environ)
    environ["PYTHONPATH"] = COLLECTIONS
    return environ


def start_tracer(host, seconds, inodes, user_args=(), prelude="", *, python=(sys.executable,)):
    """A tracer process (Popen) inside `host`; its pid owns the instance (ip netns exec execs).

    `user_args`: a command that wraps the tracer (e.g. unshare). `python`: the argv that runs Python
    (the nobody fixture's ``nobody.command()`` runs it as nobody). `prelude`: Python run before the
    session (after the imports), e.g. to make the setup fail.
    """
    script = TRACER.replace("warnings = []\n", prelude + "\nwarnings = []\n", 1)
    cmd = host.exec_args([*user_args, *python, "-c", script, str(seconds), *[str(i) for i in inodes]])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())


def wait_tracing(pid, timeout=30.0):
    """Wait until the instance of `pid` exists with its event enabled; returns its name."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for name, enabled in tracefs_instances().items():
            match = INSTANCE.match(name)
            if match and int(match.group(1)) == pid and enabled:
                return name
        time.sleep(0.1)
    raise AssertionError(f"tracer {pid} never enabled its tracefs instance")


def tracer_result(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out)


def wait_done(scenario, timeout=60.0):
    """The scenario's report once its churn ended (report['done'])."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with open(scenario.report_path, encoding="utf-8") as f:
            report = json.load(f)
        if "done" in report:
            return report
        time.sleep(0.1)
    raise AssertionError(f"{scenario} never finished its churn")


def wait_tracing_in(netns_inode, timeout=120.0):
    """Wait until a process of network namespace `netns_inode` has its instance enabled; returns its pid."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for name, enabled in tracefs_instances().items():
            match = INSTANCE.match(name)
            if not (match and enabled):
                continue
            pid = int(match.group(1))
            try:
                if os.stat(f"/proc/{pid}/ns/net").st_ino == netns_inode:
                    return pid
            except OSError:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no tracer of namespace {netns_inode} enabled its tracefs instance")
