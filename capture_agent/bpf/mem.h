/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Mem family records, mirrored once in capture_agent/families/mem.py.
 *
 *   ring `mem_events` (struct mem_event): reclaim episodes (begin+end merged in the
 *       kernel), kswapd wakeups, OOM kills: rare enough for one record each;
 *   hash `faults` (tid -> struct fault_stat) and `allocs` (tgid -> struct alloc_stat):
 *       user page faults and page allocations, far too frequent for a record each, are
 *       counted in the kernel and read-and-cleared by user space once per flush.
 */
#ifndef KPROBE_MEM_H
#define KPROBE_MEM_H

#include "common.h"

/* Constants mirrored in Python (an enum reaches the BTF and the layout test). */
enum mem_constants {
	MEM_LAYOUT_VERSION = 1, /* bumped on any change to the records below */
};

#ifndef TASK_COMM_LEN /* 16 in every kernel (vmlinux.h's enum constant is no macro) */
#define TASK_COMM_LEN 16
#endif

/*
 * One reclaim episode, kswapd wakeup or OOM kill (104 bytes). hdr.kind says which:
 *   EVENT_MEM_DIRECT_RECLAIM / EVENT_MEM_MEMCG_RECLAIM: hdr.ktime_ns = end, start_ns =
 *       begin, in the reclaiming (allocating) thread;
 *   EVENT_MEM_KSWAPD_WAKE: pid/tid = the allocator that woke kswapd on node `nid`;
 *   EVENT_MEM_OOM_KILL: pid/tid/comm/memcg = the victim, trigger_* = the task whose
 *       allocation invoked the OOM killer.
 */
struct mem_event {
	struct event_header hdr;
	__u64 start_ns;     /* reclaim: begin (CLOCK_MONOTONIC); else = hdr.ktime_ns */
	__u64 nr_reclaimed; /* reclaim: pages reclaimed */
	__u64 memcg;        /* memory cgroup id (kernfs id = inode of its directory) */
	__u32 pid;          /* tgid */
	__u32 tid;
	__u32 gfp_flags;    /* reclaim, kswapd wake */
	__s32 order;        /* reclaim, kswapd wake: allocation order; else -1 */
	__s32 nid;          /* kswapd wake: NUMA node; else -1 */
	__u32 trigger_pid;  /* OOM kill only */
	__u32 trigger_tid;
	__u32 __pad;
	char comm[TASK_COMM_LEN];
	char trigger_comm[TASK_COMM_LEN];
};

/* User page faults of one thread since the last read (value of `faults`, key tid). */
struct fault_stat {
	__u64 count;
	__u64 first_ns;     /* first fault since the last read (CLOCK_MONOTONIC) */
	__u64 last_ns;
	__u64 last_address; /* faulting address of the latest fault */
	__u64 memcg;        /* memory cgroup id at the first fault */
	__u32 pid;          /* tgid */
	__u32 __pad;
	char comm[TASK_COMM_LEN];
};

/* Pages allocated by one process since the last read (value of `allocs`, key tgid). */
struct alloc_stat {
	__u64 pages;        /* sum of 1 << order */
	__u64 memcg;        /* memory cgroup id at the first allocation */
	char comm[TASK_COMM_LEN]; /* the thread group leader's */
};

#endif /* KPROBE_MEM_H */

/* ---- BPF side only below --------------------------------------------------------------- */
#if defined(__bpf__) && !defined(KPROBE_MEM_BPF)
#define KPROBE_MEM_BPF

/*
 * The memory cgroup a task is charged to: its css of the memory controller. Unlike
 * bpf_get_current_cgroup_id() this works on cgroup v1 hosts too (where the unified
 * hierarchy is empty), and on v2 it is the nearest cgroup with the controller enabled.
 * NULL without CONFIG_MEMCG.
 */
static __always_inline struct cgroup_subsys_state *task_memcg_css(struct task_struct *task)
{
	struct cgroup_subsys_state *css = NULL;
	struct css_set *cgroups;
	int id;

	if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id))
		return NULL;
	id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	if (id < 0 || id >= CGROUP_SUBSYS_COUNT)
		return NULL;
	cgroups = BPF_CORE_READ(task, cgroups);
	if (!cgroups)
		return NULL;
	bpf_core_read(&css, sizeof(css), &cgroups->subsys[id]);
	return css;
}

/* The id of a css's cgroup: kernfs id, the inode number of the cgroup's directory. */
static __always_inline __u64 css_cgroup_id(struct cgroup_subsys_state *css)
{
	if (!css)
		return 0;
	return BPF_CORE_READ(css, cgroup, kn, id);
}

static __always_inline __u64 task_memcg_id(struct task_struct *task)
{
	return css_cgroup_id(task_memcg_css(task));
}

#endif /* __bpf__ */
