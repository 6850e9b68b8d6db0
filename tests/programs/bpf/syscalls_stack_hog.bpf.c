// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The syscalls family's object (capture_agent/bpf/syscalls.bpf.c, included as is) plus one
 * program whose chain of calls needs more stack than any kernel's verifier allows (two
 * frames of 320 bytes: each fits alone, together they are over 512). Loading it shows
 * what a user sees when a program fails the verifier on their kernel
 * (tests/integration/test_bpf_verifier_budget.py).
 */
#include "syscalls.bpf.c"

#define FILL(buf) bpf_probe_read_kernel((void *)buf, sizeof(buf), (void *)bpf_get_current_task())

static __noinline int stack_hog_inner(int x)
{
	volatile char buf[320];

	FILL(buf);
	return buf[x & 255];
}

SEC("tp_btf/sys_exit")
int BPF_PROG(stack_hog, struct pt_regs *regs, long ret)
{
	volatile char buf[320];

	FILL(buf);
	return stack_hog_inner(buf[ret & 255]);
}
