/* Reads the TSC twice around some work: under replay, rdtsc traps and is answered from
 * virtual time. Prints whether it advanced, then the delta. */
#include <stdio.h>
#include <x86intrin.h>

int main(void) {
    unsigned long long before = __rdtsc();
    volatile long sink = 0;
    for (int i = 0; i < 1000; i++)
        sink += i;
    unsigned long long after = __rdtsc();
    printf("rdtsc %s\n", after > before ? "advances" : "stuck");
    printf("%llu\n", after - before);
    return 0;
}
