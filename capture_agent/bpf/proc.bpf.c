// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Process family: exec, fork and exit of every process (one record each), and in-kernel
 * targeting by name and cgroup:
 *
 *   sched:sched_process_exec  -> process_event; comm in target_comms, or a cgroup (or an
 *                                ancestor) in target_cgroups -> targets[tgid]
 *   sched:sched_process_fork  -> process_event for a new process (threads: record_threads);
 *                                child's cgroup targeted -> targets[child tgid]
 *   sched:sched_process_exit  -> process_event when the last thread of a process leaves
 *
 * Children of targets are added by common.h's follow_fork (also in this object), so the
 * fork handler here only looks at cgroups, and only for children of non-targets. A cgroup
 * is checked at exec too: runtimes move a forked child into the container's cgroup and
 * then exec it.
 *
 * Attach points: tp_btf only (no kprobes/fentry on the target kernels).
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "common.h"
#include "mem.h" /* task_memcg_css, css_cgroup_id */
#include "proc.h"

char LICENSE[] SEC("license") = "GPL";

LAYOUT_EXPORT(struct process_event, process_event);
LAYOUT_EXPORT(enum proc_constants, proc_constants);

#define MAX_TARGET_RULES 1024
#define CGROUP_MAX_DEPTH 16 /* ancestors checked for a targeted cgroup */

/* Sizes are defaults; the loader resizes rings and maps before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} proc_events SEC(".maps");

/* Process names (comm, NUL-padded to 16 bytes) whose exec makes the process a target. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TARGET_RULES);
	__type(key, char[TASK_COMM_LEN]);
	__type(value, __u8);
} target_comms SEC(".maps");

/* Cgroup ids (inode of the cgroup directory) whose processes, and their descendants'
 * processes, are targets: unified-hierarchy cgroups, or memory-controller cgroups with
 * target_cgroup_memcg (cgroup v1 hosts). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TARGET_RULES);
	__type(key, __u64);
	__type(value, __u8);
} target_cgroups SEC(".maps");

/* Configuration, set by the loader between open and load. */
const volatile __u8 record_threads = 0;
const volatile __u8 target_cgroup_memcg = 0;

static __always_inline __u64 task_cgroup_id(struct task_struct *task)
{
	return BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
}

static __always_inline bool cgroup_is_target(struct task_struct *task)
{
	struct cgroup_subsys_state *css;
	struct cgroup *cgrp;
	__u64 id;
	int i;

	if (target_cgroup_memcg) {
		css = task_memcg_css(task);
	} else {
		cgrp = BPF_CORE_READ(task, cgroups, dfl_cgrp);
		css = cgrp ? &cgrp->self : NULL;
	}
	for (i = 0; i < CGROUP_MAX_DEPTH && css; i++) {
		id = css_cgroup_id(css);
		if (bpf_map_lookup_elem(&target_cgroups, &id))
			return true;
		css = BPF_CORE_READ(css, parent);
	}
	return false;
}

/* Add tgid to the targets; PROC_FLAG_TARGETED if it is new. */
static __always_inline __u8 add_target(__u32 tgid)
{
	__u8 one = 1;

	if (bpf_map_lookup_elem(&targets, &tgid))
		return 0;
	hint_target(tgid);
	if (bpf_map_update_elem(&targets, &tgid, &one, BPF_NOEXIST)) {
		count_drop(EVENT_PROC_TARGET, DROP_MAP_FULL);
		return 0;
	}
	return PROC_FLAG_TARGETED;
}

static __always_inline void fill_task(struct process_event *ev, struct task_struct *task)
{
	ev->cgroup_id = task_cgroup_id(task);
	ev->pid = BPF_CORE_READ(task, tgid);
	ev->tid = BPF_CORE_READ(task, pid);
	ev->ppid = BPF_CORE_READ(task, real_parent, tgid);
	ev->exit_code = 0;
	ev->args_len = 0;
	ev->__pad = 0;
	BPF_CORE_READ_INTO(&ev->comm, task, comm);
	__builtin_memset(ev->filename, 0, sizeof(ev->filename));
	__builtin_memset(ev->args, 0, sizeof(ev->args));
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 tgid = BPF_CORE_READ(task, tgid);
	char comm[TASK_COMM_LEN] = {};
	unsigned long arg_start, arg_end, len;
	struct process_event *ev;
	struct mm_struct *mm;
	__u8 flags = 0;

	if (!target_all) {
		bpf_get_current_comm(comm, sizeof(comm)); /* the new name: set before this fires */
		if (bpf_map_lookup_elem(&target_comms, comm) || cgroup_is_target(task))
			flags |= add_target(tgid);
	}

	ev = EVENT_RESERVE_AT(&proc_events, struct process_event, EVENT_PROC_EXEC,
			      PROC_LAYOUT_VERSION, now);
	if (!ev)
		return 0;
	fill_task(ev, task);
	bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename), BPF_CORE_READ(bprm, filename));

	/* argv was just copied onto the new stack by the kernel: resident, readable here */
	mm = BPF_CORE_READ(task, mm);
	arg_start = BPF_CORE_READ(mm, arg_start);
	arg_end = BPF_CORE_READ(mm, arg_end);
	len = arg_end > arg_start ? arg_end - arg_start : 0;
	if (len >= PROC_ARGS_LEN) {
		if (len > PROC_ARGS_LEN)
			flags |= PROC_FLAG_ARGS_TRUNCATED;
		len = PROC_ARGS_LEN;
		if (bpf_probe_read_user(ev->args, PROC_ARGS_LEN, (void *)arg_start))
			len = 0;
	} else if (bpf_probe_read_user(ev->args, len & (PROC_ARGS_LEN - 1), (void *)arg_start)) {
		len = 0;
	}
	ev->args_len = len;
	ev->hdr.flags = flags;
	event_submit(&proc_events, ev);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 parent_tgid = BPF_CORE_READ(parent, tgid);
	__u32 child_tgid = BPF_CORE_READ(child, tgid);
	bool thread = child_tgid == parent_tgid;
	struct process_event *ev;
	__u8 flags = thread ? PROC_FLAG_THREAD : 0;

	if (thread && !record_threads)
		return 0;
	/* children of targets are follow_fork's; CLONE_INTO_CGROUP: the child's own cgroup */
	if (!thread && !target_all && !is_target(parent_tgid) && cgroup_is_target(child))
		flags |= add_target(child_tgid);

	ev = EVENT_RESERVE_AT(&proc_events, struct process_event, EVENT_PROC_FORK,
			      PROC_LAYOUT_VERSION, now);
	if (!ev)
		return 0;
	fill_task(ev, child);
	ev->hdr.flags = flags;
	event_submit(&proc_events, ev);
	return 0;
}

/*
 * The process has exited when its last thread does: signal->live reaches 0 in do_exit()
 * before this fires (as in common.h's follow_exit). exit_code was set just before too.
 */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *task)
{
	__u64 now = bpf_ktime_get_ns();
	bool last = BPF_CORE_READ(task, signal, live.counter) == 0;
	struct process_event *ev;

	if (!last && !record_threads)
		return 0;
	ev = EVENT_RESERVE_AT(&proc_events, struct process_event, EVENT_PROC_EXIT,
			      PROC_LAYOUT_VERSION, now);
	if (!ev)
		return 0;
	fill_task(ev, task);
	ev->exit_code = BPF_CORE_READ(task, exit_code);
	ev->hdr.flags = last ? 0 : PROC_FLAG_THREAD;
	event_submit(&proc_events, ev);
	return 0;
}
