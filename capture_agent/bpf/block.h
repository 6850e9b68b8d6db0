/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Block family records, mirrored once in capture_agent/families/block.py.
 * One ring, one record size: `block_events` (a request, issue and completion merged).
 */
#ifndef KPROBE_BLOCK_H
#define KPROBE_BLOCK_H

#include "common.h"

/* Constants mirrored in Python: an enum, so they reach the object's BTF and the layout test. */
enum block_constants {
	BLOCK_LAYOUT_VERSION = 1,  /* bumped on any change to the record below */
	BLOCK_FLAG_TASK = 0x1,     /* pid/tid/comm: the task that created the request */
	BLOCK_FLAG_PARTIAL = 0x2,  /* a partial completion: more of the request follows */
	BLOCK_RWBS_LEN = 8,
};

#ifndef TASK_COMM_LEN
#define TASK_COMM_LEN 16
#endif

/*
 * One completed block request (or part of one) (80 bytes). hdr.ktime_ns is the
 * completion; issue_ns the dispatch to the driver.
 */
struct block_event {
	struct event_header hdr;
	__u64 issue_ns;            /* CLOCK_MONOTONIC at block_rq_issue */
	__u64 sector;              /* first sector, relative to `dev`; (u64)-1: none */
	__u32 bytes;               /* bytes completed by this completion */
	__u32 dev;                 /* kernel dev_t: major << 20 | minor; the partition
				    * the I/O was submitted to when known, else the disk */
	__u32 pid;                 /* valid with BLOCK_FLAG_TASK */
	__u32 tid;
	char comm[TASK_COMM_LEN];
	char rwbs[BLOCK_RWBS_LEN]; /* blktrace letters, e.g. "WS", "R", "FWFS"; not
				    * NUL-terminated when all 8 are used */
	__u8 status;               /* blk_status_t; 0 = success */
	__u8 __pad[7];
};

#endif /* KPROBE_BLOCK_H */
