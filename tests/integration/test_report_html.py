"""report.html in a real browser: Debian's Chromium, headless.

The report is built from tcp_state facts recorded on real namespaces (the
fleet-report unit fixtures) plus an unreachable and a malformed host, written
with the same code the action plugin uses, then opened in Chromium:
- --dump-dom: the page's scripts ran (they sign the DOM) and the three charts are there;
- --screenshot: a PNG of the window, decoded here, shows the bar colours of the
  states the fixtures hold;
- --enable-logging=stderr: Chromium prints every console message and uncaught
  error as a CONSOLE line; the report must produce none.
Set AUDIT_SCREENSHOT=/some/file.png to keep the screenshot for a look.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from ansible_collections.netstate.tcp.plugins.plugin_utils import _fleet_report as fr

CHROMIUM = "/usr/bin/chromium"
FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "plugins" / "plugin_utils" / "fixtures"
WIDTH, HEIGHT = 1100, 900
FLAGS = [
    "--headless",
    "--no-sandbox",  # root in a container-like machine: the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
    f"--window-size={WIDTH},{HEIGHT}",
]

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"{CHROMIUM} missing: install Debian's chromium (make test installs it through APT_PACKAGES)",
)


def chromium(tmp_path: Path, page: Path, *action: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *action, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )


def console_lines(stderr: str) -> list[str]:
    # Chromium logs console.* calls and uncaught exceptions as ...:INFO:CONSOLE(...)] "message", source: ...
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    recorded = {p.stem[len("facts_") :]: json.loads(p.read_text()) for p in sorted(FIXTURES.glob("facts_*.json"))}
    pairs = [(fr.host_entry(name, result={"ansible_facts": {"tcp_state": f}}), f) for name, f in recorded.items()]
    pairs.append((fr.host_entry("unreachable-1", result={"unreachable": True, "msg": "ssh: connect refused"}), None))
    old = dict(recorded["clean"], schema=0)
    pairs.append((fr.host_entry("old-agent", result={"ansible_facts": {"tcp_state": old}}), None))
    report = fr.build_report(pairs, query="hosts[?status=='ok'].name")
    out = tmp_path_factory.mktemp("reports")
    written = fr.write_reports(report, str(out), ["html"])
    return Path(written["files"]["html"]), recorded


def test_page_runs_its_script_and_draws_the_charts(tmp_path, report_html):
    page, recorded = report_html
    done = chromium(tmp_path, page, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    assert console_lines(done.stderr) == []
    dom = done.stdout
    assert '<span id="shown">script ok</span>' in dom
    for chart in ("chart-states", "chart-findings", "chart-pressure"):
        assert f'id="{chart}"' in dom
    for name in recorded:
        assert f"<td>{name}</td>" in dom
    assert "unreachable-1" in dom
    assert "old-agent" in dom


def _png_pixels(data: bytes):
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes) into (width, height, channels, rows)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if ftype == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 0xFF
        elif ftype == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif ftype == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b, c = prev[i], prev[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, channels, rows


def _count_colour(rows, channels, hex_colour: str) -> int:
    rgb = bytes.fromhex(hex_colour.lstrip("#"))
    pixel = rgb + b"\xff" if channels == 4 else rgb
    return sum(row.count(pixel) for row in rows)


def test_screenshot_shows_the_stacked_bars(tmp_path, report_html):
    page, recorded = report_html
    shot = tmp_path / "report.png"
    done = chromium(tmp_path, page, f"--screenshot={shot}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert console_lines(done.stderr) == []
    if os.environ.get("AUDIT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["AUDIT_SCREENSHOT"])
    width, height, channels, rows = _png_pixels(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    # a state no host holds shows only as its legend swatch (10 x 10 CSS pixels) ...
    assert all(facts["states"]["SYN_RECV"] == 0 for facts in recorded.values())
    swatch = _count_colour(rows, channels, fr.STATE_COLORS["SYN_RECV"])
    assert swatch == 100
    # ... while the big piles the recorded hosts hold are wide segments of the stacked bars
    for state in ("CLOSE_WAIT", "TIME_WAIT", "FIN_WAIT2"):
        assert max(facts["states"][state] for facts in recorded.values()) >= 100
        assert _count_colour(rows, channels, fr.STATE_COLORS[state]) > swatch + 1000, state


def test_console_errors_would_be_seen(tmp_path):
    """The detector itself: a page that throws is caught (else the checks above prove nothing)."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p><script>notDefined();</script></body></html>")
    done = chromium(tmp_path, page, "--dump-dom")
    lines = console_lines(done.stderr)
    assert any("Uncaught ReferenceError" in line for line in lines), done.stderr[-2000:]
