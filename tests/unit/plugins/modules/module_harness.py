# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Running a module the way the module tests need it (imported by basename, like collect_sockets_fixtures).

argument_spec(module)       the keyword arguments main() passes to AnsibleModule (captured, main() stopped there)
assert_options_documented(documented, spec)   DOCUMENTATION options and argument_spec name the same options
                            with the same type, default, choices and elements
run_module(module, args)    the module run as Ansible runs it: a subprocess given ANSIBLE_MODULE_ARGS on stdin
                            (never on the command line, which the OS limits: huge payloads must reach the module);
                            asserts that no traceback reached stderr and returns the parsed result
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def argument_spec(module):
    """The spec module.main() builds, captured by running main() with AnsibleModule replaced."""
    captured = {}

    class Capture(Exception):
        pass

    def fake_module(**kwargs):
        captured.update(kwargs)
        raise Capture

    original = module.AnsibleModule
    module.AnsibleModule = fake_module
    try:
        with pytest.raises(Capture):
            module.main()
    finally:
        module.AnsibleModule = original
    return captured


def assert_options_documented(documented, spec):
    """``documented`` (DOCUMENTATION's options) describes exactly the options of ``spec`` (an argument_spec)."""
    assert set(documented) == set(spec)
    for name, option in spec.items():
        assert documented[name]["type"] == option["type"], name
        for key in ("default", "choices", "elements"):
            assert documented[name].get(key) == option.get(key), (name, key)


def run_module(module, args, check=False, diff=False, timeout=120):
    """Run ``python -m <module>`` with ``args`` (plus check/diff mode) and return its JSON result."""
    payload = {"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check, _ansible_diff=diff)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        # AnsibleModule reads its arguments from stdin when given no argv: no ARG_MAX/"File name too long" limit
        [sys.executable, "-m", module.__name__],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=timeout,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)
