# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Unit-test session settings: hypothesis runs derandomized (the same examples on every run, in CI too).

``HYPOTHESIS_PROFILE=explore`` runs random examples to look for new counter-examples; pin each
one found with ``@example`` in its test.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
