// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Block family: every block request with its issue -> completion latency, device, size,
 * direction and the task that created it.
 *
 * A request lives in three contexts (ARCHITECTURE.md, Decisions: attribute by request, never by the
 * current pid at completion):
 *
 *   block_io_start     the submitter (blk_mq_submit_bio: the writer, the fsync caller,
 *                      or the writeback kworker for background flushing)
 *                      -> requests[rq] = {task, device, partition start}
 *   block_rq_issue     often a kworker (kblockd, plug flush)    -> .issue_ns = now
 *   block_rq_complete  irq/softirq                              -> one block_event
 *   block_rq_merge     rq merged into another and freed         -> forget rq
 *
 * Requests issued without a block_io_start (flush sequences, passthrough commands, or
 * created before the sensor loaded) have no task (no BLOCK_FLAG_TASK); completions of
 * requests issued before the sensor loaded are skipped (no issue time).
 *
 * Attach points: tp_btf only. block_io_start exists since Linux 6.5; older kernels get
 * block_getrq instead (the loader picks, by the running kernel's BTF: FALLBACKS in
 * capture_agent/families/block.py). It fires in the submitter when a bio gets a new request,
 * before the request is linked to it, so it keeps the submitter by bio
 * (-> bio_starts[bio]), and block_rq_issue finds it through the request's first bio.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "common.h"
#include "block.h"

char LICENSE[] SEC("license") = "GPL";

LAYOUT_EXPORT(struct block_event, block_event);
LAYOUT_EXPORT(enum block_constants, block_constants);

#define MINORBITS 20
#define REQ_OP_MASK 0xff /* (1 << REQ_OP_BITS) - 1, REQ_OP_BITS = 8 since Linux 4.10 */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} block_events SEC(".maps");

/* A request in flight: who created it, where it goes, when it was issued. */
struct request_start {
	__u64 issue_ns;   /* 0 until block_rq_issue */
	__u64 part_start; /* first sector of the partition `dev` */
	__u32 pid;
	__u32 tid;
	char comm[TASK_COMM_LEN];
	__u32 dev;
	__u8 flags;       /* BLOCK_FLAG_TASK */
	__u8 __pad[3];
};

/* struct request pointer -> request_start. LRU: requests freed unseen age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct request_start);
} requests SEC(".maps");

/* struct bio pointer -> request_start, from block_getrq until the request is issued
 * (kernels without block_io_start). LRU: a bio whose request is never issued ages out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct request_start);
} bio_starts SEC(".maps");

static __always_inline __u32 disk_devt(struct request *rq)
{
	struct gendisk *disk = BPF_CORE_READ(rq, q, disk);

	if (!disk)
		return 0;
	return ((__u32)BPF_CORE_READ(disk, major) << MINORBITS) |
	       (__u32)BPF_CORE_READ(disk, first_minor);
}

/* The device the request is for: its bio's partition if any, else the whole disk. */
static __always_inline void request_device(struct request *rq, struct block_device *bdev,
					   struct request_start *start)
{
	if (bdev) {
		start->dev = BPF_CORE_READ(bdev, bd_dev);
		start->part_start = BPF_CORE_READ(bdev, bd_start_sect);
	} else {
		start->dev = disk_devt(rq);
		start->part_start = 0;
	}
}

/* The kernel's blk_fill_rwbs(), with the flag bits relocated by CO-RE (they move between
 * kernels). Built in a register: no variable-offset stores for the verifier to doubt. */
static __always_inline __u64 rwbs_of(__u32 opf)
{
	__u32 op = opf & REQ_OP_MASK;
	__u64 out = 0;
	int n = 0;

#define RWBS_PUT(c) (out |= (__u64)(c) << (8 * n), n++)
	if (opf & (1U << bpf_core_enum_value(enum req_flag_bits, __REQ_PREFLUSH)))
		RWBS_PUT('F');
	if (op == bpf_core_enum_value(enum req_op, REQ_OP_WRITE)) {
		RWBS_PUT('W');
	} else if (op == bpf_core_enum_value(enum req_op, REQ_OP_DISCARD)) {
		RWBS_PUT('D');
	} else if (op == bpf_core_enum_value(enum req_op, REQ_OP_SECURE_ERASE)) {
		RWBS_PUT('D');
		RWBS_PUT('E');
	} else if (op == bpf_core_enum_value(enum req_op, REQ_OP_FLUSH)) {
		RWBS_PUT('F');
	} else if (op == bpf_core_enum_value(enum req_op, REQ_OP_READ)) {
		RWBS_PUT('R');
	} else {
		RWBS_PUT('N');
	}
	if (opf & (1U << bpf_core_enum_value(enum req_flag_bits, __REQ_FUA)))
		RWBS_PUT('F');
	if (opf & (1U << bpf_core_enum_value(enum req_flag_bits, __REQ_RAHEAD)))
		RWBS_PUT('A');
	if (opf & (1U << bpf_core_enum_value(enum req_flag_bits, __REQ_SYNC)))
		RWBS_PUT('S');
	if (opf & (1U << bpf_core_enum_value(enum req_flag_bits, __REQ_META)))
		RWBS_PUT('M');
	/* REQ_ATOMIC: Linux >= 6.11 */
	if (bpf_core_enum_value_exists(enum req_flag_bits, __REQ_ATOMIC) &&
	    (opf & (1U << bpf_core_enum_value(enum req_flag_bits, __REQ_ATOMIC))))
		RWBS_PUT('U');
#undef RWBS_PUT
	return out;
}

SEC("tp_btf/block_io_start")
int BPF_PROG(on_block_io_start, struct request *rq)
{
	__u64 key = (__u64)rq;
	__u64 ids = bpf_get_current_pid_tgid();
	struct request_start start = {};

	start.pid = ids >> 32;
	start.tid = (__u32)ids;
	start.flags = BLOCK_FLAG_TASK;
	bpf_get_current_comm(start.comm, sizeof(start.comm));
	request_device(rq, BPF_CORE_READ(rq, bio, bi_bdev), &start);
	if (bpf_map_update_elem(&requests, &key, &start, BPF_ANY))
		count_drop(EVENT_BLOCK_RQ, DROP_MAP_FULL);
	return 0;
}

/* Before Linux 6.5: the submitter of a bio that gets a new request. */
SEC("tp_btf/block_getrq")
int BPF_PROG(on_block_getrq, struct bio *bio)
{
	__u64 key = (__u64)bio;
	__u64 ids = bpf_get_current_pid_tgid();
	struct request_start start = {};
	struct block_device *bdev = BPF_CORE_READ(bio, bi_bdev);

	start.pid = ids >> 32;
	start.tid = (__u32)ids;
	start.flags = BLOCK_FLAG_TASK;
	bpf_get_current_comm(start.comm, sizeof(start.comm));
	if (bdev) {
		start.dev = BPF_CORE_READ(bdev, bd_dev);
		start.part_start = BPF_CORE_READ(bdev, bd_start_sect);
	}
	if (bpf_map_update_elem(&bio_starts, &key, &start, BPF_ANY))
		count_drop(EVENT_BLOCK_RQ, DROP_MAP_FULL);
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(on_block_rq_issue, struct request *rq)
{
	__u64 key = (__u64)rq;
	__u64 now = bpf_ktime_get_ns();
	struct request_start *known = bpf_map_lookup_elem(&requests, &key);
	struct request_start start = {};
	__u64 bio;

	/* a requeued request is issued again: the latest issue counts */
	if (known) {
		known->issue_ns = now;
		return 0;
	}
	/* older kernels: its submitter, found through its first bio (block_getrq) */
	bio = (__u64)BPF_CORE_READ(rq, bio);
	known = bio ? bpf_map_lookup_elem(&bio_starts, &bio) : NULL;
	if (known) {
		start = *known;
		bpf_map_delete_elem(&bio_starts, &bio);
		start.issue_ns = now;
		if (bpf_map_update_elem(&requests, &key, &start, BPF_ANY))
			count_drop(EVENT_BLOCK_RQ, DROP_MAP_FULL);
		return 0;
	}
	start.issue_ns = now;
	/* rq->part is set for accounted requests (block_io_start missed them) */
	request_device(rq, BPF_CORE_READ(rq, part), &start);
	if (bpf_map_update_elem(&requests, &key, &start, BPF_ANY))
		count_drop(EVENT_BLOCK_RQ, DROP_MAP_FULL);
	return 0;
}

/* `rq` was merged into another request and is about to be freed. */
SEC("tp_btf/block_rq_merge")
int BPF_PROG(on_block_rq_merge, struct request *rq)
{
	__u64 key = (__u64)rq;

	bpf_map_delete_elem(&requests, &key);
	return 0;
}

/*
 * Fires per completion: a request may complete in parts (nr_bytes each); the last part
 * leaves nothing (nr_bytes >= what remains in __data_len, updated after this point).
 */
SEC("tp_btf/block_rq_complete")
int BPF_PROG(on_block_rq_complete, struct request *rq, blk_status_t error,
	     unsigned int nr_bytes)
{
	__u64 key = (__u64)rq;
	__u64 now = bpf_ktime_get_ns();
	struct request_start *start = bpf_map_lookup_elem(&requests, &key);
	__u32 remaining = BPF_CORE_READ(rq, __data_len);
	bool last = nr_bytes >= remaining;
	struct block_event *ev;
	__u64 sector, rwbs;

	if (!start)
		return 0;
	if (!start->issue_ns)
		goto done;
	ev = EVENT_RESERVE_AT(&block_events, struct block_event, EVENT_BLOCK_RQ,
			      BLOCK_LAYOUT_VERSION, now);
	if (!ev)
		goto done;
	ev->hdr.flags = start->flags | (last ? 0 : BLOCK_FLAG_PARTIAL);
	ev->issue_ns = start->issue_ns;
	sector = BPF_CORE_READ(rq, __sector);
	/* a request without data (a flush) has no position: (sector_t)-1 stays */
	ev->sector = sector != (__u64)-1 && sector >= start->part_start
			     ? sector - start->part_start : sector;
	ev->bytes = nr_bytes;
	ev->dev = start->dev;
	ev->pid = start->pid;
	ev->tid = start->tid;
	__builtin_memcpy(ev->comm, start->comm, TASK_COMM_LEN);
	rwbs = rwbs_of(BPF_CORE_READ(rq, cmd_flags));
	__builtin_memcpy(ev->rwbs, &rwbs, sizeof(ev->rwbs));
	ev->status = error;
	__builtin_memset(ev->__pad, 0, sizeof(ev->__pad));
	event_submit(&block_events, ev);
done:
	if (last)
		bpf_map_delete_elem(&requests, &key);
	return 0;
}
