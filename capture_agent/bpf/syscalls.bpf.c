// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Syscalls family: every syscall of the targeted processes, entry and exit merged here,
 * and (with capture_payloads) the bytes each one exchanged with user memory: what it
 * wrote there (the replay's inputs) and what it read (buffers written, paths, addresses:
 * what a replay checks), and at exec the new image's argv and environment.
 *
 *   sys_enter of a target  -> syscall_state[current].sys = {start, nr, args, ++seq}
 *   sys_exit               -> payload chunks (success only, per the payload table),
 *                             then one syscall_event {start, exit, nr, ret, args, seq}
 *
 * Attach points: tp_btf/sys_enter and tp_btf/sys_exit, one program each for every
 * syscall number. Per-syscall tracepoints (syscalls/sys_enter_<name>) are no cheaper
 * for the processes we do not capture: the kernel implements them on top of these same
 * two tracepoints (kernel/trace/trace_syscalls.c), so enabling any of them puts every
 * syscall of every process on the traced slow path, and capturing all syscalls of a
 * target needs ~700 of them, each building a perf record before our program runs.
 * Measured on the 2-vCPU VM by tests/bench/bench_syscall_overhead.py (numbers in
 * capture_agent/families/syscalls.py).
 *
 * The first thing at entry is the target check; at exit, a thread that is not captured
 * has no task storage, which is a NULL test (no hash lookup). Per-thread state lives in
 * task storage rather than a tid-keyed hash: it is freed with the thread (a thread that
 * dies inside a syscall leaves nothing behind) and survives exec (the seq continues).
 *
 * Stack budget: the verifier allows 512 bytes for a whole chain of BPF-to-BPF calls (a
 * program, the subprograms it calls, a bpf_loop callback), and each kernel counts a little
 * differently (on 6.18, clock return -> emit_payloads -> copy_region -> copy_step once came
 * to 544). So no big struct lives on a stack here: the payload jobs, the shared copy state
 * and the clock call in flight live in the thread's task storage, which also makes them
 * safe from preemption (a per-CPU scratch map is not, on a preemptible kernel).
 * tests/unit/test_bpf_budget.py keeps every chain under 384 bytes.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "common.h"
#include "syscalls.h"

char LICENSE[] SEC("license") = "GPL";

LAYOUT_EXPORT(struct syscall_event, syscall_event);
LAYOUT_EXPORT(struct syscall_data_event, syscall_data_event);
LAYOUT_EXPORT(struct syscall_data_small_event, syscall_data_small_event);
LAYOUT_EXPORT(struct payload_region, payload_region);
LAYOUT_EXPORT(struct payload_spec, payload_spec);
LAYOUT_EXPORT(enum syscalls_constants, syscalls_constants);
LAYOUT_EXPORT(enum payload_size_kind, payload_size_kind);
LAYOUT_EXPORT(enum payload_layout, payload_layout);
LAYOUT_EXPORT(struct file_id, file_id);
LAYOUT_EXPORT(struct proc_context, proc_context);

#define NR_EXIT 60
#define NR_EXECVEAT 322
#define EAGAIN 11
#define NR_GETTIMEOFDAY 96
#define NR_TIME 201
#define NR_GETCPU 309
#define NR_EXIT_GROUP 231
#define NR_URETPROBE 335  /* x86_64 uretprobe trampolines return through it (6.11+) */
#define NR_IA32_EXIT 1
#define NR_IA32_EXIT_GROUP 252
#define TS_COMPAT 0x0002    /* thread_info.status: in an ia32 syscall (in_ia32_syscall()) */
#define MAX_IOVECS 1024     /* UIO_MAXIOV: the kernel refuses more */
#define SOCKADDR_MAX 128    /* sizeof(struct sockaddr_storage) */
#define MSGHDR_SIZE 56      /* sizeof(struct user_msghdr) on x86_64 */
#define ERRNO_MAX 4095      /* returns in [-4095, -1] are errors */
#define NR_READ 0
#define NR_OPEN 2
#define NR_PREAD64 17
#define NR_READV 19
#define NR_CREAT 85
#define NR_CHDIR 80
#define NR_FCHDIR 81
#define NR_OPENAT 257
#define NR_PREADV 295
#define NR_PREADV2 327
#define NR_OPENAT2 437
#define NR_CLOCK_GETTIME 228
#define S_IFMT 00170000
#define S_IFREG 0100000
#define S_IFDIR 0040000
#define S_IFCHR 0020000
#define S_IFBLK 0060000
#define S_IFIFO 0010000
#define FMODE_WRITE 0x2
#define NSEC_PER_SEC 1000000000LL
/* s_magic of file systems whose "regular files" are made up at each read (or served by a
 * daemon): their reads keep their bytes, and their descriptors' paths are not resolved */
#define PROC_SUPER_MAGIC 0x9fa0
#define SYSFS_MAGIC 0x62656572
#define CGROUP_SUPER_MAGIC 0x27e0eb
#define CGROUP2_SUPER_MAGIC 0x63677270
#define DEBUGFS_MAGIC 0x64626720
#define TRACEFS_MAGIC 0x74726163
#define SECURITYFS_MAGIC 0x73636673
#define BPF_FS_MAGIC 0xcafe4a11
#define CONFIGFS_MAGIC 0x62656570
#define PSTOREFS_MAGIC 0x6165676c
#define EFIVARFS_MAGIC 0xde5e81e4
#define FUSE_SUPER_MAGIC 0x65735546
#define PIPEFS_MAGIC 0x50495045
#define SOCKFS_MAGIC 0x534F434B
#define ANON_INODE_FS_MAGIC 0x09041934

/* Sizes are defaults; the loader resizes rings before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} syscall_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} syscall_data SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} syscall_data_small SEC(".maps");

/* One call of a captured thread: a syscall, or a libc clock read answered by the vDSO. */
struct syscall_call {
	__u64 start_ns;
	__u64 seq;     /* its place in the thread's sequence; the thread's first is 1 */
	__u64 args[SYSCALL_ARGS];
	__s32 nr;
	__u16 active;  /* entered and not yet exited */
	__u8 compat;   /* an ia32 syscall */
	__u8 vdso;     /* a clock syscall made from the vDSO (its fallback, or a rewritten
			* entry point: capture_agent/vdso_patch.py) */
};

/* One region being copied, chunk by chunk (the bpf_loop context). */
struct copy_state {
	__u64 now;
	__u64 start_ns;
	__u64 seq;
	__u64 total_len;  /* bytes the region received */
	__u64 base;       /* user address of the current piece's next byte */
	__u64 iov;        /* user address of the next struct iovec (IOVEC layout) */
	__u32 iov_left;   /* iovecs not read yet */
	__u32 piece_left; /* bytes left in the current piece (flat region or one iovec) */
	__u32 want;       /* bytes still to copy (the region's first min(total, cap)) */
	__u32 offset;     /* of the next byte in the region */
	__u32 pid;
	__u32 tid;
	__s32 nr;
	__u8 arg_index;
	__u8 data_flags;  /* DATA_FLAG_* of the region's chunks */
	__u8 sys_flags;   /* SYSCALL_FLAG_* gathered for the syscall_event */
	__u8 __pad;
};

/* One region: `total` bytes at addr (flat) or in `count` iovecs at addr; or a C string. */
struct copy_job {
	__u64 addr;
	__u64 count;  /* IOVEC: number of iovecs */
	__u64 total;
	__u32 limit;  /* copy at most this much (payload_cap, or less) */
	__u8 arg;
	__u8 iovec;
	__u8 cstring;
	__u8 data_flags; /* DATA_FLAG_* every chunk of the region carries */
};

/* The payload regions of the call being emitted: scratch, filled and used in one program
 * run (a thread runs one of our programs at a time). */
struct payload_scratch {
	struct copy_job jobs[PAYLOAD_REGIONS];
	struct copy_state shared;
	struct user_msghdr msg; /* recvmsg's, as the call left it */
};

/* What a captured thread is doing, and its counter. */
struct syscall_state {
	__u64 seq;               /* of the thread's latest call */
	struct syscall_call sys; /* the syscall in flight */
	struct syscall_call clock; /* a libc clock call in flight (uprobe entry -> uretprobe) */
	__u64 clock_seq;         /* seq at its entry: a syscall since then (a fallback) says it all */
	struct payload_scratch scratch;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct syscall_state);
} syscall_state SEC(".maps");

/* Configuration, set by the loader between open and load. */
const volatile __u8 capture_payloads = 0;
const volatile __u32 payload_cap = 64 << 10; /* bytes per payload region */
/* Which arguments receive output and how long it is, per syscall number: the one table
 * of capture_agent/families/syscalls.py (PAYLOAD_TABLE), written here before load. */
const volatile struct payload_spec payload_specs[SYSCALL_NR_MAX] = {};
/* Reads of regular files by identity (struct file_id) instead of their bytes; the agent
 * stores each file version's content once. A file changed less than fresh_file_ns before
 * the read (a temporary file just written, which may be gone before the agent reads it)
 * also keeps its bytes, up to fresh_file_cap. mono_to_real_ns turns bpf_ktime_get_ns() into
 * the wall clock of inode times (sampled by the agent at load; a clock step since then
 * only moves the freshness window). */
const volatile __u8 files_by_identity = 1;
const volatile __s64 mono_to_real_ns = 0;
const volatile __u64 fresh_file_ns = 5ULL * NSEC_PER_SEC;
const volatile __u32 fresh_file_cap = 1 << 20;

/*
 * Evidence capture without payloads (`kprobe record --capture evidence`; no replay to
 * feed): a target's call that returned within min_syscall_ns, without an error other than
 * EAGAIN, is counted here instead of written. Slow calls, errors, exits and execs stay
 * rows. 0: every call is a row (full capture, and always with payloads).
 */
const volatile __u64 min_syscall_ns = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} syscalls_below_bound SEC(".maps");

/* ---- entry and exit ---------------------------------------------------------------- */

/* The state of a syscall entering now, or NULL if the thread is not captured. */
static __always_inline struct syscall_state *syscall_begin(struct task_struct *task, long nr)
{
	struct syscall_state *st;

	/* for a process not captured, this check is all: one helper call (the task), one
	 * inlined array lookup (target_hint); the `targets` hash only for likely targets */
	if (!is_target(task->tgid))
		return NULL;
	if (nr == NR_URETPROBE && !(task->thread_info.status & TS_COMPAT))
		return NULL; /* the kernel's uretprobe trampoline, not the program's call */
	st = bpf_task_storage_get(&syscall_state, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!st) {
		count_drop(EVENT_SYSCALL, DROP_MAP_FULL);
		return NULL;
	}
	st->seq += 1;
	st->sys.start_ns = bpf_ktime_get_ns();
	st->sys.seq = st->seq;
	st->sys.nr = nr;
	st->sys.active = 1;
	st->sys.compat = 0;
	st->sys.vdso = 0;
	return st;
}

static __always_inline bool is_error(long ret)
{
	return ret < 0 && ret >= -ERRNO_MAX;
}

__u32 emit_payloads(struct syscall_state *st, struct syscall_call *call, long ret, __u64 now,
		    __u64 ids);
int emit_opened(struct copy_state *c, __s32 fd);
int emit_cwd(struct copy_state *c);

/* After an open or a change of directory: what the kernel resolved (the opened file's
 * identity and path, the new working directory). Called beside emit_payloads, not from
 * it, to keep the chain of frames short. */
static __always_inline void emit_resolved(struct syscall_state *st, struct syscall_call *call,
					  long ret)
{
	__s32 nr = call->nr;

	if (is_error(ret))
		return;
	if (nr == 2 || nr == 257 || nr == 437 || nr == 85) /* open, openat, openat2, creat */
		emit_opened(&st->scratch.shared, ret);
	else if ((nr == 80 || nr == 81) && ret == 0) /* chdir, fchdir */
		emit_cwd(&st->scratch.shared);
}

/* The syscall_event of `call`, its payloads (flags says how they went) already emitted. */
static __always_inline void syscall_record(struct syscall_call *call, long ret, __u64 now,
					   __u8 flags, __u64 ids)
{
	struct syscall_event *ev;

	ev = EVENT_RESERVE_AT(&syscall_events, struct syscall_event, EVENT_SYSCALL,
			      SYSCALLS_LAYOUT_VERSION, now);
	if (!ev)
		return;
	ev->hdr.flags = flags;
	ev->start_ns = call->start_ns;
	ev->seq = call->seq;
	ev->ret = ret;
	__builtin_memcpy(ev->args, call->args, sizeof(ev->args));
	ev->pid = ids >> 32;
	ev->tid = (__u32)ids;
	ev->nr = call->nr;
	ev->__pad = 0;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	event_submit(&syscall_events, ev);
}

/* Is `call` one that evidence capture counts instead of writing (min_syscall_ns)? */
static __always_inline bool below_bound(struct syscall_call *call, long ret, __u64 now,
					__u8 flags)
{
	__u32 zero = 0;
	__u64 *count;

	if (!min_syscall_ns || capture_payloads || (flags & SYSCALL_FLAG_NO_RETURN))
		return false;
	if (now - call->start_ns >= min_syscall_ns || (is_error(ret) && ret != -EAGAIN))
		return false;
	if (!call->compat && (call->nr == NR_EXECVE || call->nr == NR_EXECVEAT))
		return false;
	count = bpf_map_lookup_elem(&syscalls_below_bound, &zero);
	if (count)
		__sync_fetch_and_add(count, 1); /* another program may preempt this one */
	return true;
}

static __always_inline void syscall_emit(struct syscall_state *st, struct syscall_call *call,
					 long ret, __u64 now, __u8 flags)
{
	__u64 ids;

	if (below_bound(call, ret, now, flags))
		return;
	ids = bpf_get_current_pid_tgid();

	if (call->compat)
		flags |= SYSCALL_FLAG_COMPAT;
	else if (capture_payloads && !(flags & SYSCALL_FLAG_NO_RETURN)) {
		flags |= emit_payloads(st, call, ret, now, ids);
		emit_resolved(st, call, ret);
	}
	syscall_record(call, ret, now, flags, ids);
}

/* exit and exit_group never reach sys_exit: record them at entry. */
static __always_inline void syscall_entered(struct syscall_state *st)
{
	struct syscall_call *call = &st->sys;
	bool exits = call->compat ? call->nr == NR_IA32_EXIT || call->nr == NR_IA32_EXIT_GROUP
				  : call->nr == NR_EXIT || call->nr == NR_EXIT_GROUP;

	if (exits) {
		call->active = 0;
		syscall_emit(st, call, 0, call->start_ns, SYSCALL_FLAG_NO_RETURN);
	}
}

static __always_inline void syscall_end(long ret)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct syscall_state *st;

	/* A thread never captured has no storage: a thread without any task storage, or of
	 * a process never targeted, is done here, before the storage lookup (a helper call). */
	if (!task->bpf_storage || !ever_target(task->tgid))
		return;
	st = bpf_task_storage_get(&syscall_state, task, 0, 0);
	if (!st || !st->sys.active)
		return;
	st->sys.active = 0;
	syscall_emit(st, &st->sys, ret, bpf_ktime_get_ns(), st->sys.vdso ? SYSCALL_FLAG_VDSO : 0);
}

/* Was this clock syscall made by code of the thread's vDSO (x86: mm->context.vdso, the
 * image's size from its vdso_image)? A replay treats it as the clock read it stands for. */
static __always_inline __u8 from_vdso(struct task_struct *task, long nr, __u64 ip)
{
	struct mm_struct *mm;
	__u64 base, size;

	if (nr != NR_CLOCK_GETTIME && nr != NR_GETTIMEOFDAY && nr != NR_TIME && nr != NR_GETCPU)
		return 0;
	mm = task->mm;
	if (!mm)
		return 0;
	base = (__u64)BPF_CORE_READ(mm, context.vdso);
	size = BPF_CORE_READ(mm, context.vdso_image, size);
	return base && ip >= base && ip < base + size;
}

#ifndef SYSCALLS_NO_ATTACH_POINTS
/* x86_64: arguments in rdi, rsi, rdx, r10, r8, r9; ia32: ebx, ecx, edx, esi, edi, ebp. */
SEC("tp_btf/sys_enter")
int BPF_PROG(on_sys_enter, struct pt_regs *regs, long id)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct syscall_state *st = syscall_begin(task, id);

	if (!st)
		return 0;
	if (task->thread_info.status & TS_COMPAT) {
		st->sys.compat = 1;
		st->sys.args[0] = (__u32)regs->bx;
		st->sys.args[1] = (__u32)regs->cx;
		st->sys.args[2] = (__u32)regs->dx;
		st->sys.args[3] = (__u32)regs->si;
		st->sys.args[4] = (__u32)regs->di;
		st->sys.args[5] = (__u32)regs->bp;
	} else {
		st->sys.args[0] = regs->di;
		st->sys.args[1] = regs->si;
		st->sys.args[2] = regs->dx;
		st->sys.args[3] = regs->r10;
		st->sys.args[4] = regs->r8;
		st->sys.args[5] = regs->r9;
		st->sys.vdso = from_vdso(task, id, regs->ip);
	}
	syscall_entered(st);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(on_sys_exit, struct pt_regs *regs, long ret)
{
	syscall_end(ret);
	return 0;
}
#endif

/* ---- payloads ------------------------------------------------------------------------ */

struct user_iovec {
	__u64 base;
	__u64 len;
};

#define FILL_CHUNK_HEAD(ev, c, n)                  \
	do {                                       \
		(ev)->hdr.flags = (c)->data_flags; \
		(ev)->start_ns = (c)->start_ns;    \
		(ev)->seq = (c)->seq;              \
		(ev)->total_len = (c)->total_len;  \
		(ev)->pid = (c)->pid;              \
		(ev)->tid = (c)->tid;              \
		(ev)->offset = (c)->offset;        \
		(ev)->len = (n);                   \
		(ev)->nr = (c)->nr;                \
		(ev)->arg_index = (c)->arg_index;  \
		(ev)->__pad[0] = 0;                \
		(ev)->__pad[1] = 0;                \
		(ev)->__pad[2] = 0;                \
	} while (0)

/*
 * Copy n bytes at c->base into one chunk record (small ring if they fit). 0 on success;
 * -1 if the ring was full (counted) or the memory unreadable (a len-0 FAULT chunk says
 * so): the region stops there either way.
 */
static __always_inline int emit_chunk(struct copy_state *c, __u32 n)
{
	if (n <= SYSCALL_DATA_SMALL_CHUNK) {
		struct syscall_data_small_event *ev = EVENT_RESERVE_AT(
			&syscall_data_small, struct syscall_data_small_event,
			EVENT_SYSCALL_DATA_SMALL, SYSCALLS_LAYOUT_VERSION, c->now);

		if (!ev)
			goto lost;
		n = bounded(n, SYSCALL_DATA_SMALL_CHUNK);
		FILL_CHUNK_HEAD(ev, c, n);
		if (n && bpf_probe_read_user(ev->data, n, (void *)c->base)) {
			ev->len = 0;
			ev->hdr.flags |= DATA_FLAG_FAULT;
			event_submit(&syscall_data_small, ev);
			goto fault;
		}
		event_submit(&syscall_data_small, ev);
	} else {
		struct syscall_data_event *ev = EVENT_RESERVE_AT(
			&syscall_data, struct syscall_data_event, EVENT_SYSCALL_DATA,
			SYSCALLS_LAYOUT_VERSION, c->now);

		if (!ev)
			goto lost;
		n = bounded(n, SYSCALL_DATA_CHUNK);
		FILL_CHUNK_HEAD(ev, c, n);
		if (bpf_probe_read_user(ev->data, n, (void *)c->base)) {
			ev->len = 0;
			ev->hdr.flags |= DATA_FLAG_FAULT;
			event_submit(&syscall_data, ev);
			goto fault;
		}
		event_submit(&syscall_data, ev);
	}
	return 0;
lost:
	c->sys_flags |= SYSCALL_FLAG_PAYLOAD_LOST;
	return -1;
fault:
	c->sys_flags |= SYSCALL_FLAG_TRUNCATED;
	return -1;
}

/* bpf_loop callback: one step of a region: read the next iovec, or copy one chunk. */
static long copy_step(__u64 index, void *ctx)
{
	struct copy_state *c = ctx;
	struct user_iovec iov;
	__u32 n;

	if (c->want == 0)
		return 1;
	if (c->piece_left == 0) {
		if (c->iov_left == 0)
			return 1;
		if (bpf_probe_read_user(&iov, sizeof(iov), (void *)c->iov)) {
			c->base = 0;
			emit_chunk(c, 0); /* len-0 chunk flagged FAULT: the iovec array */
			c->sys_flags |= SYSCALL_FLAG_TRUNCATED;
			return 1;
		}
		c->iov += sizeof(iov);
		c->iov_left -= 1;
		c->base = iov.base;
		c->piece_left = iov.len < c->want ? iov.len : c->want;
		return 0;
	}
	n = c->piece_left < SYSCALL_DATA_CHUNK ? c->piece_left : SYSCALL_DATA_CHUNK;
	if (emit_chunk(c, n))
		return 1;
	c->base += n;
	c->piece_left -= n;
	c->want -= n;
	c->offset += n;
	return 0;
}

/*
 * Global functions (verified once, on their own, whatever the caller's state): one
 * region copied chunk by chunk. The bpf_loop context must live on this stack.
 */
/*
 * A NUL-terminated string at job->addr (a path the call read), without its NUL: one small
 * chunk when it fits, else one 4 KiB chunk (PATH_MAX), flagged truncated if even that is
 * full. `kernel`: the string is in kernel memory (bprm->filename at exec).
 */
__noinline int copy_cstring(struct copy_state *shared, struct copy_job *job, int kernel)
{
	struct syscall_data_small_event *small;
	struct syscall_data_event *big;
	struct copy_state c;
	long n;

	if (!shared || !job || !job->addr)
		return 0;
	c = *shared;
	c.arg_index = job->arg;
	c.offset = 0;
	c.data_flags = 0;
	small = EVENT_RESERVE_AT(&syscall_data_small, struct syscall_data_small_event,
				 EVENT_SYSCALL_DATA_SMALL, SYSCALLS_LAYOUT_VERSION, c.now);
	if (!small)
		goto lost;
	if (kernel)
		n = bpf_probe_read_kernel_str(small->data, SYSCALL_DATA_SMALL_CHUNK,
					      (void *)job->addr);
	else
		n = bpf_probe_read_user_str(small->data, SYSCALL_DATA_SMALL_CHUNK,
					    (void *)job->addr);
	if (n > 0 && n < SYSCALL_DATA_SMALL_CHUNK) {
		c.total_len = n - 1;
		FILL_CHUNK_HEAD(small, &c, n - 1);
		event_submit(&syscall_data_small, small);
		return 0;
	}
	if (n <= 0) { /* unreadable: a len-0 FAULT chunk says so */
		c.total_len = 0;
		FILL_CHUNK_HEAD(small, &c, 0);
		small->hdr.flags |= DATA_FLAG_FAULT;
		event_submit(&syscall_data_small, small);
		shared->sys_flags |= SYSCALL_FLAG_TRUNCATED;
		return 0;
	}
	bpf_ringbuf_discard(small, 0);
	big = EVENT_RESERVE_AT(&syscall_data, struct syscall_data_event, EVENT_SYSCALL_DATA,
			       SYSCALLS_LAYOUT_VERSION, c.now);
	if (!big)
		goto lost;
	if (kernel)
		n = bpf_probe_read_kernel_str(big->data, SYSCALL_DATA_CHUNK, (void *)job->addr);
	else
		n = bpf_probe_read_user_str(big->data, SYSCALL_DATA_CHUNK, (void *)job->addr);
	if (n <= 0)
		n = 1;
	if (n >= SYSCALL_DATA_CHUNK) {
		c.data_flags = DATA_FLAG_TRUNCATED;
		shared->sys_flags |= SYSCALL_FLAG_TRUNCATED;
	}
	c.total_len = n - 1;
	FILL_CHUNK_HEAD(big, &c, (__u32)(n - 1) & (SYSCALL_DATA_CHUNK - 1));
	event_submit(&syscall_data, big);
	return 0;
lost:
	shared->sys_flags |= SYSCALL_FLAG_PAYLOAD_LOST; /* the reserve counted the drop */
	return 0;
}

__noinline int copy_region(struct copy_state *shared, struct copy_job *job)
{
	struct copy_state c;
	__u64 want;

	if (!shared || !job || !job->addr || !job->total)
		return 0;
	c = *shared;
	want = job->total < job->limit ? job->total : job->limit;
	c.arg_index = job->arg;
	c.total_len = job->total;
	c.want = want;
	c.offset = 0;
	c.data_flags = job->data_flags;
	if (want < job->total) {
		c.data_flags |= DATA_FLAG_TRUNCATED;
		c.sys_flags |= SYSCALL_FLAG_TRUNCATED;
	}
	if (job->iovec) {
		c.iov = job->addr;
		c.iov_left = job->count < MAX_IOVECS ? job->count : MAX_IOVECS;
		c.base = 0;
		c.piece_left = 0;
	} else {
		c.iov = 0;
		c.iov_left = 0;
		c.base = job->addr;
		c.piece_left = want;
	}
	/* Steps: one per iovec read plus one per chunk (a chunk never spans two iovecs). */
	bpf_loop(2 * MAX_IOVECS +
		 (payload_cap > fresh_file_cap ? payload_cap : fresh_file_cap) / SYSCALL_DATA_CHUNK + 2,
		 copy_step, &c, 0);
	shared->sys_flags = c.sys_flags;
	return 0;
}

static __always_inline __u64 arg_at(struct syscall_call *call, __u32 i)
{
	if (i >= SYSCALL_ARGS)
		return 0;
	return call->args[i];
}

/* Bytes an ioctl wrote through args[2]: legacy tty requests carry no size. */
static __always_inline __u64 ioctl_size(__u32 request)
{
	switch (request) {
	case 0x5401: /* TCGETS: struct termios */
		return 36;
	case 0x5413: /* TIOCGWINSZ */
		return 8;
	case 0x540F: /* TIOCGPGRP */
	case 0x5411: /* TIOCOUTQ */
	case 0x541B: /* FIONREAD */
	case 0x5429: /* TIOCGSID */
		return 4;
	}
	return (request >> 30) & 2 ? (request >> 16) & 0x3fff : 0; /* _IOC_READ: _IOC_SIZE */
}

static __always_inline __u64 region_size(__u8 kind, __u32 n, __u64 len_value, long ret)
{
	__u32 value = 0;

	switch (kind) {
	case PAYLOAD_RET:
		return ret;
	case PAYLOAD_FIXED:
		return n;
	case PAYLOAD_RET_TIMES:
		return (__u64)ret * n;
	case PAYLOAD_ARG_TIMES:
		return (__u64)(__u32)len_value * n;
	case PAYLOAD_DEREF:
		if (!len_value || bpf_probe_read_user(&value, sizeof(value), (void *)len_value))
			return 0;
		return value;
	case PAYLOAD_FDSET:
		value = (__u32)len_value;
		if ((__s32)value <= 0)
			return 0;
		return ((__u64)value + 63) / 64 * 8;
	case PAYLOAD_IOCTL:
		return ioctl_size((__u32)len_value);
	case PAYLOAD_FLOCK: /* F_GETLK, F_OFD_GETLK */
		return (__u32)len_value == 5 || (__u32)len_value == 36 ? 32 : 0;
	}
	return 0;
}

/*
 * recvmsg: the msghdr's iovec payload (as argument `arg`), its msg_name (pseudo arg 6,
 * msg_namelen bytes), msg_control (7, msg_controllen) and the msghdr itself (8), as the
 * syscall left them. Fills jobs[0..3].
 */
static __always_inline void msghdr_jobs(struct payload_scratch *scratch, __u8 arg,
					__u64 addr, long ret)
{
	struct copy_job *jobs = scratch->jobs;
	struct user_msghdr *m = &scratch->msg;

	if (bpf_probe_read_user(m, sizeof(*m), (void *)addr))
		return;
	jobs[0].addr = (__u64)m->msg_iov;
	jobs[0].count = m->msg_iovlen;
	jobs[0].total = ret;
	jobs[0].arg = arg;
	jobs[0].iovec = 1;
	jobs[1].addr = (__u64)m->msg_name;
	jobs[1].total = m->msg_namelen > 0 ? m->msg_namelen : 0;
	jobs[1].limit = SOCKADDR_MAX;
	jobs[1].arg = PAYLOAD_ARG_MSG_NAME;
	jobs[2].addr = (__u64)m->msg_control;
	jobs[2].total = m->msg_controllen;
	jobs[2].arg = PAYLOAD_ARG_MSG_CONTROL;
	jobs[3].addr = addr;
	jobs[3].total = MSGHDR_SIZE;
	jobs[3].arg = PAYLOAD_ARG_MSGHDR;
}

/* ---- files: reads by identity, kernel paths, the context of an exec --------------------
 *
 * A read of a regular file opened read-only, that nobody has open for writing, on a file
 * system whose contents are stored (not /proc, /sys, ...), is recorded as the file's
 * identity and the offset read (one struct file_id, a small chunk flagged DATA_FLAG_FILE)
 * instead of its bytes: the agent stores each version of the file once, whatever its
 * size (capture_agent/file_store.py). Everything else keeps its bytes (pipes, sockets,
 * ttys, a file written through another descriptor, sqlite's read-write database).
 *
 * Paths are resolved here from the dentry (the kernel's answer, not /proc read later):
 * the working directory at exec, chdir and fchdir, the file an open returned, and the
 * target of each descriptor an exec starts with. A path is built in the thread's
 * `syscall_paths` storage in two bpf_loop passes (up the dentries and mounts to the task's
 * root, then down, writing the names) and copied into the data ring as one chunk.
 */

/* A path being composed, and the record it goes out in (per thread, like syscall_state). */
struct path_scratch {
	struct syscall_data_event ev;
	__u64 stack[PATH_DEPTH_MAX]; /* dentries from the leaf up */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct path_scratch);
} syscall_paths SEC(".maps");

/* Inode times before Linux 6.11 (i_mtime_sec/_nsec since): timespec64 fields, renamed
 * __i_ctime in 6.6 and __i_mtime in 6.7 (accessors became the API). */
struct inode___ts {
	struct timespec64 i_mtime;
	struct timespec64 i_ctime;
} __attribute__((preserve_access_index));

struct inode___ts66 {
	struct timespec64 __i_mtime;
	struct timespec64 __i_ctime;
} __attribute__((preserve_access_index));

static __always_inline void inode_times(struct inode *inode, __s64 *mtime, __s64 *ctime)
{
	struct inode___ts66 *mid = (void *)inode;
	struct inode___ts *old = (void *)inode;

	if (bpf_core_field_exists(inode->i_mtime_sec)) {
		/* the top bits of i_ctime_nsec may flag a multigrain query (6.13+) */
		*mtime = BPF_CORE_READ(inode, i_mtime_sec) * NSEC_PER_SEC +
			 (BPF_CORE_READ(inode, i_mtime_nsec) & 0x3fffffff);
		*ctime = BPF_CORE_READ(inode, i_ctime_sec) * NSEC_PER_SEC +
			 (BPF_CORE_READ(inode, i_ctime_nsec) & 0x3fffffff);
		return;
	}
	if (bpf_core_field_exists(mid->__i_mtime))
		*mtime = BPF_CORE_READ(mid, __i_mtime.tv_sec) * NSEC_PER_SEC +
			 BPF_CORE_READ(mid, __i_mtime.tv_nsec);
	else
		*mtime = BPF_CORE_READ(old, i_mtime.tv_sec) * NSEC_PER_SEC +
			 BPF_CORE_READ(old, i_mtime.tv_nsec);
	if (bpf_core_field_exists(mid->__i_ctime))
		*ctime = BPF_CORE_READ(mid, __i_ctime.tv_sec) * NSEC_PER_SEC +
			 BPF_CORE_READ(mid, __i_ctime.tv_nsec);
	else
		*ctime = BPF_CORE_READ(old, i_ctime.tv_sec) * NSEC_PER_SEC +
			 BPF_CORE_READ(old, i_ctime.tv_nsec);
}

/* The open file behind descriptor fd of task, or NULL. */
static __always_inline struct file *fd_file(struct task_struct *task, __u64 fd)
{
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **files;
	struct file *file = NULL;

	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	files = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&file, sizeof(file), &files[fd]);
	return file;
}

static __always_inline void fill_file_id(struct file_id *id, struct file *file, __s32 fd)
{
	struct inode *inode = BPF_CORE_READ(file, f_inode);

	id->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	id->ino = BPF_CORE_READ(inode, i_ino);
	id->size = BPF_CORE_READ(inode, i_size);
	inode_times(inode, &id->mtime_ns, &id->ctime_ns);
	id->pos = BPF_CORE_READ(file, f_pos);
	id->fd = fd;
	id->mode = BPF_CORE_READ(inode, i_mode);
	id->flags = BPF_CORE_READ(file, f_flags);
	id->magic = BPF_CORE_READ(inode, i_sb, s_magic);
}

/* Contents that are made up at each read, or that someone else serves: keep the bytes. */
static __always_inline bool volatile_fs(__u32 magic)
{
	switch (magic) {
	case PROC_SUPER_MAGIC:
	case SYSFS_MAGIC:
	case CGROUP_SUPER_MAGIC:
	case CGROUP2_SUPER_MAGIC:
	case DEBUGFS_MAGIC:
	case TRACEFS_MAGIC:
	case SECURITYFS_MAGIC:
	case BPF_FS_MAGIC:
	case CONFIGFS_MAGIC:
	case PSTOREFS_MAGIC:
	case EFIVARFS_MAGIC:
	case FUSE_SUPER_MAGIC:
		return true;
	}
	return false;
}

/* Descriptors whose target is a path (not a pipe, socket or anonymous inode). */
static __always_inline bool has_path(struct file_id *id)
{
	if (id->magic == PIPEFS_MAGIC || id->magic == SOCKFS_MAGIC ||
	    id->magic == ANON_INODE_FS_MAGIC)
		return false;
	switch (id->mode & S_IFMT) {
	case S_IFREG:
	case S_IFDIR:
	case S_IFCHR:
	case S_IFBLK:
	case S_IFIFO:
		return true;
	}
	return false;
}

/* The bpf_loop context of a path walk (pointers as numbers: the callbacks read through
 * them with probe reads). */
struct path_walk {
	__u64 dentry;
	__u64 vfsmnt;
	__u64 root_dentry;
	__u64 root_vfsmnt;
	__u64 mount_offset; /* of struct vfsmount in struct mount (CO-RE) */
	__u32 depth;
	__u32 off;
	__u32 truncated;
	__u32 __pad;
};

static __always_inline struct path_scratch *path_scratch(void)
{
	return bpf_task_storage_get(&syscall_paths, bpf_get_current_task_btf(), 0, 0);
}

/* Up one step: a dentry pushed, or a mount crossed; 1 when the root is reached. */
static long path_up(__u64 index, void *ctx)
{
	struct path_walk *w = ctx;
	struct path_scratch *s;
	struct dentry *dentry = (void *)w->dentry;
	struct vfsmount *vfsmnt = (void *)w->vfsmnt;
	struct dentry *parent;
	__u64 mnt_root;

	if (w->dentry == w->root_dentry && w->vfsmnt == w->root_vfsmnt)
		return 1;
	mnt_root = (__u64)BPF_CORE_READ(vfsmnt, mnt_root);
	if (mnt_root == w->dentry) {
		struct mount *mnt = (void *)((__u64)vfsmnt - w->mount_offset);
		struct mount *up = BPF_CORE_READ(mnt, mnt_parent);

		if (!up || up == mnt)
			return 1; /* the namespace's root */
		w->dentry = (__u64)BPF_CORE_READ(mnt, mnt_mountpoint);
		w->vfsmnt = (__u64)up + w->mount_offset;
		return 0;
	}
	parent = BPF_CORE_READ(dentry, d_parent);
	if (!parent || (__u64)parent == w->dentry)
		return 1; /* the root of a file system mounted nowhere the task sees */
	if (w->depth >= PATH_DEPTH_MAX) {
		w->truncated = 1;
		return 1;
	}
	s = path_scratch();
	if (!s)
		return 1;
	s->stack[w->depth & (PATH_DEPTH_MAX - 1)] = w->dentry;
	w->depth += 1;
	w->dentry = (__u64)parent;
	return 0;
}

#define PATH_NAME_MAX 256 /* NAME_MAX and its NUL */

/* Down one step: "/name" of the next dentry from the top. */
static long path_down(__u64 index, void *ctx)
{
	struct path_walk *w = ctx;
	struct path_scratch *s;
	struct dentry *dentry;
	const unsigned char *name;
	__u64 off;
	long n;

	if (index >= w->depth)
		return 1;
	if (w->off > SYSCALL_DATA_CHUNK - PATH_NAME_MAX - 1) {
		w->truncated = 1;
		return 1;
	}
	s = path_scratch();
	if (!s)
		return 1;
	dentry = (void *)s->stack[(w->depth - 1 - index) & (PATH_DEPTH_MAX - 1)];
	name = BPF_CORE_READ(dentry, d_name.name);
	off = bounded(w->off, SYSCALL_DATA_CHUNK - PATH_NAME_MAX - 1);
	s->ev.data[off] = '/';
	n = bpf_probe_read_kernel_str(&s->ev.data[off + 1], PATH_NAME_MAX, name);
	if (n <= 0) {
		w->truncated = 1;
		return 1;
	}
	w->off = off + n; /* at the NUL: the next name's '/' replaces it */
	return 0;
}

/* Copy a composed record to a ring, waking the consumer as event_submit would. */
static __always_inline void ring_output(void *ring, void *record, __u64 size)
{
	__u64 avail = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) + size + 8;
	__u64 ring_size = bpf_ringbuf_query(ring, BPF_RB_RING_SIZE);
	__u64 threshold = ring_size * wakeup_fill_pct / 100;
	bool crossing = avail >= threshold && avail < threshold + size + 8;

	if (bpf_ringbuf_output(ring, record, size,
			       crossing || avail >= ring_size - ring_size / 8 ? BPF_RB_FORCE_WAKEUP
									 : BPF_RB_NO_WAKEUP))
		count_drop(EVENT_SYSCALL_DATA, DROP_RING_FULL);
}

/*
 * One data chunk of the call in `c` (argument `arg`) holding the path of dentry/vfsmnt
 * from the task's root, after `prefix` bytes already in the scratch record (a file_id).
 */
__noinline int emit_path(struct copy_state *c, __u64 dentry, __u64 vfsmnt, __u32 arg,
			 __u32 prefix)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct path_scratch *s = path_scratch();
	struct syscall_data_event *ev;
	struct path_walk w = {};
	struct dentry *leaf = (void *)dentry;
	__u8 flags = 0;

	if (!c || !s || !dentry || !vfsmnt)
		return 0;
	w.dentry = dentry;
	w.vfsmnt = vfsmnt;
	w.root_dentry = (__u64)BPF_CORE_READ(task, fs, root.dentry);
	w.root_vfsmnt = (__u64)BPF_CORE_READ(task, fs, root.mnt);
	w.mount_offset = bpf_core_field_offset(struct mount, mnt);
	w.off = prefix < 64 ? prefix : 64;
	bpf_loop(PATH_DEPTH_MAX + 16, path_up, &w, 0); /* + mounts crossed */
	if (w.depth == 0) {
		s->ev.data[w.off & 127] = '/';
		w.off += 1;
	} else {
		bpf_loop(w.depth, path_down, &w, 0);
	}
	if (w.truncated)
		flags |= DATA_FLAG_TRUNCATED;
	if (!BPF_CORE_READ(leaf, d_hash.pprev) && BPF_CORE_READ(leaf, d_parent) != leaf)
		flags |= DATA_FLAG_DELETED; /* unlinked: the path named it once */
	ev = &s->ev;
	ev->hdr.ktime_ns = c->now;
	ev->hdr.kind = EVENT_SYSCALL_DATA;
	ev->hdr.size = sizeof(*ev);
	ev->hdr.cpu = bpf_get_smp_processor_id();
	ev->hdr.version = SYSCALLS_LAYOUT_VERSION;
	ev->hdr.flags = flags;
	ev->start_ns = c->start_ns;
	ev->seq = c->seq;
	ev->total_len = w.off;
	ev->pid = c->pid;
	ev->tid = c->tid;
	ev->offset = 0;
	ev->len = w.off;
	ev->nr = c->nr;
	ev->arg_index = arg;
	ev->__pad[0] = 0;
	ev->__pad[1] = 0;
	ev->__pad[2] = 0;
	ring_output(&syscall_data, ev, sizeof(*ev));
	return 0;
}

static __always_inline struct path_scratch *path_scratch_create(void)
{
	return bpf_task_storage_get(&syscall_paths, bpf_get_current_task_btf(), 0,
				    BPF_LOCAL_STORAGE_GET_F_CREATE);
}

/* Send the first `len` bytes of the scratch record's data as a chunk of argument `arg`. */
static __always_inline void emit_scratch(struct path_scratch *s, struct copy_state *c,
					 __u32 arg, __u32 len)
{
	struct syscall_data_event *ev = &s->ev;

	ev->hdr.ktime_ns = c->now;
	ev->hdr.kind = EVENT_SYSCALL_DATA;
	ev->hdr.size = sizeof(*ev);
	ev->hdr.cpu = bpf_get_smp_processor_id();
	ev->hdr.version = SYSCALLS_LAYOUT_VERSION;
	ev->hdr.flags = 0;
	ev->start_ns = c->start_ns;
	ev->seq = c->seq;
	ev->total_len = len;
	ev->pid = c->pid;
	ev->tid = c->tid;
	ev->offset = 0;
	ev->len = len;
	ev->nr = c->nr;
	ev->arg_index = arg;
	ev->__pad[0] = 0;
	ev->__pad[1] = 0;
	ev->__pad[2] = 0;
	ring_output(&syscall_data, ev, sizeof(*ev));
}

/* An open's new descriptor, if it is a regular file: its file_id, then its path. */
__noinline int emit_opened(struct copy_state *c, __s32 fd)
{
	struct path_scratch *s = path_scratch_create();
	struct file *file;
	struct file_id *id;

	if (!c || !s || fd < 0)
		return 0;
	file = fd_file(bpf_get_current_task_btf(), fd);
	if (!file)
		return 0;
	id = (void *)s->ev.data;
	fill_file_id(id, file, fd);
	if ((id->mode & S_IFMT) != S_IFREG)
		return 0;
	emit_path(c, (__u64)BPF_CORE_READ(file, f_path.dentry),
		  (__u64)BPF_CORE_READ(file, f_path.mnt), PAYLOAD_ARG_OPENED, sizeof(*id));
	return 0;
}

/* The working directory, after an exec, chdir or fchdir. */
__noinline int emit_cwd(struct copy_state *c)
{
	struct task_struct *task = bpf_get_current_task_btf();

	if (!c || !path_scratch_create())
		return 0;
	emit_path(c, (__u64)BPF_CORE_READ(task, fs, pwd.dentry),
		  (__u64)BPF_CORE_READ(task, fs, pwd.mnt), PAYLOAD_ARG_CWD, 0);
	return 0;
}

/* An id as the user namespace of `map` sees kernel id `id` (map_id_range_down, for the
 * five extents a map keeps inline); the overflow id when it has none. */
static __noinline __u32 map_id(struct uid_gid_map *map, __u32 nr, __u32 id)
{
	int i;

	for (i = 0; i < 5; i++) {
		__u32 first, lower, count;

		if (i >= nr)
			break;
		first = BPF_CORE_READ(map, extent[i].first);
		lower = BPF_CORE_READ(map, extent[i].lower_first);
		count = BPF_CORE_READ(map, extent[i].count);
		if (id - lower < count)
			return first + (id - lower);
	}
	return 65534;
}

/* The process context of the new image, as a chunk of the execve (PAYLOAD_ARG_CONTEXT). */
__noinline int emit_context(struct copy_state *c)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct path_scratch *s = path_scratch_create();
	const struct cred *cred = task->cred;
	struct user_namespace *ns;
	struct uid_gid_map *uids, *gids;
	struct proc_context *pc;
	__u32 nr_uids, nr_gids;

	if (!c || !s)
		return 0;
	pc = (void *)s->ev.data;
	__builtin_memset(pc, 0, sizeof(*pc));
	pc->umask = BPF_CORE_READ(task, fs, umask);
	ns = BPF_CORE_READ(cred, user_ns);
	uids = (void *)ns + bpf_core_field_offset(struct user_namespace, uid_map);
	gids = (void *)ns + bpf_core_field_offset(struct user_namespace, gid_map);
	nr_uids = BPF_CORE_READ(uids, nr_extents);
	nr_gids = BPF_CORE_READ(gids, nr_extents);
	pc->uid = BPF_CORE_READ(cred, uid.val);
	pc->euid = BPF_CORE_READ(cred, euid.val);
	pc->suid = BPF_CORE_READ(cred, suid.val);
	pc->fsuid = BPF_CORE_READ(cred, fsuid.val);
	pc->gid = BPF_CORE_READ(cred, gid.val);
	pc->egid = BPF_CORE_READ(cred, egid.val);
	pc->sgid = BPF_CORE_READ(cred, sgid.val);
	pc->fsgid = BPF_CORE_READ(cred, fsgid.val);
	if (nr_uids <= 5 && nr_gids <= 5) {
		pc->ids_mapped = 1;
		pc->uid = map_id(uids, nr_uids, pc->uid);
		pc->euid = map_id(uids, nr_uids, pc->euid);
		pc->suid = map_id(uids, nr_uids, pc->suid);
		pc->fsuid = map_id(uids, nr_uids, pc->fsuid);
		pc->gid = map_id(gids, nr_gids, pc->gid);
		pc->egid = map_id(gids, nr_gids, pc->egid);
		pc->sgid = map_id(gids, nr_gids, pc->sgid);
		pc->fsgid = map_id(gids, nr_gids, pc->fsgid);
	}
	bpf_core_read(pc->rlimits, sizeof(pc->rlimits), &task->signal->rlim);
	bpf_core_read_str(pc->nodename, sizeof(pc->nodename),
			  &task->nsproxy->uts_ns->name.nodename);
	emit_scratch(s, c, PAYLOAD_ARG_CONTEXT, sizeof(*pc));
	return 0;
}

/* The bpf_loop context of the descriptor table at exec. */
struct fd_walk {
	__u64 files;     /* struct file ** */
	__u64 with_path; /* bit N: descriptor N's target is a path */
	__u32 max_fds;
	__u32 count;
};

static long fd_step(__u64 index, void *ctx)
{
	struct fd_walk *w = ctx;
	struct path_scratch *s;
	struct file *file = NULL;
	struct file_id *id;

	if (index >= w->max_fds || index >= FD_TABLE_MAX)
		return 1;
	bpf_probe_read_kernel(&file, sizeof(file), (void *)(w->files + index * sizeof(file)));
	if (!file)
		return 0;
	s = path_scratch();
	if (!s)
		return 1;
	id = (void *)&s->ev.data[(w->count & (FD_TABLE_MAX - 1)) * sizeof(*id)];
	fill_file_id(id, file, index);
	if (has_path(id))
		w->with_path |= 1ULL << index;
	w->count += 1;
	return 0;
}

/* The descriptors the new image starts with (close-on-exec ones are closed by now):
 * struct file_id[] as one chunk (PAYLOAD_ARG_FDS), then the path of each one that has
 * one (PAYLOAD_ARG_FD_PATH + fd). */
__noinline int emit_descriptors(struct copy_state *c)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct path_scratch *s = path_scratch_create();
	struct fdtable *fdt;
	struct fd_walk w = {};
	int fd;

	if (!c || !s)
		return 0;
	fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt)
		return 0;
	w.files = (__u64)BPF_CORE_READ(fdt, fd);
	w.max_fds = BPF_CORE_READ(fdt, max_fds);
	bpf_loop(FD_TABLE_MAX, fd_step, &w, 0);
	emit_scratch(s, c, PAYLOAD_ARG_FDS, (w.count & (FD_TABLE_MAX * 2 - 1)) *
						   sizeof(struct file_id));
	for (fd = 0; fd < FD_TABLE_MAX; fd++) {
		struct file *file;

		if (!(w.with_path & (1ULL << fd)))
			continue;
		file = fd_file(task, fd);
		if (file)
			emit_path(c, (__u64)BPF_CORE_READ(file, f_path.dentry),
				  (__u64)BPF_CORE_READ(file, f_path.mnt), PAYLOAD_ARG_FD_PATH + fd,
				  0);
	}
	return 0;
}

/*
 * A read of a regular file, by identity: a small chunk holding its file_id (pos: the first
 * byte's offset), for argument 1 (the buffer, or the iovec array). 1 if the bytes need not
 * be copied, 2 if they must be too (a file changed moments ago), 0 if this read is not
 * one (its bytes are copied as any payload).
 */
static __always_inline int emit_file_read(struct copy_state *c, struct syscall_call *call,
					  long ret)
{
	struct syscall_data_small_event *ev;
	struct file_id *id;
	struct file *file;
	struct inode *inode;
	__s64 now_real;
	bool fresh;
	__u32 nr = call->nr;

	if (!files_by_identity || ret <= 0)
		return 0;
	if (nr != NR_READ && nr != NR_PREAD64 && nr != NR_READV && nr != NR_PREADV &&
	    nr != NR_PREADV2)
		return 0;
	file = fd_file(bpf_get_current_task_btf(), (__u32)call->args[0]);
	if (!file)
		return 0;
	inode = BPF_CORE_READ(file, f_inode);
	if ((BPF_CORE_READ(inode, i_mode) & S_IFMT) != S_IFREG ||
	    (BPF_CORE_READ(file, f_mode) & FMODE_WRITE) ||
	    BPF_CORE_READ(inode, i_writecount.counter) > 0 || BPF_CORE_READ(inode, i_size) <= 0 ||
	    volatile_fs(BPF_CORE_READ(inode, i_sb, s_magic)))
		return 0;
	ev = EVENT_RESERVE_AT(&syscall_data_small, struct syscall_data_small_event,
			      EVENT_SYSCALL_DATA_SMALL, SYSCALLS_LAYOUT_VERSION, c->now);
	if (!ev) {
		c->sys_flags |= SYSCALL_FLAG_PAYLOAD_LOST;
		return 0; /* the bytes, then, if they fit */
	}
	c->arg_index = 1;
	c->offset = 0;
	c->total_len = ret;
	c->data_flags = DATA_FLAG_FILE;
	FILL_CHUNK_HEAD(ev, c, sizeof(*id));
	id = (void *)ev->data;
	fill_file_id(id, file, (__s32)call->args[0]);
	/* pread64 and preadv read at args[3]; the others (preadv2 with -1) at f_pos, which
	 * the call has advanced past what it read */
	if (nr == NR_PREAD64 || nr == NR_PREADV || (nr == NR_PREADV2 && (__s64)call->args[3] >= 0))
		id->pos = call->args[3];
	else
		id->pos -= ret;
	now_real = (__s64)bpf_ktime_get_ns() + mono_to_real_ns;
	fresh = id->ctime_ns > now_real - (__s64)fresh_file_ns ||
		id->mtime_ns > now_real - (__s64)fresh_file_ns;
	event_submit(&syscall_data_small, ev);
	return fresh ? 2 : 1;
}

/* Chunks of every payload region of a syscall (of a failed one: its FLAT inputs only);
 * SYSCALL_FLAG_* to report. */
__noinline __u32 emit_payloads(struct syscall_state *st, struct syscall_call *call, long ret,
			       __u64 now, __u64 ids)
{
	struct copy_job *jobs;
	struct copy_state *c;
	bool failed;
	int by_file;
	__u32 nr;
	int i;

	if (!st || !call)
		return 0;
	nr = call->nr;
	if (nr >= SYSCALL_NR_MAX)
		return 0;
	jobs = st->scratch.jobs;
	c = &st->scratch.shared;
	__builtin_memset(&st->scratch, 0, sizeof(st->scratch));
	c->now = now;
	c->start_ns = call->start_ns;
	c->seq = call->seq;
	c->pid = ids >> 32;
	c->tid = (__u32)ids;
	c->nr = nr;
	failed = is_error(ret);
	by_file = failed ? 0 : emit_file_read(c, call, ret);
	if (by_file == 1)
		return c->sys_flags; /* the agent stores the file's content */
	for (i = 0; i < PAYLOAD_REGIONS; i++) {
		const volatile struct payload_region *r = &payload_specs[nr].regions[i];
		__u8 kind = r->size_kind;
		__u8 layout = r->layout & PAYLOAD_LAYOUT_MASK;

		if (kind == PAYLOAD_NONE)
			break;
		if (failed) {
			/* a failed call wrote nothing; what it offered is still worth having */
			if (!(r->layout & PAYLOAD_INPUT) || layout != PAYLOAD_FLAT)
				continue;
			jobs[i].addr = arg_at(call, r->arg);
			jobs[i].arg = r->arg;
			if (kind == PAYLOAD_CSTRING)
				jobs[i].cstring = 1;
			else if (jobs[i].addr)
				jobs[i].total = kind == PAYLOAD_RET
					? arg_at(call, r->len_arg)
					: region_size(kind, r->n, arg_at(call, r->len_arg), 0);
			continue;
		}
		if (layout == PAYLOAD_MSGHDR) {
			/* the table gives recvmsg this one region */
			msghdr_jobs(&st->scratch, r->arg, arg_at(call, r->arg), ret);
			break;
		}
		jobs[i].addr = arg_at(call, r->arg);
		jobs[i].arg = r->arg;
		if (kind == PAYLOAD_CSTRING) {
			jobs[i].cstring = 1;
		} else if (layout == PAYLOAD_IOVEC) {
			jobs[i].count = arg_at(call, r->len_arg);
			jobs[i].total = ret;
			jobs[i].iovec = 1;
		} else if (jobs[i].addr) {
			jobs[i].total = region_size(kind, r->n, arg_at(call, r->len_arg), ret);
		}
	}

	for (i = 0; i < PAYLOAD_REGIONS; i++) {
		if (by_file == 2) { /* also the bytes, in case the file is gone by then */
			jobs[i].limit = fresh_file_cap;
			jobs[i].data_flags = DATA_FLAG_ALSO_FILE;
		} else if (!jobs[i].limit || jobs[i].limit > payload_cap) {
			jobs[i].limit = payload_cap;
		}
		if (jobs[i].cstring)
			copy_cstring(c, &jobs[i], 0);
		else
			copy_region(c, &jobs[i]);
	}
	return c->sys_flags;
}

#ifndef SYSCALLS_NO_ATTACH_POINTS
/*
 * exec of a captured thread: the new image's argv and environment as the kernel laid them
 * out (mm->arg_start..arg_end, env_start..env_end: exactly /proc/PID/cmdline and environ)
 * and the file executed, as payload chunks of the execve in flight (its seq). Read here,
 * not from /proc by the agent later, because by then the process may have exec'd again
 * (shell wrappers, version shims) or exited: a replay needs the exact ones.
 */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct syscall_state *st;
	struct copy_job *jobs;
	struct copy_state *c;
	struct mm_struct *mm;
	__u64 ids;
	int i;

	if (!capture_payloads)
		return 0;
	st = bpf_task_storage_get(&syscall_state, bpf_get_current_task_btf(), 0, 0);
	if (!st || !st->sys.active || st->sys.compat)
		return 0;
	mm = BPF_CORE_READ(p, mm);
	if (!mm)
		return 0;
	jobs = st->scratch.jobs;
	c = &st->scratch.shared;
	__builtin_memset(&st->scratch, 0, sizeof(st->scratch));
	ids = bpf_get_current_pid_tgid();
	c->now = bpf_ktime_get_ns();
	c->start_ns = st->sys.start_ns;
	c->seq = st->sys.seq;
	c->pid = ids >> 32;
	c->tid = (__u32)ids;
	c->nr = NR_EXECVE;
	jobs[0].addr = (__u64)BPF_CORE_READ(bprm, filename);
	jobs[0].arg = 0;
	jobs[1].addr = BPF_CORE_READ(mm, arg_start);
	jobs[1].total = BPF_CORE_READ(mm, arg_end) - jobs[1].addr;
	jobs[1].arg = 1;
	jobs[2].addr = BPF_CORE_READ(mm, env_start);
	jobs[2].total = BPF_CORE_READ(mm, env_end) - jobs[2].addr;
	jobs[2].arg = 2;
	copy_cstring(c, &jobs[0], 1);
	for (i = 1; i < 3; i++) {
		jobs[i].limit = payload_cap;
		copy_region(c, &jobs[i]);
	}
	/* what else the new image starts with: its working directory, umask, ids, limits and
	 * hostname, and its descriptors */
	emit_cwd(c);
	emit_context(c);
	emit_descriptors(c);
	return 0;
}
#endif

/* ---- clock reads through the vDSO ------------------------------------------------------
 *
 * clock_gettime is answered in user space by the vDSO: no syscall, so nothing above sees
 * it, yet its values are inputs a replay must serve exactly (a printed timestamp, a
 * deadline). With payloads on, a uprobe on libc's clock_gettime records each call of a
 * target as one more row of its thread's sequence (flag VDSO), with the timespec returned
 * as its payload. The loader attaches it to the libc the agent finds. (glibc binds
 * gettimeofday and time to the vDSO directly through IFUNCs: no libc code runs for them,
 * so they stay unrecorded and a replay interpolates them.)
 */
static __always_inline int clock_enter(__s32 nr, __u64 a0, __u64 a1)
{
	struct syscall_state *st;

	if (!capture_payloads || !is_target(bpf_get_current_pid_tgid() >> 32))
		return 0;
	st = bpf_task_storage_get(&syscall_state, bpf_get_current_task_btf(), 0,
				  BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!st)
		return 0;
	__builtin_memset(&st->clock, 0, sizeof(st->clock));
	st->clock.start_ns = bpf_ktime_get_ns();
	st->clock.args[0] = a0;
	st->clock.args[1] = a1;
	st->clock.nr = nr;
	st->clock.active = 1;
	st->clock_seq = st->seq;
	return 0;
}

/* The payload table gives clock_gettime one FLAT region of n bytes at argument 1 (the
 * timespec), and the cap does not cut it: its chunk is emitted directly (clock_chunk). */
#define CLOCK_REGION payload_specs[NR_CLOCK_GETTIME].regions[0]
#define CLOCK_FAST_PATH                                                                 \
	(CLOCK_REGION.size_kind == PAYLOAD_FIXED && CLOCK_REGION.arg == 1 &&              \
	 (CLOCK_REGION.layout & PAYLOAD_LAYOUT_MASK) == PAYLOAD_FLAT &&                   \
	 CLOCK_REGION.n > 0 && CLOCK_REGION.n <= SYSCALL_DATA_SMALL_CHUNK &&              \
	 CLOCK_REGION.n <= payload_cap &&                                                 \
	 payload_specs[NR_CLOCK_GETTIME].regions[1].size_kind == PAYLOAD_NONE)

/*
 * What emit_payloads emits for a clock_gettime answered by the vDSO, without its general
 * machinery (~0.6 us of a ~0.85 us return here: clearing the scratch, the table walk, a
 * bpf_loop): the one small chunk of its timespec, the same record. SYSCALL_FLAG_* to report.
 */
static __always_inline __u8 clock_chunk(struct syscall_state *st, long ret, __u64 now,
					__u64 ids)
{
	struct copy_state *c = &st->scratch.shared;
	__u32 n = CLOCK_REGION.n;

	if (is_error(ret) || !st->clock.args[1])
		return 0; /* a failed call wrote nothing; no buffer, no region */
	c->now = now;
	c->start_ns = st->clock.start_ns;
	c->seq = st->clock.seq;
	c->total_len = n;
	c->base = st->clock.args[1];
	c->iov = 0;
	c->iov_left = 0;
	c->piece_left = n;
	c->want = n;
	c->offset = 0;
	c->pid = ids >> 32;
	c->tid = (__u32)ids;
	c->nr = NR_CLOCK_GETTIME;
	c->arg_index = 1;
	c->data_flags = 0;
	c->sys_flags = 0;
	emit_chunk(c, n);
	return c->sys_flags;
}

static __always_inline int clock_return(long ret)
{
	struct syscall_state *st;
	__u64 now, ids;

	st = bpf_task_storage_get(&syscall_state, bpf_get_current_task_btf(), 0, 0);
	if (!st || !st->clock.active)
		return 0;
	st->clock.active = 0;
	if (st->seq != st->clock_seq || st->sys.active)
		return 0; /* the vDSO fell back to the real syscall: that row is the record */
	st->seq += 1;
	st->clock.seq = st->seq;
	now = bpf_ktime_get_ns();
	if (st->clock.nr == NR_CLOCK_GETTIME && CLOCK_FAST_PATH) {
		ids = bpf_get_current_pid_tgid();
		syscall_record(&st->clock, ret, now, SYSCALL_FLAG_VDSO | clock_chunk(st, ret, now, ids),
			       ids);
		return 0;
	}
	syscall_emit(st, &st->clock, ret, now, SYSCALL_FLAG_VDSO);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(on_clock_gettime, __u64 clk, __u64 tp)
{
	return clock_enter(NR_CLOCK_GETTIME, clk, tp);
}

SEC("uretprobe")
int BPF_KRETPROBE(on_clock_return, long ret)
{
	return clock_return(ret);
}
