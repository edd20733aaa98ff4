"""Churn tracing (_trace) on real lab churners: who makes the churn, in which namespace, at which rate.

Each test starts a tracer inside a lab host, waits until its tracefs instance is enabled, then
starts the churn scenarios, so every connection falls inside the trace window. The expected
numbers are the scenarios' own counts (report['done']). After every test no tracefs instance of
a tracer we started remains, nor one whose owner is gone.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading

import pytest
from lab_probes import GATHER, facts_over_ansible, gather_all
from trace_probes import (
    INSTANCE,
    instances_of,
    start_tracer,
    tracefs_instances,
    tracer_result,
    wait_done,
    wait_tracing,
    wait_tracing_in,
)

from netstate_lab.lab import pid_alive

COUNT = 150
RATE = 50  # connections per second: 3 s of churn


@pytest.fixture(autouse=True)
def no_instance_left(lab_available):
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) missing")
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    leftovers = instances_of(p.pid for p in started)
    orphans = [n for n in tracefs_instances() if INSTANCE.match(n) and not pid_alive(int(INSTANCE.match(n).group(1)))]
    assert not leftovers, f"tracefs instances of our tracers left behind: {leftovers}"
    assert not orphans, f"tracefs instances whose owner is gone: {orphans}"


def within(value, expected, share=0.2):
    return abs(value - expected) <= share * expected


def by_comm(churn, comm):
    found = [p for p in churn["processes"] if p["comm"] == comm]
    assert len(found) <= 1, found
    return found[0] if found else None


def test_churners_named_per_namespace(bare_lab, no_instance_left):
    lab = bare_lab(hosts=2)
    h1, h2 = lab.hosts
    tracer = start_tracer(h1, 15, [h1.netns_inode, h2.netns_inode])
    no_instance_left.append(tracer)
    wait_tracing(tracer.pid)
    one = h1.start_scenario("churn_client", count=COUNT, rate=RATE, hold=120)
    two = h2.start_scenario("churn_client", count=COUNT // 2, rate=RATE, hold=120)
    done_one, done_two = wait_done(one)["done"], wait_done(two)["done"]
    result = tracer_result(tracer)
    assert "unavailable" not in result, result
    churn1, churn2 = result["churn"][str(h1.netns_inode)], result["churn"][str(h2.netns_inode)]
    assert churn1["source"] == "tracefs"

    churner = by_comm(churn1, "nsl-churner")
    assert churner is not None, churn1["processes"]
    assert churner["pid"] == one.pid
    assert churner["netns"]["inode"] == h1.netns_inode
    made = done_one["connections"]
    assert made == COUNT
    assert within(churner["connects"], made) and within(churner["active_closes"], made), churner
    assert within(churner["connects_per_second"], made / churn1["seconds"]), (churner, churn1["seconds"])
    port = one.report["ports"]["server"][0]
    assert churner["top_peers"][0]["address"] == "127.0.0.1"
    assert churner["top_peers"][0]["port"] == port
    assert churn1["peers"][0]["port"] == port and within(churn1["peers"][0]["connects"], made)

    # the server side closes after the churner's FIN: passive closes, in its own process
    server = by_comm(churn1, "nsl-churn-srv")
    assert server["pid"] == one.report["churn"]["peer_pid"]
    assert within(server["passive_closes"], made) and server["connects"] == 0 and server["active_closes"] == 0

    # softirq: the server sockets' ESTABLISHED -> CLOSE_WAIT ran in the churner's task (loopback) and
    # must not be credited to it, nor to anyone
    assert churner["peer_closes"] == 0 and server["peer_closes"] == 0
    assert churn1["interrupt_events"] >= made

    # the second churner lives in h2: listed there, not in h1
    assert by_comm(churn2, "nsl-churner")["pid"] == two.pid
    assert within(by_comm(churn2, "nsl-churner")["connects"], done_two["connections"])
    assert two.pid not in {p["pid"] for p in churn1["processes"]}
    assert one.pid not in {p["pid"] for p in churn2["processes"]}


def test_server_close_churn_names_the_server(bare_host, no_instance_left):
    tracer = start_tracer(bare_host, 15, [bare_host.netns_inode])
    no_instance_left.append(tracer)
    wait_tracing(tracer.pid)
    sc = bare_host.start_scenario("churn_server_close", count=COUNT, rate=RATE, hold=120)
    made = wait_done(sc)["done"]["connections"]
    churn = tracer_result(tracer)["churn"][str(bare_host.netns_inode)]
    closer = by_comm(churn, "nsl-srv-closer")
    assert closer["pid"] == sc.pid
    assert within(closer["active_closes"], made) and closer["connects"] == 0
    client = by_comm(churn, "nsl-churn-cli")
    assert within(client["connects"], made) and within(client["passive_closes"], made)
    assert closer["peer_closes"] == 0 and client["peer_closes"] == 0
    # the server closes first: its TIME_WAIT sockets sit on the listening port
    port = sc.report["ports"]["server"][0]
    rows = bare_host.run(["ss", "-Htan", "state", "time-wait", f"( sport = :{port} )"], check=True).stdout
    assert within(len(rows.splitlines()), made)


def test_signal_removes_the_instance(bare_host, no_instance_left):
    tracer = start_tracer(bare_host, 30, [bare_host.netns_inode])
    no_instance_left.append(tracer)
    name = wait_tracing(tracer.pid)
    tracer.send_signal(signal.SIGTERM)
    tracer.wait(30)
    assert tracer.returncode == -signal.SIGTERM  # the signal still ends the process, after the cleanup
    assert name not in tracefs_instances()


def test_failed_setup_removes_the_instance(bare_host, no_instance_left):
    # the kernel refuses this filter after the instance exists: the failure path must remove it
    tracer = start_tracer(bare_host, 5, [bare_host.netns_inode], prelude="_trace.EVENT_FILTER = 'no_such_field == 1'")
    no_instance_left.append(tracer)
    result = tracer_result(tracer)
    assert "cannot configure tracefs instance" in result["unavailable"]
    assert not instances_of([tracer.pid])


def test_next_run_sweeps_a_killed_runs_instance(bare_host, no_instance_left):
    killed = start_tracer(bare_host, 30, [bare_host.netns_inode])
    no_instance_left.append(killed)
    name = wait_tracing(killed.pid)
    killed.kill()  # SIGKILL: no cleanup possible
    killed.wait(30)
    assert name in tracefs_instances()
    sweeper = start_tracer(bare_host, 1, [bare_host.netns_inode])
    no_instance_left.append(sweeper)
    result = tracer_result(sweeper)
    assert any(name in w for w in result["warnings"]), result["warnings"]
    assert name not in tracefs_instances()


def test_an_existing_tracefs_mount_is_used(bare_host, no_instance_left):
    # tracefs already mounted where the tracer runs (a private mount namespace made here): no second mount
    mount_first = ["unshare", "-m", "sh", "-c", 'mount -t tracefs nodev /sys/kernel/tracing && exec "$0" "$@"']
    probe = "_trace.mount_private_tracefs = None; assert _trace.find_tracefs()"
    tracer = start_tracer(bare_host, 5, [bare_host.netns_inode], user_args=mount_first, prelude=probe)
    no_instance_left.append(tracer)
    name = wait_tracing(tracer.pid)
    sc = bare_host.start_scenario("churn_client", count=20, rate=50, hold=60)
    wait_done(sc)
    churn = tracer_result(tracer)["churn"][str(bare_host.netns_inode)]
    assert churn["source"] == "tracefs"
    assert by_comm(churn, "nsl-churner")["pid"] == sc.pid
    assert name not in tracefs_instances()


def host_tracefs_mounts():
    """tracefs mounts of the host's mount table (pid 1's); other labs may add /run/netns mounts meanwhile."""
    with open("/proc/1/mountinfo", encoding="utf-8") as f:
        return [line for line in f if " - tracefs " in line or "/sys/kernel/tracing" in line]


def test_host_mount_table_unchanged(bare_host, no_instance_left):
    before = host_tracefs_mounts()
    tracer = start_tracer(bare_host, 1, [bare_host.netns_inode])
    no_instance_left.append(tracer)
    assert tracer_result(tracer)["churn"][str(bare_host.netns_inode)]["source"] == "tracefs"
    assert host_tracefs_mounts() == before


def test_unprivileged_gets_a_reason_and_changes_nothing(bare_host, no_instance_left, nobody):
    before = tracefs_instances()
    tracer = start_tracer(bare_host, 1, [bare_host.netns_inode], python=nobody.command())
    no_instance_left.append(tracer)
    result = tracer_result(tracer)
    assert "root" in result["unavailable"]
    assert tracefs_instances() == before


def test_facts_without_privilege_have_a_null_churn_and_say_why(bare_host, nobody):
    options = {"trace": 1, "owners": []}
    res = bare_host.run(nobody.command("-c", GATHER, nobody.collections, json.dumps(options)), timeout=120)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    state = json.loads(res.stdout)["tcp_state"]
    assert state["churn"]["source"] is None
    assert state["churn"]["processes"] == [] and state["churn"]["peers"] == []
    assert any(w.startswith("trace: not possible here") and "root" in w for w in state["warnings"]), state["warnings"]
    assert state["states"]["LISTEN"] == 0  # the rest of the facts is there


def test_tracer_pid_namespace_is_checked(bare_host, no_instance_left):
    # inside a new PID namespace (a container's view) pids in the trace are not ours: refused
    tracer = start_tracer(bare_host, 1, [bare_host.netns_inode], user_args=["unshare", "--pid", "--fork"])
    no_instance_left.append(tracer)
    out, err = tracer.communicate(timeout=60)
    assert tracer.returncode == 0, err
    assert "container" in json.loads(out)["unavailable"]


def in_thread(fn, *args, **kwargs):
    box = {}

    def run():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()

    def result():
        thread.join(300)
        if "error" in box:
            raise box["error"]
        return box["result"]

    return result


def test_facts_namespaces_all_give_each_namespace_its_churn(bare_lab):
    lab = bare_lab(hosts=2)
    h1, h2 = lab.hosts
    facts = in_thread(gather_all, h1, trace=15, namespaces="all", owners=[])
    wait_tracing_in(h1.netns_inode)
    one = h1.start_scenario("churn_client", count=COUNT, rate=RATE, hold=120)
    two = h2.start_scenario("churn_client", count=COUNT, rate=RATE, hold=120)
    wait_done(one)
    wait_done(two)
    result = facts()
    blocks = result["tcp_state_namespaces"]
    churn1 = blocks[h1.name]["churn"]
    churn2 = blocks[h2.name]["churn"]
    assert result["tcp_state"]["churn"] == churn1
    assert by_comm(churn1, "nsl-churner")["pid"] == one.pid
    assert by_comm(churn2, "nsl-churner")["pid"] == two.pid
    assert by_comm(churn2, "nsl-churner")["netns"] == {"inode": h2.netns_inode, "name": h2.name}
    assert two.pid not in {p["pid"] for p in churn1["processes"]}


def test_module_names_the_churner_in_time_wait_churn(ssh_lab, ansible_env):
    h1 = ssh_lab.host("h1")
    args = {"trace": 20, "owners": [], "thresholds": {"time_wait_warning": 50, "time_wait_critical": 100000}}
    facts = in_thread(facts_over_ansible, ansible_env, str(ssh_lab.inventory_path), "h1", args)
    wait_tracing_in(h1.netns_inode)
    sc = h1.start_scenario("churn_client", count=COUNT, rate=RATE, hold=120)
    made = wait_done(sc)["done"]["connections"]
    state = facts()["h1"]
    churner = by_comm(state["churn"], "nsl-churner")
    assert churner["pid"] == sc.pid and within(churner["active_closes"], made)
    finding = next(f for f in state["findings"] if f["code"] == "TIME_WAIT_CHURN")
    assert finding["evidence"]["basis"] == "traced"
    assert sc.pid in {c["pid"] for c in finding["evidence"]["churners"]}
    assert "nsl-churner" in finding["summary"]
