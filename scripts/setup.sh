#!/usr/bin/env bash
# Installs what kwire needs on a Debian 12 machine (as root), idempotently and quickly when already done:
# Debian packages (nftables, iproute2, CNI reference plugins, test tools), a virtualenv in .venv with kwire
# and its dependencies, and a kubectl if the machine has none.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(etcd-server etcd-client nftables libnftables1 iproute2 iputils-ping netcat-openbsd util-linux containernetworking-plugins conntrack dnsutils iperf3 dnsmasq-base dnsperf tcpdump procps python3-venv ca-certificates curl)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
stamp=.venv/.kwire-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -x .venv/bin/python ]] || [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "setup: creating .venv and installing Python dependencies" >&2
  [[ -x .venv/bin/python ]] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[dev]' >/dev/null
  echo "$want" > "$stamp"
fi

if ! command -v kubectl >/dev/null 2>&1 && [[ ! -x .venv/bin/kubectl ]]; then
  bash scripts/install-kubectl.sh
fi
