"""Print the remediation catalog's values as JSON: {profile: {sysctl: "space-separated integers"}}.

verify.yml compares the hosts against these. It reads plugins/module_utils/_remediation.py, the one
table findings and the role share, by path: the file needs nothing but the standard library.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

path = os.path.join(sys.argv[1], "plugins", "module_utils", "_remediation.py")
spec = importlib.util.spec_from_file_location("netstate_remediation_catalog", path)
catalog = importlib.util.module_from_spec(spec)
spec.loader.exec_module(catalog)
print(
    json.dumps(
        {
            profile: {
                name: " ".join(str(v) for v in (value if isinstance(value, list) else [value]))
                for name, (value, _reason) in body["sysctls"].items()
            }
            for profile, body in catalog.PROFILES.items()
        }
    )
)
