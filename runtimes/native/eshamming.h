/* Exact top-k Hamming search over word-planar codes (docs/index-format.md, CODES).
 *
 * Freestanding C11 (no libc, no allocation), so one source builds for Linux, Android without
 * the NDK, and anything else. Word w of row r is planes[w * stride + r]. Results are ordered
 * by (distance, row): ties go to the lower row, exactly like the numpy path. */
#ifndef EDGE_SHITU_ESHAMMING_H
#define EDGE_SHITU_ESHAMMING_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define ESH_API __attribute__((visibility("default")))
#else
#define ESH_API
#endif

#define ES_HAMMING_ABI 2

ESH_API int es_hamming_abi(void);
/* The distance kernel in use: "avx2", "popcnt", "neon" or "portable". */
ESH_API const char *es_hamming_kernel(void);
/* Tests only: force a kernel ("auto" restores detection). 0 on success, -1 if not available. */
ESH_API int es_hamming_force(const char *name);

/* out[r] = Hamming distance of row r to q, for r < count. */
ESH_API int es_hamming_distances(const uint64_t *planes, uint64_t count, uint64_t stride, uint32_t words,
                                 const uint64_t *q, uint32_t *out);

/* For each of nq queries (queries + i * words), the k nearest live rows. deleted: NULL or a
 * bitmap (row r deleted iff bit r%8 of byte r/8). out_dist / out_rows: nq * k, padded with -1.
 * Returns 0, or -1 on bad arguments. */
ESH_API int es_hamming_topk(const uint64_t *planes, uint64_t count, uint64_t stride, uint32_t words,
                            const uint64_t *queries, uint64_t nq, const uint8_t *deleted, uint32_t k,
                            int32_t *out_dist, int64_t *out_rows);

#ifdef __cplusplus
}
#endif
#endif
