# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Loading the recorded _collect_sockets fixtures and parsing the ``ss -tanoe`` captured with them.

``ss`` (iproute2) is the independent decoder the tests compare ours against.
"""

from __future__ import annotations

import json
import os
from collections import Counter

from netlink_chunks import read_chunk_file

from netstate_lab.ss import SS_LABEL_TO_STATE

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "collect_sockets")
NAMES = sorted(name for name in os.listdir(FIXTURES) if os.path.isfile(os.path.join(FIXTURES, name, "meta.json")))

# ss -o timer names for idiag_timer 1..4
SS_TIMERS = {"on": 1, "keepalive": 2, "timewait": 3, "persist": 4}


def path(name, *parts):
    return os.path.join(FIXTURES, name, *parts)


def read_chunks(name, family):
    """The recorded datagrams of one dump: a list of bytes, exactly as recv() returned them."""
    return read_chunk_file(path(name, f"{family}.chunks"))


def read_text(name, filename):
    with open(path(name, filename), encoding="utf-8") as fh:
        return fh.read()


def meta(name):
    return json.loads(read_text(name, "meta.json"))


def split_endpoint(text):
    """ss endpoint -> (address text, port int); ``*`` is the IPv6 wildcard, ``*`` port is 0."""
    addr, _sep, port = text.rpartition(":")
    addr = addr.strip("[]")
    if addr == "*":
        addr = "::"
    return addr, 0 if port == "*" else int(port)


def parse_ss(text):
    """Rows of ``ss -tanoe``: dicts with state, recvq, sendq, local, peer, timer, inode, cookie."""
    rows = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if not fields:
            continue
        row = {
            "state": SS_LABEL_TO_STATE[fields[0]],
            "recvq": int(fields[1]),
            "sendq": int(fields[2]),
            "local": split_endpoint(fields[3]),
            "peer": split_endpoint(fields[4]),
            "timer": 0,
            "inode": 0,
            "cookie": None,
        }
        for extra in fields[5:]:
            if extra.startswith("timer:("):
                row["timer"] = SS_TIMERS[extra[len("timer:(") :].split(",")[0]]
            elif extra.startswith("ino:"):
                row["inode"] = int(extra[4:])
            elif extra.startswith("sk:"):
                row["cookie"] = int(extra[3:], 16)
        rows.append(row)
    return rows


def ss_rows(name):
    return parse_ss(read_text(name, "ss.txt"))


def ss_state_counts(rows):
    counts = Counter(row["state"] for row in rows)
    return counts
