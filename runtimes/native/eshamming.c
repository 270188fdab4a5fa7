/* See eshamming.h. Distances are computed a block of rows at a time (vertical SIMD over rows:
 * the planar layout puts the same word of consecutive rows side by side), then the block is
 * scanned against the current k-th best. */
#include "eshamming.h"

#define BLOCK 256

typedef void (*block_fn)(const uint64_t *planes, uint64_t stride, uint32_t words, uint64_t r0, uint32_t n,
                         const uint64_t *q, uint16_t *d);

/* ------------------------------------------------------------------ portable */
static inline uint32_t popcount_swar(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (uint32_t)((x * 0x0101010101010101ULL) >> 56);
}

static void block_portable(const uint64_t *planes, uint64_t stride, uint32_t words, uint64_t r0, uint32_t n,
                           const uint64_t *q, uint16_t *d) {
    const uint64_t *p = planes + r0;
    for (uint32_t i = 0; i < n; i++) d[i] = (uint16_t)popcount_swar(p[i] ^ q[0]);
    for (uint32_t w = 1; w < words; w++) {
        p = planes + (uint64_t)w * stride + r0;
        for (uint32_t i = 0; i < n; i++) d[i] = (uint16_t)(d[i] + popcount_swar(p[i] ^ q[w]));
    }
}

/* ------------------------------------------------------------------ x86 */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

/* Row-wise: the W words of a row are summed in a register (one store per row). */
__attribute__((target("popcnt"))) static void block_popcnt(const uint64_t *planes, uint64_t stride, uint32_t words,
                                                            uint64_t r0, uint32_t n, const uint64_t *q,
                                                            uint16_t *d) {
    const uint64_t *p = planes + r0;
    if (words == 4) {
        const uint64_t *p1 = p + stride, *p2 = p1 + stride, *p3 = p2 + stride;
        for (uint32_t i = 0; i < n; i++)
            d[i] = (uint16_t)(__builtin_popcountll(p[i] ^ q[0]) + __builtin_popcountll(p1[i] ^ q[1]) +
                              __builtin_popcountll(p2[i] ^ q[2]) + __builtin_popcountll(p3[i] ^ q[3]));
        return;
    }
    if (words == 8) {
        const uint64_t *p1 = p + stride, *p2 = p1 + stride, *p3 = p2 + stride, *p4 = p3 + stride,
                       *p5 = p4 + stride, *p6 = p5 + stride, *p7 = p6 + stride;
        for (uint32_t i = 0; i < n; i++)
            d[i] = (uint16_t)(__builtin_popcountll(p[i] ^ q[0]) + __builtin_popcountll(p1[i] ^ q[1]) +
                              __builtin_popcountll(p2[i] ^ q[2]) + __builtin_popcountll(p3[i] ^ q[3]) +
                              __builtin_popcountll(p4[i] ^ q[4]) + __builtin_popcountll(p5[i] ^ q[5]) +
                              __builtin_popcountll(p6[i] ^ q[6]) + __builtin_popcountll(p7[i] ^ q[7]));
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t s = 0;
        for (uint32_t w = 0; w < words; w++) s += (uint32_t)__builtin_popcountll(p[(uint64_t)w * stride + i] ^ q[w]);
        d[i] = (uint16_t)s;
    }
}

/* AVX2: 8 rows per iteration (two registers of 4), per-byte counts by nibble lookup (Mula),
 * summed over up to 31 words in bytes (8 * 31 < 256), then one SAD per 4 rows. The next
 * block of every plane is prefetched: the planes are `words` independent streams. */
__attribute__((target("avx2,popcnt"))) static void block_avx2(const uint64_t *planes, uint64_t stride,
                                                               uint32_t words, uint64_t r0, uint32_t n,
                                                               const uint64_t *q, uint16_t *d) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                                         2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0F);
    const __m256i zero = _mm256_setzero_si256();
    for (uint32_t w = 0; w < words; w++) {
        const char *next = (const char *)(planes + (uint64_t)w * stride + r0 + BLOCK);
        for (int b = 0; b < BLOCK * 8; b += 256) __builtin_prefetch(next + b, 0, 0);
    }
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i t0 = zero, t1 = zero;
        uint32_t w = 0;
        while (w < words) {
            uint32_t end = words - w > 31 ? w + 31 : words;
            __m256i a0 = zero, a1 = zero;
            for (; w < end; w++) {
                const uint64_t *p = planes + (uint64_t)w * stride + r0 + i;
                __m256i qv = _mm256_set1_epi64x((long long)q[w]);
                __m256i v0 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), qv);
                __m256i v1 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 4)), qv);
                a0 = _mm256_add_epi8(a0, _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v0, low)),
                    _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v0, 4), low))));
                a1 = _mm256_add_epi8(a1, _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v1, low)),
                    _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v1, 4), low))));
            }
            t0 = _mm256_add_epi64(t0, _mm256_sad_epu8(a0, zero));
            t1 = _mm256_add_epi64(t1, _mm256_sad_epu8(a1, zero));
        }
        /* lanes hold values < 2^16: pack the 8 distances into 16-bit slots */
        __m256i packed = _mm256_packus_epi32(t0, t1); /* per 128-bit lane: t0 lo/hi as u16 pairs */
        uint64_t tmp[4];
        _mm256_storeu_si256((__m256i *)tmp, packed);
        /* packus over 64-bit lanes: lane layout [t0.0, 0, t0.1, 0, t1.0, 0, t1.1, 0 | same for .2/.3] */
        d[i] = (uint16_t)tmp[0];
        d[i + 1] = (uint16_t)(tmp[0] >> 32);
        d[i + 4] = (uint16_t)tmp[1];
        d[i + 5] = (uint16_t)(tmp[1] >> 32);
        d[i + 2] = (uint16_t)tmp[2];
        d[i + 3] = (uint16_t)(tmp[2] >> 32);
        d[i + 6] = (uint16_t)tmp[3];
        d[i + 7] = (uint16_t)(tmp[3] >> 32);
    }
    for (; i < n; i++) {
        uint32_t s = 0;
        for (uint32_t w = 0; w < words; w++) s += (uint32_t)__builtin_popcountll(planes[(uint64_t)w * stride + r0 + i] ^ q[w]);
        d[i] = (uint16_t)s;
    }
}

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static int have_popcnt(void) {
    uint32_t r[4];
    cpuid(1, 0, r);
    return (r[2] >> 23) & 1;
}

static int have_avx2(void) {
    uint32_t r[4];
    cpuid(0, 0, r);
    if (r[0] < 7) return 0;
    cpuid(1, 0, r);
    if (!((r[2] >> 27) & 1) || !((r[2] >> 28) & 1)) return 0; /* OSXSAVE, AVX */
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 6) != 6) return 0; /* the OS saves XMM and YMM state */
    cpuid(7, 0, r);
    return (r[1] >> 5) & 1;
}
#endif

/* ------------------------------------------------------------------ ARM NEON */
#if defined(__ARM_NEON) || defined(__ARM_NEON__)
#include <arm_neon.h>

/* 2 rows per register; byte counts summed over up to 31 words, then widened pairwise. */
static void block_neon(const uint64_t *planes, uint64_t stride, uint32_t words, uint64_t r0, uint32_t n,
                       const uint64_t *q, uint16_t *d) {
    uint32_t i = 0;
    for (; i + 2 <= n; i += 2) {
        uint64x2_t total = vdupq_n_u64(0);
        uint32_t w = 0;
        while (w < words) {
            uint32_t end = words - w > 31 ? w + 31 : words;
            uint8x16_t acc = vdupq_n_u8(0);
            for (; w < end; w++) {
                uint64x2_t v = vld1q_u64(planes + (uint64_t)w * stride + r0 + i);
                v = veorq_u64(v, vdupq_n_u64(q[w]));
                acc = vaddq_u8(acc, vcntq_u8(vreinterpretq_u8_u64(v)));
            }
            total = vaddq_u64(total, vpaddlq_u32(vpaddlq_u16(vpaddlq_u8(acc))));
        }
        d[i] = (uint16_t)vgetq_lane_u64(total, 0);
        d[i + 1] = (uint16_t)vgetq_lane_u64(total, 1);
    }
    for (; i < n; i++) {
        uint32_t s = 0;
        for (uint32_t w = 0; w < words; w++) s += popcount_swar(planes[(uint64_t)w * stride + r0 + i] ^ q[w]);
        d[i] = (uint16_t)s;
    }
}
#endif

/* ------------------------------------------------------------------ dispatch */
static block_fn chosen;
static const char *chosen_name;

static void detect(void) {
#if defined(__ARM_NEON) || defined(__ARM_NEON__)
    chosen = block_neon;
    chosen_name = "neon";
#elif defined(__x86_64__) || defined(__i386__)
    /* Hardware POPCNT on one 64-bit word per cycle beats the AVX2 nibble lookup for the
     * code widths used here (measured in benchmarks/bench_index.py); AVX2 stays available. */
    if (have_popcnt()) {
        chosen = block_popcnt;
        chosen_name = "popcnt";
    } else if (have_avx2()) {
        chosen = block_avx2;
        chosen_name = "avx2";
    } else {
        chosen = block_portable;
        chosen_name = "portable";
    }
#else
    chosen = block_portable;
    chosen_name = "portable";
#endif
}

static int streq(const char *a, const char *b) {
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

int es_hamming_abi(void) { return ES_HAMMING_ABI; }

const char *es_hamming_kernel(void) {
    if (!chosen) detect();
    return chosen_name;
}

int es_hamming_force(const char *name) {
    if (!name) return -1;
    if (streq(name, "auto")) {
        detect();
        return 0;
    }
    if (streq(name, "portable")) {
        chosen = block_portable;
        chosen_name = "portable";
        return 0;
    }
#if defined(__x86_64__) || defined(__i386__)
    if (streq(name, "popcnt") && have_popcnt()) {
        chosen = block_popcnt;
        chosen_name = "popcnt";
        return 0;
    }
    if (streq(name, "avx2") && have_avx2()) {
        chosen = block_avx2;
        chosen_name = "avx2";
        return 0;
    }
#endif
#if defined(__ARM_NEON) || defined(__ARM_NEON__)
    if (streq(name, "neon")) {
        chosen = block_neon;
        chosen_name = "neon";
        return 0;
    }
#endif
    return -1;
}

static int bad_args(const uint64_t *planes, uint64_t count, uint64_t stride, uint32_t words) {
    return (!planes && count) || words == 0 || words > 64 || stride < count;
}

int es_hamming_distances(const uint64_t *planes, uint64_t count, uint64_t stride, uint32_t words,
                         const uint64_t *q, uint32_t *out) {
    if (bad_args(planes, count, stride, words) || !q || (!out && count)) return -1;
    if (!chosen) detect();
    uint16_t d[BLOCK];
    for (uint64_t r0 = 0; r0 < count; r0 += BLOCK) {
        uint32_t n = count - r0 < BLOCK ? (uint32_t)(count - r0) : BLOCK;
        chosen(planes, stride, words, r0, n, q, d);
        for (uint32_t i = 0; i < n; i++) out[r0 + i] = d[i];
    }
    return 0;
}

int es_hamming_topk(const uint64_t *planes, uint64_t count, uint64_t stride, uint32_t words,
                    const uint64_t *queries, uint64_t nq, const uint8_t *deleted, uint32_t k, int32_t *out_dist,
                    int64_t *out_rows) {
    if (bad_args(planes, count, stride, words) || !queries || k == 0 || !out_dist || !out_rows) return -1;
    if (!chosen) detect();
    uint16_t d[BLOCK];
    for (uint64_t qi = 0; qi < nq; qi++) {
        const uint64_t *q = queries + qi * words;
        int32_t *bd = out_dist + qi * k;
        int64_t *br = out_rows + qi * k;
        uint32_t filled = 0;
        int32_t worst = 0x7FFFFFFF; /* accept d < worst */
        for (uint64_t r0 = 0; r0 < count; r0 += BLOCK) {
            uint32_t n = count - r0 < BLOCK ? (uint32_t)(count - r0) : BLOCK;
            chosen(planes, stride, words, r0, n, q, d);
            for (uint32_t i = 0; i < n; i++) {
                int32_t dist = d[i];
                if (dist >= worst) continue;
                uint64_t row = r0 + i;
                if (deleted && ((deleted[row >> 3] >> (row & 7)) & 1)) continue;
                /* insert after every entry with distance <= dist: equal distances keep row order */
                uint32_t pos = filled < k ? filled : k - 1;
                while (pos > 0 && bd[pos - 1] > dist) {
                    bd[pos] = bd[pos - 1];
                    br[pos] = br[pos - 1];
                    pos--;
                }
                bd[pos] = dist;
                br[pos] = (int64_t)row;
                if (filled < k) filled++;
                if (filled == k) worst = bd[k - 1];
            }
            if (filled == k && worst == 0) break;
        }
        for (uint32_t j = filled; j < k; j++) {
            bd[j] = -1;
            br[j] = -1;
        }
    }
    return 0;
}
