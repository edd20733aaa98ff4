"""Command-line entry of the lab (placeholder until the lab lands)."""

import sys


def main(argv=None):
    print("netstate-lab: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
