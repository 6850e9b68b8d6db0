/* CLOCK_MONOTONIC in nanoseconds: the clock the kernel's BPF timestamps use. */
#ifndef NOW_NS_H
#define NOW_NS_H
#include <time.h>

static inline long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
#endif
