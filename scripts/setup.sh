#!/usr/bin/env bash
# Installs what agentcell needs to build and test on a fresh Debian 12 machine. Idempotent.
# Run as root (CI is root); uses sudo otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Debian packages: the build needs a C toolchain and libseccomp (libcontainer links it; the
# escape suite compiles its probe with cc; busybox-static makes the image of the --rootfs test;
# nftables and iproute2 install and check the network fence in namespaces the tests create);
# bubblewrap, runc and crun are the baselines of benches/exec.sh; containerd (1.6) with the
# bridge CNI (containernetworking-plugins, iptables for its masquerade) runs the shim's e2e suite;
# protobuf-compiler builds the CRI client of that suite; python3 serves the test hosts' banners.
PKGS=(build-essential pkg-config libseccomp-dev busybox-static nftables iproute2 bubblewrap runc crun
  containerd containernetworking-plugins iptables protobuf-compiler python3)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# kubernetes-validate (PyPI) checks the operator's generated CRD against Kubernetes' own schemas
# (operator/tests/crd.rs). Debian's Python is externally managed, hence the fallback flag.
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "setup: installing kubernetes-validate"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-pip
  fi
  $SUDO python3 -m pip install --quiet kubernetes-validate 2>/dev/null ||
    $SUDO python3 -m pip install --quiet --break-system-packages kubernetes-validate
  command -v kubernetes-validate >/dev/null 2>&1 || {
    echo "setup: kubernetes-validate is not on PATH after pip install" >&2
    exit 1
  }
fi

# The toolchain pinned in rust-toolchain.toml, with rustfmt and clippy.
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install rustup (https://rustup.rs) first" >&2
  exit 1
fi
rustup show active-toolchain >/dev/null
echo "setup: ok"
