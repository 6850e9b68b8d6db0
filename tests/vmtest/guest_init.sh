#!/bin/sh
# PID 1 of a matrix guest, started by the initramfs (tests/vmtest/initramfs.py) on the
# overlay over this machine's root: the mounts a Debian host has, then the checks
# (python -m tests.vmtest.guest ARGS), then power off.
# Usage: guest_init.sh TREE PYTHON MODULES ARGS: TREE is the snapshot of the repository under
# test, PYTHON the project's virtualenv's, MODULES this kernel's unpacked modules.
set -u
repo=$1
python=$2
modules=$3
shift 3
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
# cgroup v2 with the controllers the tests use (the host may be v1: both are supported)
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "+cpu +memory +pids +io" > /sys/fs/cgroup/cgroup.subtree_control
# this kernel's modules (unpacked in the host's cache), for modprobe and the kernel's
# own module requests (iptables matches, ...)
release=$(uname -r)
mkdir -p "/lib/modules/$release"
mount --bind "$modules" "/lib/modules/$release"
# /tmp on the scratch disk: the block tests need a directory on a block device
mount -t ext4 /dev/vda /tmp && chmod 1777 /tmp
ip link set lo up
hostname vmtest
export HOME=/root LANG=C.UTF-8 TMPDIR=/tmp PYTHONUNBUFFERED=1
# emulated: everything is ~20x slower, more with two guests on a busy host; the tests'
# deadlines (hang detectors, tests.support.deadline_s) stretch by 4
export KPROBE_TEST_DEADLINE_SCALE=4
# compiled bytecode of the repository's modules, kept in the guest (on its scratch disk) so
# that each Python process after the first skips compiling them: minutes under emulation
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=/tmp/kprobe-pycache
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# the snapshot's packages before the virtualenv's editable install (the live tree)
export PYTHONPATH="$repo"
cd "$repo" || exit 1
"$python" -m tests.vmtest.guest "$@"
echo "vmtest guest: checks done (exit $?), powering off"
sync
busybox poweroff -f
echo o > /proc/sysrq-trigger
