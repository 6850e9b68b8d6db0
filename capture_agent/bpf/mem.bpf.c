// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Mem family: memory pressure and who drove it, system-wide.
 *
 *   vmscan:mm_vmscan_{direct,memcg}_reclaim_begin -> reclaim_start[tid] = {time, order}
 *   vmscan:mm_vmscan_{direct,memcg}_reclaim_end   -> one mem_event {begin, duration,
 *                                                    pages reclaimed, memcg}
 *   vmscan:mm_vmscan_wakeup_kswapd                -> one mem_event (the allocator)
 *   oom:mark_victim                               -> one mem_event (victim + trigger)
 *   exceptions:page_fault_user                    -> faults[tid] += 1 (no record)
 *   kmem:mm_page_alloc                            -> allocs[tgid] += 1 << order (no record)
 *
 * A memcg limit reclaims in the allocating thread through the memcg events; direct
 * reclaim needs global pressure (ARCHITECTURE.md). The two hash maps are read and cleared by
 * user space once per flush (capture_agent/families/mem.py collect_maps).
 *
 * Attach points: tp_btf only (no kprobes/fentry on the target kernels).
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "common.h"
#include "mem.h"

char LICENSE[] SEC("license") = "GPL";

LAYOUT_EXPORT(struct mem_event, mem_event);
LAYOUT_EXPORT(struct fault_stat, fault_stat);
LAYOUT_EXPORT(struct alloc_stat, alloc_stat);
LAYOUT_EXPORT(enum mem_constants, mem_constants);

/* Sizes are defaults; the loader resizes rings and maps before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 << 10);
} mem_events SEC(".maps");

/*
 * Not preallocated: user space deletes entries while this side may still hold a pointer
 * from a lookup. With preallocation a deleted element is reused at once and a late
 * increment would land in another key's counter; here it lands in a freed (RCU) element
 * and is lost, which the counts tolerate.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); /* tid */
	__type(value, struct fault_stat);
} faults SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); /* tgid */
	__type(value, struct alloc_stat);
} allocs SEC(".maps");

/* A reclaim under way in a thread. */
struct reclaim_start {
	__u64 start_ns;
	__u32 gfp_flags;
	__s32 order;
	__u16 kind; /* EVENT_MEM_DIRECT_RECLAIM or EVENT_MEM_MEMCG_RECLAIM */
	__u16 __pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* tid */
	__type(value, struct reclaim_start);
} reclaim_start SEC(".maps");

/* Configuration, set by the loader between open and load. */
const volatile __u64 min_reclaim_ns = 0;

static __always_inline void fill_task(struct mem_event *ev, struct task_struct *task)
{
	ev->pid = BPF_CORE_READ(task, tgid);
	ev->tid = BPF_CORE_READ(task, pid);
	ev->memcg = task_memcg_id(task);
	BPF_CORE_READ_INTO(&ev->comm, task, comm);
}

static __always_inline void clear_tail(struct mem_event *ev)
{
	ev->trigger_pid = 0;
	ev->trigger_tid = 0;
	ev->__pad = 0;
	__builtin_memset(ev->trigger_comm, 0, sizeof(ev->trigger_comm));
}

/* ---- reclaim: begin + end merged per thread ------------------------------------------ */

static __always_inline void reclaim_begin(__u16 kind, int order, gfp_t gfp_flags)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct reclaim_start start = {};

	start.start_ns = bpf_ktime_get_ns();
	start.gfp_flags = gfp_flags;
	start.order = order;
	start.kind = kind;

	if (bpf_map_update_elem(&reclaim_start, &tid, &start, BPF_ANY))
		count_drop(kind, DROP_MAP_FULL);
}

static __always_inline void reclaim_end(__u16 kind, unsigned long nr_reclaimed)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct reclaim_start *start = bpf_map_lookup_elem(&reclaim_start, &tid);
	struct task_struct *task;
	struct mem_event *ev;

	/* no begin seen (the sensor attached mid-reclaim), or an end of another kind */
	if (!start || start->kind != kind)
		goto done;
	if (now - start->start_ns < min_reclaim_ns)
		goto done;
	ev = EVENT_RESERVE_AT(&mem_events, struct mem_event, kind, MEM_LAYOUT_VERSION, now);
	if (!ev)
		goto done;
	task = bpf_get_current_task_btf();
	ev->start_ns = start->start_ns;
	ev->nr_reclaimed = nr_reclaimed;
	ev->gfp_flags = start->gfp_flags;
	ev->order = start->order;
	ev->nid = -1;
	fill_task(ev, task);
	clear_tail(ev);
	event_submit(&mem_events, ev);
done:
	if (start)
		bpf_map_delete_elem(&reclaim_start, &tid);
}

SEC("tp_btf/mm_vmscan_direct_reclaim_begin")
int BPF_PROG(on_direct_reclaim_begin, int order, gfp_t gfp_flags)
{
	reclaim_begin(EVENT_MEM_DIRECT_RECLAIM, order, gfp_flags);
	return 0;
}

SEC("tp_btf/mm_vmscan_direct_reclaim_end")
int BPF_PROG(on_direct_reclaim_end, unsigned long nr_reclaimed)
{
	reclaim_end(EVENT_MEM_DIRECT_RECLAIM, nr_reclaimed);
	return 0;
}

/* Compat: 6.18's memcg events carry no memcg argument; the task's memcg is reported
 * (the limit that was hit may be an ancestor's). */
SEC("tp_btf/mm_vmscan_memcg_reclaim_begin")
int BPF_PROG(on_memcg_reclaim_begin, int order, gfp_t gfp_flags)
{
	reclaim_begin(EVENT_MEM_MEMCG_RECLAIM, order, gfp_flags);
	return 0;
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_end")
int BPF_PROG(on_memcg_reclaim_end, unsigned long nr_reclaimed)
{
	reclaim_end(EVENT_MEM_MEMCG_RECLAIM, nr_reclaimed);
	return 0;
}

/* ---- kswapd wakeups and OOM kills: one record each ------------------------------------ */

SEC("tp_btf/mm_vmscan_wakeup_kswapd")
int BPF_PROG(on_wakeup_kswapd, int nid, int zid, int order, gfp_t gfp_flags)
{
	__u64 now = bpf_ktime_get_ns();
	struct mem_event *ev;

	ev = EVENT_RESERVE_AT(&mem_events, struct mem_event, EVENT_MEM_KSWAPD_WAKE,
			      MEM_LAYOUT_VERSION, now);
	if (!ev)
		return 0;
	ev->start_ns = now;
	ev->nr_reclaimed = 0;
	ev->gfp_flags = gfp_flags;
	ev->order = order;
	ev->nid = nid;
	fill_task(ev, bpf_get_current_task_btf());
	clear_tail(ev);
	event_submit(&mem_events, ev);
	return 0;
}

/* Fires in the task that invoked the OOM killer (global or memcg), naming the victim. */
SEC("tp_btf/mark_victim")
int BPF_PROG(on_mark_victim, struct task_struct *victim, uid_t uid)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 current_ids = bpf_get_current_pid_tgid();
	struct mem_event *ev;

	ev = EVENT_RESERVE_AT(&mem_events, struct mem_event, EVENT_MEM_OOM_KILL,
			      MEM_LAYOUT_VERSION, now);
	if (!ev)
		return 0;
	ev->start_ns = now;
	ev->nr_reclaimed = 0;
	ev->gfp_flags = 0;
	ev->order = -1;
	ev->nid = -1;
	fill_task(ev, victim);
	ev->trigger_pid = current_ids >> 32;
	ev->trigger_tid = (__u32)current_ids;
	ev->__pad = 0;
	bpf_get_current_comm(ev->trigger_comm, sizeof(ev->trigger_comm));
	event_submit(&mem_events, ev);
	return 0;
}

/* ---- counted in the kernel, read per flush -------------------------------------------- */

/*
 * Who a counter belongs to can change within a flush interval (a process moved to
 * another cgroup, renamed at exec): memcg and comm are refreshed each time a counter
 * crosses a multiple of REFRESH_EVERY, cheap next to a read per event.
 */
#define REFRESH_EVERY 256

static __always_inline bool crossed_refresh(__u64 before, __u64 added)
{
	return (before / REFRESH_EVERY) != ((before + added) / REFRESH_EVERY);
}

/* A thread faults on one CPU at a time: its own entry needs no atomics. */
SEC("tp_btf/page_fault_user")
int BPF_PROG(on_page_fault_user, unsigned long address, struct pt_regs *regs,
	     unsigned long error_code)
{
	__u64 ids = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)ids;
	__u64 now = bpf_ktime_get_ns();
	struct fault_stat *stat = bpf_map_lookup_elem(&faults, &tid);
	struct fault_stat fresh = {};

	if (stat) {
		if (crossed_refresh(stat->count, 1)) {
			stat->memcg = task_memcg_id(bpf_get_current_task_btf());
			bpf_get_current_comm(stat->comm, sizeof(stat->comm));
		}
		stat->count++;
		stat->last_ns = now;
		stat->last_address = address;
		return 0;
	}
	fresh.count = 1;
	fresh.first_ns = now;
	fresh.last_ns = now;
	fresh.last_address = address;
	fresh.memcg = task_memcg_id(bpf_get_current_task_btf());
	fresh.pid = ids >> 32;
	bpf_get_current_comm(fresh.comm, sizeof(fresh.comm));
	if (bpf_map_update_elem(&faults, &tid, &fresh, BPF_NOEXIST))
		count_drop(EVENT_MEM_FAULT, DROP_MAP_FULL); /* map full (EEXIST cannot happen: one CPU per tid) */
	return 0;
}

/* The hottest attach point here: one lookup and one atomic add on the common path. */
SEC("tp_btf/mm_page_alloc")
int BPF_PROG(on_mm_page_alloc, struct page *page, unsigned int order, gfp_t gfp_flags,
	     int migratetype)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 pages = 1ULL << (order & 31);
	struct alloc_stat *stat = bpf_map_lookup_elem(&allocs, &tgid);
	struct alloc_stat fresh = {};
	struct task_struct *task;
	__u64 before;

	if (stat) {
		before = __sync_fetch_and_add(&stat->pages, pages);
		if (crossed_refresh(before, pages)) {
			/* plain stores: racing threads of one process write the same values */
			task = bpf_get_current_task_btf();
			stat->memcg = task_memcg_id(task);
			BPF_CORE_READ_INTO(&stat->comm, task, group_leader, comm);
		}
		return 0;
	}
	task = bpf_get_current_task_btf();
	fresh.pages = pages;
	fresh.memcg = task_memcg_id(task);
	BPF_CORE_READ_INTO(&fresh.comm, task, group_leader, comm);
	if (!bpf_map_update_elem(&allocs, &tgid, &fresh, BPF_NOEXIST))
		return 0;
	/* another thread of the process inserted first: add to its entry */
	stat = bpf_map_lookup_elem(&allocs, &tgid);
	if (stat)
		__sync_fetch_and_add(&stat->pages, pages);
	else
		count_drop(EVENT_MEM_PAGE_ALLOC, DROP_MAP_FULL);
	return 0;
}
