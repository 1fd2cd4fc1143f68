#!/usr/bin/env bash
# Installs the Debian packages listed in deps/debian.txt (or the list file
# given) that are missing. Needs root for apt-get; runs `apt-get update` once
# per machine (marker in /var/lib/apt/periodic) before the first install.
set -euo pipefail
list=${1:-"$(dirname "$0")/../deps/debian.txt"}
missing=()
while read -r pkg; do
  pkg=${pkg%%#*}
  pkg=$(echo "$pkg" | xargs)
  [[ -z $pkg ]] && continue
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done <"$list"
((${#missing[@]} == 0)) && exit 0
echo "deps: installing ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
  echo "deps: missing packages and not root; run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
marker=/var/lib/apt/periodic/coalesce-apt-updated
if [[ ! -f $marker ]]; then
  apt-get update -qq
  mkdir -p "$(dirname "$marker")" && touch "$marker"
fi
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
