/* Model preprocessing in one pass: separable resize of a uint8 RGB image, rounded to uint8,
 * then either written as uint8 HWC (tests) or mapped through per-channel float32 tables and
 * written as float32 planes (CHW), the model's input layout.
 *
 * The taps (source indices and float32 weights) are computed by the caller, exactly as the numpy
 * path computes them (edge_shitu/preprocess.py, resize_taps), so the C code only does weighted
 * sums, and it does them with the numpy path's float32 operations in the numpy path's order:
 * vertical pass first (acc = src[iy0]*wy0; acc = acc + src[iy1]*wy1 ...), then horizontal, then
 * round half to even and clamp to 0..255. The bytes are therefore those of the numpy path.
 *
 * Freestanding C11 like eshamming.c: no libc, no allocation: the caller passes the scratch buffers
 * (es_pre_scratch_floats / es_pre_scratch_bytes tell their sizes). */
#ifndef EDGE_SHITU_ESPREPROCESS_H
#define EDGE_SHITU_ESPREPROCESS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef ESH_API
#if defined(__GNUC__)
#define ESH_API __attribute__((visibility("default")))
#else
#define ESH_API
#endif
#endif

#define ES_PRE_ABI 1

ESH_API int es_pre_abi(void);
/* The path in use: "avx2", "neon" or "portable". */
ESH_API const char *es_pre_kernel(void);
/* Force a path ("portable", "avx2", "neon"; "auto" restores detection). 0, or -1 if not available. */
ESH_API int es_pre_force(const char *name);

/* Scratch sizes for es_pre_resize (elements of float / bytes). */
ESH_API uint64_t es_pre_scratch_floats(uint32_t ncols, uint32_t out_w);
ESH_API uint64_t es_pre_scratch_bytes(uint32_t ncols, uint32_t out_w);

/* src: src_h rows of src_w RGB pixels, row r at src + r * src_row_stride (a crop of a larger
 * photo needs no copy). Vertical taps: iy / wy, out_h x ty (row-major: the ty taps of output row y
 * at y * ty). Columns: the vertical pass is computed on source columns cols[0..ncols) (ascending;
 * NULL: all, ncols == src_w); horizontal taps ix / wx, out_w x tx, ix indexing that column list.
 * luts: NULL -> out is uint8 HWC (pixel (y, x) channel c at y * out_row_stride + 3x + c);
 * else 3 x 256 float32 tables -> out is float32, channel c of (y, x) at
 * c * out_plane_stride + y * out_row_stride + x (strides in elements).
 * Returns 0, or -1 on bad arguments (an index out of range, a NULL buffer, zero sizes). */
ESH_API int es_pre_resize(const uint8_t *src, uint32_t src_h, uint32_t src_w, uint64_t src_row_stride,
                          uint32_t out_h, uint32_t out_w, uint32_t ty, const int32_t *iy, const float *wy,
                          uint32_t ncols, const int32_t *cols, uint32_t tx, const int32_t *ix, const float *wx,
                          const float *luts, void *out, uint64_t out_row_stride, uint64_t out_plane_stride,
                          float *scratch, uint8_t *scratch_bytes);

/* Pillow's resampling (Image.resize, 8-bit RGB: libImaging/Resample.c), for extractors whose
 * gallery was embedded with it: 22-bit fixed-point coefficients (computed by the caller as Pillow
 * computes them), one pass into uint8 rows, then the other; each sum starts at 2^21 and is clipped
 * to 0..255 after >> 22. Integer sums: any order within a pass gives Pillow's bytes.
 * Horizontal taps ix / kx (out_w x tx, source columns), or kx == NULL: no horizontal pass
 * (out_w == src_w). Vertical taps iy / ky (out_h x ty) indexing source rows [y0, y0 + rows), or
 * ky == NULL: no vertical pass (out_h == rows). Horizontal pass first (over those rows) unless
 * vertical_first (Pillow >= 12.2 picks the order by the shape; the caller decides). Output as for
 * es_pre_resize. Scratch: es_pre_pil_scratch_bytes bytes, es_pre_pil_scratch_ints int32. */
ESH_API uint64_t es_pre_pil_scratch_bytes(uint32_t src_w, uint32_t out_h, uint32_t out_w, uint32_t rows,
                                          int vertical_first);
ESH_API uint64_t es_pre_pil_scratch_ints(uint32_t src_w, uint32_t out_w);
ESH_API int es_pre_resize_pil(const uint8_t *src, uint32_t src_h, uint32_t src_w, uint64_t src_row_stride,
                              uint32_t out_h, uint32_t out_w, uint32_t y0, uint32_t rows, uint32_t tx,
                              const int32_t *ix, const int32_t *kx, uint32_t ty, const int32_t *iy,
                              const int32_t *ky, int vertical_first, const float *luts, void *out,
                              uint64_t out_row_stride, uint64_t out_plane_stride, uint8_t *scratch_bytes,
                              int32_t *scratch_int);

#ifdef __cplusplus
}
#endif
#endif
