#!/usr/bin/env bash
# Installs what podnet's demo, tests and benchmarks need on Debian 12, as root, starting from a stock
# machine with only python3, make and git. Debian packages come from apt; podnet and its Python
# dependencies go into a project virtual environment ($VENV, default .venv), never into the system Python
# (Debian's python3 refuses pip installs anyway: PEP 668).
# Idempotent: a second run only checks. PODNET_DEPS=demo installs the demo's subset.
#   PYTHON3  the interpreter the virtual environment is made from (default: python3 on PATH)
#   VENV     where the virtual environment lives (default: .venv in the project)
set -euo pipefail
cd "$(dirname "$0")/.."

want=${PODNET_DEPS:-all}
PYTHON3=${PYTHON3:-python3}
VENV=${VENV:-.venv}

# python3-venv: Debian splits venv's pip bootstrap (ensurepip) out of python3.
debs=(python3-venv musl-tools iproute2 iputils-ping procps kmod util-linux)
if [ "$want" = all ]; then
  debs+=(containernetworking-plugins etcd-server etcd-client tcpdump tshark ethtool nftables libnftables1 openssl
         containerd runc podman busybox-static iperf3)
fi

missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="$VENV/bin/python"
# A virtual environment whose interpreter no longer runs (its base was removed or upgraded) is made anew.
if [ -x "$PY" ] && ! "$PY" -c '' 2>/dev/null; then
  echo "==> $VENV is broken; making it again"
  rm -rf "$VENV"
fi
if [ ! -x "$PY" ]; then
  echo "==> making the virtual environment $VENV from $("$PYTHON3" -c 'import sys; print(sys.executable)')"
  "$PYTHON3" -m venv "$VENV"
fi

need_pip=0
[ -x "$VENV/bin/podnet" ] || need_pip=1
"$PY" -c 'import podnet, pyroute2, yaml, prometheus_client' 2>/dev/null || need_pip=1
if [ "$want" = all ]; then
  "$PY" -c 'import pytest, hypothesis, grpc, grpc_tools' 2>/dev/null || need_pip=1
fi
if [ $need_pip = 1 ]; then
  echo "==> installing podnet and its Python dependencies into $VENV (pip, editable)"
  extra=""
  [ "$want" = all ] && extra="[test]"
  # pip's own certificate setting must win: requests (inside pip) lets REQUESTS_CA_BUNDLE override it.
  if [ -n "${PIP_CERT:-}" ]; then export REQUESTS_CA_BUNDLE="$PIP_CERT"; fi
  "$PY" -m pip install -q --disable-pip-version-check -e ".${extra}"
fi
