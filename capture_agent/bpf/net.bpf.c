// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Net family: TCP send/recv byte counts, retransmits, state changes and resets, each with
 * the socket's 4-tuple, attributed to the socket's owner rather than the current task.
 *
 * Retransmits, resets and most state changes fire in softirq (timers, packet receive),
 * where `current` is whatever task the CPU interrupted: on loopback often the *peer*
 * (ARCHITECTURE.md, Decisions). So the owner comes from a socket map, kept up to date where the current
 * task is known to act on the socket:
 *
 *   sock_send_length / sock_recv_length   process context by construction (the syscall)
 *   inet_sock_set_state -> SYN_SENT/LISTEN connect() / listen(), under lock_sock
 *   any event while sk_lock.owned         the lock owner is running this code: it is in
 *                                         a syscall on the socket or in release_sock()
 *                                         processing the backlog deferred for it
 *   LISTEN -> SYN_RECV (a new child)      owner inherited from the listener (by netns and
 *                                         port) until the accepting process uses it
 *
 * Why "owned" means "current is the actor": while a task holds lock_sock(), packet
 * receive and timers in softirq do not touch the socket; they queue to its backlog or set
 * a deferred flag, which the owner then runs in release_sock(), as itself. Code running
 * on an unowned socket is softirq (on loopback often in the peer's task). The test needs
 * no per-CPU preempt-count symbol (whose home moved between kernels).
 *
 * Attach points: tp_btf (some machines refuse kprobes and fentry), with one fallback:
 *   sock:sock_send_length, sock:sock_recv_length   Linux >= 6.3; older kernels get
 *       fexit/tcp_sendmsg and fexit/tcp_recvmsg instead (the loader picks, by the running
 *       kernel's BTF: capture_agent/families/net.py FALLBACKS)
 *   tcp:tcp_retransmit_skb (sk, skb[, err])        err: newer kernels (6.18, not 6.12): read only where
 *       the kernel's tracepoint has it (CO-RE type match)
 *   tcp:tcp_receive_reset, tcp:tcp_send_reset, sock:inet_sock_set_state
 *       (tcp_send_reset fires for a reset sent without a socket, to a closed port, only
 *       since Linux 6.10; before, those resets are not seen)
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "common.h"
#include "net.h"

char LICENSE[] SEC("license") = "GPL";

LAYOUT_EXPORT(struct net_event, net_event);
LAYOUT_EXPORT(enum net_constants, net_constants);
LAYOUT_EXPORT(struct net_slice_event, net_slice_event);

/* uapi constants (macros, hence absent from vmlinux.h) */
#define AF_INET 2
#define AF_INET6 10
#define MSG_PEEK 0x2

/* Sizes are defaults; the loader resizes rings and maps before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} net_events SEC(".maps");

/* Evidence capture: a socket's sends and receives by non-targets in slice `slice`. */
struct net_acc {
	__u64 slice;
	__u64 first_ns;
	__u64 last_ns;
	__u64 sent_bytes;
	__u64 recv_bytes;
	__u32 sends;
	__u32 recvs;
	__u8 saddr[NET_ADDR_LEN];
	__u8 daddr[NET_ADDR_LEN];
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 __pad;
};

struct sock_owner {
	__u32 pid;
	__u32 tid;
	char comm[TASK_COMM_LEN];
	__u8 flags; /* NET_FLAG_LISTENER */
	__u8 __pad[7];
	struct net_acc acc; /* evidence capture only */
};

LAYOUT_EXPORT(struct sock_owner, sock_owner);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 << 10);
} net_slice_events SEC(".maps");

/* struct sock pointer -> the task that last acted on it. LRU: a socket freed without a
 * CLOSE transition seen (e.g. before the sensor loaded) ages out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sock_owner);
} sock_owners SEC(".maps");

struct listener_key {
	__u32 netns; /* network namespace inode number */
	__u16 port;  /* local port, host order */
	__u16 __pad;
};

struct listener_entry {
	struct sock_owner owner;
	__u64 sock_id; /* the listening socket (with SO_REUSEPORT: the latest one) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct listener_key);
	__type(value, struct listener_entry);
} listeners SEC(".maps");

/*
 * Evidence capture: the far ends of targets' connections, as the peer sees its socket
 * (local = the target's remote end), from the connection's establishment (or the target's
 * first send or receive on it). A non-target sending or receiving on such a socket keeps
 * its rows (the causal engine matches a target's request with the server that received
 * it by the 4-tuple); other non-targets are summed. LRU: closed connections age out.
 */
struct conn_key {
	__u8 laddr[NET_ADDR_LEN];
	__u8 raddr[NET_ADDR_LEN];
	__u16 lport; /* host order */
	__u16 rport;
	__u32 __pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct conn_key);
	__type(value, __u8);
} target_peers SEC(".maps");

/* 1 once target_peers has a key: until then non-targets skip the look-up */
__u8 peers_seen = 0;

/* Configuration, set by the loader between open and load. */
const volatile __u8 record_send = 1;
const volatile __u8 record_recv = 1;
/* 1: send/recv records only for targets (owners are still tracked for every socket, and
 * retransmits, resets and state changes stay system-wide: they are rare) */
const volatile __u8 net_targets_only = 0;
/* 1: evidence capture: send/recv records for targets only, per-socket sums per slice_ns for
 * the others (struct net_acc, left as net_slice_events) */
const volatile __u8 evidence = 0;
const volatile __u64 slice_ns = 10000000;

/*
 * Every `sk` here is a BTF pointer (a tp_btf or fexit argument): its fields are plain
 * loads (the JIT's fault-handled loads), not probe-read helper calls; send and receive
 * run for every TCP socket on the node.
 */
static __always_inline bool is_tcp(const struct sock *sk)
{
	__u16 family = sk->__sk_common.skc_family;

	if (family != AF_INET && family != AF_INET6)
		return false;
	return sk->sk_protocol == IPPROTO_TCP;
}

/* Timewait and request sockets share only struct sock_common with a full socket. */
static __always_inline bool is_full_sock(const struct sock *sk)
{
	__u8 state = sk->__sk_common.skc_state;

	return state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV;
}

/* The current task is the one acting on the socket (see the top of this file). */
static __always_inline bool owned_by_user(const struct sock *sk)
{
	return sk->sk_lock.owned != 0;
}

/* The socket's entry, naming the current task as its owner (NULL: the map refused it). */
static __always_inline struct sock_owner *remember_owner(const struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 tid = task->pid;
	struct sock_owner *known = bpf_map_lookup_elem(&sock_owners, &key);
	struct sock_owner owner = {};

	/* the common case, a thread sending or receiving again: one lookup */
	if (known && known->tid == tid && !(known->flags & NET_FLAG_LISTENER))
		return known;
	owner.pid = task->tgid;
	owner.tid = tid;
	__builtin_memcpy(owner.comm, task->comm, TASK_COMM_LEN);
	if (evidence && known)
		owner.acc = known->acc; /* the socket's sums stay with it */
	bpf_map_update_elem(&sock_owners, &key, &owner, BPF_ANY);
	return evidence ? bpf_map_lookup_elem(&sock_owners, &key) : NULL;
}

static __always_inline struct listener_key listener_key_of(const struct sock *sk)
{
	struct listener_key key = {};

	key.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	key.port = sk->__sk_common.skc_num;
	return key;
}

static __always_inline void zero_addrs(struct net_event *ev)
{
	__builtin_memset(ev->saddr, 0, sizeof(ev->saddr));
	__builtin_memset(ev->daddr, 0, sizeof(ev->daddr));
}

/* The 4-tuple from struct sock_common (valid for full, request and timewait sockets). */
static __always_inline void fill_tuple(struct net_event *ev, const struct sock *sk)
{
	__u16 family = sk->__sk_common.skc_family;

	zero_addrs(ev);
	ev->family = family;
	ev->sport = sk->__sk_common.skc_num;
	ev->dport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (family == AF_INET6) {
		__builtin_memcpy(ev->saddr, sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(ev->daddr, sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8, 16);
	} else {
		__u32 saddr = sk->__sk_common.skc_rcv_saddr;
		__u32 daddr = sk->__sk_common.skc_daddr;

		__builtin_memcpy(ev->saddr, &saddr, 4);
		__builtin_memcpy(ev->daddr, &daddr, 4);
	}
}

static __always_inline void clear_owner(struct net_event *ev)
{
	ev->pid = 0;
	ev->tid = 0;
	__builtin_memset(ev->comm, 0, sizeof(ev->comm));
}

/*
 * Who the event belongs to: the current task when it is the actor, else the socket map's
 * owner, else nobody (flags without NET_FLAG_OWNER).
 */
static __always_inline void fill_owner(struct net_event *ev, const struct sock *sk, bool actor)
{
	__u64 key = (__u64)sk;
	struct sock_owner *owner;

	if (actor) {
		struct task_struct *task = bpf_get_current_task_btf();

		ev->pid = task->tgid;
		ev->tid = task->pid;
		__builtin_memcpy(ev->comm, task->comm, TASK_COMM_LEN);
		ev->hdr.flags |= NET_FLAG_OWNER;
		return;
	}
	owner = bpf_map_lookup_elem(&sock_owners, &key);
	if (!owner) {
		clear_owner(ev);
		return;
	}
	ev->pid = owner->pid;
	ev->tid = owner->tid;
	__builtin_memcpy(ev->comm, owner->comm, TASK_COMM_LEN);
	ev->hdr.flags |= NET_FLAG_OWNER | NET_FLAG_FROM_MAP | (owner->flags & NET_FLAG_LISTENER);
}

/*
 * One net_event for `sk`. full: a full TCP socket (has an owner, a lock and an RTT);
 * otherwise a request or timewait socket (tuple and state only).
 */
static __always_inline void emit(const struct sock *sk, __u16 kind, __u32 bytes, __u8 state,
				 __u8 old_state, bool full, bool actor)
{
	struct net_event *ev;

	ev = EVENT_RESERVE(&net_events, struct net_event, kind, NET_LAYOUT_VERSION);
	if (!ev)
		return;
	ev->sock_id = (__u64)sk;
	fill_tuple(ev, sk);
	if (full)
		fill_owner(ev, sk, actor);
	else
		clear_owner(ev);
	ev->bytes = bytes;
	ev->srtt_us = full ? BPF_CORE_READ((struct tcp_sock *)sk, srtt_us) >> 3 : 0;
	ev->state = state;
	ev->old_state = old_state;
	event_submit(&net_events, ev);
}

/* `sk`'s 4-tuple as a conn_key; reversed: as its peer sees it. */
static __always_inline void conn_key_of(const struct sock *sk, struct conn_key *key,
					bool reversed)
{
	__u8 *local = reversed ? key->raddr : key->laddr;
	__u8 *remote = reversed ? key->laddr : key->raddr;
	__u16 lport = sk->__sk_common.skc_num;
	__u16 rport = bpf_ntohs(sk->__sk_common.skc_dport);

	__builtin_memset(key, 0, sizeof(*key));
	if (sk->__sk_common.skc_family == AF_INET6) {
		__builtin_memcpy(local, sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(remote, sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8, 16);
	} else {
		__u32 saddr = sk->__sk_common.skc_rcv_saddr;
		__u32 daddr = sk->__sk_common.skc_daddr;

		__builtin_memcpy(local, &saddr, 4);
		__builtin_memcpy(remote, &daddr, 4);
	}
	key->lport = reversed ? rport : lport;
	key->rport = reversed ? lport : rport;
}

/* A target acts on `sk`: its peer's socket keeps rows from now on. */
static __always_inline void remember_peer(const struct sock *sk)
{
	struct conn_key key;
	__u8 one = 1;

	conn_key_of(sk, &key, true);
	if (bpf_map_lookup_elem(&target_peers, &key))
		return;
	bpf_map_update_elem(&target_peers, &key, &one, BPF_ANY);
	peers_seen = 1;
}

static __always_inline bool peer_of_target(const struct sock *sk)
{
	struct conn_key key;

	if (!peers_seen)
		return false;
	conn_key_of(sk, &key, false);
	return bpf_map_lookup_elem(&target_peers, &key) != NULL;
}

/* The socket's sums of one slice as a net_slice_event (nothing if it has none). */
static __always_inline void emit_net_slice(__u64 sock_id, struct sock_owner *owner)
{
	struct net_acc *a = &owner->acc;
	struct net_slice_event *ev;

	if (!a->sends && !a->recvs)
		return;
	ev = EVENT_RESERVE_AT(&net_slice_events, struct net_slice_event, EVENT_NET_SLICE,
			      NET_LAYOUT_VERSION, a->last_ns);
	if (!ev)
		return;
	ev->hdr.flags = NET_FLAG_OWNER;
	ev->sock_id = sock_id;
	ev->first_ns = a->first_ns;
	ev->sent_bytes = a->sent_bytes;
	ev->recv_bytes = a->recv_bytes;
	ev->sends = a->sends;
	ev->recvs = a->recvs;
	ev->pid = owner->pid;
	ev->tid = owner->tid;
	__builtin_memcpy(ev->comm, owner->comm, TASK_COMM_LEN);
	__builtin_memcpy(ev->saddr, a->saddr, NET_ADDR_LEN);
	__builtin_memcpy(ev->daddr, a->daddr, NET_ADDR_LEN);
	ev->sport = a->sport;
	ev->dport = a->dport;
	ev->family = a->family;
	ev->__pad = 0;
	event_submit(&net_slice_events, ev);
	a->sends = 0;
	a->recvs = 0;
}

/* Evidence capture: one send or receive of a non-target into its socket's slice sums. */
static __always_inline void net_account(const struct sock *sk, struct sock_owner *owner,
					bool send, __u32 bytes)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 slice = now / slice_ns;
	struct net_acc *a = &owner->acc;

	if (a->slice != slice) {
		emit_net_slice((__u64)sk, owner);
		a->slice = slice;
		a->first_ns = now;
		a->sent_bytes = 0;
		a->recv_bytes = 0;
		a->sends = 0;
		a->recvs = 0;
		a->family = sk->__sk_common.skc_family;
		a->sport = sk->__sk_common.skc_num;
		a->dport = bpf_ntohs(sk->__sk_common.skc_dport);
		__builtin_memset(a->saddr, 0, NET_ADDR_LEN);
		__builtin_memset(a->daddr, 0, NET_ADDR_LEN);
		if (a->family == AF_INET6) {
			__builtin_memcpy(a->saddr,
					 sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
			__builtin_memcpy(a->daddr, sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8, 16);
		} else {
			__u32 saddr = sk->__sk_common.skc_rcv_saddr;
			__u32 daddr = sk->__sk_common.skc_daddr;

			__builtin_memcpy(a->saddr, &saddr, 4);
			__builtin_memcpy(a->daddr, &daddr, 4);
		}
	}
	a->last_ns = now;
	if (send) {
		__sync_fetch_and_add(&a->sent_bytes, bytes);
		__sync_fetch_and_add(&a->sends, 1);
	} else {
		__sync_fetch_and_add(&a->recv_bytes, bytes);
		__sync_fetch_and_add(&a->recvs, 1);
	}
}

/*
 * send/recv: the syscall's task is the actor; ret = bytes moved or -errno. The owner is
 * refreshed even when the record is not wanted: retransmits and resets need it.
 */
static __always_inline void on_length(struct sock *sk, int ret, __u16 kind, bool wanted)
{
	struct sock_owner *owner;

	if (ret <= 0 || !sk || !is_tcp(sk))
		return;
	owner = remember_owner(sk);
	if (!wanted)
		return;
	if (evidence) {
		if (is_target(bpf_get_current_task_btf()->tgid)) {
			remember_peer(sk);
		} else if (!peer_of_target(sk)) {
			if (owner)
				net_account(sk, owner, kind == EVENT_NET_SEND, ret);
			else
				count_drop(EVENT_NET_SLICE, DROP_NO_OWNER);
			return;
		}
		emit(sk, kind, ret, sk->__sk_common.skc_state, 0, true, true);
		return;
	}
	if (net_targets_only && !is_target(bpf_get_current_task_btf()->tgid))
		return;
	emit(sk, kind, ret, sk->__sk_common.skc_state, 0, true, true);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(on_sock_send_length, struct sock *sk, int ret, int flags)
{
	on_length(sk, ret, EVENT_NET_SEND, record_send);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(on_sock_recv_length, struct sock *sk, int ret, int flags)
{
	/* a peek moves no data: the read that follows counts it */
	if (!(flags & MSG_PEEK))
		on_length(sk, ret, EVENT_NET_RECV, record_recv);
	return 0;
}

/* The same on kernels without the sock_*_length tracepoints (before Linux 6.3): what
 * tcp_sendmsg / tcp_recvmsg returned, in the calling task. */
SEC("fexit/tcp_sendmsg")
int BPF_PROG(on_tcp_sendmsg_exit, struct sock *sk, struct msghdr *msg, size_t size, int ret)
{
	on_length(sk, ret, EVENT_NET_SEND, record_send);
	return 0;
}

SEC("fexit/tcp_recvmsg")
int BPF_PROG(on_tcp_recvmsg_exit, struct sock *sk, struct msghdr *msg, size_t len, int flags,
	     int *addr_len, int ret)
{
	if (!(flags & MSG_PEEK))
		on_length(sk, ret, EVENT_NET_RECV, record_recv);
	return 0;
}

/* The tracepoint's prototype on kernels that pass `err`; the ___ suffix is CO-RE's. */
typedef void (*btf_trace_tcp_retransmit_skb___err)(void *, const struct sock *,
						    const struct sk_buff *, int);

/* Called after each retransmission attempt; err != 0: it did not leave the host (only
 * kernels whose tracepoint passes err say so). */
SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(on_tcp_retransmit_skb, const struct sock *sk, const struct sk_buff *skb)
{
	if (bpf_core_type_matches(btf_trace_tcp_retransmit_skb___err) && (int)ctx[2])
		return 0;
	if (!sk)
		return 0;
	emit(sk, EVENT_NET_RETRANSMIT, skb ? BPF_CORE_READ(skb, len) : 0,
	     BPF_CORE_READ(sk, __sk_common.skc_state), 0, true, owned_by_user(sk));
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_inet_sock_set_state, const struct sock *sk, const int oldstate,
	     const int newstate)
{
	__u64 key = (__u64)sk;
	bool actor;

	if (!is_tcp(sk))
		return 0;
	actor = owned_by_user(sk);
	if (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV) {
		/* A child being cloned from its listener (softirq): give it the listener's
		 * owner, replacing whatever a freed socket at this address left behind. */
		struct listener_key lkey = listener_key_of(sk);
		struct listener_entry *l = bpf_map_lookup_elem(&listeners, &lkey);

		if (l) {
			struct sock_owner owner = l->owner;

			owner.flags = NET_FLAG_LISTENER;
			__builtin_memset(&owner.acc, 0, sizeof(owner.acc));
			bpf_map_update_elem(&sock_owners, &key, &owner, BPF_ANY);
		} else {
			bpf_map_delete_elem(&sock_owners, &key);
		}
		actor = false;
	} else if (actor) {
		remember_owner(sk);
		if (newstate == TCP_LISTEN) {
			struct listener_key lkey = listener_key_of(sk);
			struct sock_owner *owner = bpf_map_lookup_elem(&sock_owners, &key);
			struct listener_entry l = {};

			if (owner) {
				l.owner = *owner;
				l.sock_id = key;
				bpf_map_update_elem(&listeners, &lkey, &l, BPF_ANY);
			}
		}
	}

	/* a target's connection is established: its peer keeps rows from the first byte */
	if (evidence && newstate == TCP_ESTABLISHED) {
		struct sock_owner *owner = NULL;
		__u32 pid = 0;

		/* (a helper, not a load: clang would merge the two loads into one instruction
		 * the verifier refuses, a task pointer or a map value) */
		if (actor)
			pid = bpf_get_current_pid_tgid() >> 32;
		else
			owner = bpf_map_lookup_elem(&sock_owners, &key);
		if (owner)
			pid = owner->pid;
		if (pid && is_target(pid))
			remember_peer(sk);
	}

	emit(sk, EVENT_NET_STATE, 0, newstate, oldstate, true, actor);

	if (newstate == TCP_CLOSE) {
		if (evidence) {
			struct sock_owner *owner = bpf_map_lookup_elem(&sock_owners, &key);

			if (owner)
				emit_net_slice(key, owner);
		}
		if (oldstate == TCP_LISTEN) {
			struct listener_key lkey = listener_key_of(sk);
			struct listener_entry *l = bpf_map_lookup_elem(&listeners, &lkey);

			if (l && l->sock_id == key)
				bpf_map_delete_elem(&listeners, &lkey);
		}
		bpf_map_delete_elem(&sock_owners, &key);
	}
	return 0;
}

/* A reset arrived on `sk` (before the socket is closed). */
SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(on_tcp_receive_reset, struct sock *sk)
{
	if (!sk)
		return 0;
	emit(sk, EVENT_NET_RESET, 0, BPF_CORE_READ(sk, __sk_common.skc_state), 0, true,
	     owned_by_user(sk));
	return 0;
}

/* A reset for a packet that matched no socket: the tuple from the packet's headers, seen
 * from the side that sends the reset (local = the packet's destination). */
static __always_inline void emit_reset_no_sock(const struct sk_buff *skb)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 th = BPF_CORE_READ(skb, transport_header);
	struct net_event *ev;
	__u16 ports[2] = {};
	__u8 version = 0;

	if (!head || bpf_probe_read_kernel(&version, 1, head + nh))
		return;
	version >>= 4;
	if (version != 4 && version != 6)
		return;
	ev = EVENT_RESERVE(&net_events, struct net_event, EVENT_NET_RESET, NET_LAYOUT_VERSION);
	if (!ev)
		return;
	ev->hdr.flags = NET_FLAG_NO_SOCK;
	ev->sock_id = 0;
	clear_owner(ev);
	zero_addrs(ev);
	if (version == 4) {
		ev->family = AF_INET;
		bpf_probe_read_kernel(ev->daddr, 4, head + nh + 12); /* iphdr.saddr */
		bpf_probe_read_kernel(ev->saddr, 4, head + nh + 16); /* iphdr.daddr */
	} else {
		ev->family = AF_INET6;
		bpf_probe_read_kernel(ev->daddr, 16, head + nh + 8);  /* ipv6hdr.saddr */
		bpf_probe_read_kernel(ev->saddr, 16, head + nh + 24); /* ipv6hdr.daddr */
	}
	bpf_probe_read_kernel(ports, sizeof(ports), head + th); /* tcphdr.source, dest */
	ev->dport = bpf_ntohs(ports[0]);
	ev->sport = bpf_ntohs(ports[1]);
	ev->bytes = 0;
	ev->srtt_us = 0;
	ev->state = 0;
	ev->old_state = 0;
	event_submit(&net_events, ev);
}

/* Compat: the reason argument (Linux >= 6.10) is not read, so older kernels load too. */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(on_tcp_send_reset, const struct sock *sk, const struct sk_buff *skb)
{
	bool full;

	if (!sk) {
		if (skb)
			emit_reset_no_sock(skb);
		return 0;
	}
	full = is_full_sock(sk);
	emit(sk, EVENT_NET_RESET, 0, BPF_CORE_READ(sk, __sk_common.skc_state), 0, full,
	     full && owned_by_user(sk));
	return 0;
}
