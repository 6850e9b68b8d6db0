/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Process family records, mirrored once in capture_agent/families/process.py.
 * One ring, `proc_events`, one record size: exec, fork and exit, system-wide.
 */
#ifndef KPROBE_PROC_H
#define KPROBE_PROC_H

#include "common.h"

#define PROC_FILENAME_LEN 128
#define PROC_ARGS_LEN 256 /* a power of two: the BPF side masks lengths with it */

/* Constants mirrored in Python (an enum reaches the BTF and the layout test). */
enum proc_constants {
	PROC_LAYOUT_VERSION = 1,       /* bumped on any change to the record below */
	PROC_FLAG_THREAD = 0x1,        /* fork: a new thread, not a new process */
	PROC_FLAG_TARGETED = 0x2,      /* exec/fork: made a target here (comm or cgroup) */
	PROC_FLAG_ARGS_TRUNCATED = 0x4, /* exec: argv longer than PROC_ARGS_LEN */
	PROC_FILENAME_SIZE = PROC_FILENAME_LEN,
	PROC_ARGS_SIZE = PROC_ARGS_LEN,
};

#ifndef TASK_COMM_LEN /* 16 in every kernel (vmlinux.h's enum constant is no macro) */
#define TASK_COMM_LEN 16
#endif

/*
 * One exec, fork or exit (448 bytes). hdr.kind: EVENT_PROC_EXEC / _FORK / _EXIT.
 *   exec: the process after exec; filename and args as the kernel saw them, kept for
 *         processes gone before user space reads /proc;
 *   fork: pid/tid = the child (tid != pid for a thread, PROC_FLAG_THREAD);
 *   exit: the last thread of a process leaving; exit_code = the wait status
 *         ((status & 0xff) << 8, or the signal number | 0x80 with a core dump).
 */
struct process_event {
	struct event_header hdr;
	__u64 cgroup_id;   /* unified-hierarchy (v2) cgroup id, as bpf_get_current_cgroup_id */
	__u32 pid;         /* tgid */
	__u32 tid;
	__u32 ppid;        /* tgid of the real parent */
	__s32 exit_code;   /* exit only */
	__u32 args_len;    /* exec: bytes of args captured */
	__u32 __pad;
	char comm[TASK_COMM_LEN];
	char filename[PROC_FILENAME_LEN]; /* exec: bprm->filename, NUL-terminated */
	__u8 args[PROC_ARGS_LEN];         /* exec: argv, each NUL-terminated (bytes) */
};

#endif /* KPROBE_PROC_H */
