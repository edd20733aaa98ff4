"""Offline stand-in for the get-pip.py bootstrap script ansible-test downloads.

ansible-test creates its virtual environments without pip and fetches
get-pip.py from ci-files.testing.ansible.com to bootstrap one; our machines
reach only the Python package index. This script does the same job with what
is at hand: pip from the wheel bundled with the standard library's ensurepip,
then the pip version ansible-test asked for from the configured index.
The Makefile installs it into ansible-test's cache before running sanity.
"""

import ensurepip
import os
import subprocess
import sys

# ansible-test passes pip options, the pinned packages and --no-setuptools /
# --no-wheel (get-pip.py flags that plain pip does not know).
GET_PIP_ONLY_FLAGS = {"--no-setuptools", "--no-wheel"}


def main():
    ensurepip.bootstrap(upgrade=True)
    # ensurepip sets PIP_CONFIG_FILE=/dev/null in os.environ; the real install
    # needs the machine's pip configuration (index, CA bundle) back.
    env = {key: value for key, value in os.environ.items() if key != "PIP_CONFIG_FILE"}
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY_FLAGS]
    return subprocess.call([sys.executable, "-m", "pip", "install", "--quiet", *args], env=env)


if __name__ == "__main__":
    sys.exit(main())
