/*
 * A thread blocked on a kernel lock for a known time: a file's inode rw-semaphore.
 *
 * Thread A pwrite()s a file from a page registered with userfaultfd (missing mode): the
 * buffered write takes the inode lock (inode_lock: down_write on i_rwsem) and faults on
 * the page while copying from it (generic_perform_write -> fault_in_iov_iter_readable),
 * so A sleeps in handle_userfault holding the lock. Thread B then pwrite()s the same file
 * (own descriptor: no f_pos lock) and sleeps in down_write. Once B is seen in state D, the
 * main thread (the fault handler) waits HOLD_MS (argv[1], default 100), resolves the fault
 * (UFFDIO_COPY) and both writes finish. The file is on tmpfs (argv[2], default /dev/shm).
 * Needs root (userfaultfd handling kernel-mode faults).
 *
 * Protocol on stdout/stdin, so the test can target the process first:
 *   prints "ready <pid>", waits for a line on stdin, runs the above, prints
 *   "done <a_tid> <b_tid> <b_blocked_ns> <b_wchan>", exits 0 (1..9: a step failed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "now_ns.h"

static long page;
static char *fault_page;
static int fd_a, fd_b;
static volatile pid_t a_tid, b_tid;
static long long b_blocked_ns;

static void *writer_a(void *arg)
{
	a_tid = gettid();
	if (pwrite(fd_a, fault_page, page, 0) != page)
		exit(5);
	return arg;
}

static void *writer_b(void *arg)
{
	static char buf[64];
	long long t0;

	memset(buf, 'b', sizeof(buf));
	b_tid = gettid();
	t0 = now_ns();
	if (pwrite(fd_b, buf, sizeof(buf), 0) != (ssize_t)sizeof(buf))
		exit(6);
	b_blocked_ns = now_ns() - t0;
	return arg;
}

/* /proc/self/task/<tid>/stat's state letter, or 0 */
static char task_state(pid_t tid)
{
	char path[64], text[512], *paren;
	int fd;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	n = read(fd, text, sizeof(text) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	text[n] = 0;
	paren = strrchr(text, ')');
	return paren && paren[1] == ' ' ? paren[2] : 0;
}

static void task_wchan(pid_t tid, char *out, size_t size)
{
	char path[64];
	int fd;
	ssize_t n = -1;

	snprintf(path, sizeof(path), "/proc/self/task/%d/wchan", tid);
	fd = open(path, O_RDONLY);
	if (fd >= 0) {
		n = read(fd, out, size - 1);
		close(fd);
	}
	out[n > 0 ? n : 0] = 0;
	if (!out[0] || !strcmp(out, "0"))
		snprintf(out, size, "-");
}

int main(int argc, char **argv)
{
	long hold_ms = argc > 1 ? atol(argv[1]) : 100;
	const char *dir = argc > 2 ? argv[2] : "/dev/shm";
	struct uffdio_api api = {.api = UFFD_API};
	struct uffdio_register reg = {0};
	struct uffdio_copy copy = {0};
	struct uffd_msg msg;
	struct pollfd pfd;
	struct timespec hold = {hold_ms / 1000, (hold_ms % 1000) * 1000000L};
	char path[4096], line[64], wchan[128];
	char *src;
	pthread_t a, b;
	int uffd, i;

	page = sysconf(_SC_PAGESIZE);
	snprintf(path, sizeof(path), "%s/inode_lock_wait.XXXXXX", dir);
	fd_a = mkstemp(path);
	if (fd_a < 0)
		return 1;
	fd_b = open(path, O_WRONLY);
	unlink(path);
	if (fd_b < 0)
		return 1;
	uffd = syscall(SYS_userfaultfd, O_CLOEXEC);
	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api))
		return 2;
	fault_page = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	src = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (fault_page == MAP_FAILED || src == MAP_FAILED)
		return 2;
	memset(src, 'a', page);
	reg.range.start = (unsigned long)fault_page;
	reg.range.len = page;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	if (ioctl(uffd, UFFDIO_REGISTER, &reg))
		return 2;

	printf("ready %d\n", getpid());
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;

	/* A faults on the page inside its write, holding the inode lock */
	pthread_create(&a, NULL, writer_a, NULL);
	pfd.fd = uffd;
	pfd.events = POLLIN;
	if (poll(&pfd, 1, 5000) != 1 || read(uffd, &msg, sizeof(msg)) != sizeof(msg) ||
	    msg.event != UFFD_EVENT_PAGEFAULT)
		return 3;
	/* B blocks on that lock: wait until it sleeps uninterruptibly (down_write) */
	pthread_create(&b, NULL, writer_b, NULL);
	for (i = 0; !b_tid || task_state(b_tid) != 'D'; i++) {
		if (i == 5000)
			return 4;
		usleep(1000);
	}
	task_wchan(b_tid, wchan, sizeof(wchan));
	nanosleep(&hold, NULL);

	copy.dst = msg.arg.pagefault.address & ~(unsigned long long)(page - 1);
	copy.src = (unsigned long)src;
	copy.len = page;
	if (ioctl(uffd, UFFDIO_COPY, &copy) || copy.copy != page)
		return 7;
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	printf("done %d %d %lld %s\n", a_tid, b_tid, b_blocked_ns, wchan);
	fflush(stdout);
	return 0;
}
