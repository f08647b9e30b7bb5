#!/usr/bin/env bash
# Installs what kwire needs on a Debian 12 machine (as root), idempotently and quickly when already done:
# Debian packages (nftables, iproute2, CNI reference plugins, test tools), a virtualenv in .venv with kwire
# and its dependencies, and a kubectl if the machine has none.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(tini etcd-server etcd-client postgresql nftables libnftables1 iproute2 iputils-ping netcat-openbsd util-linux containernetworking-plugins conntrack dnsutils iperf3 dnsmasq-base dnsperf tcpdump procps python3-venv ca-certificates curl nginx-light libnginx-mod-http-lua haproxy wrk linux-perf openssl)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # nginx and haproxy are the ingress data plane, run by kwire inside pod namespaces only: their packages must
  # not start system services (they would listen on :80 of the machine's own namespace). A policy-rc.d that
  # refuses every start is in place for the install only; an existing one is left alone.
  own_policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  trap '[[ -n "$own_policy" ]] && rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [[ -n "$own_policy" ]] && rm -f /usr/sbin/policy-rc.d
  own_policy=""
fi
# Never a system nginx, haproxy, etcd or PostgreSQL (kwire runs them itself where it needs them; an upgrade may enable them).
if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
  systemctl disable --now nginx haproxy etcd postgresql >/dev/null 2>&1 || true
fi
if command -v ss >/dev/null && ss -Hltn 'sport = :80' | grep -q .; then
  echo "setup: warning: something listens on :80 of this machine's own network namespace (kwire does not need it)" >&2
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
