# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The Python a managed node needs for netstate.tcp, checked before the other module_utils are imported.

The other module_utils use ``from __future__ import annotations`` (Python 3.7) and nothing newer, so
3.7 is the true minimum (tests/unit/test_python_versions.py proves it). ansible-core 2.16 still runs
modules on Python 3.6: there, importing them would be a raw SyntaxError. So this file and the module
files parse on Python 3.6 (no newer syntax or __future__ import here), and each module calls
:func:`start_module` (the check, then the zip importer of _zip_import) before it imports the others.
"""

import json
import sys

MINIMUM_PYTHON = (3, 7)


def python_supported(version_info=None):
    """Whether ``version_info`` (default: this interpreter's) is at least MINIMUM_PYTHON."""
    version = sys.version_info if version_info is None else version_info
    return tuple(version[:2]) >= MINIMUM_PYTHON


def exit_on_old_python(module_name, version_info=None):
    """On a Python older than MINIMUM_PYTHON, end the module with a failed result naming the minimum.

    No AnsibleModule can be built yet (the argument specs use values of the newer module_utils), so the
    result is written the way fail_json writes it (one JSON object on stdout, exit status 1), as
    ansible-core's own minimum-Python check in module_utils/basic.py does.
    """
    version = sys.version_info if version_info is None else version_info
    if python_supported(version):
        return
    minimum = ".".join(str(part) for part in MINIMUM_PYTHON)
    found = ".".join(str(part) for part in version[:3])
    result = {
        "failed": True,
        "msg": f"netstate.tcp.{module_name} needs Python {minimum} or newer on the managed node; "
        f"{sys.executable} is Python {found}. Point ansible_python_interpreter at a newer Python.",
        "minimum_python": minimum,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    raise SystemExit(1)


def start_module(module_name):
    """What each module does before it imports the other module_utils.

    End on a Python older than MINIMUM_PYTHON (:func:`exit_on_old_python`); then, on a newer one, have
    AnsiballZ's zip compile each of them once (_zip_import, whose syntax needs the check first).
    """
    exit_on_old_python(module_name)
    from ansible_collections.netstate.tcp.plugins.module_utils._zip_import import compile_each_once  # noqa: PLC0415

    compile_each_once()
