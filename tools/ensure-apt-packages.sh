#!/usr/bin/env bash
# Install the Debian packages given as arguments, but only those missing:
# a machine that already has them is not touched (no apt-get update either).
set -euo pipefail
missing=()
for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-apt-packages: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
fi
echo "ensure-apt-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
