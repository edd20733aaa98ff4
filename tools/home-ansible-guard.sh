#!/usr/bin/env bash
# Fails when a run left netstate in the user's ~/.ansible (issue 9: molecule's prerun used to install
# the collection there, where the copy then shadows the checkout for plain `ansible` commands).
#   home-ansible-guard.sh snapshot FILE   record what ~/.ansible holds now
#   home-ansible-guard.sh compare FILE    fail on any new path under ~/.ansible naming netstate
# Both $HOME and the account's home (ssh sessions on lab hosts get the passwd one) are checked.
# Only paths naming netstate count: other tools may use ~/.ansible at the same time.
set -euo pipefail

homes() {
    local passwd_home
    passwd_home=$(getent passwd "$(id -u)" | cut -d: -f6)
    printf '%s\n' "$HOME/.ansible" "$passwd_home/.ansible" | sort -u
}

listing() {
    local dir
    while read -r dir; do
        [ -d "$dir" ] && find "$dir" -path '*netstate*' -print 2>/dev/null
    done < <(homes)
    return 0
}

case "${1:-}:${2:-}" in
    snapshot:?*)
        listing | sort >"$2"
        ;;
    compare:?*)
        [ -f "$2" ] || { echo "home-ansible-guard: no snapshot $2 (run snapshot first)" >&2; exit 2; }
        gained=$(listing | sort | comm -13 "$2" -)
        if [ -n "$gained" ]; then
            echo "home-ansible-guard: the run wrote netstate into ~/.ansible:" >&2
            printf '%s\n' "$gained" | head -20 >&2
            exit 1
        fi
        echo "home-ansible-guard: nothing of netstate was added to $(homes | paste -sd' ')"
        ;;
    *)
        echo "usage: $0 snapshot|compare FILE" >&2
        exit 2
        ;;
esac
