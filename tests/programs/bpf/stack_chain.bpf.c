// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * A control for the stack-budget checks (tests/unit/test_bpf_budget.py): frames of known
 * size, so a reader that misses a frame, a call or a bpf_loop callback is caught.
 *
 *   chain_prog (200 B) -> chain_mid (136 B) -> chain_leaf (72 B)
 *                      -> bpf_loop callback chain_step (40 B)
 *
 * Each buffer is filled through a helper (bpf_probe_read_kernel), so clang must keep it
 * on the stack whole. Never loaded: it is read from its ELF file only.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define FILL(buf) bpf_probe_read_kernel((void *)buf, sizeof(buf), (void *)bpf_get_current_task())

static __noinline int chain_leaf(int x)
{
	volatile char buf[72];

	FILL(buf);
	return buf[x & 63] + x;
}

static __noinline int chain_mid(int x)
{
	volatile char buf[136];

	FILL(buf);
	return chain_leaf(buf[x & 127]) + x;
}

static long chain_step(__u64 index, void *ctx)
{
	volatile char buf[40];

	FILL(buf);
	*(int *)ctx += buf[index & 31];
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(chain_prog, struct pt_regs *regs, long id)
{
	volatile char buf[192];
	int acc = 0;

	FILL(buf);
	bpf_loop(4, chain_step, &acc, 0);
	return chain_mid(buf[id & 127]) + acc;
}
