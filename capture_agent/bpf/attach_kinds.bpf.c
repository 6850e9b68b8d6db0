// SPDX-License-Identifier: GPL-2.0
/*
 * One empty program per kind of attach point, for `kprobe doctor` only: each is loaded and
 * attached on its own, so the doctor can say which kinds this kernel allows (ARCHITECTURE.md:
 * tracepoints and tp_btf yes; kprobes and fentry refused on the machines we know).
 * A kernel that allows fentry could later get fentry variants of the families.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("tp_btf/sched_switch")
int BPF_PROG(probe_tp_btf)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int probe_tracepoint(void *ctx)
{
	return 0;
}

SEC("raw_tp/sched_switch")
int probe_raw_tp(void *ctx)
{
	return 0;
}

SEC("kprobe/do_nanosleep")
int BPF_KPROBE(probe_kprobe)
{
	return 0;
}

SEC("fentry/do_nanosleep")
int BPF_PROG(probe_fentry)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
