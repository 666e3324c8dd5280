/* softmax(Q Kᵀ · scale) V in bfloat16 with float32 scores, for CPUs with AVX512-BF16 (`attention.py`).
 *
 * For each head and each block of 16 query rows: the block's scores against every key, in float32
 * (vdpbf16ps: pairs of bfloat16 products summed into float32), then per row its largest score m,
 * the weights exp(scale (s - m)) and their sum in float32, the weights rounded to bfloat16, then
 * P V with the same instruction, divided by the sum and rounded to bfloat16 once, at the end.
 * The scores of a block (16 × S floats) stay in the core's cache between the passes.
 *
 * Layouts, bfloat16 as uint16: q and out strided as given (`attention`), each row's entries consecutive, d even;
 * K and V laid out by attention.py in the pairs that vdpbf16ps reads:
 *   kp  [B · H, S16 / 16, d / 2, 16, 2]     key j's pair p at [j / 16][p][j % 16]; keys past S are 0
 *   vp  [B · H, dv16 / 16, S16 / 2, 16, 2]  value column c of keys 2i, 2i + 1 at [c / 16][i][c % 16]
 * where S16 and dv16 are S and dv rounded up to multiples of 16.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ROWS 16
#define LOG2_E 1.44269504088896341f

/* 2^t for t ≤ 0, as 2^n · 2^f with n = round(t), |f| ≤ 1/2, 2^f = e^(f ln 2) by its Taylor polynomial of degree 5
 * (relative error < 3e-6, far below bfloat16's rounding) and 2^n by scalef (0 far below). */
static inline __m512 exp2_ps(__m512 t) {
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.3333558146428443e-3f);                /* (ln 2)^5 / 5! */
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618129107628477e-3f));  /* (ln 2)^4 / 4! */
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550410866482158e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.2402265069591007f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6931471805599453f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* acc + the pair of bfloat16 numbers at `at`, broadcast to every lane, dotted with each lane's pair of b: the
 * broadcast folded into the instruction's memory operand, which GCC does not do for this instruction itself */
static inline __m512 dot_pair(__m512 acc, const uint16_t *at, __m512bh b) {
    __asm__("vdpbf16ps %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(b), "m"(*(const int32_t (*)[1])at));
    return acc;
}

static inline __m256 dot_pair8(__m256 acc, const uint16_t *at, __m256bh b) {  /* the same on 8 lanes */
    __asm__("vdpbf16ps %2%{1to8%}, %1, %0" : "+v"(acc) : "v"(b), "m"(*(const int32_t (*)[1])at));
    return acc;
}

/* scores[r][j] = q[r] · k[j] for the block's 16 rows (`qs` apart) and every key (S16 of them) */
static void block_scores(const uint16_t *q, long qs, const uint16_t *kp, long d, long key_blocks, float *scores,
                         long ss) {
    const long pairs = d / 2;
    for (long b = 0; b < key_blocks; b++) {
        const uint16_t *keys = kp + b * pairs * 32;
        __m512 acc[ROWS];
#pragma GCC unroll 16
        for (int r = 0; r < ROWS; r++) acc[r] = _mm512_setzero_ps();
        for (long p = 0; p < pairs; p++) {
            const __m512bh k = (__m512bh)_mm512_loadu_si512(keys + p * 32);
#pragma GCC unroll 16
            for (int r = 0; r < ROWS; r++) acc[r] = dot_pair(acc[r], q + r * qs + 2 * p, k);
        }
#pragma GCC unroll 16
        for (int r = 0; r < ROWS; r++) _mm512_storeu_ps(scores + r * ss + b * 16, acc[r]);
    }
}

/* weights[r][j] = exp(scale (s_rj - max_j s_rj)) in bfloat16 (0 past S); returns 1 / Σ_j of them in inv */
static void block_weights(const float *scores, long ss, long S, long S16, float scale, uint16_t *weights, long ws,
                          float *inv) {
    const __mmask16 tail = (__mmask16)((1u << (S % 16)) - 1);
    for (int r = 0; r < ROWS; r++) {
        const float *s = scores + r * ss;
        uint16_t *w = weights + r * ws;
        __m512 m = _mm512_set1_ps(-__builtin_inff());
        long j = 0;
        for (; j + 16 <= S; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(s + j));
        if (tail) m = _mm512_mask_max_ps(m, tail, m, _mm512_maskz_loadu_ps(tail, s + j));
        /* e^(scale (s - m)) = 2^((s - m) · scale log2(e)): s - m first, which is exact near the largest scores (a
         * product of s taken first, less m's, would leave m's rounding, past 2^128 when scores pass ~1e9) */
        const __m512 sc = _mm512_set1_ps(scale * LOG2_E), top = _mm512_set1_ps(_mm512_reduce_max_ps(m));
        __m512 sum = _mm512_setzero_ps();
        for (j = 0; j + 16 <= S; j += 16) {
            const __m512 e = exp2_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), top), sc));
            sum = _mm512_add_ps(sum, e);
            _mm256_storeu_si256((__m256i *)(w + j), (__m256i)_mm512_cvtneps_pbh(e));
        }
        if (j < S16) {  /* the last block: its keys past S weigh 0 */
            const __m512 x = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), top), sc);
            const __m512 e = _mm512_maskz_mov_ps(tail, exp2_ps(x));
            sum = _mm512_add_ps(sum, e);
            _mm256_storeu_si256((__m256i *)(w + j), (__m256i)_mm512_cvtneps_pbh(e));
        }
        inv[r] = 1.0f / _mm512_reduce_add_ps(sum);
    }
}

/* out[r] = inv[r] · Σ_j weights[r][j] v[j], 16 value columns at a time (the last 8 or fewer on 8 lanes, at half the
 * cost: SD v1's 40 columns are 2.5 blocks), rounded to bfloat16 */
static void block_output(const uint16_t *weights, long ws, const float *inv, const uint16_t *vp, long S16, long dv,
                         uint16_t *out, long os) {
    const long key_pairs = S16 / 2;
    for (long c = 0; c < dv; c += 16) {
        const uint16_t *values = vp + (c / 16) * key_pairs * 32;
        if (dv - c <= 8) {
            __m256 acc[ROWS];
#pragma GCC unroll 16
            for (int r = 0; r < ROWS; r++) acc[r] = _mm256_setzero_ps();
            for (long i = 0; i < key_pairs; i++) {
                const __m256bh v = (__m256bh)_mm256_loadu_si256((const __m256i *)(values + i * 32));
#pragma GCC unroll 16
                for (int r = 0; r < ROWS; r++) acc[r] = dot_pair8(acc[r], weights + r * ws + 2 * i, v);
            }
            const __mmask8 columns = (__mmask8)((1u << (dv - c)) - 1);
#pragma GCC unroll 16
            for (int r = 0; r < ROWS; r++) {
                const __m128bh o = _mm256_cvtneps_pbh(_mm256_mul_ps(acc[r], _mm256_set1_ps(inv[r])));
                _mm_mask_storeu_epi16(out + r * os + c, columns, (__m128i)o);
            }
            continue;
        }
        __m512 acc[ROWS];
#pragma GCC unroll 16
        for (int r = 0; r < ROWS; r++) acc[r] = _mm512_setzero_ps();
        for (long i = 0; i < key_pairs; i++) {
            const __m512bh v = (__m512bh)_mm512_loadu_si512(values + i * 32);
#pragma GCC unroll 16
            for (int r = 0; r < ROWS; r++) acc[r] = dot_pair(acc[r], weights + r * ws + 2 * i, v);
        }
        const __mmask16 columns = dv - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (dv - c)) - 1);
#pragma GCC unroll 16
        for (int r = 0; r < ROWS; r++) {
            const __m256bh o = _mm512_cvtneps_pbh(_mm512_mul_ps(acc[r], _mm512_set1_ps(inv[r])));
            _mm256_mask_storeu_epi16(out + r * os + c, columns, (__m256i)o);
        }
    }
}

/* Blocks [start, end) of the B · H · ceil(L / 16) row blocks of queries q[b][h][l] at q + b qb + h qh + l ql (and
 * outputs alike, at out + b ob + h oh + l ol): the heads' layout as the projections leave it, read and written in
 * place. A last block of fewer than 16 rows goes through zero-padded copies. Returns 0, or -1 if its buffers could
 * not be had. */
int attention(const uint16_t *q, const uint16_t *kp, const uint16_t *vp, uint16_t *out, long H, long L, long S,
              long d, long dv, long qb, long qh, long ql, long ob, long oh, long ol, float scale, long start, long end) {
    const long S16 = (S + 15) / 16 * 16, dv16 = (dv + 15) / 16 * 16, row_blocks = (L + ROWS - 1) / ROWS;
    /* rows one cache line longer than the keys: at a power-of-two length, 16 rows would share one set of the L1
     * cache, and each pass reads one number of every row in turn (this halved P V's time at 4096 keys) */
    const long ss = S16 + 16, ws = S16 + 32;
    float *scores = aligned_alloc(64, ROWS * ss * sizeof(float));
    uint16_t *weights = aligned_alloc(64, ROWS * ws * sizeof(uint16_t));
    uint16_t *rows_in = calloc(ROWS * d, sizeof(uint16_t)), *rows_out = malloc(ROWS * dv * sizeof(uint16_t));
    if (scores == NULL || weights == NULL || rows_in == NULL || rows_out == NULL) {
        free(scores);
        free(weights);
        free(rows_in);
        free(rows_out);
        return -1;
    }
    float inv[ROWS];
    for (long unit = start; unit < end; unit++) {
        const long head = unit / row_blocks, row = unit % row_blocks * ROWS, b = head / H, h = head % H;
        const long rows = L - row < ROWS ? L - row : ROWS;
        const uint16_t *queries = q + b * qb + h * qh + row * ql;
        uint16_t *outputs = out + b * ob + h * oh + row * ol;
        if (rows < ROWS)
            for (long r = 0; r < rows; r++) memcpy(rows_in + r * d, queries + r * ql, d * sizeof(uint16_t));
        block_scores(rows < ROWS ? rows_in : queries, rows < ROWS ? d : ql, kp + head * S16 * d, d, S16 / 16, scores,
                     ss);
        block_weights(scores, ss, S, S16, scale, weights, ws, inv);
        block_output(weights, ws, inv, vp + head * dv16 * S16, S16, dv, rows < ROWS ? rows_out : outputs,
                     rows < ROWS ? dv : ol);
        if (rows < ROWS)
            for (long r = 0; r < rows; r++) memcpy(outputs + r * ol, rows_out + r * dv, dv * sizeof(uint16_t));
    }
    free(scores);
    free(weights);
    free(rows_in);
    free(rows_out);
    return 0;
}
