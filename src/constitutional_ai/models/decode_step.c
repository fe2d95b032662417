/* One batch-1 decode step of a Llama-family model in one call: constitutional_ai.models.native.
 *
 * At batch 1 a decode step streams every weight once and does almost nothing else, but through
 * torch it is ~25 small operator calls per layer at 5-20 us each, every one a separate wake-up of
 * the thread pool. Here the whole step is one OpenMP parallel region: the matrix-vector products
 * are split across the threads (each streaming its own contiguous part of the weights), and the
 * small operations between them (RMSNorm, rotary embedding, the cache write, attention, SiLU,
 * residual adds) run in the same region, with a barrier where the next operation needs all of
 * the previous one.
 *
 * It computes what transformers' forward computes (fp32; only the order of the sums differs):
 *   h = x * rsqrt(mean(x^2) + eps) * w_norm
 *   q, k, v = W_qkv h + b;  q, k = q cos + rotate_half(q) sin;  cache[pos] = k, v
 *   x += W_o attention(q, cache) + b;  x += W_down (silu(W_gate h2) * (W_up h2)) + b
 * and the logits W_head norm(x) + b.
 *
 * Weights are as the lean torch forward stores them: output-major ([out][in], rows split across
 * threads) or input-major ([in][out], inputs split across threads, partial sums added in thread
 * order), so the result depends on the thread count but never on timing.
 */
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

typedef struct {
    const float *w;    /* [out][in], or [in][out] when transposed */
    const float *b;    /* [out] or NULL */
    long out, in;
    int transposed;
} Mat;

typedef struct {
    const float *n1, *n2; /* RMSNorm weights [hidden] */
    Mat qkv, o, gu, down; /* gu: gate rows then up rows */
    float *k, *v;         /* this layer's cache, [n_kv][capacity][head_dim] */
} Layer;

typedef struct {
    int n_layers, hidden, n_heads, n_kv, head_dim, inter, capacity;
    float eps, scaling;
    const Layer *layers;
    const float *norm; /* final RMSNorm weight */
    Mat head;          /* lm_head */
} Model;

/* Scratch floats a step needs (the caller allocates them once). */
long cai_scratch_floats(const Model *m, int threads) {
    long qkv = (long)(m->n_heads + 2 * m->n_kv) * m->head_dim, widest = m->head.out;
    if (m->layers[0].gu.out > widest) widest = m->layers[0].gu.out;
    if (qkv > widest) widest = qkv;
    return m->hidden + qkv + (long)m->n_heads * m->head_dim + (long)m->n_heads * m->capacity + 2L * m->inter +
           m->inter + (long)threads * widest;
}

static void rms_norm(const float *x, const float *w, float *out, int n, float eps) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = w[i] * (x[i] * r);
}

/* r[j] = row j of an output-major block of ROWS rows (from w, stride in) . x, for j < ROWS. */
#define ROWS 8
static void dot_rows(const float *w, long in, const float *x, float *r) {
#ifdef __AVX512F__
    __m512 acc[ROWS];
    for (int j = 0; j < ROWS; j++) acc[j] = _mm512_setzero_ps();
    for (long i = 0; i < in; i += 16) {
        __mmask16 k = in - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (in - i)) - 1);
        __m512 xv = _mm512_maskz_loadu_ps(k, x + i);
        for (int j = 0; j < ROWS; j++) acc[j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, w + j * in + i), xv, acc[j]);
    }
    for (int j = 0; j < ROWS; j++) r[j] = _mm512_reduce_add_ps(acc[j]);
#else
    const float *w0 = w, *w1 = w0 + in, *w2 = w1 + in, *w3 = w2 + in, *w4 = w3 + in, *w5 = w4 + in, *w6 = w5 + in,
                *w7 = w6 + in;
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7)
    for (long i = 0; i < in; i++) {
        float xi = x[i];
        s0 += w0[i] * xi, s1 += w1[i] * xi, s2 += w2[i] * xi, s3 += w3[i] * xi;
        s4 += w4[i] * xi, s5 += w5[i] * xi, s6 += w6[i] * xi, s7 += w7[i] * xi;
    }
    r[0] = s0, r[1] = s1, r[2] = s2, r[3] = s3, r[4] = s4, r[5] = s5, r[6] = s6, r[7] = s7;
#endif
}

static inline void put(float *y, long o, float s, const float *b, int add) {
    float r = s + (b ? b[o] : 0.0f);
    y[o] = add ? y[o] + r : r;
}

/* y = W x + b (add: y += W x + b), by the calling thread team; ends with a barrier. */
static void matvec(const Mat *a, const float *x, float *y, int add, float *partial, int tid, int nt) {
    const long out = a->out, in = a->in;
    if (!a->transposed) { /* blocks of ROWS rows, split across the threads in contiguous runs */
#pragma omp for schedule(static)
        for (long o0 = 0; o0 < out; o0 += ROWS) {
            if (o0 + ROWS <= out) {
                float r[ROWS];
                dot_rows(a->w + o0 * in, in, x, r);
                for (int j = 0; j < ROWS; j++) put(y, o0 + j, r[j], a->b, add);
            } else {
                for (long o = o0; o < out; o++) {
                    const float *w = a->w + o * in;
                    float s = 0;
#pragma omp simd reduction(+ : s)
                    for (long i = 0; i < in; i++) s += w[i] * x[i];
                    put(y, o, s, a->b, add);
                }
            }
        }
        return;
    }
    /* input-major: this thread's contiguous run of input rows, four at a time, into its own
     * partial sums; then the partial sums added in thread order */
    long per = (in + nt - 1) / nt, i0 = tid * per, i1 = i0 + per < in ? i0 + per : in, i = i0;
    float *p = partial + (long)tid * out;
    memset(p, 0, sizeof(float) * out);
    for (; i + 4 <= i1; i += 4) {
        const float *w0 = a->w + i * out, *w1 = w0 + out, *w2 = w1 + out, *w3 = w2 + out;
        const float x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3];
#pragma omp simd
        for (long o = 0; o < out; o++) p[o] += x0 * w0[o] + x1 * w1[o] + x2 * w2[o] + x3 * w3[o];
    }
    for (; i < i1; i++) {
        const float *w0 = a->w + i * out, x0 = x[i];
#pragma omp simd
        for (long o = 0; o < out; o++) p[o] += x0 * w0[o];
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (long o = 0; o < out; o++) {
        float s = partial[o];
        for (int t = 1; t < nt; t++) s += partial[(long)t * out + o];
        put(y, o, s, a->b, add);
    }
}

/* q or k head in place: t * cos + rotate_half(t) * sin, rotate_half(t) = (-t[half:], t[:half]). */
static void rope(float *t, const float *cos, const float *sin, int d) {
    int half = d / 2;
    for (int j = 0; j < half; j++) {
        float a = t[j], b = t[j + half];
        t[j] = a * cos[j] - b * sin[j];
        t[j + half] = b * cos[j + half] + a * sin[j + half];
    }
}

/* One decode step for the token whose embedding is x[hidden] (overwritten: the residual
 * stream), at cache position pos (the cache holds pos earlier tokens), with the rotary cos/sin
 * of its position ([head_dim] each). Writes the logits [head.out]. Returns 0, or -1 when the
 * cache is full (nothing is written then). */
int cai_decode_step(const Model *m, int pos, const float *cos, const float *sin, float *x, float *logits,
                    float *scratch, int threads) {
    if (pos < 0 || pos >= m->capacity) return -1;
    const int H = m->hidden, nh = m->n_heads, nkv = m->n_kv, d = m->head_dim, I = m->inter;
    const long cap = m->capacity, L = pos + 1;
    float *h = scratch, *qkv = h + H, *att = qkv + (long)(nh + 2 * nkv) * d, *scores = att + (long)nh * d;
    float *gu = scores + (long)nh * cap, *act = gu + 2L * I, *partial = act + I;
    const int group = nh / nkv;
#pragma omp parallel num_threads(threads)
    {
        const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        for (int l = 0; l < m->n_layers; l++) {
            const Layer *ly = &m->layers[l];
#pragma omp single
            rms_norm(x, ly->n1, h, H, m->eps);
            matvec(&ly->qkv, h, qkv, 0, partial, tid, nt);
#pragma omp single
            {
                for (int hd = 0; hd < nh + nkv; hd++) rope(qkv + (long)hd * d, cos, sin, d);
                const float *kn = qkv + (long)nh * d, *vn = kn + (long)nkv * d;
                for (int g = 0; g < nkv; g++) {
                    memcpy(ly->k + ((long)g * cap + pos) * d, kn + (long)g * d, sizeof(float) * d);
                    memcpy(ly->v + ((long)g * cap + pos) * d, vn + (long)g * d, sizeof(float) * d);
                }
            }
#pragma omp for schedule(static)
            for (int hd = 0; hd < nh; hd++) {
                const float *q = qkv + (long)hd * d;
                const float *kc = ly->k + (long)(hd / group) * cap * d, *vc = ly->v + (long)(hd / group) * cap * d;
                float *s = scores + (long)hd * cap, mx = -INFINITY, sum = 0.0f;
                for (long t = 0; t < L; t++) {
                    const float *kt = kc + t * d;
                    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                    for (int j = 0; j < d; j++) dot += q[j] * kt[j];
                    s[t] = dot * m->scaling;
                    if (s[t] > mx) mx = s[t];
                }
                for (long t = 0; t < L; t++) {
                    s[t] = expf(s[t] - mx);
                    sum += s[t];
                }
                float *out = att + (long)hd * d, inv = 1.0f / sum;
                for (int j = 0; j < d; j++) out[j] = 0.0f;
                for (long t = 0; t < L; t++) {
                    const float *vt = vc + t * d, p = s[t] * inv;
#pragma omp simd
                    for (int j = 0; j < d; j++) out[j] += p * vt[j];
                }
            }
            matvec(&ly->o, att, x, 1, partial, tid, nt);
#pragma omp single
            rms_norm(x, ly->n2, h, H, m->eps);
            matvec(&ly->gu, h, gu, 0, partial, tid, nt);
#pragma omp for schedule(static)
            for (int i = 0; i < I; i++) {
                float g = gu[i];
                act[i] = g / (1.0f + expf(-g)) * gu[I + i];
            }
            matvec(&ly->down, act, x, 1, partial, tid, nt);
        }
#pragma omp single
        rms_norm(x, m->norm, h, H, m->eps);
        matvec(&m->head, h, logits, 0, partial, tid, nt);
    }
    return 0;
}

/* y = W x + b on its own (checks and benchmarks). */
void cai_matvec(const Mat *a, const float *x, float *y, float *partial, int threads) {
#pragma omp parallel num_threads(threads)
    matvec(a, x, y, 0, partial, omp_get_thread_num(), omp_get_num_threads());
}

/* ---- y = x W^T + b for a few rows (a batched decode step): cai_gemm ----
 *
 * At 32 rows a decode step's products stream every weight once from memory and do 16 FLOP per
 * weight byte, too few for the library kernels' blocking (made for large products) to keep the
 * cores busy while the weights arrive. This kernel takes output-major weights as stored:
 *   - x is transposed once into blocks of 32 rows, [row block][in][32], zero-padded;
 *   - a tile is 12 weight rows by 32 x rows: 24 accumulators, per input two loads of x, 12
 *     broadcasts of weights, 24 FMAs; the weights of the tile after next are prefetched into L2;
 *   - the inputs run in blocks of KC (their part of the transposed x stays in L1) across a group
 *     of tiles, whose partial sums wait in a small buffer (ct) between blocks;
 *   - each thread takes a contiguous run of tiles (its own part of the weights), so the result
 *     depends on the thread count but never on timing, and not on the other rows of x.
 * Input-major weights ([in][out], as the planner stores a kind that is faster so at one row) run
 * by gemm_t: a tile is 8 x rows by 48 outputs (24 accumulators; per input three loads of weights,
 * 8 broadcasts of x, 24 FMAs), x transposed once into blocks of 8 rows, the inputs in blocks of KC
 * with the 8-row tiles of a 48-output panel taking turns over each block (it stays in L1), the
 * partial sums kept in y between blocks, the next panel's weights prefetched; each thread takes a
 * contiguous run of panels.
 * Each output is the sum over the inputs in order, then the bias: what F.linear computes up to the
 * order of the sums. */
#define G_NR 12
#define G_KC 128
#define G_GROUP 128
#define G_PFD 2

/* Scratch floats cai_gemm needs for rows x [in] by [out][in]. */
long cai_gemm_scratch_floats(long rows, long in, long out) {
    return ((rows + 31) / 32) * 32 * in + (out + G_NR) * 32;
}

#ifdef __AVX512F__
static inline void gemm_tile(const float *xt, long K, long k0, long k1, const float *w, long N, int nr, float *ct,
                             float *y, long mrows, __m512i idx, const float *bias) {
    __m512 acc[G_NR][2];
    if (k0 == 0)
        for (int j = 0; j < G_NR; j++) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
    else
        for (int j = 0; j < G_NR; j++) {
            acc[j][0] = _mm512_loadu_ps(ct + j * 32);
            acc[j][1] = _mm512_loadu_ps(ct + j * 32 + 16);
        }
    long k = k0;
    if (nr == G_NR) {
        for (; k + 16 <= k1; k += 16) {
            for (int j = 0; j < G_NR; j++) _mm_prefetch((const char *)(w + (G_PFD * G_NR + j) * K + k), _MM_HINT_T1);
            const float *r0 = w + k, *r3 = r0 + 3 * K, *r6 = r0 + 6 * K, *r9 = r0 + 9 * K, *a = xt + k * 32;
#pragma GCC unroll 16
            for (int kk = 0; kk < 16; kk++) {
                __m512 a0 = _mm512_loadu_ps(a + kk * 32), a1 = _mm512_loadu_ps(a + kk * 32 + 16), b;
#define CAI_STEP(j, r, o)                                                                                              \
    b = _mm512_set1_ps(r[(o) + kk]);                                                                                   \
    acc[j][0] = _mm512_fmadd_ps(b, a0, acc[j][0]);                                                                     \
    acc[j][1] = _mm512_fmadd_ps(b, a1, acc[j][1]);
                CAI_STEP(0, r0, 0) CAI_STEP(1, r0, K) CAI_STEP(2, r0, 2 * K)
                CAI_STEP(3, r3, 0) CAI_STEP(4, r3, K) CAI_STEP(5, r3, 2 * K)
                CAI_STEP(6, r6, 0) CAI_STEP(7, r6, K) CAI_STEP(8, r6, 2 * K)
                CAI_STEP(9, r9, 0) CAI_STEP(10, r9, K) CAI_STEP(11, r9, 2 * K)
#undef CAI_STEP
            }
        }
    }
    for (; k < k1; k++) {
        __m512 a0 = _mm512_loadu_ps(xt + k * 32), a1 = _mm512_loadu_ps(xt + k * 32 + 16);
        for (int j = 0; j < nr; j++) {
            __m512 b = _mm512_set1_ps(w[j * K + k]);
            acc[j][0] = _mm512_fmadd_ps(b, a0, acc[j][0]);
            acc[j][1] = _mm512_fmadd_ps(b, a1, acc[j][1]);
        }
    }
    if (k1 < K) {
        for (int j = 0; j < G_NR; j++) {
            _mm512_storeu_ps(ct + j * 32, acc[j][0]);
            _mm512_storeu_ps(ct + j * 32 + 16, acc[j][1]);
        }
        return;
    }
    __mmask16 m0 = mrows >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << mrows) - 1);
    __mmask16 m1 = mrows >= 32 ? (__mmask16)0xFFFF : mrows <= 16 ? (__mmask16)0 : (__mmask16)((1u << (mrows - 16)) - 1);
    for (int j = 0; j < nr; j++) {
        __m512 bj = _mm512_set1_ps(bias ? bias[j] : 0.0f);
        _mm512_mask_i32scatter_ps(y + j, m0, idx, _mm512_add_ps(acc[j][0], bj), 4);
        if (m1) _mm512_mask_i32scatter_ps(y + 16 * N + j, m1, idx, _mm512_add_ps(acc[j][1], bj), 4);
    }
}
#endif

#ifdef __AVX512F__
#define T_MR 8
#define T_NV 3
#define T_NR (16 * T_NV)
#define T_KC 128

/* One 8-row by 48-output tile over inputs k0..k1 of input-major weights w (at the tile's first
 * output, row stride N): mk masks the outputs past N, rows past mr are computed on zeros and not
 * stored, pf (or NULL) the next panel's weights to prefetch. */
static inline void gemm_t_tile(const float *xt, const float *w, long N, long k0, long k1, float *y, int mr,
                               const __mmask16 *mk, const float *bias, const float *pf) {
    __m512 acc[T_MR][T_NV];
#pragma GCC unroll 8
    for (int r = 0; r < T_MR; r++)
#pragma GCC unroll 3
        for (int v = 0; v < T_NV; v++)
            acc[r][v] = k0 > 0 && r < mr ? _mm512_maskz_loadu_ps(mk[v], y + r * N + 16 * v) : _mm512_setzero_ps();
    for (long k = k0; k < k1; k++) {
        const float *wk = w + k * N, *a = xt + k * T_MR;
        if (pf)
            for (int v = 0; v < T_NV; v++) _mm_prefetch((const char *)(pf + k * N + 16 * v), _MM_HINT_T0);
        const __m512 b0 = _mm512_maskz_loadu_ps(mk[0], wk), b1 = _mm512_maskz_loadu_ps(mk[1], wk + 16),
                     b2 = _mm512_maskz_loadu_ps(mk[2], wk + 32);
#pragma GCC unroll 8
        for (int r = 0; r < T_MR; r++) {
            const __m512 s = _mm512_set1_ps(a[r]);
            acc[r][0] = _mm512_fmadd_ps(s, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(s, b1, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(s, b2, acc[r][2]);
        }
    }
    if (bias) /* the last block of inputs: the bias, once */
#pragma GCC unroll 3
        for (int v = 0; v < T_NV; v++) {
            const __m512 bv = _mm512_maskz_loadu_ps(mk[v], bias + 16 * v);
#pragma GCC unroll 8
            for (int r = 0; r < T_MR; r++) acc[r][v] = _mm512_add_ps(acc[r][v], bv);
        }
#pragma GCC unroll 8
    for (int r = 0; r < T_MR; r++)
#pragma GCC unroll 3
        for (int v = 0; v < T_NV; v++)
            if (r < mr) _mm512_mask_storeu_ps(y + r * N + 16 * v, mk[v], acc[r][v]);
}

/* y [rows][N] = x [rows][K] W + b for input-major W ([K][N]); xt: scratch for x transposed. */
static void gemm_t(const Mat *a, const float *x, long rows, float *y, float *xt, int threads) {
    const long K = a->in, N = a->out, nt = (rows + T_MR - 1) / T_MR, np = (N + T_NR - 1) / T_NR;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (long m = 0; m < nt * T_MR; m++) { /* row m of x into column m % 8 of its block */
            float *col = xt + (m / T_MR) * K * T_MR + m % T_MR;
            if (m < rows)
                for (long k = 0; k < K; k++) col[k * T_MR] = x[m * K + k];
            else
                for (long k = 0; k < K; k++) col[k * T_MR] = 0.0f;
        }
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        const long per = (np + nth - 1) / nth, p0 = tid * per, p1 = p0 + per < np ? p0 + per : np;
        for (long p = p0; p < p1; p++) {
            const long n0 = p * T_NR;
            __mmask16 mk[T_NV];
            for (int v = 0; v < T_NV; v++) {
                const long c = N - n0 - 16 * v;
                mk[v] = c >= 16 ? (__mmask16)0xFFFF : c <= 0 ? (__mmask16)0 : (__mmask16)((1u << c) - 1);
            }
            for (long k0 = 0; k0 < K; k0 += T_KC) {
                const long k1 = k0 + T_KC < K ? k0 + T_KC : K;
                for (long t = 0; t < nt; t++) {
                    const long mr = rows - t * T_MR < T_MR ? rows - t * T_MR : T_MR;
                    gemm_t_tile(xt + t * K * T_MR, a->w + n0, N, k0, k1, y + t * T_MR * N + n0, (int)mr, mk,
                                k1 == K && a->b ? a->b + n0 : NULL, t == 0 && p + 1 < p1 ? a->w + n0 + T_NR : NULL);
                }
            }
        }
    }
}
#endif

/* y [rows][out] = x [rows][in] W^T + b for W output-major, or input-major (gemm_t). Returns 0, or
 * -1 for what it does not serve (outputs beyond 32-bit indexing). */
int cai_gemm(const Mat *a, const float *x, long rows, float *y, float *scratch, int threads) {
    const long K = a->in, N = a->out;
    if (32 * N > 2147483647L) return -1;
#ifdef __AVX512F__
    if (a->transposed) {
        gemm_t(a, x, rows, y, scratch, threads);
        return 0;
    }
    const long nb = (rows + 31) / 32, ntiles = (N + G_NR - 1) / G_NR;
    float *xt = scratch, *ct = scratch + nb * 32 * K;
    const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                           _mm512_set1_epi32((int)N));
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (long m = 0; m < nb * 32; m++) { /* row m of x into column m % 32 of its block */
            float *col = xt + (m / 32) * K * 32 + m % 32;
            if (m < rows)
                for (long k = 0; k < K; k++) col[k * 32] = x[m * K + k];
            else
                for (long k = 0; k < K; k++) col[k * 32] = 0.0f;
        }
        const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        const long per = (ntiles + nt - 1) / nt, t0 = tid * per, t1 = t0 + per < ntiles ? t0 + per : ntiles;
        for (long b = 0; b < nb; b++)
            for (long g0 = t0; g0 < t1; g0 += G_GROUP) {
                const long g1 = g0 + G_GROUP < t1 ? g0 + G_GROUP : t1;
                for (long k0 = 0; k0 < K; k0 += G_KC) {
                    const long k1 = k0 + G_KC < K ? k0 + G_KC : K;
                    for (long t = g0; t < g1; t++) {
                        const long n0 = t * G_NR;
                        const int nr = N - n0 < G_NR ? (int)(N - n0) : G_NR;
                        gemm_tile(xt + b * K * 32, K, k0, k1, a->w + n0 * K, N, nr, ct + n0 * 32, y + b * 32 * N + n0,
                                  rows - b * 32, idx, a->b ? a->b + n0 : NULL);
                    }
                }
            }
    }
#else
    (void)scratch;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long o = 0; o < N; o++)
        for (long m = 0; m < rows; m++) {
            const float *xm = x + m * K;
            float s = 0.0f;
            if (a->transposed)
                for (long i = 0; i < K; i++) s += a->w[i * N + o] * xm[i];
            else
                for (long i = 0; i < K; i++) s += a->w[o * K + i] * xm[i];
            y[m * N + o] = s + (a->b ? a->b[o] : 0.0f);
        }
#endif
    return 0;
}

/* ---- attention of one new token per row over its cache (a batched decode step): cai_attend ----
 *
 * out[b][h] = softmax(scaling * q[b][h] . k[b][h / group][t] + mask[b][t], t < L) . v[b][h / group]
 * for B rows of nh query heads and nkv key/value heads (group = nh / nkv), the mask additive (0 or
 * -inf, NULL: none). Strides are in floats; the last dimension of q, k and v is contiguous. What
 * scaled_dot_product_attention computes for one query, up to the order of the sums; at 32 rows
 * torch's CPU kernel spends most of its time on blocking made for long queries. scores: B * nh * L
 * floats. */
void cai_attend(const float *q, long q_sb, long q_sh, const float *k, const float *v, long kv_sb, long kv_sh,
                long kv_st, const float *mask, long mask_sb, float *out, int B, int nh, int nkv, long L, int d,
                float scaling, float *scores, int threads) {
    const int group = nh / nkv;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long bh = 0; bh < (long)B * nh; bh++) {
        const long b = bh / nh, h = bh % nh, g = h / group;
        const float *qv = q + b * q_sb + h * q_sh, *kc = k + b * kv_sb + g * kv_sh, *vc = v + b * kv_sb + g * kv_sh;
        const float *mk = mask ? mask + b * mask_sb : NULL;
        float *s = scores + bh * L, mx = -INFINITY, sum = 0.0f;
        for (long t = 0; t < L; t++) {
            const float *kt = kc + t * kv_st;
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int j = 0; j < d; j++) dot += qv[j] * kt[j];
            s[t] = dot * scaling + (mk ? mk[t] : 0.0f);
            if (s[t] > mx) mx = s[t];
        }
        for (long t = 0; t < L; t++) {
            s[t] = expf(s[t] - mx);
            sum += s[t];
        }
        float *o = out + bh * d, inv = 1.0f / sum;
        for (int j = 0; j < d; j++) o[j] = 0.0f;
        for (long t = 0; t < L; t++) {
            const float *vt = vc + t * kv_st, p = s[t] * inv;
#pragma omp simd
            for (int j = 0; j < d; j++) o[j] += p * vt[j];
        }
    }
}
