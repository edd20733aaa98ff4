"""``python -m netstate_lab.run_scenario``: entry of scenario processes (see netstate_lab.scenario)."""

import sys

from netstate_lab.scenario import main

sys.exit(main())
