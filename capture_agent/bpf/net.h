/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Net family records, mirrored once in capture_agent/families/net.py.
 * One ring, one record size: `net_events` (TCP send/recv/retransmit/state/reset).
 */
#ifndef KPROBE_NET_H
#define KPROBE_NET_H

#include "common.h"

/* Constants mirrored in Python: an enum, so they reach the object's BTF and the layout test. */
enum net_constants {
	NET_LAYOUT_VERSION = 2,    /* bumped on any change to the records below */
	NET_FLAG_OWNER = 0x1,      /* pid/tid/comm are valid */
	NET_FLAG_FROM_MAP = 0x2,   /* owner from the socket map (event fired outside the
				    * owner's context, e.g. softirq), not the current task */
	NET_FLAG_LISTENER = 0x4,   /* owner inherited from the listening socket (not yet
				    * accepted, or never used by its process since) */
	NET_FLAG_NO_SOCK = 0x8,    /* reset sent for a packet without a socket: the tuple
				    * comes from the packet, sock_id is 0 */
	NET_ADDR_LEN = 16,         /* IPv6 size; IPv4 uses the first 4 bytes */
};

#ifndef TASK_COMM_LEN
#define TASK_COMM_LEN 16
#endif

/*
 * One TCP event (96 bytes). Addresses and ports are the socket's view: s = local,
 * d = remote, ports in host byte order, addresses in network byte order.
 *   send / recv:  bytes = the syscall's result (> 0)
 *   retransmit:   bytes = the segment's payload; state = socket state
 *   state:        old_state -> state (kernel TCP_* numbers)
 *   reset:        state = socket state when the reset was sent or received
 */
struct net_event {
	struct event_header hdr;
	__u64 sock_id;  /* struct sock pointer; 0 with NET_FLAG_NO_SOCK */
	__u32 pid;      /* owner's tgid (NET_FLAG_OWNER) */
	__u32 tid;
	char comm[TASK_COMM_LEN];
	__u8 saddr[NET_ADDR_LEN];
	__u8 daddr[NET_ADDR_LEN];
	__u32 bytes;
	__u32 srtt_us;  /* smoothed RTT; 0 = no sample (or not a full socket) */
	__u16 sport;
	__u16 dport;
	__u16 family;   /* AF_INET / AF_INET6 */
	__u8 state;
	__u8 old_state;
};

/*
 * Evidence capture: the TCP sends and receives of one socket by non-targets within one
 * slice (net.bpf.c), 128 bytes; the tuple and owner as in struct net_event. It leaves at
 * the socket's first send or receive of a later slice, at its close, or (the agent reads
 * the rest) when the agent stops.
 */
struct net_slice_event {
	struct event_header hdr; /* ktime_ns: the last send or receive counted */
	__u64 sock_id;
	__u64 first_ns;          /* the first one counted */
	__u64 sent_bytes;
	__u64 recv_bytes;
	__u32 sends;
	__u32 recvs;
	__u32 pid;               /* the owner (NET_FLAG_OWNER): who last sent or received */
	__u32 tid;
	char comm[TASK_COMM_LEN];
	__u8 saddr[NET_ADDR_LEN];
	__u8 daddr[NET_ADDR_LEN];
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 __pad;
};

#endif /* KPROBE_NET_H */
