/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Sched family records, mirrored once in capture_agent/families/sched.py.
 * Two rings, one record size each: `sched_events` (system-wide, compact) and
 * `offcpu_events` (targeted threads, intervals computed in the kernel).
 */
#ifndef KPROBE_SCHED_H
#define KPROBE_SCHED_H

#include "common.h"

/* Constants mirrored in Python: an enum, not #defines, so they reach the object's BTF
 * and the layout test. */
enum sched_constants {
	SCHED_LAYOUT_VERSION = 3, /* bumped on any change to the records below */
	SCHED_FLAG_PREEMPT = 0x1, /* sched_event hdr.flags: prev was preempted (state R) */
	OFFCPU_FLAG_WAKER = 0x1,  /* offcpu_event hdr.flags: a sched_waking named the waker */
	OFFCPU_FLAG_ENDS_AT_WAKING = 0x2, /* the switch back in was not traced: the interval
					   * ends at the thread's waking (hdr.ktime_ns) */
	OFFCPU_FLAG_END_DATED = 0x4, /* the switch back in was not traced: its instant
				      * (hdr.ktime_ns) is dated by the run since */
	SCHED_FLAG_EVIDENCE = 0x2, /* sched_event hdr.flags: written by evidence capture, when
				    * the off-CPU interval it bounds ended (hdr.ktime_ns is still
				    * the instant of the switch or waking itself) */
	CPU_SLICE_SLOTS = 8,      /* threads per cpu_slice_event */
};

#ifndef TASK_COMM_LEN /* 16 in every kernel (vmlinux.h's enum constant is no macro) */
#define TASK_COMM_LEN 16
#endif

/*
 * Task state at switch-out, as one index into "RSDTtXZPI" (the letters of the kernel's
 * sched_switch trace output: running/preempted, sleeping, disk sleep, stopped, traced,
 * dead, zombie, parked, idle).
 */
enum task_state_code {
	TASK_STATE_R = 0,
	TASK_STATE_S = 1,
	TASK_STATE_D = 2,
	TASK_STATE_T = 3,
	TASK_STATE_t = 4,
	TASK_STATE_X = 5,
	TASK_STATE_Z = 6,
	TASK_STATE_P = 7,
	TASK_STATE_I = 8,
};

/*
 * One record for sched_switch, sched_waking, sched_wakeup and sched_wakeup_new (80 bytes).
 *   switch:          prev = task switched out, next = task switched in; prev_run_ns: how
 *                    long prev ran since it was switched in (0: unknown)
 *   waking / wakeup: prev = the waker (current task), next = the wakee, target_cpu set
 */
struct sched_event {
	struct event_header hdr;
	__u32 prev_pid;  /* tgid */
	__u32 prev_tid;  /* kernel pid */
	__u32 next_pid;
	__u32 next_tid;
	char prev_comm[TASK_COMM_LEN];
	char next_comm[TASK_COMM_LEN];
	__s32 target_cpu; /* waking/wakeup: CPU the wakee will run on; switch: -1 */
	__u8 prev_state;  /* enum task_state_code; switch only */
	__u8 __pad[3];
	/*
	 * switch: prev's CPU time since the scheduler last put it on a CPU, which is the
	 * switch in (sum_exec_runtime - prev_sum_exec_runtime, fair-class tasks; 0 for
	 * others; the mark moves when a running task's affinity, cgroup or priority changes,
	 * and at exit). It dates a switch in the kernel did not trace (as when the task
	 * before it left without a sched_switch) or the ring lost.
	 */
	__u64 prev_run_ns;
};

/*
 * An off-CPU interval of a targeted thread above min_offcpu_ns (80 bytes). The header's
 * ktime_ns and cpu are those of the switch-in that ended the interval (of the waking, with
 * OFFCPU_FLAG_ENDS_AT_WAKING).
 */
struct offcpu_event {
	struct event_header hdr;
	__u64 start_ns;    /* switch-out (CLOCK_MONOTONIC) */
	__u32 pid;
	__u32 tid;
	__u32 waker_pid;   /* valid with OFFCPU_FLAG_WAKER (no waking when preempted) */
	__u32 waker_tid;
	__s32 kstack_id;   /* id in `offcpu_stacks` of the stack it slept in; < 0 = errno
			    * (-ENOENT: preempted, state R, not walked;
			    * -ENODATA: its switch in was not traced, no walk) */
	__u16 cpu_out;     /* CPU the thread switched out on */
	__u8 state;        /* enum task_state_code at switch-out */
	__u8 __pad;
	char comm[TASK_COMM_LEN];
	char waker_comm[TASK_COMM_LEN];
};

/*
 * Evidence capture: what one CPU did over [start_ns, hdr.ktime_ns), per thread (416 bytes).
 * A span is one slice (slice_ns, 10 ms by default) or less: a record leaves when the CPU's
 * first switch of a later slice finds it (the time up to the slice's end is counted in it,
 * the rest in the next), or early when a ninth thread needs a slot. A run that began before
 * start_ns (a thread on the CPU over several slices) lowers start_ns to its start. Idle time
 * (tid 0) has no slot: the span minus the slots' on-CPU time.
 */
struct cpu_slice_slot {
	__u64 oncpu_ns;  /* on this CPU within the span */
	__u64 runq_ns;   /* run-queue waits that ended here (switched in on this CPU) */
	__u32 pid;       /* tgid */
	__u32 tid;
	__u32 switches;  /* switched out on this CPU */
	__u32 waits;     /* run-queue waits counted in runq_ns */
	char comm[TASK_COMM_LEN];
};

struct cpu_slice_event {
	struct event_header hdr; /* ktime_ns: end of the span */
	__u64 start_ns;
	__u32 nslots;            /* slots in use, first to last */
	__u32 __pad;
	struct cpu_slice_slot slots[CPU_SLICE_SLOTS];
};

#endif /* KPROBE_SCHED_H */
