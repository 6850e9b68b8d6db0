/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Shared by every probe family: the common event header, the registry of event kinds,
 * targeting (which processes get the detailed, per-thread capture), loss accounting and
 * ring-buffer emission.
 *
 * Conventions (see capture_agent/families/__init__.py for the Python side):
 *   - every record starts with struct event_header; records of one ring all have one
 *     size, so user space views a batch as one numpy structured array;
 *   - fixed-width __u* / __s* types only, explicit padding, sizes multiple of 8;
 *   - every record type and enum mirrored in Python is named in LAYOUT_EXPORT(), which
 *     puts it in the object's BTF for tests/integration/test_bpf_layout.py.
 */
#ifndef KPROBE_COMMON_H
#define KPROBE_COMMON_H

/* Registry of record kinds, unique across families (with a drop_reason, the index of
 * `drops`). */
enum event_kind {
	EVENT_SCHED_SWITCH = 1,
	EVENT_SCHED_WAKING = 2,
	EVENT_SCHED_WAKEUP = 3,
	EVENT_SCHED_WAKEUP_NEW = 4,
	EVENT_OFFCPU = 5,
	/* evidence capture (sched): per-CPU slice records; 7 only counts threads whose state
	 * the kernel could not keep (map full) */
	EVENT_CPU_SLICE = 6,
	EVENT_SCHED_STATE = 7,
	/* syscalls (10-19) */
	EVENT_SYSCALL = 10,
	EVENT_SYSCALL_DATA = 11,
	EVENT_SYSCALL_DATA_SMALL = 12,
	/* net (20-29) */
	EVENT_NET_SEND = 20,
	EVENT_NET_RECV = 21,
	EVENT_NET_RETRANSMIT = 22,
	EVENT_NET_STATE = 23,
	EVENT_NET_RESET = 24,
	EVENT_NET_SLICE = 25, /* evidence capture: a socket's sends/receives of one slice */
	/* block (30-34) */
	EVENT_BLOCK_RQ = 30,
	/* mem (35-44); 39-40 only count drops (aggregated in maps, never ringed) */
	EVENT_MEM_DIRECT_RECLAIM = 35,
	EVENT_MEM_MEMCG_RECLAIM = 36,
	EVENT_MEM_KSWAPD_WAKE = 37,
	EVENT_MEM_OOM_KILL = 38,
	EVENT_MEM_FAULT = 39,
	EVENT_MEM_PAGE_ALLOC = 40,
	/* process (45-54); 48 only counts targets the kernel could not add (map full) */
	EVENT_PROC_EXEC = 45,
	EVENT_PROC_FORK = 46,
	EVENT_PROC_EXIT = 47,
	EVENT_PROC_TARGET = 48,
	/* next family: append here, never renumber */
	EVENT_KIND_MAX = 64,
};

/* Why the kernel lost a record: `drops` counts per reason and kind. */
enum drop_reason {
	DROP_RING_FULL = 0, /* its ring buffer had no room */
	DROP_MAP_FULL = 1,  /* a bookkeeping map (or task storage) had no room */
	DROP_UNDATED = 2,   /* an off-CPU interval whose end no traced event dates */
	DROP_NO_OWNER = 3,  /* evidence capture: socket bytes of no known process */
	DROP_REASON_MAX = 4,
};

/* Tetragon-style common header: 16 bytes, first in every record. */
struct event_header {
	__u64 ktime_ns;  /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) when the event fired */
	__u16 kind;      /* enum event_kind */
	__u16 size;      /* sizeof the whole record */
	__u16 cpu;       /* CPU the event fired on */
	__u8 version;    /* layout version of the family header (<family>_LAYOUT_VERSION);
			  * user space refuses records of another version */
	__u8 flags;      /* kind-specific bits */
};

#endif /* KPROBE_COMMON_H */

/* ---- BPF side only below: maps, config and helpers ---------------------------------- */
#if defined(__bpf__) && !defined(KPROBE_COMMON_BPF)
#define KPROBE_COMMON_BPF

/* Emits `type` into the object's BTF without loading anything: libbpf skips the section. */
#define LAYOUT_EXPORT(type, name) type *__layout_##name SEC(".layouts")

LAYOUT_EXPORT(struct event_header, event_header);
LAYOUT_EXPORT(enum event_kind, event_kind);
LAYOUT_EXPORT(enum drop_reason, drop_reason);

#ifdef KPROBE_BUILD
/* The compiler that built this object and the kernel its vmlinux.h came from (set by the
 * Makefile; `kprobe doctor` prints it). libbpf skips the section. */
char __kprobe_build[] SEC(".kprobe.build") = KPROBE_BUILD;
#endif

#define MAX_TARGETS 4096

/* Targeted processes (tgid -> 1). User space adds the roots; forks inherit (below). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TARGETS);
	__type(key, __u32);
	__type(value, __u8);
} targets SEC(".maps");

/*
 * A filter in front of `targets` for the hot paths: slot tgid % TARGET_HINT_SLOTS is 1 once
 * any process of that slot was a target (set wherever `targets` gains a key, never cleared).
 * 0 means "not a target" for certain; 1 means "ask `targets`". An array lookup is inlined by
 * the verifier (no helper call, no hash): the whole cost of the check for most processes.
 * One byte per slot would do, but an array's values are 8-byte aligned; a slot is written
 * whole (no read-modify-write), so user space and the kernel never undo each other's bits.
 */
#define TARGET_HINT_SLOTS 32768

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TARGET_HINT_SLOTS);
	__type(key, __u32);
	__type(value, __u8);
} target_hint SEC(".maps");

/* Records lost in the kernel, at reason * EVENT_KIND_MAX + kind (enum drop_reason, enum
 * event_kind). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EVENT_KIND_MAX * DROP_REASON_MAX);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/* Set by the loader between open and load; the verifier prunes the dead branches. */
const volatile __u8 target_all = 0;
/* Wake the consumer only when a ring is at least this full (percent); else stay silent:
 * a wakeup per record cut the workload's throughput to a third (ARCHITECTURE.md, Decisions). */
const volatile __u32 wakeup_fill_pct = 50;

/* 0: tgid is certainly not a target (see target_hint). */
static __always_inline bool maybe_target(__u32 tgid)
{
	__u32 slot = tgid % TARGET_HINT_SLOTS;
	__u8 *hint = bpf_map_lookup_elem(&target_hint, &slot);

	return hint && *hint;
}

static __always_inline bool is_target(__u32 tgid)
{
	if (target_all)
		return true;
	return maybe_target(tgid) && bpf_map_lookup_elem(&targets, &tgid) != NULL;
}

/* false: tgid is not a target and was none since the agent started (so no state the
 * kernel keeps for targets, e.g. task storage or an off-CPU interval, can be its). */
static __always_inline bool ever_target(__u32 tgid)
{
	return target_all || maybe_target(tgid);
}

/* Before a key is added to `targets`: the hint must never say no to a target. */
static __always_inline void hint_target(__u32 tgid)
{
	__u32 slot = tgid % TARGET_HINT_SLOTS;
	__u8 *hint = bpf_map_lookup_elem(&target_hint, &slot);

	if (hint)
		*hint = 1;
}

/*
 * v, at most max, in a form every supported kernel's verifier can follow: the comparison
 * and the result are one 64-bit register. Written in C, clang may compare a 32-bit copy
 * and pass the original (`w2 = w1; if w1 < 256 ...; call ...(r2)`), and verifiers before
 * Linux ~6.7 do not link a 32-bit copy to its source: "R2 unbounded memory access" on 6.1.
 */
static __always_inline __u64 bounded(__u64 v, const __u64 max)
{
	asm volatile("if %[v] <= %[max] goto +1\n\t%[v] = %[max]" : [v] "+r"(v) : [max] "i"(max));
	return v;
}

static __always_inline void count_drop(__u32 kind, __u32 reason)
{
	__u32 index = reason * EVENT_KIND_MAX + kind;
	__u64 *count = bpf_map_lookup_elem(&drops, &index);

	if (count)
		__sync_fetch_and_add(count, 1);
}

static __always_inline void *event_reserve(void *ring, __u32 size, __u16 kind, __u8 version,
					   __u64 now)
{
	struct event_header *hdr = bpf_ringbuf_reserve(ring, size, 0);

	if (!hdr) {
		count_drop(kind, DROP_RING_FULL);
		return NULL;
	}
	hdr->ktime_ns = now;
	hdr->kind = kind;
	hdr->size = size;
	hdr->cpu = bpf_get_smp_processor_id();
	hdr->version = version;
	hdr->flags = 0;
	return hdr;
}

/* Reserve a typed record in `ring` and fill its header; NULL (and a counted drop) if full.
 * _AT takes the event time, so records of one tracepoint hit share one timestamp. */
#define EVENT_RESERVE_AT(ring, type, kind, version, now) \
	((type *)event_reserve(ring, sizeof(type), kind, version, now))
#define EVENT_RESERVE(ring, type, kind, version) \
	EVENT_RESERVE_AT(ring, type, kind, version, bpf_ktime_get_ns())

/*
 * Submit silently, except for the record that takes the ring over wakeup_fill_pct: that
 * one forces a wakeup (a plain submit only wakes a consumer that has caught up, which a
 * lagging one has not). Waking on every record while the ring stays over the threshold
 * cost ~500 ns per record here (an IPI each); one wakeup per crossing is enough for a
 * consumer that drains when woken. Records from several CPUs can jump over the crossing
 * window together, so past 7/8 full every record wakes again: better an IPI than a drop.
 */
static __always_inline void event_submit(void *ring, void *record)
{
	__u64 avail = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
	__u64 size = bpf_ringbuf_query(ring, BPF_RB_RING_SIZE);
	__u64 threshold = size * wakeup_fill_pct / 100;
	/* avail already counts this record and its 8-byte ring header */
	__u64 rec = ((struct event_header *)record)->size + 8;
	bool crossing = avail >= threshold && avail < threshold + rec;

	bpf_ringbuf_submit(record, crossing || avail >= size - size / 8 ? BPF_RB_FORCE_WAKEUP
									 : BPF_RB_NO_WAKEUP);
}

/*
 * Targets follow forks: a new process forked by a target is a target. Threads share
 * the tgid, so only a new thread group is added. Included in every object that has
 * a `targets` map; when several sensors share one map the duplicates are idempotent.
 */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(follow_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 parent_tgid, child_tgid;
	__u8 one = 1;

	if (target_all)
		return 0;
	parent_tgid = BPF_CORE_READ(parent, tgid);
	child_tgid = BPF_CORE_READ(child, tgid);
	if (child_tgid != parent_tgid && is_target(parent_tgid)) {
		hint_target(child_tgid);
		bpf_map_update_elem(&targets, &child_tgid, &one, BPF_ANY);
	}
	return 0;
}

/*
 * A process leaves the targets when its whole thread group is gone, so a recycled pid
 * is not captured by mistake. signal->live reaches 0 in do_exit() before the tracepoint
 * fires for the last thread; reading it (rather than the tracepoint's group_dead
 * argument, absent on older kernels) keeps one object for all kernels.
 */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(follow_exit, struct task_struct *task)
{
	__u32 tgid;

	if (target_all)
		return 0;
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	tgid = BPF_CORE_READ(task, tgid);
	bpf_map_delete_elem(&targets, &tgid);
	return 0;
}

#endif /* __bpf__ */
