/* Test driver for cross builds of the preprocessing (espreprocess.c): runs es_pre_resize on a job
 * read from a file, once per path ("portable", then the default one), so that a static binary can
 * be checked under qemu against the numpy path (tests/test_native_preprocess.py).
 *
 * input (little-endian): "ESPTEST1", u32 src_h, src_w, out_h, out_w, ty, tx, ncols (0: all columns),
 *        has_luts; then src (src_h * src_w * 3 bytes), iy (out_h*ty i32), wy (out_h*ty f32),
 *        cols (ncols i32), ix (out_w*tx i32), wx (out_w*tx f32), luts (768 f32, if has_luts)
 *    or "ESPTESTP" (Pillow resampling, es_pre_resize_pil): u32 src_h, src_w, out_h, out_w, y0, rows, tx (0: no
 *        horizontal pass), ty (0: no vertical pass), vertical_first, has_luts; then src, ix (out_w*tx i32),
 *        kx (out_w*tx i32), iy (out_h*ty i32), ky (out_h*ty i32), luts (768 f32, if has_luts)
 * output: per path: u8 name_len, name, the output (uint8 HWC, or float32 CHW with luts) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "espreprocess.h"

static void *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(*len + 64);
    if (buf && fread(buf, 1, *len, f) != *len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

/* copy a section into its own (aligned) allocation of exactly its size: a read past it is caught
 * when this driver is built with -fsanitize=address */
static void *take(const uint8_t **pos, size_t n) {
    void *p = malloc(n ? n : 1);
    if (p && n) memcpy(p, *pos, n);
    *pos += n;
    return p;
}

static int run_pil(const uint8_t *buf, size_t len, const char *out_path) {
    uint32_t h[10];
    memcpy(h, buf + 8, sizeof h);
    uint32_t src_h = h[0], src_w = h[1], out_h = h[2], out_w = h[3], y0 = h[4], rows = h[5], tx = h[6], ty = h[7];
    int vfirst = h[8] != 0, has_luts = h[9] != 0;
    const uint8_t *pos = buf + 48;
    uint8_t *src = take(&pos, (size_t)src_h * src_w * 3);
    int32_t *ix = tx ? take(&pos, (size_t)out_w * tx * 4) : NULL;
    int32_t *kx = tx ? take(&pos, (size_t)out_w * tx * 4) : NULL;
    int32_t *iy = ty ? take(&pos, (size_t)out_h * ty * 4) : NULL;
    int32_t *ky = ty ? take(&pos, (size_t)out_h * ty * 4) : NULL;
    float *luts = has_luts ? take(&pos, 768 * 4) : NULL;
    if ((size_t)(pos - buf) > len) {
        fprintf(stderr, "input too short\n");
        return 2;
    }
    size_t out_bytes = (size_t)out_h * out_w * 3 * (has_luts ? 4 : 1);
    void *out = malloc(out_bytes);
    uint8_t *sb = malloc(es_pre_pil_scratch_bytes(src_w, out_h, out_w, rows, vfirst));
    int32_t *si = malloc(es_pre_pil_scratch_ints(src_w, out_w) * sizeof(int32_t));
    FILE *f = fopen(out_path, "wb");
    if (!out || !sb || !si || !f) return 2;
    char saved[32];
    strncpy(saved, es_pre_kernel(), sizeof saved - 1);
    saved[sizeof saved - 1] = 0;
    const char *paths[2] = {"portable", saved};
    for (int i = 0; i < 2; i++) {
        if (es_pre_force(paths[i]) != 0) return 3;
        int rc = es_pre_resize_pil(src, src_h, src_w, (uint64_t)src_w * 3, out_h, out_w, y0, rows, tx, ix, kx, ty, iy,
                                   ky, vfirst, luts, out, has_luts ? out_w : (uint64_t)out_w * 3,
                                   has_luts ? (uint64_t)out_h * out_w : 0, sb, si);
        if (rc != 0) return 4;
        uint8_t n = (uint8_t)strlen(paths[i]);
        fwrite(&n, 1, 1, f);
        fwrite(paths[i], 1, n, f);
        fwrite(out, 1, out_bytes, f);
    }
    fclose(f);
    printf("%s\n", saved);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s INPUT OUTPUT\n", argv[0]);
        return 2;
    }
    size_t len = 0;
    uint8_t *buf = read_all(argv[1], &len);
    if (buf && len >= 48 && memcmp(buf, "ESPTESTP", 8) == 0) return run_pil(buf, len, argv[2]);
    if (!buf || len < 40 || memcmp(buf, "ESPTEST1", 8) != 0) {
        fprintf(stderr, "bad input\n");
        return 2;
    }
    uint32_t h[8];
    memcpy(h, buf + 8, sizeof h);
    uint32_t src_h = h[0], src_w = h[1], out_h = h[2], out_w = h[3], ty = h[4], tx = h[5], ncols = h[6];
    int has_luts = h[7] != 0;
    const uint8_t *pos = buf + 40;
    uint8_t *src = take(&pos, (size_t)src_h * src_w * 3);
    int32_t *iy = take(&pos, (size_t)out_h * ty * 4);
    float *wy = take(&pos, (size_t)out_h * ty * 4);
    int32_t *cols = ncols ? take(&pos, (size_t)ncols * 4) : NULL;
    int32_t *ix = take(&pos, (size_t)out_w * tx * 4);
    float *wx = take(&pos, (size_t)out_w * tx * 4);
    float *luts = has_luts ? take(&pos, 768 * 4) : NULL;
    if ((size_t)(pos - buf) > len) {
        fprintf(stderr, "input too short\n");
        return 2;
    }
    uint32_t nc = ncols ? ncols : src_w;
    size_t out_bytes = (size_t)out_h * out_w * 3 * (has_luts ? 4 : 1);
    void *out = malloc(out_bytes);
    float *scratch = malloc(es_pre_scratch_floats(nc, out_w) * sizeof(float));
    uint8_t *scratch_bytes = malloc(es_pre_scratch_bytes(nc, out_w));
    FILE *f = fopen(argv[2], "wb");
    if (!out || !scratch || !scratch_bytes || !f) return 2;
    char saved[32];
    strncpy(saved, es_pre_kernel(), sizeof saved - 1);
    saved[sizeof saved - 1] = 0;
    const char *paths[2] = {"portable", saved};
    for (int i = 0; i < 2; i++) {
        if (es_pre_force(paths[i]) != 0) return 3;
        int rc = has_luts ? es_pre_resize(src, src_h, src_w, (uint64_t)src_w * 3, out_h, out_w, ty, iy, wy, nc, cols,
                                          tx, ix, wx, luts, out, out_w, (uint64_t)out_h * out_w, scratch, scratch_bytes)
                          : es_pre_resize(src, src_h, src_w, (uint64_t)src_w * 3, out_h, out_w, ty, iy, wy, nc, cols,
                                          tx, ix, wx, NULL, out, (uint64_t)out_w * 3, 0, scratch, scratch_bytes);
        if (rc != 0) return 4;
        uint8_t n = (uint8_t)strlen(paths[i]);
        fwrite(&n, 1, 1, f);
        fwrite(paths[i], 1, n, f);
        fwrite(out, 1, out_bytes, f);
    }
    fclose(f);
    printf("%s\n", saved);
    return 0;
}
