#!/usr/bin/env bash
# Lays out the root file system of one of the chart's images, from binaries already built.
# The single definition of what each image holds: scripts/cluster.sh builds the local images
# with it (imported into containerd without a registry), and the Containerfiles run it in their
# build stage and copy its output into an empty image, so both give the same content.
#
#   rootfs.sh operator BIN_DIR OUT     agentcell-operator, run as 65532
#   rootfs.sh node BIN_DIR OUT VM_DIR  agentcell, both shims, the micro-VM assets, a shell
#   rootfs.sh busybox - OUT            Debian's busybox-static with every applet
#
# The agentcell binaries link glibc and libseccomp dynamically (the shims are copied onto the
# node and run there with the host's libraries); inside the image they run with the exact
# libraries ldd names, copied from the build machine (Debian 12 here and in the Containerfiles).
# busybox is static. Nothing else is in the images: no package manager, no other shell.
set -euo pipefail

kind=$1 bins=$2 out=$3
BUSYBOX=${BUSYBOX:-/bin/busybox}

rm -rf "$out"
mkdir -p "$out"/{etc,tmp,usr/local/bin}
chmod 1777 "$out/tmp"

# The shared libraries a binary loads, at the same paths (the loader's path is in the binary).
libs() {
  local f=$1 l
  for l in $(ldd "$f" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }'); do
    [ -e "$out$l" ] && continue
    mkdir -p "$out$(dirname "$l")"
    cp -L "$l" "$out$l"
  done
}

# Debug information stripped (a debug build's ~220 MiB are mostly DWARF); code unchanged.
bin() {
  install -m 0755 "$bins/$1" "$out/usr/local/bin/$1"
  strip --strip-debug "$out/usr/local/bin/$1"
  libs "$out/usr/local/bin/$1"
}

busybox() {
  mkdir -p "$out/bin"
  install -m 0755 "$BUSYBOX" "$out/bin/busybox"
  if ldd "$BUSYBOX" >/dev/null 2>&1; then
    echo "rootfs.sh: $BUSYBOX is not static (apt-get install busybox-static)" >&2
    exit 1
  fi
  local a
  for a in "$@"; do ln -sf busybox "$out/bin/$a"; done
}

case "$kind" in
operator)
  bin agentcell-operator
  printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$out/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$out/etc/group"
  ;;
node)
  vm=${4:?rootfs.sh node: the micro-VM assets directory}
  for b in agentcell containerd-shim-agentcell-v2 containerd-shim-agentcell-vm-v2; do bin "$b"; done
  # The DaemonSet's entry is a shell line; the installer runs host programs through chroot.
  busybox sh sleep chroot cat ls
  mkdir -p "$out/usr/local/share/agentcell/vm"
  cp -a "$vm/." "$out/usr/local/share/agentcell/vm/"
  printf 'root:x:0:0:root:/:/bin/sh\n' >"$out/etc/passwd"
  ;;
busybox)
  # shellcheck disable=SC2046
  busybox $("$BUSYBOX" --list | grep -vx busybox)
  printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$out/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$out/etc/group"
  ;;
*)
  echo "rootfs.sh: unknown image $kind (operator, node, busybox)" >&2
  exit 2
  ;;
esac
