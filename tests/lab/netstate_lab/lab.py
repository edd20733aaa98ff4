"""Lab hosts: network namespaces with loopback, their own sshd and a private /etc/sysctl.d.

Every run has an id ``nsl-<6 hex>``; its namespaces are ``<id>-h1`` ... ``<id>-hN``. A registry entry
``/run/netstate-lab/<id>.json`` (written before anything is created) records the creating process, the
namespaces and the pids the run started, so ``cleanup_stale()`` can sweep what a crashed run left behind
without touching a run whose creator is still alive.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time

import yaml

from netstate_lab.scenario import DEFAULT_COUNTS, KINDS, write_json

REGISTRY_DIR = "/run/netstate-lab"
DEFAULT_BASE_DIR = "/tmp/netstate-lab"
NETNS_RUN = "/run/netns"
NETNS_ETC = "/etc/netns"
PREFIX = "nsl-"
RUN_ID_RE = re.compile(r"^(nsl-[0-9a-f]{6})(?:-|$)")
STATE_FILE = "lab.json"
BRIDGE_NAME = "nslbr0"
# the interpreter the lab inventory gives every host (the namespaces share this machine's filesystem)
HOST_PYTHON = "/usr/bin/python3"
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOOL_PACKAGES = {
    "ip": "iproute2",
    "ss": "iproute2",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "ssh": "openssh-client",
    "socat": "socat",
    "nft": "nftables",
}
BASE_TOOLS = ("ip",)
SSH_TOOLS = ("ss", "sshd", "ssh-keygen", "socat")
SCENARIO_TOOLS = {"syn_recv": ("nft",), "conntrack": ("nft",)}


class LabError(Exception):
    """The lab could not do what was asked; the message says why."""


class PrerequisiteError(LabError):
    """Something the lab needs is missing (root, a command)."""


class ScenarioError(LabError):
    """A scenario could not make its states."""


# --------------------------------------------------------------------------- helpers


def missing_tools(tools):
    return [t for t in tools if shutil.which(t) is None]


def check_prerequisites(tools=BASE_TOOLS + SSH_TOOLS, purpose="the lab"):
    """Raise PrerequisiteError naming everything missing: root and the commands in ``tools`` (on PATH)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("root (network namespaces need CAP_SYS_ADMIN)")
    for tool in missing_tools(tools):
        pkg = TOOL_PACKAGES.get(tool)
        problems.append(f"{tool} (Debian package {pkg})" if pkg else tool)
    if problems:
        raise PrerequisiteError(f"missing prerequisites for {purpose}: {', '.join(problems)}")


def proc_start(pid):
    """Start time (clock ticks since boot) of ``pid``, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
    except OSError:
        return None
    return int(data.rsplit(")", 1)[1].split()[19])


def pid_alive(pid, start=None):
    if not pid:
        return False
    now = proc_start(pid)
    if now is None:
        return False
    return start is None or now == start


def netns_inode(name):
    try:
        return os.stat(os.path.join(NETNS_RUN, name)).st_ino
    except OSError:
        return None


def pid_netns_inode(pid):
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _pdeathsig():
    import ctypes  # noqa: PLC0415

    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)


def _run(args, check=True, timeout=60, **kw):
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and res.returncode != 0:
        raise LabError(f"{shlex.join(args)} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res


def netns_pids(name):
    res = _run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def kill_pids(pids, grace=3.0):
    """SIGTERM, wait up to ``grace`` seconds, SIGKILL what is left. ``pids``: [(pid, start or None)]."""
    alive = []
    for pid, start in pids:
        if pid_alive(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            alive.append((pid, start))
    end = time.monotonic() + grace
    while alive and time.monotonic() < end:
        for pid, _start in alive:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        alive = [(p, s) for p, s in alive if pid_alive(p, s) and not _zombie(p)]
        if alive:
            time.sleep(0.05)
    for pid, start in alive:
        if pid_alive(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for pid, _start in alive:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def teardown_netns(name, extra_pids=()):
    """Kill every process in namespace ``name`` (and ``extra_pids`` still in it), delete it and /etc/netns/<name>."""
    inode = netns_inode(name)
    victims = []
    for pid, start in extra_pids:
        if pid and pid_alive(pid, start) and (inode is None or pid_netns_inode(pid) == inode):
            victims.append((pid, start))
    if inode is not None:
        for _round in range(3):
            pids = [(p, proc_start(p)) for p in netns_pids(name) if p != os.getpid()]
            if not pids and not victims:
                break
            kill_pids(victims + pids)
            victims = []
        _run(["ip", "netns", "del", name], check=False)
    elif victims:
        kill_pids(victims)
    etc = os.path.join(NETNS_ETC, name)
    if os.path.isdir(etc) and not os.path.islink(etc):
        shutil.rmtree(etc, ignore_errors=True)


@contextlib.contextmanager
def _locked(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------- scenario


class Scenario:
    """A scenario process inside a lab host (see netstate_lab.scenario)."""

    def __init__(self, host, kind, pid, start, *, report, report_path, log_path, proc=None):
        self.host = host
        self.kind = kind
        self.pid = pid
        self.start = start
        self.report = report
        self.report_path = report_path
        self.log_path = log_path
        self._proc = proc

    def alive(self):
        return pid_alive(self.pid, self.start) and not _zombie(self.pid)

    def stop(self, grace=5.0):
        """Stop the scenario process (by pid, SIGTERM then SIGKILL) and forget it in the lab state."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(grace)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(10)
        else:
            inode = self.host.netns_inode
            if self.alive() and (inode is None or pid_netns_inode(self.pid) == inode):
                kill_pids([(self.pid, self.start)], grace)
        self.host.lab._forget_scenario(self)

    def to_dict(self):
        return {
            "host": self.host.alias,
            "kind": self.kind,
            "pid": self.pid,
            "start": self.start,
            "report_path": self.report_path,
            "log_path": self.log_path,
        }

    def __repr__(self):
        return f"<Scenario {self.kind} pid={self.pid} on {self.host.alias}>"


# --------------------------------------------------------------------------- host


class LabHost:
    """One lab host: a network namespace (``name``) known by its ``alias`` (h1, h2, ...)."""

    def __init__(self, lab, alias, name, *, ssh_port=None, sshd_pid=None, sshd_start=None, netns_inode=None):
        self.lab = lab
        self.alias = alias
        self.name = name
        self.ssh_port = ssh_port
        self.sshd_pid = sshd_pid
        self.sshd_start = sshd_start
        self.netns_inode = netns_inode

    @property
    def netns_dir(self):
        return os.path.join(NETNS_ETC, self.name)

    @property
    def sysctl_dir(self):
        """/etc/netns/<ns>/sysctl.d: seen as /etc/sysctl.d by processes started with ip netns exec (sshd too)."""
        return os.path.join(self.netns_dir, "sysctl.d")

    @property
    def dir(self):
        return os.path.join(self.lab.state_dir, "hosts", self.alias)

    def exec_args(self, args):
        if isinstance(args, str):
            args = ["sh", "-c", args]
        return ["ip", "netns", "exec", self.name, *[str(a) for a in args]]

    def run(self, args, *, check=False, timeout=60, input=None, env=None):
        """Run ``args`` (list, or str for sh -c) inside the namespace; CompletedProcess with text output."""
        return subprocess.run(
            self.exec_args(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            input=input,
            env=env,
        )

    def pids(self):
        return netns_pids(self.name)

    def sysctl(self, name):
        """Value of sysctl ``name`` inside this namespace (str)."""
        res = self.run(["cat", "/proc/sys/" + name.replace(".", "/")])
        if res.returncode:
            raise LabError(f"cannot read {name} in {self.name}: {res.stderr.strip()}")
        return res.stdout.strip()

    def set_sysctl(self, name, value):
        path = "/proc/sys/" + name.replace(".", "/")
        res = self.run(["sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh", str(value), path])
        if res.returncode:
            raise LabError(f"cannot set {name} in {self.name}: {res.stderr.strip()}")

    def ss_count(self, state, filter_expr=""):
        """Number of TCP sockets in ``state`` (ss state name, e.g. close-wait) per ``ss -tan`` in the namespace."""
        cmd = ["ss", "-Htan", "state", state]
        if filter_expr:
            cmd += shlex.split(filter_expr)
        res = self.run(cmd, check=True)
        return len([line for line in res.stdout.splitlines() if line.strip()])

    @property
    def scenarios(self):
        return [s for s in self.lab.scenarios if s.host is self]

    def start_scenario(self, kind, count=None, *, port=None, hold=1800, timeout=None, pdeathsig=None, **options):
        """Start scenario ``kind`` in this host; returns once its states exist (Scenario with .pid, .report).

        options: backlog (listen_overflow), rcvbuf/sndbuf (fin_wait1_zero_window), workers (mix),
        comm (any kind: the scenario's process name, str or raw bytes, set with prctl(PR_SET_NAME)).
        """
        if kind not in KINDS:
            raise ScenarioError(f"unknown scenario kind {kind!r}; valid kinds: {', '.join(KINDS)}")
        check_prerequisites(("ip", *SCENARIO_TOOLS.get(kind, ())), purpose=f"scenario {kind}")
        if count is None:
            count = DEFAULT_COUNTS[kind]
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 2000000:
            raise ScenarioError(f"count must be an integer between 1 and 2000000, got {count!r}")
        if timeout is None:
            timeout = 300 if kind == "mix" else 120
        if pdeathsig is None:
            pdeathsig = self.lab.pdeathsig
        os.makedirs(os.path.join(self.dir), exist_ok=True)
        tag = f"{kind}-{time.time_ns()}"
        report_path = os.path.join(self.dir, f"scenario-{tag}.json")
        log_path = os.path.join(self.dir, f"scenario-{tag}.log")
        cmd = [
            sys.executable,
            "-m",
            "netstate_lab.run_scenario",
            "--kind",
            kind,
            "--count",
            str(int(count)),
            "--report",
            report_path,
            "--hold",
            str(float(hold)),
            "--timeout",
            str(float(timeout)),
        ]
        if port:
            cmd += ["--port", str(int(port))]
        if kind in ("syn_recv", "conntrack"):
            cmd += ["--nft", shutil.which("nft")]
        for key, value in sorted(options.items()):
            if key == "comm":
                # the process name as raw bytes (str: its UTF-8); argv carries any bytes but NUL
                cmd += ["--comm", os.fsdecode(value)]
                continue
            if key not in ("backlog", "rcvbuf", "sndbuf", "workers", "block", "rate", "delay"):
                valid = "backlog, rcvbuf, sndbuf, workers, block, rate, delay, comm"
                raise ScenarioError(f"unknown scenario option {key!r}; valid: {valid}")
            cmd += [f"--{key}", str(float(value) if key == "delay" else int(value))]
        if pdeathsig:
            cmd.append("--pdeathsig")
        env = dict(os.environ)
        env["PYTHONPATH"] = PACKAGE_PARENT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                self.exec_args(cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=not pdeathsig,
            )
        end = time.monotonic() + timeout + 30
        while not os.path.exists(report_path):
            if proc.poll() is not None:
                break
            if time.monotonic() > end:
                proc.kill()
                proc.wait(10)
                raise ScenarioError(f"scenario {kind} on {self.alias} gave no report within {timeout + 30:.0f} s")
            time.sleep(0.05)
        if not os.path.exists(report_path):
            raise ScenarioError(f"scenario {kind} on {self.alias} exited ({proc.returncode}): {_tail(log_path)}")
        report = _read_json(report_path)
        if "error" in report:
            proc.wait(30)
            raise ScenarioError(f"scenario {kind} on {self.alias} failed: {report['error']}")
        report["host"] = self.alias
        report["namespace"] = self.name
        sc = Scenario(
            self,
            kind,
            proc.pid,
            proc_start(proc.pid),
            report=report,
            report_path=report_path,
            log_path=log_path,
            proc=proc if pdeathsig else None,
        )
        self.lab._remember_scenario(sc)
        return sc

    def stop_scenarios(self, kind=None):
        stopped = []
        for sc in list(self.scenarios):
            if kind is None or sc.kind == kind:
                sc.stop()
                stopped.append(sc)
        return stopped

    def to_dict(self):
        return {
            "alias": self.alias,
            "name": self.name,
            "ssh_port": self.ssh_port,
            "sshd_pid": self.sshd_pid,
            "sshd_start": self.sshd_start,
            "netns_inode": self.netns_inode,
            "sysctl_dir": self.sysctl_dir,
        }

    def __repr__(self):
        return f"<LabHost {self.alias} {self.name}>"


def _unreachable_entry(u):
    if isinstance(u, str):
        u = {"name": u}
    if not isinstance(u, dict) or not isinstance(u.get("name"), str) or not u["name"]:
        raise LabError(f"unreachable entries are names or {{name, groups, vars}} mappings, got {u!r}")
    extra = set(u) - {"name", "groups", "vars"}
    if extra:
        raise LabError(
            f"unknown keys in unreachable entry {u['name']}: {', '.join(sorted(extra))}; valid: groups, vars"
        )
    return {"name": u["name"], "groups": list(u.get("groups", ["lab"])), "vars": dict(u.get("vars", {}))}


def _scenario_from(host, sd, report):
    return Scenario(
        host, sd["kind"], sd["pid"], sd["start"], report=report, report_path=sd["report_path"], log_path=sd["log_path"]
    )


def _tail(path, n=5):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.rstrip() for line in f if line.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:]) or "(empty log)"


# --------------------------------------------------------------------------- lab


class Lab:
    """N lab hosts. ``Lab.create()`` makes them, ``Lab.attach(state_dir)`` opens one made elsewhere."""

    def __init__(self, run_id, state_dir, *, ssh, ssh_port, created_state_dir, owner_pid, owner_start, pdeathsig):
        self.run_id = run_id
        self.state_dir = state_dir
        self.ssh = ssh
        self.ssh_port = ssh_port
        self.created_state_dir = created_state_dir
        self.owner_pid = owner_pid
        self.owner_start = owner_start
        self.pdeathsig = pdeathsig
        self.hosts = []
        self.scenarios = []
        self.destroyed = False
        self._procs = []
        self.unreachable = []
        self.bridge = {}  # alias -> address on the shared bridge (add_bridge)

    # ---- paths
    @property
    def prefix(self):
        return self.run_id

    @property
    def registry_path(self):
        return os.path.join(REGISTRY_DIR, f"{self.run_id}.json")

    @property
    def state_path(self):
        return os.path.join(self.state_dir, STATE_FILE)

    @property
    def inventory_path(self):
        return os.path.join(self.state_dir, "inventory.yml")

    @property
    def ssh_config_path(self):
        return os.path.join(self.state_dir, "ssh_config")

    @property
    def known_hosts_path(self):
        return os.path.join(self.state_dir, "known_hosts")

    @property
    def key_path(self):
        return os.path.join(self.state_dir, "id_ed25519")

    @property
    def authorized_keys_path(self):
        return os.path.join(self.state_dir, "authorized_keys")

    def host(self, alias):
        for h in self.hosts:
            if alias in (h.alias, h.name):
                return h
        raise LabError(f"no host {alias!r} in lab {self.run_id}; hosts: {', '.join(h.alias for h in self.hosts)}")

    # ---- create
    @classmethod
    def create(
        cls, hosts=1, ssh=True, *, state_dir=None, ssh_port=22, pdeathsig=True, register_atexit=True, unreachable=()
    ):
        """Create ``hosts`` lab hosts (namespaces ``nsl-<6 hex>-h1``...), with sshd when ``ssh``.

        pdeathsig: sshd and scenario processes get SIGTERM when the creating thread exits.
        unreachable: extra inventory hosts nobody answers for (names or {name, groups, vars}); they go
        into group ``lab_unreachable`` and, unless ``groups`` says otherwise, into ``lab``.
        """
        unreachable = [_unreachable_entry(u) for u in unreachable]
        if not 1 <= int(hosts) <= 64:
            raise LabError(f"hosts must be between 1 and 64, got {hosts}")
        check_prerequisites(BASE_TOOLS + (SSH_TOOLS if ssh else ()), purpose="lab hosts" + (" with ssh" if ssh else ""))
        os.makedirs(REGISTRY_DIR, exist_ok=True)
        os.makedirs(NETNS_ETC, exist_ok=True)
        for _attempt in range(100):
            run_id = PREFIX + secrets.token_hex(3)
            reg = os.path.join(REGISTRY_DIR, f"{run_id}.json")
            try:
                fd = os.open(reg, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            os.close(fd)
            if not any(n.startswith(run_id + "-") for n in _list_netns()):
                break
            os.unlink(reg)
        else:
            raise LabError("could not find a free run id")
        created_state_dir = False
        if state_dir is None:
            state_dir = os.path.join(DEFAULT_BASE_DIR, run_id)
        state_dir = os.path.abspath(state_dir)
        if os.path.exists(os.path.join(state_dir, STATE_FILE)):
            old = _read_json(os.path.join(state_dir, STATE_FILE))
            if not old.get("destroyed"):
                os.unlink(reg)
                raise LabError(f"{state_dir} already holds lab {old.get('run_id')}; run 'netstate-lab down' first")
        if not os.path.isdir(state_dir):
            os.makedirs(state_dir, mode=0o700)
            created_state_dir = True
        lab = cls(
            run_id,
            state_dir,
            ssh=ssh,
            ssh_port=ssh_port,
            created_state_dir=created_state_dir,
            owner_pid=os.getpid(),
            owner_start=proc_start(os.getpid()),
            pdeathsig=pdeathsig,
        )
        lab.unreachable = unreachable
        lab._register()
        if register_atexit:
            atexit.register(lab._atexit)
        try:
            for i in range(1, int(hosts) + 1):
                lab._add_host(f"h{i}")
            if ssh:
                lab._setup_ssh()
            lab.save()
        except BaseException:
            lab.destroy()
            raise
        return lab

    def _register(self):
        data = {
            "run_id": self.run_id,
            "state_dir": self.state_dir,
            "created_state_dir": self.created_state_dir,
            "owner_pid": self.owner_pid,
            "owner_start": self.owner_start,
            "namespaces": [h.name for h in self.hosts],
            "pids": [[h.sshd_pid, h.sshd_start] for h in self.hosts if h.sshd_pid]
            + [[s.pid, s.start] for s in self.scenarios],
            "created_at": time.time(),
        }
        write_json(self.registry_path, data)

    def _add_host(self, alias):
        name = f"{self.run_id}-{alias}"
        host = LabHost(self, alias, name, ssh_port=self.ssh_port if self.ssh else None)
        self.hosts.append(host)
        self._register()  # before the namespace exists: a crash from here on is sweepable
        _run(["ip", "netns", "add", name])
        host.netns_inode = netns_inode(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        os.makedirs(host.sysctl_dir, mode=0o755)
        os.makedirs(host.dir, exist_ok=True)

    def _setup_ssh(self):
        sshd = shutil.which("sshd")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{self.run_id}-client", "-f", self.key_path])
        shutil.copyfile(self.key_path + ".pub", self.authorized_keys_path)
        os.chmod(self.authorized_keys_path, 0o600)
        known = []
        for h in self.hosts:
            hostkey = os.path.join(h.dir, "ssh_host_ed25519_key")
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", h.name, "-f", hostkey])
            with open(hostkey + ".pub", encoding="ascii") as f:
                pub = " ".join(f.read().split()[:2])
            known.append(f"{h.name if h.ssh_port == 22 else f'[{h.name}]:{h.ssh_port}'} {pub}")
            cfg = os.path.join(h.dir, "sshd_config")
            with open(cfg, "w", encoding="ascii") as f:
                f.write(self._sshd_config(h, hostkey))
            _run([sshd, "-t", "-f", cfg])
        with open(self.known_hosts_path, "w", encoding="ascii") as f:
            f.write("\n".join(known) + "\n")
        for h in self.hosts:
            log = os.path.join(h.dir, "sshd.log")
            with open(os.path.join(h.dir, "sshd.stderr"), "ab") as err:
                proc = subprocess.Popen(
                    h.exec_args([sshd, "-D", "-f", os.path.join(h.dir, "sshd_config"), "-E", log]),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    preexec_fn=_pdeathsig if self.pdeathsig else None,  # noqa: PLW1509
                    start_new_session=True,
                )
            self._procs.append(proc)
            h.sshd_pid = proc.pid
            h.sshd_start = proc_start(proc.pid)
            h._proc = proc
        self._register()
        for h in self.hosts:
            self._wait_sshd(h)
        self._write_client_files()

    def _sshd_config(self, h, hostkey):
        return "\n".join(
            [
                "# netstate-lab sshd for " + h.name,
                f"Port {h.ssh_port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {hostkey}",
                f"PidFile {os.path.join(h.dir, 'sshd.pid')}",
                f"AuthorizedKeysFile {self.authorized_keys_path}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "UseDNS no",
                "PrintMotd no",
                "PrintLastLog no",
                "MaxStartups 64:30:128",
                "MaxSessions 64",
                "AcceptEnv LANG LC_*",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )

    def _wait_sshd(self, h, timeout=20.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if h._proc.poll() is not None:
                raise LabError(
                    f"sshd in {h.name} exited ({h._proc.returncode}): "
                    f"{_tail(os.path.join(h.dir, 'sshd.log'))} {_tail(os.path.join(h.dir, 'sshd.stderr'))}"
                )
            res = h.run(["ss", "-Hltn", f"sport = :{h.ssh_port}"], timeout=10)
            if res.stdout.strip():
                return
            time.sleep(0.05)
        raise LabError(f"sshd in {h.name} did not listen on 127.0.0.1:{h.ssh_port} within {timeout:.0f} s")

    def proxy_command(self, h):
        return f"ip netns exec {h.name} socat - TCP:127.0.0.1:{h.ssh_port}"

    def ssh_common_args(self, h):
        return " ".join(
            [
                f"-o ProxyCommand='{self.proxy_command(h)}'",
                f"-o UserKnownHostsFile={self.known_hosts_path}",
                "-o StrictHostKeyChecking=yes",
                "-o IdentitiesOnly=yes",
                "-o LogLevel=ERROR",
            ]
        )

    def _write_client_files(self):
        hosts = {}
        lines = [f"# netstate-lab {self.run_id}: ssh -F {self.ssh_config_path} h1", ""]
        for h in self.hosts:
            hosts[h.alias] = {
                "ansible_host": h.name,
                "ansible_port": h.ssh_port,
                "ansible_user": "root",
                "ansible_ssh_private_key_file": self.key_path,
                "ansible_ssh_common_args": self.ssh_common_args(h),
                "ansible_ssh_host_key_checking": True,
                "ansible_python_interpreter": HOST_PYTHON,
                "lab_netns": h.name,
                "lab_sysctl_dir": h.sysctl_dir,
            }
            lines += [
                f"Host {h.alias} {h.name}",
                f"  HostName {h.name}",
                f"  Port {h.ssh_port}",
                "  User root",
                f"  IdentityFile {self.key_path}",
                "  IdentitiesOnly yes",
                f"  UserKnownHostsFile {self.known_hosts_path}",
                "  StrictHostKeyChecking yes",
                f"  ProxyCommand {self.proxy_command(h)}",
                "  ControlMaster no",
                "  ControlPath none",
                "  LogLevel ERROR",
                "",
            ]
        children = {"lab": {"hosts": hosts}}
        for u in self.unreachable:
            for group in ["lab_unreachable", *u["groups"]]:
                children.setdefault(group, {"hosts": {}})["hosts"][u["name"]] = {
                    "ansible_host": "127.0.0.1",
                    "ansible_port": 1,  # nothing listens: connection refused at once
                    "ansible_user": "root",
                    "ansible_ssh_common_args": "-o ConnectTimeout=3",
                    "ansible_python_interpreter": HOST_PYTHON,
                    **u["vars"],
                }
        inventory = {"all": {"children": children}}
        with open(self.inventory_path, "w", encoding="utf-8") as f:
            f.write(f"---\n# netstate-lab {self.run_id} (generated)\n")
            yaml.safe_dump(inventory, f, default_flow_style=False, sort_keys=False, width=1000)
        with open(self.ssh_config_path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))

    # ---- state
    def to_dict(self):
        return {
            "run_id": self.run_id,
            "state_dir": self.state_dir,
            "ssh": self.ssh,
            "ssh_port": self.ssh_port,
            "created_state_dir": self.created_state_dir,
            "owner_pid": self.owner_pid,
            "owner_start": self.owner_start,
            "pdeathsig": self.pdeathsig,
            "destroyed": self.destroyed,
            "inventory_path": self.inventory_path if self.ssh else None,
            "ssh_config_path": self.ssh_config_path if self.ssh else None,
            "known_hosts_path": self.known_hosts_path if self.ssh else None,
            "key_path": self.key_path if self.ssh else None,
            "hosts": [h.to_dict() for h in self.hosts],
            "unreachable": self.unreachable,
            "scenarios": [s.to_dict() for s in self.scenarios],
        }

    def save(self):
        if os.path.isdir(self.state_dir):
            write_json(self.state_path, self.to_dict())
        if not self.destroyed:
            self._register()

    @classmethod
    def attach(cls, state_dir):
        """Open a lab created elsewhere (e.g. by ``netstate-lab up``) from its state dir."""
        path = os.path.join(os.path.abspath(state_dir), STATE_FILE)
        try:
            data = _read_json(path)
        except (OSError, ValueError) as exc:
            raise LabError(f"no lab in {state_dir}: cannot read {path}: {exc}") from None
        lab = cls(
            data["run_id"],
            data["state_dir"],
            ssh=data["ssh"],
            ssh_port=data["ssh_port"],
            created_state_dir=data["created_state_dir"],
            owner_pid=data["owner_pid"],
            owner_start=data["owner_start"],
            pdeathsig=False,
        )
        lab.destroyed = data.get("destroyed", False)
        lab.unreachable = data.get("unreachable", [])
        for hd in data["hosts"]:
            lab.hosts.append(
                LabHost(
                    lab,
                    hd["alias"],
                    hd["name"],
                    ssh_port=hd["ssh_port"],
                    sshd_pid=hd["sshd_pid"],
                    sshd_start=hd["sshd_start"],
                    netns_inode=hd["netns_inode"],
                )
            )
        for sd in data.get("scenarios", []):
            host = lab.host(sd["host"])
            try:
                report = _read_json(sd["report_path"])
            except (OSError, ValueError):
                report = {}
            lab.scenarios.append(_scenario_from(host, sd, report))
        return lab

    def _remember_scenario(self, sc):
        with _locked(self.state_path + ".lock"):
            self._merge_scenarios_from_disk()
            self.scenarios.append(sc)
            self.save()

    def _forget_scenario(self, sc):
        with _locked(self.state_path + ".lock"):
            self._merge_scenarios_from_disk()
            self.scenarios = [s for s in self.scenarios if not (s.pid == sc.pid and s.start == sc.start)]
            self.save()

    def _merge_scenarios_from_disk(self):
        """Another process (CLI) may have added scenarios: keep ours, add theirs."""
        try:
            data = _read_json(self.state_path)
        except (OSError, ValueError):
            return
        known = {(s.pid, s.start) for s in self.scenarios}
        for sd in data.get("scenarios", []):
            if (sd["pid"], sd["start"]) not in known:
                with contextlib.suppress(LabError):
                    self.scenarios.append(_scenario_from(self.host(sd["host"]), sd, {}))

    # ---- shared bridge
    def add_bridge(self, aliases=None):
        """Put hosts on one Ethernet segment; returns {alias: IPv4 address}.

        A bridge ``nslbr0`` in the first host's namespace with that host's address on it, and a veth
        pair from it to ``eth-lab`` in each other host. Addresses are ``198.18.0.0/15`` (RFC 2544
        benchmarking range, never routed), one /24 per run chosen from the run id, ``.1``, ``.2``...
        in host order. Everything lives inside the lab's namespaces: destroying them removes it.
        """
        hosts = [self.host(alias) for alias in aliases] if aliases else list(self.hosts)
        if len(hosts) < 2 or len({h.name for h in hosts}) != len(hosts):
            raise LabError(f"a bridge needs at least two distinct hosts, got {[h.alias for h in hosts]}")
        if self.bridge:
            raise LabError(f"lab {self.run_id} already has a bridge: {self.bridge}")
        block = int(self.run_id[len(PREFIX) :], 16) % 512
        net = f"198.{18 + block // 256}.{block % 256}"
        first = hosts[0]
        _run(["ip", "-n", first.name, "link", "add", BRIDGE_NAME, "type", "bridge"])
        _run(["ip", "-n", first.name, "addr", "add", f"{net}.1/24", "dev", BRIDGE_NAME])
        _run(["ip", "-n", first.name, "link", "set", BRIDGE_NAME, "up"])
        addresses = {first.alias: f"{net}.1"}
        for index, h in enumerate(hosts[1:], 2):
            port = f"nslv{index}"
            veth = ["type", "veth", "peer", "name", "eth-lab", "netns", h.name]
            _run(["ip", "-n", first.name, "link", "add", port, *veth])
            _run(["ip", "-n", first.name, "link", "set", port, "master", BRIDGE_NAME, "up"])
            _run(["ip", "-n", h.name, "addr", "add", f"{net}.{index}/24", "dev", "eth-lab"])
            _run(["ip", "-n", h.name, "link", "set", "eth-lab", "up"])
            addresses[h.alias] = f"{net}.{index}"
        self.bridge = addresses
        return dict(addresses)

    # ---- destroy
    def destroy(self):
        """Remove every scenario process, sshd, namespace and /etc/netns dir of this run. Idempotent."""
        if self.destroyed:
            return
        with contextlib.suppress(LabError):
            self._merge_scenarios_from_disk()
        for sc in list(self.scenarios):
            with contextlib.suppress(Exception):
                sc.stop(grace=3.0)
        for h in self.hosts:
            extra = [(h.sshd_pid, h.sshd_start)] if h.sshd_pid else []
            teardown_netns(h.name, extra)
        for proc in self._procs:
            with contextlib.suppress(Exception):
                proc.wait(5)
        self.destroyed = True
        self.scenarios = []
        if self.created_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        else:
            self.save()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.registry_path)

    def _atexit(self):
        if not self.destroyed and os.getpid() == self.owner_pid:
            self.destroy()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()
        return False

    def __repr__(self):
        return f"<Lab {self.run_id} hosts={[h.alias for h in self.hosts]} ssh={self.ssh}>"


# --------------------------------------------------------------------------- stale cleanup


def _list_netns():
    try:
        return sorted(os.listdir(NETNS_RUN))
    except OSError:
        return []


def run_is_live(run_id):
    """Whether run ``run_id`` must be left alone, read from its registry entry at this moment.

    Live: its creator is alive, or the entry cannot be read yet and is younger than 60 s (created
    empty with O_EXCL, its content written right after).
    """
    path = os.path.join(REGISTRY_DIR, f"{run_id}.json")
    try:
        data = _read_json(path)
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        try:
            return time.time() - os.stat(path).st_mtime < 60
        except OSError:
            return False
    return pid_alive(data.get("owner_pid"), data.get("owner_start"))


def live_runs():
    """Run ids whose creating process is still alive (see run_is_live)."""
    try:
        entries = os.listdir(REGISTRY_DIR)
    except OSError:
        return set()
    return {entry[:-5] for entry in entries if entry.endswith(".json") and run_is_live(entry[:-5])}


def cleanup_stale():
    """Remove leftovers of lab runs whose creator is gone: processes, namespaces, /etc/netns dirs, run dirs.

    Safe while other processes create, use and sweep labs: a run's registry entry names its live creator
    before any namespace, /etc/netns or state dir of the run exists, and is removed only after them. So
    each leftover is judged by reading its run's entry again after the leftover was seen (run_is_live),
    never by a list of live runs taken earlier: a run registered since then is not swept.

    Returns {"removed": {...}, "skipped_live": [run ids]}.
    """
    check_prerequisites(BASE_TOOLS, purpose="cleanup")
    live = live_runs()

    def stale(run_id):
        if run_id in live:
            return False
        if run_is_live(run_id):  # registered since the first look
            live.add(run_id)
            return False
        return True

    removed = {"runs": [], "namespaces": [], "netns_dirs": [], "state_dirs": []}
    with contextlib.suppress(OSError):
        for entry in sorted(os.listdir(REGISTRY_DIR)):
            run_id = entry[:-5]
            if not entry.endswith(".json") or not stale(run_id):
                continue
            try:
                data = _read_json(os.path.join(REGISTRY_DIR, entry))
            except (OSError, ValueError):
                data = {}
            pids = [(p, s) for p, s in data.get("pids", []) if p]
            for name in data.get("namespaces", []):
                if name in _list_netns():
                    teardown_netns(name, pids)
                    removed["namespaces"].append(name)
            kill_pids([(p, s) for p, s in pids if pid_alive(p, s) and s is not None])
            sd = data.get("state_dir")
            if sd and data.get("created_state_dir") and os.path.isdir(sd):
                shutil.rmtree(sd, ignore_errors=True)
                removed["state_dirs"].append(sd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(REGISTRY_DIR, entry))
            removed["runs"].append(run_id)
    for name in _list_netns():
        m = RUN_ID_RE.match(name)
        if m and stale(m.group(1)):
            teardown_netns(name)
            removed["namespaces"].append(name)
    with contextlib.suppress(OSError):
        for name in os.listdir(NETNS_ETC):
            m = RUN_ID_RE.match(name)
            if m and stale(m.group(1)):
                shutil.rmtree(os.path.join(NETNS_ETC, name), ignore_errors=True)
                removed["netns_dirs"].append(name)
    with contextlib.suppress(OSError):
        for name in os.listdir(DEFAULT_BASE_DIR):
            m = RUN_ID_RE.match(name)
            if m and stale(m.group(1)) and not os.path.exists(os.path.join(REGISTRY_DIR, f"{m.group(1)}.json")):
                shutil.rmtree(os.path.join(DEFAULT_BASE_DIR, name), ignore_errors=True)
                removed["state_dirs"].append(os.path.join(DEFAULT_BASE_DIR, name))
    removed["namespaces"] = sorted(set(removed["namespaces"]))
    return {"removed": removed, "skipped_live": sorted(live)}
