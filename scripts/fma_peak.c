/* FP32 FMA peak of this machine: each thread runs 16 independent vector FMA accumulators
 * (AVX-512: 16 lanes, AVX2: 8 lanes, else scalar) for a fixed number of iterations; the wall time of the
 * slowest thread gives GFLOP/s = threads * iters * 16 accumulators * lanes * 2 / seconds.
 *
 * Build: gcc -O3 -march=native -fopenmp scripts/fma_peak.c -o fma_peak
 * Run:   ./fma_peak THREADS [ITERS]   -> prints one JSON line
 * Used by scripts/bench_x86.py (the "measured FMA peak" line of its plots and the % of peak column). */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#if defined(__AVX512F__)
#define LANES 16
#define ISA "avx512"
typedef __m512 vec;
#define VSET(x) _mm512_set1_ps(x)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VADD(a, b) _mm512_add_ps(a, b)
static float vsum(vec v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__)
#define LANES 8
#define ISA "avx2"
typedef __m256 vec;
#define VSET(x) _mm256_set1_ps(x)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VADD(a, b) _mm256_add_ps(a, b)
static float vsum(vec v) { float t[8]; _mm256_storeu_ps(t, v); float s = 0; for (int i = 0; i < 8; i++) s += t[i]; return s; }
#else
#define LANES 1
#define ISA "scalar"
typedef float vec;
#define VSET(x) (x)
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VADD(a, b) ((a) + (b))
static float vsum(vec v) { return v; }
#endif

static float kernel(long iters, float seed) {
    vec a = VSET(0.999999f), b = VSET(1e-7f * seed);
    vec c0 = VSET(seed), c1 = VSET(seed + 1), c2 = VSET(seed + 2), c3 = VSET(seed + 3);
    vec c4 = VSET(seed + 4), c5 = VSET(seed + 5), c6 = VSET(seed + 6), c7 = VSET(seed + 7);
    vec c8 = VSET(seed + 8), c9 = VSET(seed + 9), c10 = VSET(seed + 10), c11 = VSET(seed + 11);
    vec c12 = VSET(seed + 12), c13 = VSET(seed + 13), c14 = VSET(seed + 14), c15 = VSET(seed + 15);
    for (long i = 0; i < iters; i++) {
        c0 = VFMA(c0, a, b); c1 = VFMA(c1, a, b); c2 = VFMA(c2, a, b); c3 = VFMA(c3, a, b);
        c4 = VFMA(c4, a, b); c5 = VFMA(c5, a, b); c6 = VFMA(c6, a, b); c7 = VFMA(c7, a, b);
        c8 = VFMA(c8, a, b); c9 = VFMA(c9, a, b); c10 = VFMA(c10, a, b); c11 = VFMA(c11, a, b);
        c12 = VFMA(c12, a, b); c13 = VFMA(c13, a, b); c14 = VFMA(c14, a, b); c15 = VFMA(c15, a, b);
        __asm__ volatile("" ::: "memory");
    }
    vec s = VADD(VADD(VADD(c0, c1), VADD(c2, c3)), VADD(VADD(c4, c5), VADD(c6, c7)));
    s = VADD(s, VADD(VADD(VADD(c8, c9), VADD(c10, c11)), VADD(VADD(c12, c13), VADD(c14, c15))));
    return vsum(s);
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    long iters = argc > 2 ? atol(argv[2]) : 200000000L;
    int reps = 5;
    double best = 1e30;
    volatile float sink = 0;
    omp_set_num_threads(threads);
    kernel(iters / 20, 1.0f); /* warm up (clock ramp) */
    for (int r = 0; r < reps; r++) {
        double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads)
        {
            float v = kernel(iters, 1.0f + omp_get_thread_num());
#pragma omp atomic
            sink += v;
        }
        double t = omp_get_wtime() - t0;
        if (t < best) best = t;
    }
    double flops = (double)threads * (double)iters * 16.0 * LANES * 2.0;
    printf("{\"isa\": \"%s\", \"lanes\": %d, \"threads\": %d, \"iters\": %ld, \"seconds\": %.6f, \"gflops\": %.2f, "
           "\"sink\": %g}\n", ISA, LANES, threads, iters, best, flops / best / 1e9, (double)sink);
    return 0;
}
