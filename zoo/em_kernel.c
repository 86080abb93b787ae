/* The GMM's fused E-step on quadratic features, one share of rows, for float32 on a CPU
 * (zoo/em_native.py compiles it on first use and calls it through ctypes; zoo/gmm_em.py falls
 * back to its torch form without a compiler). Vectorized across a tile of V rows; K log joints
 * or responsibilities at a time in registers; the features phi(c) = [c_a c_b (pairs), c, 1] of
 * the centred rows c = x - m are made on the fly and never stored.
 *
 * Per 256-row block: the rows centred and transposed (D x 256, in L1/L2; V x V tiles of rows
 * by a perfect shuffle in registers), the log joints W phi (K x 256), their normalization (exp
 * by Cephes' polynomial), and the sums Σ_rows r_k phi_j, two features at a time so that each
 * r_k is read once for both. Where they fit in LANE_BYTES, the sums are held per lane in
 * float for up to FLUSH blocks (as many rows per lane as one block's float sum holds), then
 * added in double: no horizontal sum per block. Beyond, each block's float sums are added in
 * double.
 *
 * Three builds of one body: AVX-512 (16 lanes), AVX2 with FMA (8 lanes), and the compiler's
 * baseline (4 lanes); em_variant() says which one the CPU runs. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define TILES 16
#define KG 8 /* components held in registers at once; W and the sums are padded to it */
/* v held in a register: GCC would otherwise read it from memory again for each product */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define IN_REGISTER(v) __asm__("" : "+v"(v))
#else
#define IN_REGISTER(v) ((void)0)
#endif
#define FLUSH 16 /* blocks whose sums each lane holds in float before they are added in double */
/* ... where the lanes' sums take at most this much (K = 8, D = 16, 16 lanes: 78 KiB); beyond,
   each block's sums are added in double as they are made (K = 1024 at D = 128 would hold
   17 MiB a thread, more than the caches, read and written every block) */
#define LANE_BYTES (512 * 1024)
/* A shuffle of two vectors by constant lanes, in clang's spelling and in GCC's
   (GCC 12 has both) */
#if defined(__clang__) || defined(SHUFFLE_VECTOR)
#define SHUFFLE(VI, a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(VI, a, b, ...) __builtin_shuffle(a, b, (VI){__VA_ARGS__})
#endif
/* The two halves of a perfect shuffle of two V-lane vectors, [a0 b0 a1 b1 ...]: applied
   log2(V) times to V rows, they transpose them. */
#define LO16 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23
#define HI16 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31
#define LO8 0, 8, 1, 9, 2, 10, 3, 11
#define HI8 4, 12, 5, 13, 6, 14, 7, 15
#define LO4 0, 4, 1, 5
#define HI4 2, 6, 3, 7

/* The sums Σ r_k phi_j of a block, two features at a time so that each r_k is read once for
   both: into the lanes' sums (LANES), or as the block's float sums added in double. Two
   copies in each build, so that neither loop carries the other's branch (one loop with the
   branch ran 8% slower). */
#define STATISTICS(NAME, V, LANES)                                                            \
    for (int g = 0; g < Kp; g += KG) {                                                        \
        for (int j = 0; j < F; j += 2) { /* two features at a time: each r_k read once */     \
            const vf *a1, *b1, *a2, *b2;                                                      \
            NAME##_factors(c, ones, j, Fq, F, pa, pb, &a1, &b1);                              \
            NAME##_factors(c, ones, j + 1 < F ? j + 1 : j, Fq, F, pa, pb, &a2, &b2);          \
            vf acc[KG], acc2[KG];                                                             \
            for (int kk = 0; kk < KG; kk++) acc[kk] = acc2[kk] = (vf){0};                     \
            for (int tile = 0; tile < TILES; tile++) {                                        \
                const vf phi = a1[tile] * b1[tile], phi2 = a2[tile] * b2[tile];               \
                for (int kk = 0; kk < KG; kk++) {                                             \
                    vf r = lg[(size_t)(g + kk) * TILES + tile];                               \
                    IN_REGISTER(r); /* one load for both products */                          \
                    acc[kk] += r * phi;                                                       \
                    acc2[kk] += r * phi2;                                                     \
                }                                                                             \
            }                                                                                 \
            for (int kk = 0; kk < KG; kk++) {                                                 \
                if (LANES) {                                                                  \
                    lanesums[(size_t)(g + kk) * F + j] += acc[kk];                            \
                    if (j + 1 < F) lanesums[(size_t)(g + kk) * F + j + 1] += acc2[kk];        \
                } else { /* the block's float sums, added in double */                        \
                    float h = 0.0f, h2 = 0.0f;                                                \
                    for (int lane = 0; lane < (V); lane++) {                                  \
                        h += acc[kk][lane];                                                   \
                        h2 += acc2[kk][lane];                                                 \
                    }                                                                         \
                    sums[(size_t)(g + kk) * F + j] += h;                                      \
                    if (j + 1 < F) sums[(size_t)(g + kk) * F + j + 1] += h2;                  \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

#define BODY(NAME, V, ATTR, LO, HI)                                                           \
typedef float NAME##_vf __attribute__((vector_size((V) * sizeof(float))));                   \
typedef int NAME##_vi __attribute__((vector_size((V) * sizeof(int))));                       \
ATTR static inline NAME##_vf NAME##_exp(NAME##_vf x)                                         \
{                                                                                            \
    const NAME##_vf magic = (NAME##_vf){0} + 12582912.0f; /* 1.5 * 2^23: round to integer */ \
    NAME##_vf n = (x * 1.44269504088896341f + magic) - magic;                                \
    NAME##_vf r = x - n * 0.693359375f + n * 2.12194440e-4f;                                 \
    NAME##_vf p = (NAME##_vf){0} + 1.9875691500e-4f;                                         \
    p = p * r + 1.3981999507e-3f;                                                            \
    p = p * r + 8.3334519073e-3f;                                                            \
    p = p * r + 4.1665795894e-2f;                                                            \
    p = p * r + 1.6666665459e-1f;                                                            \
    p = p * r + 5.0000001201e-1f;                                                            \
    p = p * (r * r) + r + 1.0f;                                                              \
    NAME##_vi e = (__builtin_convertvector(n, NAME##_vi) + 127) << 23;                       \
    NAME##_vf scale;                                                                         \
    memcpy(&scale, &e, sizeof scale);                                                        \
    return p * scale;                                                                        \
}                                                                                            \
ATTR static inline NAME##_vf NAME##_max(NAME##_vf a, NAME##_vf b)                            \
{                                                                                            \
    NAME##_vi take = a > b;                                                                  \
    return (NAME##_vf)(((NAME##_vi)a & take) | ((NAME##_vi)b & ~take));                      \
}                                                                                            \
/* The two factors of feature j of the centred rows, as TILES vectors each: c_a and c_b,   \
   c_d and 1, or 1 and 1. */                                                                 \
ATTR static inline void NAME##_factors(const NAME##_vf *c, const NAME##_vf *ones, int j,    \
                                       int Fq, int F, const int *pa, const int *pb,         \
                                       const NAME##_vf **a, const NAME##_vf **b)            \
{                                                                                            \
    *a = j < Fq ? c + (size_t)pa[j] * TILES : j < F - 1 ? c + (size_t)(j - Fq) * TILES : ones; \
    *b = j < Fq ? c + (size_t)pb[j] * TILES : ones;                                          \
}                                                                                            \
ATTR static int NAME(const float *x, long n, int D, const float *m, const float *Wt, int K, \
                     int Kp, int F, const int *pa, const int *pb, int Fq, float floor_,      \
                     int statistics, double *sums, double *total, double *rowlog)            \
{                                                                                            \
    typedef NAME##_vf vf;                                                                    \
    const int T = (V) * TILES;                                                               \
    vf *c = aligned_alloc(64, sizeof(vf) * (size_t)D * TILES);                               \
    vf *lg = aligned_alloc(64, sizeof(vf) * (size_t)Kp * TILES);                             \
    const int lanes = statistics && sizeof(vf) * (size_t)Kp * F <= LANE_BYTES;               \
    vf *lanesums = lanes ? aligned_alloc(64, sizeof(vf) * (size_t)Kp * F) : 0;              \
    if (!c || !lg || (lanes && !lanesums)) {                                                 \
        free(c); free(lg); free(lanesums);                                                   \
        return 1;                                                                            \
    }                                                                                        \
    if (lanes) memset(lanesums, 0, sizeof(vf) * (size_t)Kp * F);                             \
    vf peak[TILES], s[TILES], ones[TILES];                                                   \
    for (int tile = 0; tile < TILES; tile++) ones[tile] = (vf){0} + 1.0f;                    \
    double tot = 0.0;                                                                        \
    int unflushed = 0;                                                                       \
    for (long n0 = 0; n0 < n; n0 += T) {                                                     \
        const int w = (n - n0) < T ? (int)(n - n0) : T;                                      \
        float *cf = (float *)c;                                                              \
        for (int t0 = 0; t0 < T; t0 += (V)) { /* V x V tiles transposed in registers */      \
            int d0 = 0;                                                                      \
            if (t0 + (V) <= w)                                                               \
                for (; d0 + (V) <= D; d0 += (V)) {                                           \
                    vf r[V];                                                                 \
                    for (int i = 0; i < (V); i++)                                            \
                        memcpy(&r[i], x + (n0 + t0 + i) * D + d0, sizeof(vf));               \
                    for (int h = (V) / 2; h >= 1; h /= 2) {                                  \
                        vf u[V];                                                             \
                        for (int i = 0; i < (V) / 2; i++) {                                  \
                            u[2 * i] = SHUFFLE(NAME##_vi, r[i], r[i + (V) / 2], LO);         \
                            u[2 * i + 1] = SHUFFLE(NAME##_vi, r[i], r[i + (V) / 2], HI);     \
                        }                                                                    \
                        memcpy(r, u, sizeof r);                                              \
                    }                                                                        \
                    for (int i = 0; i < (V); i++)                                            \
                        c[(size_t)(d0 + i) * TILES + t0 / (V)] = r[i] - m[d0 + i];           \
                }                                                                            \
            for (int t = t0; t < t0 + (V); t++) {                                            \
                const float *row = x + (n0 + (t < w ? t : 0)) * D;                           \
                for (int d = d0; d < D; d++)                                                 \
                    cf[(size_t)d * T + t] = t < w ? row[d] - m[d] : 0.0f;                    \
            }                                                                                \
        }                                                                                    \
        for (int g = 0; g < Kp; g += KG) {                                                   \
            for (int tile = 0; tile < TILES; tile++) {                                       \
                vf acc[KG];                                                                  \
                for (int kk = 0; kk < KG; kk++)                                              \
                    acc[kk] = (vf){0} + Wt[(size_t)(F - 1) * Kp + g + kk];                   \
                for (int j = 0; j < Fq; j++) {                                               \
                    const vf phi = c[(size_t)pa[j] * TILES + tile]                           \
                                   * c[(size_t)pb[j] * TILES + tile];                        \
                    const float *wj = Wt + (size_t)j * Kp + g;                               \
                    for (int kk = 0; kk < KG; kk++) acc[kk] += wj[kk] * phi;                 \
                }                                                                            \
                for (int d = 0; d < D; d++) {                                                \
                    const vf cd = c[(size_t)d * TILES + tile];                               \
                    const float *wj = Wt + (size_t)(Fq + d) * Kp + g;                        \
                    for (int kk = 0; kk < KG; kk++) acc[kk] += wj[kk] * cd;                  \
                }                                                                            \
                for (int kk = 0; kk < KG; kk++) lg[(size_t)(g + kk) * TILES + tile] = acc[kk]; \
            }                                                                                \
        }                                                                                    \
        for (int tile = 0; tile < TILES; tile++) {                                           \
            vf p = lg[tile];                                                                 \
            for (int k = 1; k < K; k++) p = NAME##_max(lg[(size_t)k * TILES + tile], p);     \
            vf sum = (vf){0};                                                                \
            const vf low = (vf){0} + floor_;                                                 \
            for (int k = 0; k < K; k++) {                                                    \
                vf v = NAME##_exp(NAME##_max(lg[(size_t)k * TILES + tile] - p, low));        \
                lg[(size_t)k * TILES + tile] = v;                                            \
                sum += v;                                                                    \
            }                                                                                \
            for (int k = K; k < Kp; k++) lg[(size_t)k * TILES + tile] = (vf){0};             \
            peak[tile] = p;                                                                  \
            s[tile] = sum;                                                                   \
        }                                                                                    \
        for (int tile = 0; tile * (V) < w; tile++) { /* Σ log s as the log of products */    \
            double product = 1.0;                                                            \
            for (int lane = 0; lane < (V) && tile * (V) + lane < w; lane++) {                \
                product *= (double)s[tile][lane];                                            \
                tot += (double)peak[tile][lane];                                             \
                if (rowlog) /* each row's log p(x) too, where asked */                       \
                    rowlog[n0 + tile * (V) + lane] = (double)peak[tile][lane]                \
                                                     + log((double)s[tile][lane]);           \
            }                                                                                \
            tot += log(product);                                                             \
        }                                                                                    \
        if (!statistics) continue;                                                           \
        for (int tile = 0; tile < TILES; tile++) {                                           \
            vf inv = 1.0f / s[tile];                                                         \
            for (int lane = 0; lane < (V); lane++)                                           \
                if (tile * (V) + lane >= w) inv[lane] = 0.0f;                                \
            for (int k = 0; k < K; k++) lg[(size_t)k * TILES + tile] *= inv;                 \
        }                                                                                    \
        if (lanes)                                                                           \
            STATISTICS(NAME, V, 1)                                                           \
        else                                                                                 \
            STATISTICS(NAME, V, 0)                                                           \
        if (lanes && (++unflushed == FLUSH || n0 + T >= n)) {                                \
            for (size_t i = 0; i < (size_t)Kp * F; i++) {                                    \
                double h = 0.0;                                                              \
                for (int lane = 0; lane < (V); lane++) h += (double)lanesums[i][lane];       \
                sums[i] += h;                                                                \
                lanesums[i] = (vf){0};                                                       \
            }                                                                                \
            unflushed = 0;                                                                   \
        }                                                                                    \
    }                                                                                        \
    *total += tot;                                                                           \
    free(c); free(lg); free(lanesums);                                                       \
    return 0;                                                                                \
}

/* One Lloyd pass over rows [0, n): each row's nearest centre (the first of equals, as argmin)
 * by |c_k|^2 - 2 x.c_k, K centres at a time in registers over a tile of V rows; the labels
 * written, the clusters' sums (double) and counts added, and the labels that differ from
 * previous (where given) counted. With update, sums and counts hold those of the labels in
 * previous over the same rows, and only the rows whose label changed move their values from
 * one cluster to the other (late in Lloyd's run few do). */
#define LLOYD(NAME, V, ATTR)                                                                  \
ATTR static int NAME(const float *x, long n, int D, const float *centers, int K, int Kp,     \
                     long long *labels, const long long *previous, double *sums,             \
                     long long *counts, long long *changed, int update, float *pre,          \
                     int fill)                                                               \
{                                                                                            \
    typedef float vf __attribute__((vector_size((V) * sizeof(float))));                      \
    typedef int vi __attribute__((vector_size((V) * sizeof(int))));                          \
    const int T = (V) * TILES;                                                               \
    vf *c = aligned_alloc(64, sizeof(vf) * (size_t)D * TILES);                               \
    float *scaled = malloc(sizeof(float) * (size_t)D * Kp);  /* -2 c_kd, [d][k] */           \
    float *norms = malloc(sizeof(float) * (size_t)Kp);                                       \
    if (!c || !scaled || !norms) {                                                           \
        free(c); free(scaled); free(norms);                                                  \
        return 1;                                                                            \
    }                                                                                        \
    for (int k = 0; k < Kp; k++) {                                                           \
        float norm = 0.0f;                                                                   \
        for (int d = 0; d < D; d++) {                                                        \
            const float v = k < K ? centers[(size_t)k * D + d] : 0.0f;                       \
            scaled[(size_t)d * Kp + k] = -2.0f * v;                                          \
            norm += v * v;                                                                   \
        }                                                                                    \
        norms[k] = norm;                                                                     \
    }                                                                                        \
    long long moved = 0;                                                                     \
    for (long n0 = 0; n0 < n; n0 += T) {                                                     \
        const int w = (n - n0) < T ? (int)(n - n0) : T;                                      \
        /* the block's rows transposed (D x T): here, or once into pre and read from it */  \
        float *cf = pre ? pre + n0 * D : (float *)c;                                         \
        if (!pre || fill)                                                                    \
            for (int t = 0; t < T; t++) {                                                    \
                const float *row = x + (n0 + (t < w ? t : 0)) * D;                           \
                for (int d = 0; d < D; d++) cf[(size_t)d * T + t] = t < w ? row[d] : 0.0f;   \
            }                                                                                \
        const vf *cb = (const vf *)cf;                                                       \
        for (int tile = 0; tile * (V) < w; tile++) {                                         \
            vf best = (vf){0} + INFINITY;                                                    \
            vi which = (vi){0};                                                              \
            for (int g = 0; g < Kp; g += KG) {                                               \
                vf acc[KG];                                                                  \
                for (int kk = 0; kk < KG; kk++) acc[kk] = (vf){0} + norms[g + kk];           \
                for (int d = 0; d < D; d++) {                                                \
                    const vf xd = cb[(size_t)d * TILES + tile];                              \
                    const float *sd = scaled + (size_t)d * Kp + g;                           \
                    for (int kk = 0; kk < KG; kk++) acc[kk] += sd[kk] * xd;                  \
                }                                                                            \
                for (int kk = 0; kk < KG && g + kk < K; kk++) { /* strictly less: the first */ \
                    const vi take = acc[kk] < best;                                          \
                    best = (vf)(((vi)acc[kk] & take) | ((vi)best & ~take));                  \
                    which = (((vi){0} + (g + kk)) & take) | (which & ~take);                 \
                }                                                                            \
            }                                                                                \
            for (int lane = 0; lane < (V) && tile * (V) + lane < w; lane++) {                \
                const long row = n0 + tile * (V) + lane;                                     \
                const int k = which[lane];                                                   \
                labels[row] = k;                                                             \
                const float *xr = x + row * D;                                               \
                double *sk = sums + (size_t)k * D;                                           \
                if (update) {                                                                \
                    const long long was = previous[row];                                     \
                    if (was == k) continue;                                                  \
                    moved++;                                                                 \
                    counts[was] -= 1;                                                        \
                    counts[k] += 1;                                                          \
                    double *sw = sums + (size_t)was * D;                                     \
                    for (int d = 0; d < D; d++) sw[d] -= xr[d];                              \
                    for (int d = 0; d < D; d++) sk[d] += xr[d];                              \
                    continue;                                                                \
                }                                                                            \
                counts[k] += 1;                                                              \
                if (previous) moved += previous[row] != k;                                   \
                for (int d = 0; d < D; d++) sk[d] += xr[d];                                  \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    *changed += moved;                                                                       \
    free(c); free(scaled); free(norms);                                                      \
    return 0;                                                                                \
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
BODY(em_avx512, 16, __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma"))), LO16, HI16)
BODY(em_avx2, 8, __attribute__((target("avx2,fma"))), LO8, HI8)
LLOYD(lloyd_avx512, 16, __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma"))))
LLOYD(lloyd_avx2, 8, __attribute__((target("avx2,fma"))))
#endif
BODY(em_base, 4, , LO4, HI4)
LLOYD(lloyd_base, 4, )

typedef int (*em_fn)(const float *, long, int, const float *, const float *, int, int, int,
                     const int *, const int *, int, float, int, double *, double *, double *);

static em_fn chosen(int variant)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if ((variant < 0 || variant == 2) && __builtin_cpu_supports("avx512f")
        && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512bw"))
        return em_avx512;
    if ((variant < 0 || variant == 1) && __builtin_cpu_supports("avx2")
        && __builtin_cpu_supports("fma"))
        return em_avx2;
#endif
    return variant <= 0 ? em_base : 0;
}

/* 2: AVX-512, 1: AVX2, 0: baseline: the best the CPU runs (variant < 0), or -1 where the one
   asked for does not run here. */
int em_variant(int variant)
{
    em_fn f = chosen(variant);
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (f == em_avx512) return 2;
    if (f == em_avx2) return 1;
#endif
    return f ? 0 : -1;
}

/* Rows [0, n) of x (row-major, n x D float32), centred at m; Wt (F x Kp: the F feature
   weights of each of K components, padded with zero columns to Kp, a multiple of 8); pa, pb the
   Fq quadratic features' pairs. Adds Σ log p(x) to *total and, with statistics, Σ r_k phi_j to
   sums (Kp x F, double); where rowlog is not NULL, writes each row's log p(x) there (n
   doubles). Returns 0, or 1 where memory ran out. */
int em_share(int variant, const float *x, long n, int D, const float *m, const float *Wt,
             int K, int Kp, int F, const int *pa, const int *pb, int Fq, float floor_,
             int statistics, double *sums, double *total, double *rowlog)
{
    em_fn f = chosen(variant);
    if (!f || Kp % KG || K > Kp) return 2;
    return f(x, n, D, m, Wt, K, Kp, F, pa, pb, Fq, floor_, statistics, sums, total, rowlog);
}

typedef int (*lloyd_fn)(const float *, long, int, const float *, int, int, long long *,
                        const long long *, double *, long long *, long long *, int, float *,
                        int);

/* The Lloyd pass of the build em_variant(variant) names, or 0 where it does not run here. */
static lloyd_fn lloyd_chosen(int variant)
{
    const int v = em_variant(variant);
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (v == 2) return lloyd_avx512;
    if (v == 1) return lloyd_avx2;
#endif
    return v == 0 ? lloyd_base : 0;
}

/* One Lloyd pass over rows [0, n) of x (row-major n x D float32) against centers (K x D):
   labels written (int64), the clusters' sums (K x D, double) and counts (int64) added to, and
   the labels that differ from previous (int64, or NULL) added to *changed. The build as in
   em_share. Returns 0, 1 where memory ran out, 2 where the build does not run here. */
int lloyd_share(int variant, const float *x, long n, int D, const float *centers, int K,
                long long *labels, const long long *previous, double *sums, long long *counts,
                long long *changed)
{
    lloyd_fn f = lloyd_chosen(variant);
    if (!f) return 2;
    return f(x, n, D, centers, K, (K + KG - 1) / KG * KG, labels, previous, sums, counts,
             changed, 0, 0, 0);
}

/* Each share's rows are transposed once, on its first pass, into blocks as a pass reads them
   (D x T floats, T = V x TILES rows, at most PRE_BLOCK), where all of them take at most
   pre_bytes: every later pass reads them as they are (Lloyd on 19,037 rows, D = 16, K = 8,
   159 passes on two threads: the transposition was half of each pass). */
#define PRE_BLOCK 256

/* Lloyd's algorithm whole, on one process's rows in memory: the passes of lloyd_share over
   `shares` contiguous shares of rows (bounds[0..shares]), each on a thread of its own (the
   caller's takes the first, and any whose thread could not start), the shares' sums added in
   order, then the centres moved to their clusters' means as zoo/gmm_init.py's lloyd_rows moves
   them (the sums rounded to float, then divided by the counts in float). After the first pass
   each share's sums and counts are updated by the rows whose label changed, not summed again
   (a pass over 19,037 rows, D = 16, K = 8: 0.14 against 0.21 ms on one thread); in double,
   they differ from sums taken afresh by rounding alone. It stops where no
   label changed (*strict = 1), where the total squared shift of the centres is at most tol, or
   after max_iter passes; centers (K x D float32) then hold the last means and labels the last
   pass's labels (scratch, n int64, is the other pass's buffer). prior (or NULL) holds the
   labels of the pass before the first, from an earlier call: the first pass counts the
   labels that differ from them (so a run can go on over several calls, which return to the
   caller, and to its signals, between them). Returns 0; 3 where a cluster
   emptied (the caller then runs its own loop, which refills it); 1 where memory ran out; 2
   where the build does not run here. */
typedef struct {
    lloyd_fn f;
    const float *x;
    int D, K;
    const float *centers;
    const long *bounds;
    long long *current;
    const long long *previous;
    int fresh;           /* this pass sums afresh (the call's first) */
    double *sums;        /* shares x K x D, each share's, kept across passes */
    long long *counts;   /* shares x K */
    long long *changed;  /* shares */
    int *codes;          /* shares */
    float **pre;         /* shares: each share's rows transposed on its first pass, or 0 */
    pthread_mutex_t lock;
    pthread_cond_t wake, finished;
    long generation;
    int pending, stop;
} lloyd_team;

typedef struct {
    lloyd_team *team;
    int share;
} lloyd_member;

static void lloyd_run_share(lloyd_team *t, int s)
{
    const long begin = t->bounds[s], rows = t->bounds[s + 1] - begin;
    double *sums = t->sums + (size_t)s * t->K * t->D;
    long long *counts = t->counts + (size_t)s * t->K;
    if (t->fresh) { /* the call's first pass: sums afresh */
        memset(sums, 0, sizeof(double) * (size_t)t->K * t->D);
        memset(counts, 0, sizeof(long long) * (size_t)t->K);
    }
    t->changed[s] = 0;
    int fill = 0;
    if (t->fresh && t->pre && rows > 0) { /* blocks of at most PRE_BLOCK rows, zero-padded */
        const size_t bytes = sizeof(float) * (size_t)((rows + PRE_BLOCK - 1) / PRE_BLOCK)
                             * PRE_BLOCK * t->D;
        t->pre[s] = aligned_alloc(64, bytes);
        fill = t->pre[s] != 0;
    }
    t->codes[s] = t->f(t->x + (size_t)begin * t->D, rows, t->D, t->centers, t->K,
                       (t->K + KG - 1) / KG * KG, t->current + begin,
                       t->previous ? t->previous + begin : 0, sums, counts, t->changed + s,
                       !t->fresh, t->pre ? t->pre[s] : 0, fill);
}

/* A pass's hand-offs wait by spinning a while, then on a condition: a pass takes ~0.1 ms, and
   a thread woken from a condition took as long again to run (Lloyd on 19,037 rows, two
   threads: 0.25 ms a pass so, 0.22 on one thread). */
#define SPINS 20000

static inline void lloyd_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *lloyd_worker(void *arg)
{
    lloyd_member *m = arg;
    lloyd_team *t = m->team;
    long seen = 0;
    for (;;) {
        for (int spin = 0; spin < SPINS
             && __atomic_load_n(&t->generation, __ATOMIC_ACQUIRE) == seen; spin++)
            lloyd_relax();
        if (__atomic_load_n(&t->generation, __ATOMIC_ACQUIRE) == seen) {
            pthread_mutex_lock(&t->lock);
            while (__atomic_load_n(&t->generation, __ATOMIC_ACQUIRE) == seen)
                pthread_cond_wait(&t->wake, &t->lock);
            pthread_mutex_unlock(&t->lock);
        }
        seen = __atomic_load_n(&t->generation, __ATOMIC_ACQUIRE);
        if (__atomic_load_n(&t->stop, __ATOMIC_ACQUIRE)) break;
        lloyd_run_share(t, m->share);
        if (__atomic_sub_fetch(&t->pending, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&t->lock);
            pthread_cond_signal(&t->finished);
            pthread_mutex_unlock(&t->lock);
        }
    }
    return 0;
}

/* Start a pass (or, with stop, the end) on the workers. */
static void lloyd_start(lloyd_team *t, int workers, int stop)
{
    __atomic_store_n(&t->pending, workers, __ATOMIC_RELEASE);
    if (stop) __atomic_store_n(&t->stop, 1, __ATOMIC_RELEASE);
    __atomic_add_fetch(&t->generation, 1, __ATOMIC_ACQ_REL);
    pthread_mutex_lock(&t->lock);
    pthread_cond_broadcast(&t->wake);
    pthread_mutex_unlock(&t->lock);
}

static void lloyd_wait(lloyd_team *t)
{
    for (int spin = 0; spin < SPINS && __atomic_load_n(&t->pending, __ATOMIC_ACQUIRE); spin++)
        lloyd_relax();
    if (__atomic_load_n(&t->pending, __ATOMIC_ACQUIRE)) {
        pthread_mutex_lock(&t->lock);
        while (__atomic_load_n(&t->pending, __ATOMIC_ACQUIRE))
            pthread_cond_wait(&t->finished, &t->lock);
        pthread_mutex_unlock(&t->lock);
    }
}

int lloyd_loop(int variant, const float *x, int D, float *centers, int K, long long *labels,
               long long *scratch, const long long *prior, const long *bounds, int shares,
               int max_iter, double tol, int *n_iter, int *strict, int *converged,
               long pre_bytes)
{
    lloyd_fn f = lloyd_chosen(variant);
    if (!f || shares < 1 || max_iter < 1) return 2;
    lloyd_team t;
    memset(&t, 0, sizeof t);
    t.f = f, t.x = x, t.D = D, t.K = K, t.centers = centers, t.bounds = bounds;
    t.sums = malloc(sizeof(double) * (size_t)shares * K * D);
    t.counts = malloc(sizeof(long long) * (size_t)shares * K);
    t.changed = malloc(sizeof(long long) * (size_t)shares);
    t.codes = malloc(sizeof(int) * (size_t)shares);
    float *moved = malloc(sizeof(float) * (size_t)K * D);
    double *total = malloc(sizeof(double) * (size_t)K * D);
    long long *count = malloc(sizeof(long long) * (size_t)K);
    pthread_t *threads = malloc(sizeof(pthread_t) * (size_t)shares);
    lloyd_member *members = malloc(sizeof(lloyd_member) * (size_t)shares);
    int *mine = calloc((size_t)shares, sizeof(int));  /* shares the caller's thread runs */
    const long padded = bounds[shares] - bounds[0] + (long)shares * PRE_BLOCK;
    if (pre_bytes > 0 && sizeof(float) * (size_t)padded * D <= (size_t)pre_bytes)
        t.pre = calloc((size_t)shares, sizeof(float *));  /* none: each pass transposes */
    int code = 0, workers = 0;
    if (!t.sums || !t.counts || !t.changed || !t.codes || !moved || !total || !count
        || !threads || !members || !mine) {
        free(t.pre);
        free(t.sums); free(t.counts); free(t.changed); free(t.codes); free(moved); free(total);
        free(count); free(threads); free(members); free(mine);
        return 1;
    }
    pthread_mutex_init(&t.lock, 0);
    pthread_cond_init(&t.wake, 0);
    pthread_cond_init(&t.finished, 0);
    mine[0] = 1;
    for (int s = 1; s < shares; s++) {
        members[s] = (lloyd_member){&t, s};
        if (pthread_create(&threads[s], 0, lloyd_worker, &members[s]) == 0)
            workers++;
        else
            mine[s] = 1, threads[s] = 0;
    }
    long long *buffers[2] = {labels, scratch};
    *strict = *converged = 0;
    int it;
    for (it = 1; it <= max_iter; it++) {
        t.current = buffers[it % 2];
        t.previous = it > 1 ? buffers[(it - 1) % 2] : prior;
        t.fresh = it == 1;
        lloyd_start(&t, workers, 0);
        for (int s = 0; s < shares; s++)
            if (mine[s]) lloyd_run_share(&t, s);
        lloyd_wait(&t);
        long long changed = 0;
        int empty = 0;
        for (int s = 0; s < shares; s++) {
            if (t.codes[s]) code = t.codes[s];
            changed += t.changed[s];
        }
        if (code) break;
        memcpy(total, t.sums, sizeof(double) * (size_t)K * D);
        memcpy(count, t.counts, sizeof(long long) * (size_t)K);
        for (int s = 1; s < shares; s++) { /* the shares' sums in order */
            for (size_t i = 0; i < (size_t)K * D; i++) total[i] += t.sums[(size_t)s * K * D + i];
            for (int k = 0; k < K; k++) count[k] += t.counts[(size_t)s * K + k];
        }
        for (int k = 0; k < K; k++) empty |= count[k] == 0;
        if (empty) {
            code = 3;
            break;
        }
        double shift = 0.0;
        for (int k = 0; k < K; k++) {
            const float size = (float)count[k];
            for (int d = 0; d < D; d++) {
                const float mean = (float)total[(size_t)k * D + d] / size;
                const float step = mean - centers[(size_t)k * D + d];
                shift += (double)(step * step);
                moved[(size_t)k * D + d] = mean;
            }
        }
        memcpy(centers, moved, sizeof(float) * (size_t)K * D);
        if (t.previous && changed == 0) {
            *strict = *converged = 1;
            break;
        }
        if (shift <= tol) {
            *converged = 1;
            break;
        }
    }
    *n_iter = it > max_iter ? max_iter : it;
    if (!code && t.current != labels)
        memcpy(labels, t.current, sizeof(long long) * (size_t)bounds[shares]);
    lloyd_start(&t, workers, 1);
    for (int s = 1; s < shares; s++)
        if (!mine[s]) pthread_join(threads[s], 0);
    pthread_mutex_destroy(&t.lock);
    pthread_cond_destroy(&t.wake);
    pthread_cond_destroy(&t.finished);
    if (t.pre)
        for (int s = 0; s < shares; s++) free(t.pre[s]);
    free(t.pre);
    free(t.sums); free(t.counts); free(t.changed); free(t.codes); free(moved); free(total);
    free(count); free(threads); free(members); free(mine);
    return code;
}

/* The E-step's weights of full covariances (zoo/gmm_em.py's _quadratic_weights), in double:
   for each of K components, from L (D x D lower Cholesky factor of the covariance, row-major),
   the mean mu, the weight lambda and the rows' centre m: P = L^-1 by forward substitution, the
   precision Lam = P^T P, and with delta = mu - m the row of W (F = D(D+1)/2 + D + 1):
   -1/2 Lam_ii and -Lam_ij (i < j) in the upper triangle's row-major order, then Lam delta,
   then log lambda - D/2 log 2 pi - sum log L_ii - 1/2 delta^T Lam delta. extremes[0] is
   the largest |Lam_k|_F and extremes[1] the largest |delta_k|^2, for the rounding bound.
   Returns 0; 4 where a diagonal of L is not positive and finite; 1 where memory ran out. */
int full_weights(int K, int D, const double *L, const double *mu, const double *lambda,
                 const double *m, double *W, double *extremes)
{
    const int F = D * (D + 1) / 2 + D + 1;
    double *P = malloc(sizeof(double) * (size_t)D * D);
    double *Lam = malloc(sizeof(double) * (size_t)D * D);
    double *delta = malloc(sizeof(double) * (size_t)D);
    if (!P || !Lam || !delta) {
        free(P); free(Lam); free(delta);
        return 1;
    }
    int code = 0;
    extremes[0] = extremes[1] = 0.0;
    for (int k = 0; k < K && !code; k++) {
        const double *Lk = L + (size_t)k * D * D;
        double logdet = 0.0;
        for (int i = 0; i < D; i++) {
            const double pivot = Lk[(size_t)i * D + i];
            if (!(pivot > 0.0) || !isfinite(pivot)) {
                code = 4;
                break;
            }
            logdet += log(pivot);
        }
        if (code) break;
        /* P = L^-1 (lower): column j solves L p = e_j */
        for (int j = 0; j < D; j++) {
            for (int i = 0; i < D; i++) {
                if (i < j) {
                    P[(size_t)i * D + j] = 0.0;
                    continue;
                }
                double s = i == j ? 1.0 : 0.0;
                for (int t = j; t < i; t++) s -= Lk[(size_t)i * D + t] * P[(size_t)t * D + j];
                P[(size_t)i * D + j] = s / Lk[(size_t)i * D + i];
            }
        }
        double norm = 0.0;
        for (int a = 0; a < D; a++) /* Lam = P^T P, symmetric */
            for (int b = a; b < D; b++) {
                double s = 0.0;
                for (int t = b; t < D; t++) s += P[(size_t)t * D + a] * P[(size_t)t * D + b];
                Lam[(size_t)a * D + b] = Lam[(size_t)b * D + a] = s;
                norm += a == b ? s * s : 2.0 * s * s;
            }
        double spread = 0.0;
        for (int i = 0; i < D; i++) {
            delta[i] = mu[(size_t)k * D + i] - m[i];
            spread += delta[i] * delta[i];
        }
        double *w = W + (size_t)k * F;
        int j = 0;
        for (int a = 0; a < D; a++)
            for (int b = a; b < D; b++)
                w[j++] = (a == b ? -0.5 : -1.0) * Lam[(size_t)a * D + b];
        double quadratic = 0.0;
        for (int a = 0; a < D; a++) {
            double s = 0.0;
            for (int b = 0; b < D; b++) s += Lam[(size_t)a * D + b] * delta[b];
            w[j++] = s;
            quadratic += s * delta[a];
        }
        w[j] = log(lambda[k]) - 0.5 * D * log(2.0 * 3.14159265358979323846) - logdet - 0.5 * quadratic;
        extremes[0] = fmax(extremes[0], sqrt(norm));
        extremes[1] = fmax(extremes[1], spread);
    }
    free(P); free(Lam); free(delta);
    return code;
}
