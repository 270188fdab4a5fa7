/* Test driver for cross builds: runs the kernel on data from a file so that a static binary
 * can be checked under qemu against the numpy path (tests/test_cross.py).
 *
 * input:  "ESHTEST1", u32 words, u32 k, u64 count, u64 stride, u64 nq, u32 has_deleted, u32 0,
 *         planes (words*stride u64), queries (nq*words u64), deleted bitmap (ceil(count/8) bytes, if any)
 * output: per kernel tried ("portable", then the default): u8 name_len, name, nq*k i32 dist, nq*k i64 rows */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eshamming.h"

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

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s INPUT OUTPUT\n", argv[0]);
        return 2;
    }
    size_t len = 0;
    uint8_t *buf = read_all(argv[1], &len);
    if (!buf || len < 48 || memcmp(buf, "ESHTEST1", 8) != 0) {
        fprintf(stderr, "bad input\n");
        return 2;
    }
    uint32_t words, k, has_deleted;
    uint64_t count, stride, nq;
    memcpy(&words, buf + 8, 4);
    memcpy(&k, buf + 12, 4);
    memcpy(&count, buf + 16, 8);
    memcpy(&stride, buf + 24, 8);
    memcpy(&nq, buf + 32, 8);
    memcpy(&has_deleted, buf + 40, 4);
    /* copy into aligned buffers (the file offset 48 keeps u64 alignment on malloc'ed memory) */
    const uint64_t *planes = (const uint64_t *)(buf + 48);
    const uint64_t *queries = planes + (uint64_t)words * stride;
    const uint8_t *deleted = has_deleted ? (const uint8_t *)(queries + nq * words) : NULL;
    int32_t *dist = malloc(sizeof(int32_t) * nq * k + 8);
    int64_t *rows = malloc(sizeof(int64_t) * nq * k + 8);
    FILE *out = fopen(argv[2], "wb");
    if (!dist || !rows || !out) return 2;
    const char *default_kernel = es_hamming_kernel();
    char saved[32];
    strncpy(saved, default_kernel, sizeof saved - 1);
    saved[sizeof saved - 1] = 0;
    const char *kernels[2] = {"portable", saved};
    for (int i = 0; i < 2; i++) {
        if (es_hamming_force(kernels[i]) != 0) return 3;
        if (es_hamming_topk(planes, count, stride, words, queries, nq, deleted, k, dist, rows) != 0) return 4;
        uint8_t n = (uint8_t)strlen(kernels[i]);
        fwrite(&n, 1, 1, out);
        fwrite(kernels[i], 1, n, out);
        fwrite(dist, sizeof(int32_t), nq * k, out);
        fwrite(rows, sizeof(int64_t), nq * k, out);
    }
    fclose(out);
    printf("%s\n", saved);
    return 0;
}
