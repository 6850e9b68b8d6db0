/* A thread that reads a kernel setting (as glibc's malloc does when it first trims a
 * thread's heap) and a file of its own, then prints; main joins it and prints. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void *work(void *arg) {
    (void)arg;
    char setting[16] = {0}, stat[64] = {0};
    int fd = open("/proc/sys/vm/overcommit_memory", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, setting, sizeof setting - 1) < 0)
            setting[0] = 0;
        close(fd);
    }
    fd = open("/proc/self/comm", O_RDONLY | O_CLOEXEC);
    ssize_t got = fd >= 0 ? read(fd, stat, sizeof stat - 1) : -1;
    if (fd >= 0)
        close(fd);
    char line[128];
    int len = snprintf(line, sizeof line, "worker read %zd bytes of its comm\n", got);
    if (write(1, line, len) != len)
        return (void *)1;
    return NULL;
}

int main(void) {
    pthread_t worker;
    pthread_create(&worker, NULL, work, NULL);
    pthread_join(worker, NULL);
    return write(1, "joined\n", 7) == 7 ? 0 : 1;
}
