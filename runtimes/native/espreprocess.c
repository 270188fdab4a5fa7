/* See espreprocess.h. One output row at a time: vertical pass into a float line (only the source
 * columns the horizontal taps read), horizontal pass into a float row, round + clamp to uint8,
 * then the uint8 row is written out or looked up in the channel tables and split into planes.
 *
 * Bit-exactness with the numpy path rests on doing the same IEEE float32 operations in the same
 * order: every product is rounded before it is added (no fused multiply-add: the Makefile passes
 * -ffp-contract=off, and clang also gets the pragma below), SIMD lanes only ever hold independent
 * outputs, and the taps are summed in their given order. */
#include "espreprocess.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define TAP_GROUP 16 /* taps summed per vertical call (bounded stack for gathered rows) */
#define CHUNK 128    /* pixels of a gathered row */
#define LINE_PAD 8   /* floats after the line and the output row: 4-lane loads/stores of a 3-float pixel */

typedef void (*vert_fn)(const uint8_t *const *rows, const float *w, uint32_t taps, uint32_t n, float *acc,
                        int init);
typedef void (*horiz_fn)(const float *line, const int32_t *ix, const float *wx, uint32_t tx, uint32_t out_w,
                         float *orow);
typedef void (*round_fn)(const float *v, uint32_t n, uint8_t *out);

/* ------------------------------------------------------------------ portable */
/* acc[i] (= 0 if init) + sum over taps of rows[k][i] * w[k], in tap order. */
static void vert_portable(const uint8_t *const *rows, const float *w, uint32_t taps, uint32_t n, float *acc,
                          int init) {
    uint32_t k = 0;
    if (init) {
        const uint8_t *r = rows[0];
        float wk = w[0];
        for (uint32_t i = 0; i < n; i++) acc[i] = (float)r[i] * wk;
        k = 1;
    }
    for (; k < taps; k++) {
        const uint8_t *r = rows[k];
        float wk = w[k];
        for (uint32_t i = 0; i < n; i++) acc[i] = acc[i] + (float)r[i] * wk;
    }
}

static void horiz_portable(const float *line, const int32_t *ix, const float *wx, uint32_t tx, uint32_t out_w,
                           float *orow) {
    for (uint32_t x = 0; x < out_w; x++) {
        const int32_t *xi = ix + (uint64_t)x * tx;
        const float *xw = wx + (uint64_t)x * tx;
        const float *p = line + 3 * (uint64_t)xi[0];
        float w = xw[0];
        float a0 = p[0] * w, a1 = p[1] * w, a2 = p[2] * w;
        for (uint32_t k = 1; k < tx; k++) {
            p = line + 3 * (uint64_t)xi[k];
            w = xw[k];
            a0 = a0 + p[0] * w;
            a1 = a1 + p[1] * w;
            a2 = a2 + p[2] * w;
        }
        orow[3 * x] = a0;
        orow[3 * x + 1] = a1;
        orow[3 * x + 2] = a2;
    }
}

/* np.rint (half to even) then clip to 0..255. Adding then subtracting 1.5 * 2^23 leaves no
 * fraction bits, so the FPU's round-to-nearest-even does the rounding (exact for |v| < 2^22). */
static inline uint8_t round_clamp(float v) {
    if (!(v > 0.0f)) return 0; /* also NaN */
    if (v >= 255.0f) return 255;
    float r = (v + 12582912.0f) - 12582912.0f;
    return (uint8_t)(int32_t)r;
}

static void round_portable(const float *v, uint32_t n, uint8_t *out) {
    for (uint32_t i = 0; i < n; i++) out[i] = round_clamp(v[i]);
}

/* Pillow's fixed point (Resample.c): sums start at 2^(BITS-1), the result is (sum >> BITS)
 * clipped to 0..255 (its clip8 lookup; >> of a negative int is arithmetic with gcc and clang). */
#define PIL_BITS 22
#define PIL_HALF (1 << (PIL_BITS - 1))

static inline uint8_t clip8(int32_t v) {
    v >>= PIL_BITS;
    return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

/* 4 bytes holding a pixel (the 4th is ignored); the last column is assembled from 3 bytes so that
 * nothing past the image is read. */
static inline uint32_t load_px(const uint8_t *row, uint32_t col, uint32_t src_w) {
    const uint8_t *p = row + 3 * (uint64_t)col;
    if (col + 1 < src_w) {
        uint32_t v;
        __builtin_memcpy(&v, p, 4);
        return v;
    }
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
}

typedef void (*hpil_fn)(const uint8_t *row, uint32_t src_w, const int32_t *ix, const int32_t *kx, uint32_t tx,
                        uint32_t out_w, uint8_t *dst);
typedef void (*vpil_fn)(const uint8_t *const *rows, const int32_t *k, uint32_t taps, uint32_t n, int32_t *acc,
                        int init);
typedef void (*cpil_fn)(const int32_t *acc, uint32_t n, uint8_t *dst);

static void hpil_portable(const uint8_t *row, uint32_t src_w, const int32_t *ix, const int32_t *kx, uint32_t tx,
                          uint32_t out_w, uint8_t *dst) {
    (void)src_w;
    for (uint32_t x = 0; x < out_w; x++) {
        const int32_t *xi = ix + (uint64_t)x * tx;
        const int32_t *xk = kx + (uint64_t)x * tx;
        int32_t s0 = PIL_HALF, s1 = PIL_HALF, s2 = PIL_HALF;
        for (uint32_t k = 0; k < tx; k++) {
            const uint8_t *p = row + 3 * (uint64_t)xi[k];
            s0 += p[0] * xk[k];
            s1 += p[1] * xk[k];
            s2 += p[2] * xk[k];
        }
        dst[3 * x] = clip8(s0);
        dst[3 * x + 1] = clip8(s1);
        dst[3 * x + 2] = clip8(s2);
    }
}

static void vpil_portable(const uint8_t *const *rows, const int32_t *k, uint32_t taps, uint32_t n, int32_t *acc,
                          int init) {
    if (init)
        for (uint32_t i = 0; i < n; i++) acc[i] = PIL_HALF;
    for (uint32_t t = 0; t < taps; t++) {
        const uint8_t *r = rows[t];
        int32_t c = k[t];
        for (uint32_t i = 0; i < n; i++) acc[i] += r[i] * c;
    }
}

static void cpil_portable(const int32_t *acc, uint32_t n, uint8_t *dst) {
    for (uint32_t i = 0; i < n; i++) dst[i] = clip8(acc[i]);
}

/* ------------------------------------------------------------------ x86 AVX2 */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

__attribute__((target("avx2"))) static inline __m256 u8x8_to_ps(const uint8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* 32 outputs per iteration in four registers, all taps summed before one store. */
__attribute__((target("avx2"))) static void vert_avx2(const uint8_t *const *rows, const float *w, uint32_t taps,
                                                      uint32_t n, float *acc, int init) {
    uint32_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 a0, a1, a2, a3;
        uint32_t k = 0;
        if (init) {
            const uint8_t *p = rows[0] + i;
            __m256 wk = _mm256_set1_ps(w[0]);
            a0 = _mm256_mul_ps(u8x8_to_ps(p), wk);
            a1 = _mm256_mul_ps(u8x8_to_ps(p + 8), wk);
            a2 = _mm256_mul_ps(u8x8_to_ps(p + 16), wk);
            a3 = _mm256_mul_ps(u8x8_to_ps(p + 24), wk);
            k = 1;
        } else {
            a0 = _mm256_loadu_ps(acc + i);
            a1 = _mm256_loadu_ps(acc + i + 8);
            a2 = _mm256_loadu_ps(acc + i + 16);
            a3 = _mm256_loadu_ps(acc + i + 24);
        }
        for (; k < taps; k++) {
            const uint8_t *p = rows[k] + i;
            __m256 wk = _mm256_set1_ps(w[k]);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(u8x8_to_ps(p), wk));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(u8x8_to_ps(p + 8), wk));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(u8x8_to_ps(p + 16), wk));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(u8x8_to_ps(p + 24), wk));
        }
        _mm256_storeu_ps(acc + i, a0);
        _mm256_storeu_ps(acc + i + 8, a1);
        _mm256_storeu_ps(acc + i + 16, a2);
        _mm256_storeu_ps(acc + i + 24, a3);
    }
    for (; i + 8 <= n; i += 8) {
        uint32_t k = 0;
        __m256 a;
        if (init) {
            a = _mm256_mul_ps(u8x8_to_ps(rows[0] + i), _mm256_set1_ps(w[0]));
            k = 1;
        } else {
            a = _mm256_loadu_ps(acc + i);
        }
        for (; k < taps; k++) a = _mm256_add_ps(a, _mm256_mul_ps(u8x8_to_ps(rows[k] + i), _mm256_set1_ps(w[k])));
        _mm256_storeu_ps(acc + i, a);
    }
    if (i < n) {
        const uint8_t *tail[TAP_GROUP];
        for (uint32_t k = 0; k < taps; k++) tail[k] = rows[k] + i;
        vert_portable(tail, w, taps, n - i, acc + i, init);
    }
}

/* One pixel (3 floats + 1 ignored lane) per 128-bit register: the line and the row are padded. */
__attribute__((target("avx2"))) static void horiz_avx2(const float *line, const int32_t *ix, const float *wx,
                                                       uint32_t tx, uint32_t out_w, float *orow) {
    for (uint32_t x = 0; x < out_w; x++) {
        const int32_t *xi = ix + (uint64_t)x * tx;
        const float *xw = wx + (uint64_t)x * tx;
        __m128 a = _mm_mul_ps(_mm_loadu_ps(line + 3 * (uint64_t)xi[0]), _mm_set1_ps(xw[0]));
        for (uint32_t k = 1; k < tx; k++)
            a = _mm_add_ps(a, _mm_mul_ps(_mm_loadu_ps(line + 3 * (uint64_t)xi[k]), _mm_set1_ps(xw[k])));
        _mm_storeu_ps(orow + 3 * (uint64_t)x, a);
    }
}

/* cvtps rounds half to even (the default MXCSR mode), the saturating packs clamp to 0..255. */
__attribute__((target("avx2"))) static void round_avx2(const float *v, uint32_t n, uint8_t *out) {
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i r0 = _mm_cvtps_epi32(_mm_loadu_ps(v + i));
        __m128i r1 = _mm_cvtps_epi32(_mm_loadu_ps(v + i + 4));
        __m128i r2 = _mm_cvtps_epi32(_mm_loadu_ps(v + i + 8));
        __m128i r3 = _mm_cvtps_epi32(_mm_loadu_ps(v + i + 12));
        __m128i b = _mm_packus_epi16(_mm_packs_epi32(r0, r1), _mm_packs_epi32(r2, r3));
        _mm_storeu_si128((__m128i *)(out + i), b);
    }
    for (; i < n; i++) out[i] = round_clamp(v[i]);
}

/* Two output pixels per 256-bit register (one per 128-bit half, 3 channels + 1 ignored lane). */
__attribute__((target("avx2"))) static void hpil_avx2(const uint8_t *row, uint32_t src_w, const int32_t *ix,
                                                      const int32_t *kx, uint32_t tx, uint32_t out_w, uint8_t *dst) {
    uint32_t x = 0;
    for (; x + 2 <= out_w; x += 2) {
        const int32_t *xi = ix + (uint64_t)x * tx, *xi1 = xi + tx;
        const int32_t *xk = kx + (uint64_t)x * tx, *xk1 = xk + tx;
        __m256i s = _mm256_set1_epi32(PIL_HALF);
        for (uint32_t k = 0; k < tx; k++) {
            __m128i p0 = _mm_cvtsi32_si128((int)load_px(row, (uint32_t)xi[k], src_w));
            __m128i p1 = _mm_cvtsi32_si128((int)load_px(row, (uint32_t)xi1[k], src_w));
            __m256i px = _mm256_cvtepu8_epi32(_mm_unpacklo_epi32(p0, p1)); /* lanes 0-3: p0, 4-7: p1 */
            __m256i c = _mm256_setr_epi32(xk[k], xk[k], xk[k], xk[k], xk1[k], xk1[k], xk1[k], xk1[k]);
            s = _mm256_add_epi32(s, _mm256_mullo_epi32(px, c));
        }
        s = _mm256_srai_epi32(s, PIL_BITS);
        __m128i h = _mm_packs_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        uint64_t v;
        _mm_storel_epi64((__m128i *)&v, _mm_packus_epi16(h, h));
        dst[3 * x] = (uint8_t)v;
        dst[3 * x + 1] = (uint8_t)(v >> 8);
        dst[3 * x + 2] = (uint8_t)(v >> 16);
        dst[3 * x + 3] = (uint8_t)(v >> 32);
        dst[3 * x + 4] = (uint8_t)(v >> 40);
        dst[3 * x + 5] = (uint8_t)(v >> 48);
    }
    for (; x < out_w; x++) {
        const int32_t *xi = ix + (uint64_t)x * tx;
        const int32_t *xk = kx + (uint64_t)x * tx;
        __m128i s = _mm_set1_epi32(PIL_HALF);
        for (uint32_t k = 0; k < tx; k++) {
            __m128i px = _mm_cvtepu8_epi32(_mm_cvtsi32_si128((int)load_px(row, (uint32_t)xi[k], src_w)));
            s = _mm_add_epi32(s, _mm_mullo_epi32(px, _mm_set1_epi32(xk[k])));
        }
        s = _mm_srai_epi32(s, PIL_BITS);
        uint32_t v = (uint32_t)_mm_cvtsi128_si32(_mm_packus_epi16(_mm_packs_epi32(s, s), s));
        dst[3 * x] = (uint8_t)v;
        dst[3 * x + 1] = (uint8_t)(v >> 8);
        dst[3 * x + 2] = (uint8_t)(v >> 16);
    }
}

__attribute__((target("avx2"))) static inline __m256i u8x8_to_epi32(const uint8_t *p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
}

__attribute__((target("avx2"))) static void vpil_avx2(const uint8_t *const *rows, const int32_t *k, uint32_t taps,
                                                      uint32_t n, int32_t *acc, int init) {
    uint32_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i a0, a1, a2, a3;
        if (init) {
            a0 = a1 = a2 = a3 = _mm256_set1_epi32(PIL_HALF);
        } else {
            a0 = _mm256_loadu_si256((const __m256i *)(acc + i));
            a1 = _mm256_loadu_si256((const __m256i *)(acc + i + 8));
            a2 = _mm256_loadu_si256((const __m256i *)(acc + i + 16));
            a3 = _mm256_loadu_si256((const __m256i *)(acc + i + 24));
        }
        for (uint32_t t = 0; t < taps; t++) {
            const uint8_t *p = rows[t] + i;
            __m256i c = _mm256_set1_epi32(k[t]);
            a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(u8x8_to_epi32(p), c));
            a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(u8x8_to_epi32(p + 8), c));
            a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(u8x8_to_epi32(p + 16), c));
            a3 = _mm256_add_epi32(a3, _mm256_mullo_epi32(u8x8_to_epi32(p + 24), c));
        }
        _mm256_storeu_si256((__m256i *)(acc + i), a0);
        _mm256_storeu_si256((__m256i *)(acc + i + 8), a1);
        _mm256_storeu_si256((__m256i *)(acc + i + 16), a2);
        _mm256_storeu_si256((__m256i *)(acc + i + 24), a3);
    }
    if (i < n) {
        const uint8_t *tail[TAP_GROUP];
        for (uint32_t t = 0; t < taps; t++) tail[t] = rows[t] + i;
        vpil_portable(tail, k, taps, n - i, acc + i, init);
    }
}

__attribute__((target("avx2"))) static void cpil_avx2(const int32_t *acc, uint32_t n, uint8_t *dst) {
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i r0 = _mm_srai_epi32(_mm_loadu_si128((const __m128i *)(acc + i)), PIL_BITS);
        __m128i r1 = _mm_srai_epi32(_mm_loadu_si128((const __m128i *)(acc + i + 4)), PIL_BITS);
        __m128i r2 = _mm_srai_epi32(_mm_loadu_si128((const __m128i *)(acc + i + 8)), PIL_BITS);
        __m128i r3 = _mm_srai_epi32(_mm_loadu_si128((const __m128i *)(acc + i + 12)), PIL_BITS);
        _mm_storeu_si128((__m128i *)(dst + i), _mm_packus_epi16(_mm_packs_epi32(r0, r1), _mm_packs_epi32(r2, r3)));
    }
    for (; i < n; i++) dst[i] = clip8(acc[i]);
}

static void pre_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static int pre_have_avx2(void) {
    uint32_t r[4];
    pre_cpuid(0, 0, r);
    if (r[0] < 7) return 0;
    pre_cpuid(1, 0, r);
    if (!((r[2] >> 27) & 1) || !((r[2] >> 28) & 1)) return 0; /* OSXSAVE, AVX */
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    if ((lo & 6) != 6) return 0; /* the OS saves XMM and YMM state */
    pre_cpuid(7, 0, r);
    return (r[1] >> 5) & 1;
}
#endif

/* ------------------------------------------------------------------ ARM NEON (aarch64, armv7) */
#if defined(__ARM_NEON) || defined(__ARM_NEON__)
#include <arm_neon.h>

static void vert_neon(const uint8_t *const *rows, const float *w, uint32_t taps, uint32_t n, float *acc,
                      int init) {
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        float32x4_t a0, a1, a2, a3;
        uint32_t k = 0;
        if (init) {
            a0 = a1 = a2 = a3 = vdupq_n_f32(0.0f);
        } else {
            a0 = vld1q_f32(acc + i);
            a1 = vld1q_f32(acc + i + 4);
            a2 = vld1q_f32(acc + i + 8);
            a3 = vld1q_f32(acc + i + 12);
        }
        for (; k < taps; k++) {
            uint8x16_t b = vld1q_u8(rows[k] + i);
            uint16x8_t lo = vmovl_u8(vget_low_u8(b)), hi = vmovl_u8(vget_high_u8(b));
            float32x4_t wk = vdupq_n_f32(w[k]);
            float32x4_t p0 = vmulq_f32(vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))), wk);
            float32x4_t p1 = vmulq_f32(vcvtq_f32_u32(vmovl_u16(vget_high_u16(lo))), wk);
            float32x4_t p2 = vmulq_f32(vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))), wk);
            float32x4_t p3 = vmulq_f32(vcvtq_f32_u32(vmovl_u16(vget_high_u16(hi))), wk);
            if (init && k == 0) {
                a0 = p0, a1 = p1, a2 = p2, a3 = p3;
            } else {
                a0 = vaddq_f32(a0, p0), a1 = vaddq_f32(a1, p1), a2 = vaddq_f32(a2, p2), a3 = vaddq_f32(a3, p3);
            }
        }
        vst1q_f32(acc + i, a0);
        vst1q_f32(acc + i + 4, a1);
        vst1q_f32(acc + i + 8, a2);
        vst1q_f32(acc + i + 12, a3);
    }
    if (i < n) {
        const uint8_t *tail[TAP_GROUP];
        for (uint32_t k = 0; k < taps; k++) tail[k] = rows[k] + i;
        vert_portable(tail, w, taps, n - i, acc + i, init);
    }
}

static void horiz_neon(const float *line, const int32_t *ix, const float *wx, uint32_t tx, uint32_t out_w,
                       float *orow) {
    for (uint32_t x = 0; x < out_w; x++) {
        const int32_t *xi = ix + (uint64_t)x * tx;
        const float *xw = wx + (uint64_t)x * tx;
        float32x4_t a = vmulq_f32(vld1q_f32(line + 3 * (uint64_t)xi[0]), vdupq_n_f32(xw[0]));
        for (uint32_t k = 1; k < tx; k++)
            a = vaddq_f32(a, vmulq_f32(vld1q_f32(line + 3 * (uint64_t)xi[k]), vdupq_n_f32(xw[k])));
        vst1q_f32(orow + 3 * (uint64_t)x, a);
    }
}

static inline int32x4_t rint_s32(float32x4_t v) {
#if defined(__aarch64__)
    return vcvtnq_s32_f32(v); /* to nearest, ties to even */
#else
    /* armv7 NEON converts by truncation: round first (1.5 * 2^23 trick, as round_clamp) */
    float32x4_t m = vdupq_n_f32(12582912.0f);
    return vcvtq_s32_f32(vsubq_f32(vaddq_f32(v, m), m));
#endif
}

static void round_neon(const float *v, uint32_t n, uint8_t *out) {
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        int16x8_t s0 = vcombine_s16(vqmovn_s32(rint_s32(vld1q_f32(v + i))), vqmovn_s32(rint_s32(vld1q_f32(v + i + 4))));
        int16x8_t s1 = vcombine_s16(vqmovn_s32(rint_s32(vld1q_f32(v + i + 8))),
                                    vqmovn_s32(rint_s32(vld1q_f32(v + i + 12))));
        vst1q_u8(out + i, vcombine_u8(vqmovun_s16(s0), vqmovun_s16(s1)));
    }
    for (; i < n; i++) out[i] = round_clamp(v[i]);
}

static void hpil_neon(const uint8_t *row, uint32_t src_w, const int32_t *ix, const int32_t *kx, uint32_t tx,
                      uint32_t out_w, uint8_t *dst) {
    for (uint32_t x = 0; x < out_w; x++) {
        const int32_t *xi = ix + (uint64_t)x * tx;
        const int32_t *xk = kx + (uint64_t)x * tx;
        int32x4_t s = vdupq_n_s32(PIL_HALF);
        for (uint32_t k = 0; k < tx; k++) {
            uint8x8_t b = vcreate_u8((uint64_t)load_px(row, (uint32_t)xi[k], src_w));
            int32x4_t px = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(vmovl_u8(b))));
            s = vmlaq_n_s32(s, px, xk[k]);
        }
        int16x4_t h = vqmovn_s32(vshrq_n_s32(s, PIL_BITS));
        uint32_t v = vget_lane_u32(vreinterpret_u32_u8(vqmovun_s16(vcombine_s16(h, h))), 0);
        dst[3 * x] = (uint8_t)v;
        dst[3 * x + 1] = (uint8_t)(v >> 8);
        dst[3 * x + 2] = (uint8_t)(v >> 16);
    }
}

static void vpil_neon(const uint8_t *const *rows, const int32_t *k, uint32_t taps, uint32_t n, int32_t *acc,
                      int init) {
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        int32x4_t a0, a1, a2, a3;
        if (init) {
            a0 = a1 = a2 = a3 = vdupq_n_s32(PIL_HALF);
        } else {
            a0 = vld1q_s32(acc + i);
            a1 = vld1q_s32(acc + i + 4);
            a2 = vld1q_s32(acc + i + 8);
            a3 = vld1q_s32(acc + i + 12);
        }
        for (uint32_t t = 0; t < taps; t++) {
            uint8x16_t b = vld1q_u8(rows[t] + i);
            uint16x8_t lo = vmovl_u8(vget_low_u8(b)), hi = vmovl_u8(vget_high_u8(b));
            a0 = vmlaq_n_s32(a0, vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(lo))), k[t]);
            a1 = vmlaq_n_s32(a1, vreinterpretq_s32_u32(vmovl_u16(vget_high_u16(lo))), k[t]);
            a2 = vmlaq_n_s32(a2, vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(hi))), k[t]);
            a3 = vmlaq_n_s32(a3, vreinterpretq_s32_u32(vmovl_u16(vget_high_u16(hi))), k[t]);
        }
        vst1q_s32(acc + i, a0);
        vst1q_s32(acc + i + 4, a1);
        vst1q_s32(acc + i + 8, a2);
        vst1q_s32(acc + i + 12, a3);
    }
    if (i < n) {
        const uint8_t *tail[TAP_GROUP];
        for (uint32_t t = 0; t < taps; t++) tail[t] = rows[t] + i;
        vpil_portable(tail, k, taps, n - i, acc + i, init);
    }
}

static void cpil_neon(const int32_t *acc, uint32_t n, uint8_t *dst) {
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        int16x8_t s0 = vcombine_s16(vqmovn_s32(vshrq_n_s32(vld1q_s32(acc + i), PIL_BITS)),
                                    vqmovn_s32(vshrq_n_s32(vld1q_s32(acc + i + 4), PIL_BITS)));
        int16x8_t s1 = vcombine_s16(vqmovn_s32(vshrq_n_s32(vld1q_s32(acc + i + 8), PIL_BITS)),
                                    vqmovn_s32(vshrq_n_s32(vld1q_s32(acc + i + 12), PIL_BITS)));
        vst1q_u8(dst + i, vcombine_u8(vqmovun_s16(s0), vqmovun_s16(s1)));
    }
    for (; i < n; i++) dst[i] = clip8(acc[i]);
}
#endif

/* ------------------------------------------------------------------ dispatch */
typedef struct {
    const char *name;
    vert_fn vert;
    horiz_fn horiz;
    round_fn round;
    hpil_fn hpil;
    vpil_fn vpil;
    cpil_fn cpil;
} kernels;

static const kernels k_portable = {"portable",    vert_portable, horiz_portable, round_portable,
                                   hpil_portable, vpil_portable, cpil_portable};
#if defined(__x86_64__) || defined(__i386__)
static const kernels k_avx2 = {"avx2", vert_avx2, horiz_avx2, round_avx2, hpil_avx2, vpil_avx2, cpil_avx2};
#endif
#if defined(__ARM_NEON) || defined(__ARM_NEON__)
static const kernels k_neon = {"neon", vert_neon, horiz_neon, round_neon, hpil_neon, vpil_neon, cpil_neon};
#endif

static const kernels *chosen;

static void detect(void) {
#if defined(__ARM_NEON) || defined(__ARM_NEON__)
    chosen = &k_neon;
#elif defined(__x86_64__) || defined(__i386__)
    chosen = pre_have_avx2() ? &k_avx2 : &k_portable;
#else
    chosen = &k_portable;
#endif
}

static int pre_streq(const char *a, const char *b) {
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

int es_pre_abi(void) { return ES_PRE_ABI; }

const char *es_pre_kernel(void) {
    if (!chosen) detect();
    return chosen->name;
}

int es_pre_force(const char *name) {
    if (!name) return -1;
    if (pre_streq(name, "auto")) {
        detect();
        return 0;
    }
    if (pre_streq(name, "portable")) {
        chosen = &k_portable;
        return 0;
    }
#if defined(__x86_64__) || defined(__i386__)
    if (pre_streq(name, "avx2") && pre_have_avx2()) {
        chosen = &k_avx2;
        return 0;
    }
#endif
#if defined(__ARM_NEON) || defined(__ARM_NEON__)
    if (pre_streq(name, "neon")) {
        chosen = &k_neon;
        return 0;
    }
#endif
    return -1;
}

uint64_t es_pre_scratch_floats(uint32_t ncols, uint32_t out_w) {
    return 3 * (uint64_t)ncols + LINE_PAD + 3 * (uint64_t)out_w + LINE_PAD;
}

uint64_t es_pre_scratch_bytes(uint32_t ncols, uint32_t out_w) {
    (void)ncols;
    return 3 * (uint64_t)out_w + 64 + (uint64_t)TAP_GROUP * CHUNK * 3;
}

/* One uint8 RGB output row to the caller's layout: uint8 HWC (copied unless already there) or
 * float32 planes through the channel tables. */
static void emit_row(const uint8_t *r8, uint32_t out_w, const float *luts, void *out, uint64_t y,
                     uint64_t out_row_stride, uint64_t out_plane_stride) {
    if (!luts) {
        uint8_t *o = (uint8_t *)out + y * out_row_stride;
        if (o != r8)
            for (uint64_t i = 0; i < 3 * (uint64_t)out_w; i++) o[i] = r8[i];
        return;
    }
    float *o0 = (float *)out + y * out_row_stride;
    float *o1 = o0 + out_plane_stride, *o2 = o1 + out_plane_stride;
    const float *l0 = luts, *l1 = luts + 256, *l2 = luts + 512;
    for (uint32_t x = 0; x < out_w; x++) {
        o0[x] = l0[r8[3 * x]];
        o1[x] = l1[r8[3 * x + 1]];
        o2[x] = l2[r8[3 * x + 2]];
    }
}

static int indices_ok(const int32_t *v, uint64_t n, uint32_t bound) {
    for (uint64_t i = 0; i < n; i++)
        if (v[i] < 0 || (uint32_t)v[i] >= bound) return 0;
    return 1;
}

int es_pre_resize(const uint8_t *src, uint32_t src_h, uint32_t src_w, uint64_t src_row_stride, uint32_t out_h,
                  uint32_t out_w, uint32_t ty, const int32_t *iy, const float *wy, uint32_t ncols,
                  const int32_t *cols, uint32_t tx, const int32_t *ix, const float *wx, const float *luts,
                  void *out, uint64_t out_row_stride, uint64_t out_plane_stride, float *scratch,
                  uint8_t *scratch_bytes) {
    if (!src || !iy || !wy || !ix || !wx || !out || !scratch || !scratch_bytes) return -1;
    if (!src_h || !src_w || !out_h || !out_w || !ty || !tx || !ncols) return -1;
    if (cols ? ncols > src_w : ncols != src_w) return -1;
    if (src_row_stride < 3 * (uint64_t)src_w) return -1;
    if (!indices_ok(iy, (uint64_t)out_h * ty, src_h) || !indices_ok(ix, (uint64_t)out_w * tx, ncols)) return -1;
    if (cols && !indices_ok(cols, ncols, src_w)) return -1;
    if (!chosen) detect();
    const kernels *kn = chosen;

    float *line = scratch;
    float *orow = scratch + 3 * (uint64_t)ncols + LINE_PAD;
    for (uint32_t i = 0; i < LINE_PAD; i++) line[3 * (uint64_t)ncols + i] = 0.0f; /* read by the last pixel's load */
    uint8_t *row8 = scratch_bytes;
    uint8_t *gather = scratch_bytes + 3 * (uint64_t)out_w + 64;
    const uint8_t *rp[TAP_GROUP];

    for (uint32_t y = 0; y < out_h; y++) {
        const int32_t *yi = iy + (uint64_t)y * ty;
        const float *yw = wy + (uint64_t)y * ty;
        if (!cols) {
            for (uint32_t k0 = 0; k0 < ty; k0 += TAP_GROUP) {
                uint32_t g = ty - k0 < TAP_GROUP ? ty - k0 : TAP_GROUP;
                for (uint32_t j = 0; j < g; j++) rp[j] = src + (uint64_t)yi[k0 + j] * src_row_stride;
                kn->vert(rp, yw + k0, g, 3 * src_w, line, k0 == 0);
            }
        } else {
            for (uint32_t c0 = 0; c0 < ncols; c0 += CHUNK) {
                uint32_t m = ncols - c0 < CHUNK ? ncols - c0 : CHUNK;
                for (uint32_t k0 = 0; k0 < ty; k0 += TAP_GROUP) {
                    uint32_t g = ty - k0 < TAP_GROUP ? ty - k0 : TAP_GROUP;
                    for (uint32_t j = 0; j < g; j++) {
                        const uint8_t *s = src + (uint64_t)yi[k0 + j] * src_row_stride;
                        uint8_t *d = gather + (uint64_t)j * CHUNK * 3;
                        for (uint32_t c = 0; c < m; c++) {
                            const uint8_t *px = s + 3 * (uint64_t)cols[c0 + c];
                            d[3 * c] = px[0];
                            d[3 * c + 1] = px[1];
                            d[3 * c + 2] = px[2];
                        }
                        rp[j] = d;
                    }
                    kn->vert(rp, yw + k0, g, 3 * m, line + 3 * (uint64_t)c0, k0 == 0);
                }
            }
        }
        kn->horiz(line, ix, wx, tx, out_w, orow);
        uint8_t *r8 = luts ? row8 : (uint8_t *)out + (uint64_t)y * out_row_stride;
        kn->round(orow, 3 * out_w, r8);
        emit_row(r8, out_w, luts, out, y, out_row_stride, out_plane_stride);
    }
    return 0;
}

uint64_t es_pre_pil_scratch_bytes(uint32_t src_w, uint32_t out_h, uint32_t out_w, uint32_t rows,
                                  int vertical_first) {
    uint64_t tmp = vertical_first ? 3 * (uint64_t)out_h * src_w : 3 * (uint64_t)rows * out_w;
    return tmp + 3 * (uint64_t)out_w + 64;
}

uint64_t es_pre_pil_scratch_ints(uint32_t src_w, uint32_t out_w) {
    return 3 * (uint64_t)(src_w > out_w ? src_w : out_w) + 8;
}

/* Sum the vertical taps of output row y over rows t + iy * ts, n values, into dst (uint8). */
static void pil_vertical_row(const kernels *kn, const uint8_t *t, uint64_t ts, const int32_t *yi, const int32_t *yk,
                             uint32_t ty, uint32_t n, int32_t *acc, uint8_t *dst) {
    const uint8_t *rp[TAP_GROUP];
    for (uint32_t k0 = 0; k0 < ty; k0 += TAP_GROUP) {
        uint32_t g = ty - k0 < TAP_GROUP ? ty - k0 : TAP_GROUP;
        for (uint32_t j = 0; j < g; j++) rp[j] = t + (uint64_t)yi[k0 + j] * ts;
        kn->vpil(rp, yk + k0, g, n, acc, k0 == 0);
    }
    kn->cpil(acc, n, dst);
}

int es_pre_resize_pil(const uint8_t *src, uint32_t src_h, uint32_t src_w, uint64_t src_row_stride, uint32_t out_h,
                      uint32_t out_w, uint32_t y0, uint32_t rows, uint32_t tx, const int32_t *ix, const int32_t *kx,
                      uint32_t ty, const int32_t *iy, const int32_t *ky, int vertical_first, const float *luts,
                      void *out, uint64_t out_row_stride, uint64_t out_plane_stride, uint8_t *scratch_bytes,
                      int32_t *scratch_int) {
    if (!src || !out || !scratch_bytes || !scratch_int) return -1;
    if (!src_h || !src_w || !out_h || !out_w || !rows) return -1;
    if (src_row_stride < 3 * (uint64_t)src_w || (uint64_t)y0 + rows > src_h) return -1;
    if (kx ? !ix || !tx || !indices_ok(ix, (uint64_t)out_w * tx, src_w) : out_w != src_w) return -1;
    if (ky ? !iy || !ty || !indices_ok(iy, (uint64_t)out_h * ty, rows) : out_h != rows) return -1;
    if (!chosen) detect();
    const kernels *kn = chosen;

    uint8_t *row8 = scratch_bytes;
    uint8_t *tmp = scratch_bytes + 3 * (uint64_t)out_w + 64;
    const uint8_t *t = src + (uint64_t)y0 * src_row_stride; /* the rows the vertical pass reads */
    uint64_t ts = src_row_stride;
    if (vertical_first && kx && ky) {
        uint64_t ws = 3 * (uint64_t)src_w;
        for (uint32_t y = 0; y < out_h; y++)
            pil_vertical_row(kn, t, ts, iy + (uint64_t)y * ty, ky + (uint64_t)y * ty, ty, 3 * src_w, scratch_int,
                             tmp + y * ws);
        for (uint32_t y = 0; y < out_h; y++) {
            uint8_t *dst = luts ? row8 : (uint8_t *)out + (uint64_t)y * out_row_stride;
            kn->hpil(tmp + y * ws, src_w, ix, kx, tx, out_w, dst);
            emit_row(dst, out_w, luts, out, y, out_row_stride, out_plane_stride);
        }
        return 0;
    }
    if (kx) {
        ts = 3 * (uint64_t)out_w;
        for (uint32_t r = 0; r < rows; r++)
            kn->hpil(src + ((uint64_t)y0 + r) * src_row_stride, src_w, ix, kx, tx, out_w, tmp + r * ts);
        t = tmp;
    }
    for (uint32_t y = 0; y < out_h; y++) {
        const uint8_t *r8 = t + (uint64_t)y * ts;
        if (ky) {
            uint8_t *dst = luts ? row8 : (uint8_t *)out + (uint64_t)y * out_row_stride;
            pil_vertical_row(kn, t, ts, iy + (uint64_t)y * ty, ky + (uint64_t)y * ty, ty, 3 * out_w, scratch_int, dst);
            r8 = dst;
        }
        emit_row(r8, out_w, luts, out, y, out_row_stride, out_plane_stride);
    }
    return 0;
}
