/* Two threads that each read the clock and a file and print lines, sharing a mutex. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long total;

static void *work(void *arg) {
    long id = (long)arg;
    char buf[32];
    for (int i = 0; i < 5; i++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int fd = open("/proc/self/stat", O_RDONLY);
        ssize_t got = read(fd, buf, sizeof buf);
        close(fd);
        pthread_mutex_lock(&lock);
        total += got;
        char line[96];
        int len = snprintf(line, sizeof line, "thread %ld step %d at %ld.%09ld\n", id, i,
                           (long)ts.tv_sec, ts.tv_nsec);
        write(1, line, len);
        pthread_mutex_unlock(&lock);
        usleep(1000);
    }
    return NULL;
}

int main(void) {
    pthread_t a, b;
    pthread_create(&a, NULL, work, (void *)1);
    pthread_create(&b, NULL, work, (void *)2);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    printf("total %ld\n", total);
    return 0;
}
