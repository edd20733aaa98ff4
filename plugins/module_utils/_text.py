# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Text a managed host supplies (process names, errors, summaries), shown to people on one line.

one_line(value)   str(value) with every control character and Unicode line/paragraph separator made a space
"""

from __future__ import annotations

import re

# C0 and C1 controls (newlines, escape sequences, DEL) and the Unicode line and paragraph separators
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(value) -> str:
    """Host text on one terminal or table line: every control character becomes a space."""
    return _CONTROL.sub(" ", "" if value is None else str(value))
