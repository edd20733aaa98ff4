"""The netstate.tcp lab: network namespaces as hosts, real sockets in real states.

from netstate_lab import Lab
with Lab.create(hosts=3, ssh=True) as lab:
    sc = lab.hosts[0].start_scenario("close_wait_leak", count=50)
"""

from netstate_lab.lab import (
    Lab,
    LabError,
    LabHost,
    PrerequisiteError,
    Scenario,
    ScenarioError,
    check_prerequisites,
    cleanup_stale,
)
from netstate_lab.scenario import DEFAULT_COUNTS, KINDS

__all__ = [
    "DEFAULT_COUNTS",
    "KINDS",
    "Lab",
    "LabError",
    "LabHost",
    "PrerequisiteError",
    "Scenario",
    "ScenarioError",
    "check_prerequisites",
    "cleanup_stale",
]
