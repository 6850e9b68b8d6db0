/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Syscalls family records, mirrored once in capture_agent/families/syscalls.py.
 * Three rings, one record size each:
 *   syscall_events      struct syscall_event            one per completed syscall of a target
 *   syscall_data        struct syscall_data_event       output bytes, chunks of up to 4 KiB
 *   syscall_data_small  struct syscall_data_small_event chunks of up to 256 bytes (stat,
 *                       clock_gettime, a few epoll events...: most payloads are small, and a
 *                       4 KiB slot for 16 bytes would fill the ring 256 times faster)
 * and the payload table (struct payload_spec per syscall number), written by the loader.
 */
#ifndef KPROBE_SYSCALLS_H
#define KPROBE_SYSCALLS_H

#include "common.h"

#ifndef TASK_COMM_LEN /* 16 in every kernel (vmlinux.h's enum constant is no macro) */
#define TASK_COMM_LEN 16
#endif

/* Constants mirrored in Python (an enum, so they reach the object's BTF). */
enum syscalls_constants {
	SYSCALLS_LAYOUT_VERSION = 3,     /* bumped on any change to the records below */
	SYSCALL_ARGS = 6,
	SYSCALL_NR_MAX = 512,            /* payload table size: x86_64 numbers are below it */
	PAYLOAD_REGIONS = 4,             /* payload regions per syscall in the table */
	SYSCALL_DATA_CHUNK = 4096,       /* data bytes of a syscall_data_event */
	SYSCALL_DATA_SMALL_CHUNK = 256,  /* data bytes of a syscall_data_small_event */
	/* syscall_event hdr.flags */
	SYSCALL_FLAG_NO_RETURN = 0x1,    /* exit / exit_group: emitted at entry, no ret, no dur */
	SYSCALL_FLAG_TRUNCATED = 0x2,    /* a payload region was longer than payload_cap */
	SYSCALL_FLAG_PAYLOAD_LOST = 0x4, /* a data chunk found its ring full (counted in drops) */
	SYSCALL_FLAG_COMPAT = 0x8,       /* an ia32 syscall (32-bit code): nr is the i386 number,
					  * args are ebx..ebp; no payloads */
	SYSCALL_FLAG_VDSO = 0x10,        /* a clock read through the vDSO, numbered as the
					  * syscall: answered there (libc's clock_gettime, by
					  * uprobe), or a syscall the vDSO made (its fallback, or
					  * an entry point rewritten by --vdso-patch) */
	/* syscall_data_event hdr.flags */
	DATA_FLAG_TRUNCATED = 0x1,       /* the region had more than payload_cap bytes */
	DATA_FLAG_FAULT = 0x2,           /* user memory unreadable: len 0, the rest not copied */
	DATA_FLAG_FILE = 0x4,            /* a read of a regular file, recorded by identity: data is
					  * a struct file_id (pos: the offset of the first byte
					  * read), total_len the bytes read; the agent stores each
					  * file version's content once (capture_agent/file_store.py) */
	DATA_FLAG_ALSO_FILE = 0x8,       /* bytes of a read also recorded by identity (the file
					  * changed moments ago and may be gone before the agent
					  * stores it): the copy a replay uses if it was not */
	DATA_FLAG_DELETED = 0x10,        /* a kernel path of a file no longer linked there */
	/* pseudo argument numbers of recvmsg's struct msghdr parts (arg_index of a chunk) */
	PAYLOAD_ARG_MSG_NAME = 6,
	PAYLOAD_ARG_MSG_CONTROL = 7,
	PAYLOAD_ARG_MSGHDR = 8,
	/* pseudo argument numbers of what the kernel resolved (chunks of the call in flight) */
	PAYLOAD_ARG_CWD = 10,      /* execve, chdir, fchdir: the working directory after it */
	PAYLOAD_ARG_CONTEXT = 11,  /* execve: struct proc_context of the new image */
	PAYLOAD_ARG_FDS = 12,      /* execve: the descriptors it starts with, struct file_id[] */
	PAYLOAD_ARG_OPENED = 13,   /* open family: struct file_id of the new descriptor, then
				    * its path (of a regular file only) */
	PAYLOAD_ARG_FD_PATH = 16,  /* execve: the path of descriptor N is argument 16 + N */
	FD_TABLE_MAX = 64,         /* descriptors 0..63 are described at exec */
	PATH_DEPTH_MAX = 64,       /* components of a kernel path; deeper: truncated */
	RLIMITS = 16,              /* RLIM_NLIMITS */
	/* at sched_process_exec, the new image's command line and environment (NUL-separated,
	 * as in /proc/PID/cmdline and environ) and the file executed, as chunks of the execve
	 * in flight: arg_index 1 = argv, 2 = envp, 0 = the filename */
	NR_EXECVE = 59,
};

/* How many bytes a region holds (evaluated at syscall exit, success only): what the call
 * wrote there (outputs) or read from there (inputs: write buffers, paths, addresses). */
enum payload_size_kind {
	PAYLOAD_NONE = 0,      /* unused table slot */
	PAYLOAD_RET = 1,       /* the return value (read, recv, getrandom, getdents64, ...) */
	PAYLOAD_FIXED = 2,     /* n bytes (struct stat 144, statx 256, timespec 16, ...) */
	PAYLOAD_RET_TIMES = 3, /* ret * n (epoll_wait: n = sizeof(struct epoll_event) = 12) */
	PAYLOAD_ARG_TIMES = 4, /* args[len_arg] * n (poll: nfds * sizeof(struct pollfd)) */
	PAYLOAD_DEREF = 5,     /* the u32 at args[len_arg] after the call (accept's *addrlen) */
	PAYLOAD_FDSET = 6,     /* an fd_set of args[len_arg] descriptors: (n + 63) / 64 * 8 */
	PAYLOAD_IOCTL = 7,     /* the size in an _IOR/_IOWR request (args[1]), or a tty one */
	PAYLOAD_FLOCK = 8,     /* struct flock (32) for fcntl F_GETLK / F_OFD_GETLK */
	PAYLOAD_CSTRING = 9,   /* a NUL-terminated string the call read (a path), without the
				* NUL; longer than SYSCALL_DATA_CHUNK - 1: truncated */
};

/* Where the bytes are. */
enum payload_layout {
	PAYLOAD_FLAT = 0,   /* at args[arg] */
	PAYLOAD_IOVEC = 1,  /* in the iovec array at args[arg], args[len_arg] entries; chunk
			     * offsets count in the concatenated payload */
	PAYLOAD_MSGHDR = 2, /* struct user_msghdr at args[arg]: its iovec payload (arg), and
			     * pseudo args 6 msg_name, 7 msg_control, 8 the msghdr itself */
	PAYLOAD_LAYOUT_MASK = 0x7f,
	PAYLOAD_INPUT = 0x80, /* flag: bytes the call reads (FLAT only); also captured when the
			       * call fails (what a write hitting EPIPE tried to send), with
			       * RET sizes taken from args[len_arg], the length offered */
};

/* One payload region of a syscall (8 bytes). */
struct payload_region {
	__u32 n;         /* PAYLOAD_FIXED: bytes; *_TIMES: multiplier */
	__u8 arg;        /* argument holding the user pointer */
	__u8 size_kind;  /* enum payload_size_kind; PAYLOAD_NONE ends the list */
	__u8 layout;     /* enum payload_layout, | PAYLOAD_INPUT */
	__u8 len_arg;    /* argument the size (or iovec count) depends on */
};

/* The payload table entry of one syscall number (32 bytes). */
struct payload_spec {
	struct payload_region regions[PAYLOAD_REGIONS];
};

/*
 * A completed syscall of a targeted thread (120 bytes): entry and exit merged in the
 * kernel. hdr.ktime_ns and hdr.cpu are those of the exit (of the entry for NO_RETURN).
 */
struct syscall_event {
	struct event_header hdr;
	__u64 start_ns;              /* entry (CLOCK_MONOTONIC) */
	__u64 seq;                   /* per-thread counter, from 1 at the thread's first one */
	__s64 ret;
	__u64 args[SYSCALL_ARGS];    /* the six argument registers at entry */
	__u32 pid;                   /* tgid */
	__u32 tid;
	__s32 nr;                    /* as the kernel saw it (-1: skipped by a tracer) */
	__u32 __pad;
	char comm[TASK_COMM_LEN];
};

/*
 * A chunk of the bytes a syscall exchanged with user memory through one argument: what
 * it wrote (read buffers, struct stat, ...) or what it read (write buffers, paths,
 * addresses) (64-byte head, then data). A region longer than a chunk comes as several chunks, in order.
 */
#define SYSCALL_DATA_HEAD                                                                  \
	struct event_header hdr; /* ktime_ns: the syscall's exit */                        \
	__u64 start_ns;          /* the syscall's entry: its syscall_event's start_ns */   \
	__u64 seq;               /* the syscall's seq */                                   \
	__u64 total_len;         /* bytes the region received, before payload_cap */       \
	__u32 pid;                                                                         \
	__u32 tid;                                                                         \
	__u32 offset;            /* of data[0] in the region */                            \
	__u32 len;               /* valid bytes in data */                                 \
	__s32 nr;                                                                          \
	__u8 arg_index;          /* 0-5, or PAYLOAD_ARG_MSG_* */                           \
	__u8 __pad[3];

struct syscall_data_event {
	SYSCALL_DATA_HEAD
	__u8 data[SYSCALL_DATA_CHUNK];
};

struct syscall_data_small_event {
	SYSCALL_DATA_HEAD
	__u8 data[SYSCALL_DATA_SMALL_CHUNK];
};

/*
 * An open file as the kernel knows it (64 bytes): a read's source when recorded by
 * identity (DATA_FLAG_FILE), an exec's descriptor (PAYLOAD_ARG_FDS), an open's result
 * (PAYLOAD_ARG_OPENED). Paths, when wanted, are separate: the kernel resolves them from
 * the dentry (kernel paths: absolute from the task's root, symlinks resolved).
 */
struct file_id {
	__u64 dev;       /* s_dev of its file system (kernel encoding: major << 20 | minor) */
	__u64 ino;
	__s64 size;      /* i_size */
	__s64 mtime_ns;
	__s64 ctime_ns;
	__s64 pos;       /* a read: offset of the first byte read; a descriptor: f_pos */
	__s32 fd;
	__u32 mode;      /* i_mode: type and permissions */
	__u32 flags;     /* f_flags: O_ACCMODE, O_APPEND, O_NONBLOCK, ... */
	__u32 magic;     /* s_magic of its file system (pipefs, sockfs, ext4, ...) */
};

/* What a process starts with besides argv, environment and descriptors (368 bytes). */
struct proc_context {
	__u32 umask;
	__u32 ids_mapped; /* 1: ids as the task's user namespace sees them; 0: kernel ids
			   * (a namespace with more than 5 id ranges) */
	__u32 uid;
	__u32 euid;
	__u32 suid;
	__u32 fsuid;
	__u32 gid;
	__u32 egid;
	__u32 sgid;
	__u32 fsgid;
	__u64 rlimits[RLIMITS * 2]; /* rlim_cur, rlim_max of each RLIMIT_* */
	char nodename[65];          /* the hostname its uts namespace gives */
	__u8 __pad[7];
};

#endif /* KPROBE_SYSCALLS_H */
