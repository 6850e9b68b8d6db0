/*
 * Touches N fresh anonymous pages, one write each: N user page faults in one thread.
 * Transparent huge pages are refused for the mapping (MADV_NOHUGEPAGE), so every 4 KiB
 * page faults on its own.
 *
 * Protocol: prints "ready <pid> <tid>", waits for a line on stdin, touches the pages,
 * prints "done <minor_faults>" (getrusage, this thread, during the touching), exits 0.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long pages = argc > 1 ? atol(argv[1]) : 1000;
	long page = sysconf(_SC_PAGESIZE);
	struct rusage before, after;
	char line[64];
	char *area;

	if (pages <= 0)
		return 2;
	area = mmap(NULL, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		    0);
	if (area == MAP_FAILED || madvise(area, pages * page, MADV_NOHUGEPAGE))
		return 1;
	printf("ready %d %d\n", getpid(), gettid());
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;
	getrusage(RUSAGE_THREAD, &before);
	for (long i = 0; i < pages; i++)
		area[i * page] = (char)i;
	getrusage(RUSAGE_THREAD, &after);
	printf("done %ld\n", after.ru_minflt - before.ru_minflt);
	fflush(stdout);
	return 0;
}
