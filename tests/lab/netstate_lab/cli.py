"""Command line of the lab: ``netstate-lab up|down|status|scenario start|scenario stop|cleanup``.

Errors print one line on stderr and exit with code 2; no tracebacks.
``up`` hands the lab to a small keeper process (the run's owner, so ``cleanup --stale`` leaves the lab
alone while it lives); the keeper destroys the lab on ``down``, on SIGTERM, or after ``--ttl`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from netstate_lab.lab import BASE_TOOLS, SSH_TOOLS, Lab, LabError, check_prerequisites, cleanup_stale, pid_alive
from netstate_lab.scenario import KINDS

EXIT_ERROR = 2


def _print(data):
    print(json.dumps(data, indent=1, sort_keys=True))


def _lab_summary(lab):
    data = lab.to_dict()
    data["keeper_pid"] = lab.owner_pid
    return data


def cmd_up(args):
    check_prerequisites(BASE_TOOLS + (() if args.no_ssh else SSH_TOOLS), purpose="lab hosts")
    state_dir = os.path.abspath(args.state_dir) if args.state_dir else None
    keeper = [
        sys.executable,
        "-m",
        "netstate_lab.cli",
        "_keep",
        "--hosts",
        str(args.hosts),
        "--ttl",
        str(args.ttl),
        "--ssh-port",
        str(args.ssh_port),
    ]
    if state_dir:
        keeper += ["--state-dir", state_dir]
    if args.no_ssh:
        keeper.append("--no-ssh")
    if args.unreachable_json:
        keeper += ["--unreachable-json", args.unreachable_json]
    env = dict(os.environ)
    parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(
        keeper,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    line = proc.stdout.readline()
    proc.stdout.close()
    try:
        msg = json.loads(line)
    except ValueError:
        proc.wait(30)
        raise LabError(f"lab keeper exited ({proc.returncode}) without a result") from None
    if "error" in msg:
        proc.wait(60)
        raise LabError(msg["error"])
    _print(msg)
    return 0


def cmd_keep(args):
    """The keeper: create the lab, print its summary on stdout (one line), hold it, destroy it."""
    try:
        unreachable = json.loads(args.unreachable_json) if args.unreachable_json else []
        if not isinstance(unreachable, list):
            raise LabError("--unreachable-json must be a JSON list")
        lab = Lab.create(
            hosts=args.hosts,
            ssh=not args.no_ssh,
            state_dir=args.state_dir,
            ssh_port=args.ssh_port,
            unreachable=unreachable,
        )
    except (LabError, OSError, ValueError, subprocess.SubprocessError) as exc:
        sys.stdout.write(json.dumps({"error": str(exc)}) + "\n")
        sys.stdout.flush()
        return EXIT_ERROR
    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    sys.stdout.write(json.dumps(_lab_summary(lab)) + "\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    os.close(devnull)
    end = time.monotonic() + args.ttl
    try:
        while time.monotonic() < end:
            if signal.sigtimedwait(stops, min(60.0, max(0.1, end - time.monotonic()))) is not None:
                break
            if lab.destroyed or not os.path.exists(lab.state_path):
                break
    finally:
        lab.destroy()
    return 0


def cmd_down(args):
    lab = Lab.attach(args.state_dir)
    if lab.destroyed:
        _print({"run_id": lab.run_id, "destroyed": True, "already": True})
        return 0
    if pid_alive(lab.owner_pid, lab.owner_start) and lab.owner_pid != os.getpid():
        os.kill(lab.owner_pid, signal.SIGTERM)
        end = time.monotonic() + 60
        while pid_alive(lab.owner_pid, lab.owner_start) and time.monotonic() < end:
            time.sleep(0.05)
    lab.destroy()  # idempotent: whatever the keeper did not remove
    _print({"run_id": lab.run_id, "destroyed": True, "namespaces": [h.name for h in lab.hosts]})
    return 0


def cmd_status(args):
    lab = Lab.attach(args.state_dir)
    data = _lab_summary(lab)
    data["keeper_alive"] = pid_alive(lab.owner_pid, lab.owner_start)
    for sd, sc in zip(data["scenarios"], lab.scenarios):
        sd["alive"] = sc.alive()
    _print(data)
    return 0


def cmd_scenario_start(args):
    lab = Lab.attach(args.state_dir)
    if lab.destroyed:
        raise LabError(f"lab {lab.run_id} in {args.state_dir} is destroyed")
    options = {}
    for key in ("backlog", "rcvbuf", "sndbuf", "workers", "rate", "delay", "comm"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    sc = lab.host(args.host).start_scenario(
        args.kind, count=args.count, port=args.port, hold=args.hold, pdeathsig=False, **options
    )
    _print(sc.report)
    return 0


def cmd_scenario_stop(args):
    lab = Lab.attach(args.state_dir)
    stopped = lab.host(args.host).stop_scenarios(args.kind)
    _print({"stopped": [{"kind": s.kind, "pid": s.pid} for s in stopped]})
    return 0


def cmd_cleanup(args):
    if not args.stale:
        raise LabError("cleanup needs --stale (sweep leftovers of runs whose creator is gone)")
    _print(cleanup_stale())
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="netstate-lab", description="Lab hosts and TCP-state scenarios for netstate.tcp")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="create lab hosts (prints JSON)")
    up.add_argument("--hosts", type=int, default=3)
    up.add_argument("--state-dir", help="directory for keys, inventory, logs (default /tmp/netstate-lab/<run id>)")
    up.add_argument("--no-ssh", action="store_true", help="bare namespaces without sshd")
    up.add_argument("--ssh-port", type=int, default=22)
    up.add_argument("--ttl", type=float, default=7200.0, help="destroy the lab by itself after this many seconds")
    up.add_argument(
        "--unreachable-json",
        help='extra unreachable inventory hosts, JSON list of names or {"name", "groups", "vars"}',
    )
    up.set_defaults(func=cmd_up)

    keep = sub.add_parser("_keep", help=argparse.SUPPRESS)
    keep.add_argument("--hosts", type=int, default=3)
    keep.add_argument("--state-dir")
    keep.add_argument("--no-ssh", action="store_true")
    keep.add_argument("--ssh-port", type=int, default=22)
    keep.add_argument("--ttl", type=float, default=7200.0)
    keep.add_argument("--unreachable-json")
    keep.set_defaults(func=cmd_keep)

    down = sub.add_parser("down", help="destroy a lab")
    down.add_argument("--state-dir", required=True)
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="print a lab's state")
    status.add_argument("--state-dir", required=True)
    status.set_defaults(func=cmd_status)

    sc = sub.add_parser("scenario", help="start/stop scenarios")
    scsub = sc.add_subparsers(dest="scenario_command", required=True)
    start = scsub.add_parser("start", help="start a scenario; prints its report once the states exist")
    start.add_argument("--state-dir", required=True)
    start.add_argument("--host", required=True, help="alias (h1) or namespace name")
    start.add_argument("--kind", required=True, choices=KINDS)
    start.add_argument("--count", type=int)
    start.add_argument("--port", type=int)
    start.add_argument("--hold", type=float, default=1800.0, help="seconds to hold the states (then it exits)")
    start.add_argument("--backlog", type=int)
    start.add_argument("--rcvbuf", type=int)
    start.add_argument("--sndbuf", type=int)
    start.add_argument("--workers", type=int)
    start.add_argument("--rate", type=int, help="churn kinds: connections per second")
    start.add_argument("--delay", type=float, help="churn kinds: seconds between ready and the first connection")
    start.add_argument("--comm", help="the scenario process's name (any length; the kernel keeps 15 bytes)")
    start.set_defaults(func=cmd_scenario_start)
    stop = scsub.add_parser("stop", help="stop scenarios on a host")
    stop.add_argument("--state-dir", required=True)
    stop.add_argument("--host", required=True)
    stop.add_argument("--kind", choices=KINDS)
    stop.set_defaults(func=cmd_scenario_stop)

    cl = sub.add_parser("cleanup", help="sweep leftovers of earlier runs")
    cl.add_argument("--stale", action="store_true")
    cl.set_defaults(func=cmd_cleanup)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (LabError, OSError, subprocess.SubprocessError) as exc:
        print(f"netstate-lab: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("netstate-lab: interrupted", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
