// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The syscalls family's logic (capture_agent/bpf/syscalls.bpf.c, included as is) behind
 * other attach points, to measure what each attach strategy costs
 * (tests/bench/bench_syscall_overhead.py):
 *
 *   per_tp_enter / per_tp_exit  classic tracepoints, attached to every
 *                               syscalls/sys_enter_* and sys_exit_* by the benchmark
 *   empty_enter / empty_exit    tp_btf programs that do nothing: the kernel's own cost
 *                               of running a program on every syscall
 */
#define SYSCALLS_NO_ATTACH_POINTS
#include "syscalls.bpf.c"

/* syscalls/sys_enter_<name>: common fields, __syscall_nr at 8, the arguments from 16
 * (only as many as the syscall has: they are read with a probe, not through ctx, since
 * a ctx read past the shortest record would fail attachment to it). */
struct per_tp_enter_ctx {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 args[SYSCALL_ARGS];
};

/* syscalls/sys_exit_<name>: __syscall_nr at 8, ret at 16 */
struct per_tp_exit_ctx {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__s64 ret;
};

SEC("tracepoint")
int per_tp_enter(struct per_tp_enter_ctx *ctx)
{
	struct syscall_state *st = syscall_begin(bpf_get_current_task_btf(), ctx->nr);

	if (!st)
		return 0;
	bpf_probe_read_kernel(st->sys.args, sizeof(st->sys.args), (void *)ctx + 16);
	syscall_entered(st);
	return 0;
}

SEC("tracepoint")
int per_tp_exit(struct per_tp_exit_ctx *ctx)
{
	syscall_end(ctx->ret);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(empty_enter, struct pt_regs *regs, long id)
{
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(empty_exit, struct pt_regs *regs, long ret)
{
	return 0;
}
