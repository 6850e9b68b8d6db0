/* Two threads each print one line as soon as both are ready: nothing orders the two
 * lines but timing (a barrier, then no lock). The timing fuzz swaps them. */
#include <pthread.h>
#include <string.h>
#include <unistd.h>

static pthread_barrier_t ready;

static void *say(void *text) {
    pthread_barrier_wait(&ready);
    if (write(1, text, strlen(text)) < 0)
        return text;
    return NULL;
}

int main(void) {
    pthread_t a, b;
    pthread_barrier_init(&ready, NULL, 2);
    pthread_create(&a, NULL, say, "debit\n");
    pthread_create(&b, NULL, say, "credit\n");
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    return 0;
}
