// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Sched family: system-wide context switches and wakeups (compact, one record size),
 * and off-CPU intervals of targeted threads computed in the kernel:
 *
 *   switch-out of a target  -> offcpu_start[tid] = {time, state, cpu}
 *   sched_waking of it      -> offcpu_start[tid].waker = current (the real waker;
 *                              sched_wakeup often runs in the idle task: ARCHITECTURE.md);
 *                              blocked >= min_offcpu_ns by now: its kernel stack
 *   switch-in               -> interval >= min_offcpu_ns ? one offcpu_event (its stack
 *                              walked now if not at the waking) : nothing
 *
 * A switch-in the kernel does not trace (seen on a 6.18 VM: no sched_switch fires when
 * one of PID 1's threads leaves a CPU, so the thread that takes it over is never seen
 * coming in) leaves its entry behind. The thread's next switch-out finds it: the interval
 * is emitted then, ending where the thread's run since its switch in dates that switch in
 * (flag END_DATED), else at the thread's waking (flag ENDS_AT_WAKING), or counted lost if
 * nothing woke it.
 *
 * Evidence capture (`evidence` = 1, `kprobe record --capture evidence`): no row per switch
 * or waking. Instead
 *
 *   every thread's last switch-out is kept (`thread_states`, by tid): when, in what state,
 *   who took its CPU, its first waking since and who woke it; at its switch-in, an off-CPU
 *   interval of at least min_offcpu_ns (targets or not) leaves as the rows full capture
 *   would have written for its bounds: the switch-out (late, unless another interval's
 *   rows carried it already), the waking that ended the wait, and this switch-in;
 *   each CPU sums its slice (slice_ns) per thread: on-CPU time, run-queue waits that ended
 *   on it, switches (`cpu_acc`), and leaves it as one cpu_slice_event when a later slice
 *   begins or the slots are full.
 *
 * The rows kept are real switches and wakings with every column as full capture writes
 * it (plus SCHED_FLAG_EVIDENCE); the rest of the node's scheduling is in the slices. State
 * is kept in a preallocated hash, not task storage: task storage allocates on first use,
 * and an allocation under the run-queue lock can wake kswapd (a deadlock on kernels whose
 * local storage allocates with kmalloc, 6.1).
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
LAYOUT_EXPORT(struct cpu_slice_event, cpu_slice_event);

#define MAX_STACK_DEPTH 64
#define ENOENT 2
#define EEXIST 17
#define ENODATA 61
#define ESRCH 3
/* offcpu_start.kstack_id of a blocked thread whose stack is not walked yet; left so when
 * its interval is written without a walk (a switch in dated late): the row has no stack,
 * counted as lost (kernel_stack_ENODATA) */
#define KSTACK_PENDING (-ENODATA)

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

/* One kernel stack: return addresses, zero after the last (as a stack-trace map's value). */
struct kstack {
	__u64 ips[MAX_STACK_DEPTH];
};

/*
 * The kernel stacks blocked intervals slept in, by id (a hash of the addresses); user
 * space symbolises and clears them. Read as a BPF_MAP_TYPE_STACK_TRACE map is (same key
 * and value), but filled here: the stack is walked with bpf_get_task_stack() on the
 * sleeping thread, not with bpf_get_stackid() on the running one (see sleeping_stack_id).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct kstack);
} offcpu_stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kstack);
} kstack_scratch SEC(".maps");

/* Evidence capture: what each thread's last switch-out was (see the top of this file). */
struct thread_state {
	__u64 out_ns;     /* switch-out; 0: on a CPU (or never seen leaving one) */
	__u64 waking_ns;  /* its first sched_waking since out_ns; 0: none yet */
	__u32 next_pid;   /* who took the CPU at out_ns */
	__u32 next_tid;
	__u32 waker_pid;
	__u32 waker_tid;
	__s32 waking_cpu; /* the wakee's CPU at the waking (as sched_event.target_cpu) */
	__u16 out_cpu;
	__u8 out_state;   /* enum task_state_code */
	__u8 out_flags;   /* THREAD_OUT_WRITTEN, THREAD_OUT_PREEMPT */
	char next_comm[TASK_COMM_LEN];
	char waker_comm[TASK_COMM_LEN];
	__u16 waking_on;  /* the CPU the waking ran on (sched_event hdr.cpu) */
	__u16 __pad[3];
	__u64 runtime_ns; /* its se.sum_exec_runtime at its latest traced switch; 0: unknown */
};

/* the switch-out row was written already (another interval's switch-in row) */
#define THREAD_OUT_WRITTEN 0x1
#define THREAD_OUT_PREEMPT 0x2

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32); /* tid */
	__type(value, struct thread_state);
} thread_states SEC(".maps");

/* Evidence capture: the slice each CPU is summing, and its switch bookkeeping. */
struct cpu_acc {
	struct cpu_slice_event ev; /* left as is into cpu_slice_events */
	__u64 slice;               /* slice index of ev (now / slice_ns) */
	__u64 last_switch_ns;      /* the CPU's latest switch; 0 before the first */
	__u32 curr_tid;            /* the thread that switch put on the CPU */
	__u32 __pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_acc);
} cpu_acc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 << 10);
} cpu_slice_events SEC(".maps");

/* Configuration, set by the loader between open and load. */
const volatile __u64 min_offcpu_ns = 1000000;
const volatile __u8 evidence = 0;
const volatile __u64 slice_ns = 10000000;
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

/* scheduling policies (uapi sched.h macros: not in vmlinux.h) */
#define SCHED_NORMAL 0
#define SCHED_BATCH 3
#define SCHED_IDLE 5

/*
 * How long `task` has run since the scheduler put it on a CPU: the fair class sets
 * se.prev_sum_exec_runtime at that instant (set_next_entity) and sum_exec_runtime is
 * brought up to date before sched_switch fires. Other classes (RT, deadline, sched_ext)
 * keep no such mark: 0, unknown.
 */
static __always_inline __u64 run_since_switch_in(struct task_struct *task)
{
	unsigned int policy = task->policy;
	__u64 sum = task->se.sum_exec_runtime, since = task->se.prev_sum_exec_runtime;

	if (policy != SCHED_NORMAL && policy != SCHED_BATCH && policy != SCHED_IDLE)
		return 0;
	return sum > since ? sum - since : 0;
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
	ev->prev_run_ns = 0;
	event_submit(&sched_events, ev);
}

/*
 * The kernel stack `task` sleeps in, as an id in offcpu_stacks; < 0: an errno (-EEXIST:
 * another stack has its id). `task` must be off CPU and not have run since it blocked (at
 * its waking or its switch back in): its stack is then frozen where it went to sleep.
 *
 * Walked once the interval is known to be long enough to be written (>= min_offcpu_ns),
 * not at every switch-out: the walk is most of a switch's cost (~1 us), it ran on the
 * target's own time, and most waits of a busy service are shorter than the bound.
 */
static __always_inline __s32 sleeping_stack_id(struct task_struct *task)
{
	__u32 zero = 0, id, n, i;
	struct kstack *buf = bpf_map_lookup_elem(&kstack_scratch, &zero);
	struct kstack *have;
	__u64 h = 0xcbf29ce484222325ULL; /* FNV-1a over the addresses */
	__u8 call[5];
	__s32 rel;
	long len, err;

	if (!buf)
		return -ENOENT;
	/*
	 * The kernel leaves the scheduler's own functions (.sched.text: schedule, mutex_lock,
	 * down_read, io_schedule, do_nanosleep...) out of another task's stack, and some of
	 * them name the wait. The first frame it keeps returns from a call into the
	 * outermost of them: that call's target (a direct call, e8 rel32) becomes frame 0,
	 * as the current task's walk would have had it among its frames. Else frame 0
	 * repeats frame 1's address.
	 */
	len = bpf_get_task_stack(task, &buf->ips[1], sizeof(buf->ips) - sizeof(__u64), 0);
	if (len <= 0)
		return len < 0 ? len : -ESRCH;
	n = len / sizeof(__u64) + 1;
	buf->ips[0] = buf->ips[1];
	if (!bpf_probe_read_kernel(call, sizeof(call), (void *)(buf->ips[1] - sizeof(call))) &&
	    call[0] == 0xe8) {
		__builtin_memcpy(&rel, &call[1], sizeof(rel));
		buf->ips[0] = buf->ips[1] + (__s64)rel;
	}
	for (i = 0; i < MAX_STACK_DEPTH; i++) {
		if (i >= n)
			break;
		h = (h ^ buf->ips[i]) * 0x100000001b3ULL;
	}
	id = (h ^ (h >> 32)) & 0x7fffffff;
	err = bpf_map_update_elem(&offcpu_stacks, &id, buf, BPF_NOEXIST);
	if (!err)
		return id;
	if (err != -EEXIST)
		return err;
	have = bpf_map_lookup_elem(&offcpu_stacks, &id);
	if (!have)
		return -ENOENT;
	for (i = 0; i < MAX_STACK_DEPTH; i++)
		if (have->ips[i] != buf->ips[i])
			return -EEXIST;
	return id;
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
					 __u64 now)
{
	struct offcpu_start start = {};
	struct offcpu_start *left = bpf_map_lookup_elem(&offcpu_start, &tid);

	/*
	 * Still there: the switch that brought it back was not traced. The thread has run
	 * since it came in for run_since_switch_in(): that dates the switch in, unless the
	 * count is unknown (not a fair-class task) or runs back past the interval's start.
	 */
	if (left) {
		__u64 ran = run_since_switch_in(prev);
		__u64 came_in = ran && ran < now ? now - ran : 0;

		if (came_in > left->start_ns) {
			if (came_in - left->start_ns >= min_offcpu_ns)
				offcpu_emit(left, prev, tid, came_in, OFFCPU_FLAG_END_DATED);
		} else if (!left->waking_ns)
			count_drop(EVENT_OFFCPU, DROP_UNDATED);
		else if (left->waking_ns - left->start_ns >= min_offcpu_ns)
			offcpu_emit(left, prev, tid, left->waking_ns, OFFCPU_FLAG_ENDS_AT_WAKING);
	}

	start.start_ns = now;
	start.state = state;
	start.cpu = bpf_get_smp_processor_id();
	/*
	 * The stack is walked later, once the wait is long enough to be written (at the
	 * waking or the switch in: sleeping_stack_id). A preempted thread waits for a CPU, not
	 * for whatever kernel code it was preempted in: its stack names no wait reason
	 * (compute/ reads reasons of blocked intervals only), so it is never walked.
	 */
	start.kstack_id = state == TASK_STATE_R ? -ENOENT : KSTACK_PENDING;
	if (bpf_map_update_elem(&offcpu_start, &tid, &start, BPF_ANY))
		count_drop(EVENT_OFFCPU, DROP_MAP_FULL);
}

static __always_inline void offcpu_end(struct task_struct *next, __u32 tid, __u64 now)
{
	struct offcpu_start *start = bpf_map_lookup_elem(&offcpu_start, &tid);

	if (!start)
		return;
	if (now - start->start_ns >= min_offcpu_ns) {
		/* not walked at the waking (shorter then, or none traced): next has not run yet */
		if (start->kstack_id == KSTACK_PENDING)
			start->kstack_id = sleeping_stack_id(next);
		offcpu_emit(start, next, tid, now, 0);
	}
	bpf_map_delete_elem(&offcpu_start, &tid);
}

/* One sched_event of a switch (prev out, next in) at `ts` on `cpu`. */
static __always_inline void emit_switch(__u64 ts, __u16 cpu, __u8 flags, __u32 prev_pid,
					__u32 prev_tid, const char *prev_comm, __u8 state,
					__u32 next_pid, __u32 next_tid, const char *next_comm)
{
	struct sched_event *ev;

	ev = EVENT_RESERVE_AT(&sched_events, struct sched_event, EVENT_SCHED_SWITCH,
			      SCHED_LAYOUT_VERSION, ts);
	if (!ev)
		return;
	ev->hdr.cpu = cpu;
	ev->hdr.flags = flags;
	ev->prev_pid = prev_pid;
	ev->prev_tid = prev_tid;
	ev->next_pid = next_pid;
	ev->next_tid = next_tid;
	__builtin_memcpy(ev->prev_comm, prev_comm, TASK_COMM_LEN);
	__builtin_memcpy(ev->next_comm, next_comm, TASK_COMM_LEN);
	ev->target_cpu = -1;
	ev->prev_state = state;
	ev->__pad[0] = ev->__pad[1] = ev->__pad[2] = 0;
	ev->prev_run_ns = 0;
	event_submit(&sched_events, ev);
}

/* The waking that ended `st`'s wait (waker in prev_*, wakee `task` in next_*), written late. */
static __always_inline void emit_late_waking(struct thread_state *st, struct task_struct *task)
{
	struct sched_event *ev;

	ev = EVENT_RESERVE_AT(&sched_events, struct sched_event, EVENT_SCHED_WAKING,
			      SCHED_LAYOUT_VERSION, st->waking_ns);
	if (!ev)
		return;
	ev->hdr.cpu = st->waking_on;
	ev->hdr.flags = SCHED_FLAG_EVIDENCE;
	ev->prev_pid = st->waker_pid;
	ev->prev_tid = st->waker_tid;
	ev->next_pid = task->tgid;
	ev->next_tid = task->pid;
	__builtin_memcpy(ev->prev_comm, st->waker_comm, TASK_COMM_LEN);
	__builtin_memcpy(ev->next_comm, task->comm, TASK_COMM_LEN);
	ev->target_cpu = st->waking_cpu;
	ev->prev_state = 0;
	ev->__pad[0] = ev->__pad[1] = ev->__pad[2] = 0;
	ev->prev_run_ns = 0;
	event_submit(&sched_events, ev);
}

/* Leave the CPU's slice record (if it has slots) and start an empty one at `start`. */
static __always_inline void slice_flush(struct cpu_acc *acc, __u64 end, __u64 start)
{
	if (acc->ev.nslots) {
		acc->ev.hdr.ktime_ns = end;
		acc->ev.hdr.kind = EVENT_CPU_SLICE;
		acc->ev.hdr.size = sizeof(acc->ev);
		acc->ev.hdr.cpu = bpf_get_smp_processor_id();
		acc->ev.hdr.version = SCHED_LAYOUT_VERSION;
		acc->ev.hdr.flags = 0;
		if (bpf_ringbuf_output(&cpu_slice_events, &acc->ev, sizeof(acc->ev),
				       BPF_RB_NO_WAKEUP))
			count_drop(EVENT_CPU_SLICE, DROP_RING_FULL);
	}
	acc->ev.nslots = 0;
	acc->ev.start_ns = start;
}

/* The slot of thread `tid` in the CPU's record; a new one if needed (the record leaves
 * early when all are taken: a slot is never shared). NULL only if the map is broken. */
static __always_inline struct cpu_slice_slot *slice_slot(struct cpu_acc *acc,
							 struct task_struct *task, __u32 tid,
							 __u64 now)
{
	struct cpu_slice_slot *slot;
	__u32 n = acc->ev.nslots;
	int i;

#pragma unroll
	for (i = 0; i < CPU_SLICE_SLOTS; i++) {
		if (i >= n)
			break;
		if (acc->ev.slots[i].tid == tid)
			return &acc->ev.slots[i];
	}
	if (n >= CPU_SLICE_SLOTS) {
		slice_flush(acc, now, now);
		n = 0;
	}
	n = bounded(n, CPU_SLICE_SLOTS - 1);
	slot = &acc->ev.slots[n];
	slot->oncpu_ns = 0;
	slot->runq_ns = 0;
	slot->pid = task->tgid;
	slot->tid = tid;
	slot->switches = 0;
	slot->waits = 0;
	__builtin_memcpy(slot->comm, task->comm, TASK_COMM_LEN);
	acc->ev.nslots = n + 1;
	return slot;
}

/*
 * The CPU's slice sums for one switch at `now`: prev's run since the CPU's previous switch
 * (when that switch put prev there), next's run-queue wait since `wait_from` (0: unknown).
 */
static __always_inline void slice_account(struct task_struct *prev, __u32 prev_tid,
					  struct task_struct *next, __u32 next_tid,
					  __u64 wait_from, __u64 ran, __u64 now)
{
	__u32 zero = 0;
	struct cpu_acc *acc = bpf_map_lookup_elem(&cpu_acc, &zero);
	struct cpu_slice_slot *slot;
	__u64 slice = now / slice_ns;
	__u64 ran_from = 0;

	if (!acc)
		return;
	if (acc->last_switch_ns && acc->curr_tid == prev_tid)
		ran_from = acc->last_switch_ns;
	/*
	 * prev came onto this CPU by a switch the kernel did not trace (this VM's kernel fires
	 * none when one of PID 1's threads leaves a CPU): the CPU's last traced switch put
	 * another thread there. prev's run since its own latest traced switch is the kernel's
	 * runtime accounting (`ran`), ending now; before, it was not credited at all.
	 */
	else if (acc->last_switch_ns && ran && ran <= now - acc->last_switch_ns)
		ran_from = now - ran;
	if (acc->slice != slice) {
		__u64 slice_start = slice * slice_ns;
		__u64 old_end = (acc->slice + 1) * slice_ns;

		/* the part of prev's run in the record's slice stays in it */
		if (prev_tid && ran_from && acc->slice && ran_from < old_end) {
			slot = slice_slot(acc, prev, prev_tid, now);
			if (slot)
				slot->oncpu_ns += old_end - ran_from;
			/* (a record that left early for want of a slot starts later) */
			if (ran_from < acc->ev.start_ns)
				acc->ev.start_ns = ran_from;
			ran_from = old_end;
		}
		slice_flush(acc, acc->slice ? old_end : slice_start, slice_start);
		acc->slice = slice;
	}
	if (prev_tid) {
		slot = slice_slot(acc, prev, prev_tid, now);
		if (slot) {
			if (ran_from) {
				slot->oncpu_ns += now - ran_from;
				if (ran_from < acc->ev.start_ns)
					acc->ev.start_ns = ran_from;
			}
			slot->switches++;
		}
	}
	if (next_tid && wait_from && wait_from < now) {
		slot = slice_slot(acc, next, next_tid, now);
		if (slot) {
			slot->runq_ns += now - wait_from;
			slot->waits++;
		}
	}
	acc->last_switch_ns = now;
	acc->curr_tid = next_tid;
}

/*
 * Evidence capture at a switch (see the top of this file): next's off-CPU interval ends
 * (rows if it was long enough), prev's begins.
 */
static __always_inline void evidence_switch(bool preempt, struct task_struct *prev,
					    __u32 prev_tgid, __u32 prev_tid,
					    struct task_struct *next, __u32 next_tgid,
					    __u32 next_tid, __u8 state, __u64 now)
{
	struct thread_state *st = NULL;
	__u64 wait_from = 0, ran = 0;
	bool written = false;

	if (next_tid)
		st = bpf_map_lookup_elem(&thread_states, &next_tid);
	if (st)
		st->runtime_ns = next->se.sum_exec_runtime;
	if (st && st->out_ns) {
		wait_from = st->out_flags & THREAD_OUT_PREEMPT ? st->out_ns : st->waking_ns;
		if (now - st->out_ns >= min_offcpu_ns) {
			if (!(st->out_flags & THREAD_OUT_WRITTEN))
				emit_switch(st->out_ns, st->out_cpu,
					    SCHED_FLAG_EVIDENCE |
					    (st->out_flags & THREAD_OUT_PREEMPT ? SCHED_FLAG_PREEMPT : 0),
					    next_tgid, next_tid, next->comm, st->out_state,
					    st->next_pid, st->next_tid, st->next_comm);
			if (st->waking_ns)
				emit_late_waking(st, next);
			emit_switch(now, bpf_get_smp_processor_id(),
				    SCHED_FLAG_EVIDENCE | (preempt ? SCHED_FLAG_PREEMPT : 0),
				    prev_tgid, prev_tid, prev->comm, state, next_tgid, next_tid,
				    next->comm);
			written = true;
		}
		st->out_ns = 0;
		st->waking_ns = 0;
	}

	if (prev_tid) {
		if (state == TASK_STATE_X || state == TASK_STATE_Z) {
			/* it never comes back: its state goes with it (its last run counted) */
			st = bpf_map_lookup_elem(&thread_states, &prev_tid);
			if (st && st->runtime_ns && prev->se.sum_exec_runtime > st->runtime_ns)
				ran = prev->se.sum_exec_runtime - st->runtime_ns;
			bpf_map_delete_elem(&thread_states, &prev_tid);
		} else {
			st = bpf_map_lookup_elem(&thread_states, &prev_tid);
			if (!st) {
				struct thread_state fresh = {};

				bpf_map_update_elem(&thread_states, &prev_tid, &fresh, BPF_NOEXIST);
				st = bpf_map_lookup_elem(&thread_states, &prev_tid);
			}
			if (st) {
				__u64 runtime = prev->se.sum_exec_runtime;

				if (st->runtime_ns && runtime > st->runtime_ns)
					ran = runtime - st->runtime_ns;
				st->runtime_ns = runtime;
				/*
				 * Still open: the switch that brought it back was not traced (as
				 * offcpu_begin finds for targets). A wait of at least the bound that
				 * was woken leaves its rows now, ending at its waking: the switch
				 * out (unless written) and the waking; full capture has both.
				 */
				if (st->out_ns && st->waking_ns &&
				    st->waking_ns - st->out_ns >= min_offcpu_ns) {
					if (!(st->out_flags & THREAD_OUT_WRITTEN))
						emit_switch(st->out_ns, st->out_cpu,
							    SCHED_FLAG_EVIDENCE |
							    (st->out_flags & THREAD_OUT_PREEMPT ?
							     SCHED_FLAG_PREEMPT : 0),
							    prev_tgid, prev_tid, prev->comm,
							    st->out_state, st->next_pid, st->next_tid,
							    st->next_comm);
					emit_late_waking(st, prev);
				}
				st->out_ns = now;
				st->waking_ns = 0;
				st->next_pid = next_tgid;
				st->next_tid = next_tid;
				st->out_cpu = bpf_get_smp_processor_id();
				st->out_state = state;
				st->out_flags = (written ? THREAD_OUT_WRITTEN : 0) |
						(preempt ? THREAD_OUT_PREEMPT : 0);
				__builtin_memcpy(st->next_comm, next->comm, TASK_COMM_LEN);
			} else {
				count_drop(EVENT_SCHED_STATE, DROP_MAP_FULL);
			}
		}
	}
	slice_account(prev, prev_tid, next, next_tid, wait_from, ran, now);
}

/* Evidence capture at a waking: the first one since the wakee left its CPU is kept. */
static __always_inline void evidence_waking(struct task_struct *task, __u32 tid, __u64 now)
{
	struct thread_state *st = bpf_map_lookup_elem(&thread_states, &tid);
	struct task_struct *waker;

	if (!st || !st->out_ns || st->waking_ns)
		return;
	waker = bpf_get_current_task_btf();
	st->waking_ns = now;
	st->waker_pid = waker->tgid;
	st->waker_tid = waker->pid;
	st->waking_cpu = task->thread_info.cpu;
	st->waking_on = bpf_get_smp_processor_id();
	__builtin_memcpy(st->waker_comm, waker->comm, TASK_COMM_LEN);
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

	if (evidence)
		evidence_switch(preempt, prev, prev_tgid, prev_tid, next, next_tgid, next_tid,
				state, now);
	else if (record_switch && sched_in_scope(prev_tgid, next_tgid)) {
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
			ev->prev_run_ns = prev_tid ? run_since_switch_in(prev) : 0;
			event_submit(&sched_events, ev);
		}
	}

	/* A dying task never comes back: no interval to start. */
	if (prev_tid != 0 && state != TASK_STATE_X && state != TASK_STATE_Z &&
	    is_target(prev_tgid))
		offcpu_begin(prev, prev_tid, state, now);
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
		/*
		 * Long enough already: walk its stack now, while it still sleeps in it. An
		 * interval whose switch back in is not traced ends here (ENDS_AT_WAKING) and
		 * has its stack only this way.
		 */
		if (start->kstack_id == KSTACK_PENDING && now - start->start_ns >= min_offcpu_ns)
			start->kstack_id = sleeping_stack_id(task);
	}
	if (evidence)
		evidence_waking(task, tid, now);
	else if (record_waking)
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
