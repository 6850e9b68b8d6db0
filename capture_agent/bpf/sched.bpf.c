// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Sched family: system-wide context switches and wakeups (compact, one record size),
 * and off-CPU intervals of targeted threads computed in the kernel:
 *
 *   switch-out of a target  -> offcpu_start[tid] = {time, state, kernel stack, cpu}
 *   sched_waking of it      -> offcpu_start[tid].waker = current (the real waker;
 *                              sched_wakeup often runs in the idle task: ARCHITECTURE.md)
 *   switch-in               -> interval >= min_offcpu_ns ? one offcpu_event : nothing
 *
 * A switch-in the kernel does not trace (seen on a 6.18 VM: no sched_switch fires when
 * one of PID 1's threads leaves a CPU, so the thread that takes it over is never seen
 * coming in) leaves its entry behind. The thread's next switch-out finds it: the interval
 * is emitted then, ending at the thread's waking (flag ENDS_AT_WAKING), or counted lost
 * if nothing woke it.
 *
 * Attach points: tp_btf only (no kprobes/fentry on the target kernels, no tracefs needed).
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "common.h"
#include "sched.h"

char LICENSE[] SEC("license") = "GPL";

LAYOUT_EXPORT(struct sched_event, sched_event);
LAYOUT_EXPORT(struct offcpu_event, offcpu_event);
LAYOUT_EXPORT(enum task_state_code, task_state_code);
LAYOUT_EXPORT(enum sched_constants, sched_constants);

#define MAX_STACK_DEPTH 64
#define ENOENT 2

/* Sizes are defaults; the loader resizes rings and maps before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} sched_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} offcpu_events SEC(".maps");

/* A targeted thread that is off CPU now: when and how it left, and who woke it. */
struct offcpu_start {
	__u64 start_ns;
	__u64 waking_ns; /* its first sched_waking, 0 before */
	__s32 kstack_id;
	__u32 waker_pid;
	__u32 waker_tid;
	__u16 cpu;
	__u8 state;
	__u8 flags; /* OFFCPU_FLAG_* */
	char waker_comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32); /* tid */
	__type(value, struct offcpu_start);
} offcpu_start SEC(".maps");

/* Kernel stacks at switch-out; user space symbolises and clears them. */
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 8192);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));
} offcpu_stacks SEC(".maps");

/* Configuration, set by the loader between open and load. */
const volatile __u64 min_offcpu_ns = 1000000;
const volatile __u8 record_switch = 1;
const volatile __u8 record_waking = 1;
const volatile __u8 record_wakeup = 1;
const volatile __u8 record_wakeup_new = 1;
/* 1: sched_events only for switches/wakeups involving a target (else system-wide) */
const volatile __u8 sched_targets_only = 0;

/*
 * The kernel's __task_state_index(): the state letter sched_switch prints. A preempted
 * task is runnable whatever its state word says.
 */
#define TASK_REPORT_MASK 0x7f        /* RUNNING..PARKED bits, incl. EXIT_* */
#define TASK_IDLE_STATE 0x402         /* TASK_UNINTERRUPTIBLE | TASK_NOLOAD */
#define TASK_RTLOCK_WAIT_STATE 0x1000

static __always_inline __u8 task_state_code(bool preempt, __u32 state, __u32 exit_state)
{
	__u32 bits;

	if (preempt)
		return TASK_STATE_R;
	if (state == TASK_IDLE_STATE)
		return TASK_STATE_I;
	if (state == TASK_RTLOCK_WAIT_STATE)
		return TASK_STATE_D;
	bits = (state | exit_state) & TASK_REPORT_MASK;
	/* fls(bits): index of the highest set bit, 1-based */
	if (bits & 0x40)
		return TASK_STATE_P;
	if (bits & 0x20)
		return TASK_STATE_Z;
	if (bits & 0x10)
		return TASK_STATE_X;
	if (bits & 0x08)
		return TASK_STATE_t;
	if (bits & 0x04)
		return TASK_STATE_T;
	if (bits & 0x02)
		return TASK_STATE_D;
	if (bits & 0x01)
		return TASK_STATE_S;
	return TASK_STATE_R;
}

static __always_inline bool sched_in_scope(__u32 tgid_a, __u32 tgid_b)
{
	if (!sched_targets_only)
		return true;
	return is_target(tgid_a) || is_target(tgid_b);
}

/*
 * One sched_event for a wakeup-type tracepoint: waker = current, wakee = task. Both are
 * BTF pointers: plain loads, no probe-read or comm helper calls (this runs at every
 * waking on the node).
 */
static __always_inline void emit_wakeup(struct task_struct *task, __u16 kind, __u64 now)
{
	struct task_struct *waker = bpf_get_current_task_btf();
	__u32 waker_tgid = waker->tgid;
	__u32 wakee_tgid = task->tgid;
	struct sched_event *ev;

	if (!sched_in_scope(waker_tgid, wakee_tgid))
		return;
	ev = EVENT_RESERVE_AT(&sched_events, struct sched_event, kind, SCHED_LAYOUT_VERSION, now);
	if (!ev)
		return;
	ev->prev_pid = waker_tgid;
	ev->prev_tid = waker->pid;
	ev->next_pid = wakee_tgid;
	ev->next_tid = task->pid;
	__builtin_memcpy(ev->prev_comm, waker->comm, TASK_COMM_LEN);
	__builtin_memcpy(ev->next_comm, task->comm, TASK_COMM_LEN);
	ev->target_cpu = task->thread_info.cpu;
	ev->prev_state = 0;
	ev->__pad[0] = ev->__pad[1] = ev->__pad[2] = 0;
	event_submit(&sched_events, ev);
}

/* One offcpu_event for `start`, ended at `end` by thread `task`. */
static __always_inline void offcpu_emit(struct offcpu_start *start, struct task_struct *task,
					__u32 tid, __u64 end, __u8 flags)
{
	struct offcpu_event *ev;

	ev = EVENT_RESERVE_AT(&offcpu_events, struct offcpu_event, EVENT_OFFCPU,
			      SCHED_LAYOUT_VERSION, end);
	if (!ev)
		return;
	ev->hdr.flags = start->flags | flags;
	ev->start_ns = start->start_ns;
	ev->pid = task->tgid;
	ev->tid = tid;
	ev->waker_pid = start->waker_pid;
	ev->waker_tid = start->waker_tid;
	ev->kstack_id = start->kstack_id;
	ev->cpu_out = start->cpu;
	ev->state = start->state;
	ev->__pad = 0;
	__builtin_memcpy(ev->comm, task->comm, TASK_COMM_LEN);
	__builtin_memcpy(ev->waker_comm, start->waker_comm, TASK_COMM_LEN);
	event_submit(&offcpu_events, ev);
}

static __always_inline void offcpu_begin(struct task_struct *prev, __u32 tid, __u8 state,
					 __u64 now, void *ctx)
{
	struct offcpu_start start = {};
	struct offcpu_start *left = bpf_map_lookup_elem(&offcpu_start, &tid);

	/* still there: the switch that brought it back was not traced */
	if (left) {
		if (!left->waking_ns)
			count_drop(EVENT_OFFCPU);
		else if (left->waking_ns - left->start_ns >= min_offcpu_ns)
			offcpu_emit(left, prev, tid, left->waking_ns, OFFCPU_FLAG_ENDS_AT_WAKING);
	}

	start.start_ns = now;
	start.state = state;
	start.cpu = bpf_get_smp_processor_id();
	/*
	 * The stack walk is most of this program's cost (~0.9 us of 1.4 us per switch under
	 * a request/response load). A preempted thread waits for a CPU, not for whatever
	 * kernel code it was preempted in: its stack names no wait reason (compute/ reads
	 * reasons of blocked intervals only), so it is not walked.
	 */
	start.kstack_id = state == TASK_STATE_R ? -ENOENT : bpf_get_stackid(ctx, &offcpu_stacks, 0);
	if (bpf_map_update_elem(&offcpu_start, &tid, &start, BPF_ANY))
		count_drop(EVENT_OFFCPU);
}

static __always_inline void offcpu_end(struct task_struct *next, __u32 tid, __u64 now)
{
	struct offcpu_start *start = bpf_map_lookup_elem(&offcpu_start, &tid);

	if (!start)
		return;
	if (now - start->start_ns >= min_offcpu_ns)
		offcpu_emit(start, next, tid, now, 0);
	bpf_map_delete_elem(&offcpu_start, &tid);
}

/*
 * Compat: the prev_state argument exists since Linux 5.18 (before, read prev->__state,
 * itself named `state` before 5.14). This object targets kernels with the argument.
 */
SEC("tp_btf/sched_switch")
int BPF_PROG(on_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	__u64 now = bpf_ktime_get_ns();
	/* BTF pointers: plain loads, no probe-read helper calls on the hottest program */
	__u32 prev_tgid = prev->tgid;
	__u32 prev_tid = prev->pid;
	__u32 next_tgid = next->tgid;
	__u32 next_tid = next->pid;
	__u8 state = task_state_code(preempt, prev_state, prev->exit_state);
	struct sched_event *ev;

	if (record_switch && sched_in_scope(prev_tgid, next_tgid)) {
		ev = EVENT_RESERVE_AT(&sched_events, struct sched_event, EVENT_SCHED_SWITCH,
				      SCHED_LAYOUT_VERSION, now);
		if (ev) {
			ev->hdr.flags = preempt ? SCHED_FLAG_PREEMPT : 0;
			ev->prev_pid = prev_tgid;
			ev->prev_tid = prev_tid;
			ev->next_pid = next_tgid;
			ev->next_tid = next_tid;
			__builtin_memcpy(ev->prev_comm, prev->comm, TASK_COMM_LEN);
			__builtin_memcpy(ev->next_comm, next->comm, TASK_COMM_LEN);
			ev->target_cpu = -1;
			ev->prev_state = state;
			ev->__pad[0] = ev->__pad[1] = ev->__pad[2] = 0;
			event_submit(&sched_events, ev);
		}
	}

	/* A dying task never comes back: no interval to start. */
	if (prev_tid != 0 && state != TASK_STATE_X && state != TASK_STATE_Z &&
	    is_target(prev_tgid))
		offcpu_begin(prev, prev_tid, state, now, ctx);
	/* intervals are only started for targets: others skip the lookup */
	if (next_tid != 0 && ever_target(next_tgid))
		offcpu_end(next, next_tid, now);
	return 0;
}

SEC("tp_btf/sched_waking")
int BPF_PROG(on_sched_waking, struct task_struct *task)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 tid = task->pid;
	struct offcpu_start *start = NULL;

	/* intervals are only started for targets: others skip the lookup */
	if (ever_target(task->tgid))
		start = bpf_map_lookup_elem(&offcpu_start, &tid);
	/* First waker wins (a second waking of a runnable task does not fire anyway). */
	if (start && !(start->flags & OFFCPU_FLAG_WAKER)) {
		struct task_struct *waker = bpf_get_current_task_btf();

		start->waking_ns = now;
		start->waker_pid = waker->tgid;
		start->waker_tid = waker->pid;
		__builtin_memcpy(start->waker_comm, waker->comm, TASK_COMM_LEN);
		start->flags |= OFFCPU_FLAG_WAKER;
	}
	if (record_waking)
		emit_wakeup(task, EVENT_SCHED_WAKING, now);
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(on_sched_wakeup, struct task_struct *task)
{
	if (record_wakeup)
		emit_wakeup(task, EVENT_SCHED_WAKEUP, bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(on_sched_wakeup_new, struct task_struct *task)
{
	if (record_wakeup_new)
		emit_wakeup(task, EVENT_SCHED_WAKEUP_NEW, bpf_ktime_get_ns());
	return 0;
}
