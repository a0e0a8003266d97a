/* Main-memory bandwidth of this machine, STREAM-style (McCalpin, "Memory Bandwidth and Machine Balance in Current
 * High Performance Computers", IEEE TCCA Newsletter 1995; https://www.cs.virginia.edu/stream/): each of THREADS
 * OpenMP threads streams its share of three float64 arrays of N elements (N * 8 bytes each, far beyond the last-level
 * cache), best of REPS runs per kernel:
 *   copy:  c[i] = a[i]             16 bytes moved per element
 *   triad: a[i] = b[i] + s * c[i]  24 bytes moved per element
 * GB/s = bytes / seconds / 1e9 (write-allocate traffic not counted, as STREAM does).
 *
 * Build: gcc -O3 -march=native -fopenmp scripts/stream_bw.c -o stream_bw
 * Run:   ./stream_bw THREADS [N]   -> prints one JSON line {"threads", "n", "copy_gbs", "triad_gbs"}
 * Used by scripts/machine.py (every benchmark report's "measured bandwidth"). */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    long n = argc > 2 ? atol(argv[2]) : 40L * 1000 * 1000; /* 3 x 320 MB */
    int reps = 7;
    omp_set_num_threads(threads);
    double *a = malloc(n * sizeof(double)), *b = malloc(n * sizeof(double)), *c = malloc(n * sizeof(double));
    if (!a || !b || !c) { fprintf(stderr, "stream_bw: cannot allocate 3 x %ld doubles\n", n); return 1; }
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) { a[i] = 1.0; b[i] = 2.0; c[i] = 0.0; } /* first touch by the thread that streams it */
    double best_copy = 1e30, best_triad = 1e30, s = 3.0;
    for (int r = 0; r < reps; r++) {
        double t0 = omp_get_wtime();
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; i++) c[i] = a[i];
        double t1 = omp_get_wtime();
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; i++) a[i] = b[i] + s * c[i];
        double t2 = omp_get_wtime();
        if (t1 - t0 < best_copy) best_copy = t1 - t0;
        if (t2 - t1 < best_triad) best_triad = t2 - t1;
    }
    double check = a[n / 2] + c[n / 3]; /* keeps the loops live */
    printf("{\"threads\": %d, \"n\": %ld, \"copy_gbs\": %.2f, \"triad_gbs\": %.2f, \"check\": %.1f}\n", threads, n,
           16.0 * n / best_copy / 1e9, 24.0 * n / best_triad / 1e9, check);
    free(a); free(b); free(c);
    return 0;
}
