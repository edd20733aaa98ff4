# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Helpers the integration tests share: facts gathered inside a lab namespace, and what ss, /proc and
Ansible say there. Imported by basename (pytest's prepend import mode puts tests/integration on sys.path).

gather_all(host, **options)   _facts.gather_facts run inside the namespace (ip netns exec, the code the module runs)
gather(host, **options)       its ``tcp_state``
ss_rows(host, state)          (Recv-Q, Send-Q, local, peer) of each socket ss lists in ``state``
netstat_counter(host, name)   a counter of /proc/net/netstat read inside the namespace
facts_over_ansible(...)       tcp_state_facts run by ``ansible -o`` over an inventory: {alias: tcp_state}
bridge_connections(...)       connections between two bridged lab hosts (Lab.add_bridge), some held, some closed
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = str(ROOT / ".build" / "collections")
VENV_BIN = Path(sys.executable).parent

GATHER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.netstate.tcp.plugins.module_utils import _facts
options = _facts.normalize_options(json.loads(sys.argv[2]))
print(json.dumps(_facts.gather_facts(options)))
"""


def gather_all(host, **options):
    """Everything gather_facts returns (tcp_state and, with the namespaces option, tcp_state_namespaces)."""
    res = host.run([sys.executable, "-c", GATHER, COLLECTIONS, json.dumps(options)], timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    return json.loads(res.stdout)


def gather(host, **options):
    return gather_all(host, **options)["tcp_state"]


def ss_rows(host, state):
    """(Recv-Q, Send-Q, local, peer) of every socket in ss state ``state`` inside the namespace."""
    out = host.run(["ss", "-Htan", "state", state], check=True).stdout
    rows = []
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 4:
            rows.append((int(words[0]), int(words[1]), words[2], words[3]))
    return rows


def netstat_counter(host, name, section="TcpExt"):
    """A counter straight from /proc/net/netstat inside the namespace."""
    lines = [line.split() for line in host.run(["cat", "/proc/net/netstat"], check=True).stdout.splitlines()]
    for names, values in zip(lines[0::2], lines[1::2]):
        if names and names[0] == f"{section}:" and name in names:
            return int(values[names.index(name)])
    raise AssertionError(f"{section} {name} not in /proc/net/netstat")


def facts_over_ansible(env, inventory, pattern, args):
    """Run ``ansible PATTERN -m netstate.tcp.tcp_state_facts -a ARGS -o``; every host must succeed.

    Returns {alias: tcp_state}.
    """
    res = subprocess.run(
        [
            str(VENV_BIN / "ansible"),
            "-i",
            inventory,
            pattern,
            "-m",
            "netstate.tcp.tcp_state_facts",
            "-a",
            json.dumps(args),
            "-o",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    results = {}
    for line in res.stdout.splitlines():
        alias, _sep, rest = line.partition(" | ")
        status, _arrow, payload = rest.partition(" => ")
        assert status.startswith("SUCCESS"), line
        results[alias.strip()] = json.loads(payload)["ansible_facts"]["tcp_state"]
    return results


def bridge_connections(lab, client, server, held, closed):
    """Connections from host ``client`` to a listener on host ``server``'s bridge address (Lab.add_bridge).

    ``held`` stay ESTABLISHED; ``closed`` more are closed by the client first (TIME_WAIT in the client's
    namespace). Each socket is made inside its host's namespace (setns) and kept by this process.
    Returns (listener port, [sockets to close when done]).
    """
    from ansible_collections.netstate.tcp.plugins.module_utils import _netns  # noqa: PLC0415

    client, server = lab.host(client), lab.host(server)
    keep = []
    with _netns.entered(f"/run/netns/{server.name}"):
        listener = socket.socket()
        listener.bind((lab.bridge[server.alias], 0))
        listener.listen(held + closed + 16)
    keep.append(listener)
    try:
        with _netns.entered(f"/run/netns/{client.name}"):
            clients = [socket.socket() for _i in range(held + closed)]
        for index, sock in enumerate(clients):
            sock.settimeout(10)
            sock.connect(listener.getsockname())
            accepted, _peer = listener.accept()
            if index < held:
                keep += [sock, accepted]
            else:
                sock.close()  # the client closes first: TIME_WAIT on its side
                accepted.close()
    except BaseException:
        for sock in keep:
            sock.close()
        raise
    return listener.getsockname()[1], keep
