#!/bin/sh
# Boots the guest agent in a real VM by hand (not run by `cargo test`): qemu microvm, a stock
# Debian kernel, an initramfs whose /init is the musl agent, a 9p share with a busybox rootfs,
# then drives it with boot-client.py (Ready, one container running `uname -r`, Shutdown).
#
#   apt-get install -y qemu-system-x86 cpio busybox-static python3
#   cd /tmp && apt-get download linux-image-6.1.0-50-amd64 && dpkg -x linux-image-6.1.0-50-amd64_*.deb k
#   cargo build --release -p agentcell-guest --target x86_64-unknown-linux-musl
#   KROOT=/tmp/k vm/guest/tests/boot-by-hand.sh
#
# The cloud kernel (-cloud-amd64) has no 9p modules; the generic one is needed for 9p shares.
set -eu
KROOT=${KROOT:?directory where the linux-image .deb was extracted}
KVER=${KVER:-$(ls "$KROOT/lib/modules" | head -1)}
AGENT=${AGENT:-target/x86_64-unknown-linux-musl/release/agentcell-guest}
WORK=${WORK:-$(mktemp -d /tmp/agentcell-boot.XXXXXX)}
HERE=$(dirname "$0")
ACCEL=${ACCEL:-tcg}  # KVM here is nested PVM: stock kernels do not boot with it; ACCEL=kvm where it is real
# tsc_early_khz is in kHz: the host TSC rate (2000 would be 2 MHz, and the guest clock would run
# ~1000x fast: timeouts fire at once, RCU waits forever).
TSC_KHZ=${TSC_KHZ:-$(awk -F: '/^cpu MHz/ {printf "%d", $2 * 1000; exit}' /proc/cpuinfo)}

# Order matters: finit_module does not resolve dependencies.
MODULES="drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko drivers/virtio/virtio_mmio.ko
drivers/char/virtio_console.ko fs/netfs/netfs.ko fs/fscache/fscache.ko net/9p/9pnet.ko
net/9p/9pnet_virtio.ko fs/9p/9p.ko net/core/failover.ko drivers/net/net_failover.ko
drivers/net/virtio_net.ko"

mkdir -p "$WORK/initrd/agentcell" "$WORK/initrd/dev" "$WORK/share/bin"
cp "$AGENT" "$WORK/initrd/init"
: > "$WORK/initrd/agentcell/modules.load"
for m in $MODULES; do
  mkdir -p "$WORK/initrd/lib/modules/$KVER/kernel/$(dirname "$m")"
  cp "$KROOT/lib/modules/$KVER/kernel/$m" "$WORK/initrd/lib/modules/$KVER/kernel/$m"
  echo "lib/modules/$KVER/kernel/$m" >> "$WORK/initrd/agentcell/modules.load"
done
# The kernel opens /dev/console for PID 1's stdio before /init runs.
mknod -m 600 "$WORK/initrd/dev/console" c 5 1
cat > "$WORK/initrd/agentcell/boot.json" <<JSON
{"shares":[{"tag":"rootfs","readonly":true}],
 "network":{"mac":"52:54:00:12:34:56","ipv4":"10.0.2.15/24","gateway4":"10.0.2.2","mtu":1500},
 "hostname":"agentcell-vm","log_level":"${LOG_LEVEL:-info}"}
JSON
(cd "$WORK/initrd" && find . | cpio -o -H newc --quiet > "$WORK/initrd.cpio")
cp /bin/busybox "$WORK/share/bin/busybox"
for a in sh uname cat echo hostname ls ip; do ln -sf busybox "$WORK/share/bin/$a"; done
mkdir -p "$WORK/share/proc" "$WORK/share/dev" "$WORK/share/tmp"

SOCK="$WORK/agent.sock"
set -x
qemu-system-x86_64 -M microvm,rtc=on -accel $ACCEL -cpu max -m 512 -smp 1 \
  -nodefaults -no-user-config -nographic -no-reboot \
  -kernel "$KROOT/boot/vmlinuz-$KVER" -initrd "$WORK/initrd.cpio" \
  -append "console=ttyS0 tsc_early_khz=${TSC_KHZ} panic=-1 reboot=t ${EXTRA_APPEND:-}" \
  -serial stdio \
  -device virtio-serial-device \
  -chardev socket,id=ch,path="$SOCK",server=on,wait=off \
  -device virtserialport,chardev=ch,name=agentcell.0 \
  -fsdev local,id=f0,path="$WORK/share",security_model=none,readonly=on \
  -device virtio-9p-device,fsdev=f0,mount_tag=rootfs \
  -netdev user,id=n0,restrict=on -device virtio-net-device,netdev=n0,mac=52:54:00:12:34:56 \
  > "$WORK/console.log" 2>&1 &
QEMU=$!
set +x
python3 "$HERE/boot-client.py" "$SOCK"
wait $QEMU || true
echo "console: $WORK/console.log"
