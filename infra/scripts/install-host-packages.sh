#!/usr/bin/env bash
# Installs the Debian packages kprobe needs, only those missing (idempotent, fast when done).
# Capture (BPF), cgroups and the replay sandbox need root; without root this only reports.
set -euo pipefail

# The one BPF toolchain: Debian's clang/LLVM of the version capture_agent/bpf/Makefile names.
LLVM_VERSION=$(sed -n 's/^LLVM_VERSION := *//p' "$(dirname "$0")/../../capture_agent/bpf/Makefile")

PACKAGES=(
  "clang-$LLVM_VERSION" "llvm-$LLVM_VERSION"            # build of the CO-RE BPF objects
  libbpf-dev bpftool libelf-dev zlib1g-dev
  bubblewrap strace iptables iproute2 util-linux        # sandbox, peers, fault injection
  bpftrace                                              # benchmark peer
  sqlite3 curl python3-venv                             # test programs and the demo
  nodejs lua5.4 bc bzip2 xz-utils zstd pigz jq gawk     # programs the replay tests record
  openssl git perl dash
  golang-go default-jdk-headless gcc make               # runtimes the replay tests name
  qemu-system-x86 busybox-static kmod e2fsprogs         # make vmtest: guests, initramfs
  chromium                                              # the console's browser tests
  postgresql redis-server nginx-light                   # e2e: third-party servers, uninstrumented
  mmdebstrap                                            # make image: the image's root filesystem
  prometheus                                            # promtool (alert rules), a real scraper in tests
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: not root; cannot install: ${missing[*]} (capture and replay need root anyway)" >&2
  exit 0
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
