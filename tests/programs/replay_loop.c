/* A tight loop of one syscall, for measuring the replay's cost per served syscall.
 * usage: replay_loop N getppid|read|clock   (clock = clock_gettime through the vDSO)  */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000;
    const char *what = argc > 2 ? argv[2] : "getppid";
    long sum = 0;
    char buf[64];
    int fd = open("/dev/zero", O_RDONLY);
    for (long i = 0; i < n; i++) {
        if (!strcmp(what, "read")) {
            sum += read(fd, buf, sizeof buf);
        } else if (!strcmp(what, "clock")) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            sum += ts.tv_nsec & 1;
        } else {
            sum += syscall(SYS_getppid);
        }
    }
    printf("%s x %ld: %ld\n", what, n, sum);
    return 0;
}
