#!/usr/bin/env bash
# Installs what podnet's demo, tests and benchmarks need on Debian 12, as root.
# Idempotent: a second run only checks. PODNET_DEPS=demo installs the demo's subset.
set -euo pipefail

want=${PODNET_DEPS:-all}
debs=(iproute2 iputils-ping procps kmod)
if [ "$want" = all ]; then
  debs+=(containernetworking-plugins etcd-server etcd-client tcpdump tshark ethtool nftables openssl
         containerd runc podman busybox-static)
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

PY=${PYTHON:-python3}
need_pip=0
command -v podnet >/dev/null || need_pip=1
"$PY" -c 'import pyroute2, yaml, prometheus_client' 2>/dev/null || need_pip=1
if [ "$want" = all ]; then
  "$PY" -c 'import pytest, hypothesis, grpc, grpc_tools, prometheus_client' 2>/dev/null || need_pip=1
fi
if [ $need_pip = 1 ]; then
  echo "==> installing podnet and its Python dependencies (pip, editable)"
  extra=""
  [ "$want" = all ] && extra="[test]"
  "$PY" -m pip install -q --disable-pip-version-check -e ".${extra}"
fi
