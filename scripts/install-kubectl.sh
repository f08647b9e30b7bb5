#!/usr/bin/env bash
# Installs a kubectl when the machine has none. The machine image normally carries one (/usr/bin/kubectl);
# without it, Debian's kubernetes-client package is the one registry source reachable here (kubectl 1.20:
# older than the image's, but the same JSON API conventions the tests drive).
set -euo pipefail
if command -v kubectl >/dev/null 2>&1; then
  exit 0
fi
echo "setup: no kubectl on this machine; installing Debian's kubernetes-client" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
