/* libFuzzer harness for the C index reader (runtimes/native/esindex.c) and the Hamming kernel.
 *
 * Build and run: `make fuzz` (about 60 s) or `make fuzz-long` (10 min); see fuzz/README.md.
 * Each input is parsed three ways: as given with and without section CRC checks, and with
 * every CRC recomputed first (most random mutations stop at a CRC; the repaired copy reaches
 * the checks behind them). Whatever parses is then read in full: every row's id, deletion mark,
 * label and code, every byte of META, the re-rank vectors and the hashing parameters, and a
 * top-k search with the kernel. AddressSanitizer turns any read outside the input into a
 * crash; the invariants below (results within the file's rows and bits) trap. libFuzzer
 * hands the input in a heap buffer of exactly its size, so one byte too far is caught. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eshamming.h"
#include "esindex.h"

static volatile uint64_t sink; /* keeps the reads from being optimised away */

#define CHECK(cond)                                                                                            \
    do {                                                                                                       \
        if (!(cond)) __builtin_trap();                                                                         \
    } while (0)

static uint64_t rd64le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void wr32le(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* The same repair as tests/golden_files.py:fix_crcs. */
static void fix_crcs(uint8_t *b, size_t len) {
    if (len < 128) return;
    uint64_t nsec = (uint64_t)b[56] | ((uint64_t)b[57] << 8) | ((uint64_t)b[58] << 16) | ((uint64_t)b[59] << 24);
    if (nsec > (len - 128) / 32) nsec = (len - 128) / 32;
    for (uint64_t i = 0; i < nsec; i++) {
        uint8_t *e = b + 128 + 32 * i;
        uint64_t off = rd64le(e + 8), n = rd64le(e + 16);
        if (off <= len && n <= len - off) wr32le(e + 4, es_crc32(b + off, n));
    }
    if ((b[10] | (b[11] << 8)) >= 2) wr32le(b + 88, es_crc32(b + 128, 32 * nsec));
    wr32le(b + 124, es_crc32(b, 124));
}

static void read_all(const uint8_t *p, uint64_t n) {
    uint64_t s = 0;
    for (uint64_t i = 0; i < n; i++) s += p[i];
    sink += s;
}

static void search(const es_index_view *v) {
    if (v->count == 0) return;
    uint64_t q[64];
    uint8_t *code = (uint8_t *)q;
    CHECK(es_index_code(v, 0, code) == ES_OK);
    uint32_t k = v->count < 8 ? (uint32_t)v->count : 8;
    int32_t dist[2 * 8];
    int64_t rows[2 * 8];
    /* two queries: row 0's code (distance 0 unless deleted) and its complement */
    uint64_t queries[2 * 64];
    for (uint32_t w = 0; w < v->words; w++) {
        queries[w] = q[w];
        queries[v->words + w] = ~q[w];
    }
    const uint64_t *planes = (const uint64_t *)(const void *)v->codes;
    CHECK(es_hamming_topk(planes, v->count, v->stride, v->words, queries, 2, v->deleted, k, dist, rows) == 0);
    for (uint32_t j = 0; j < 2 * k; j++) {
        CHECK(rows[j] >= -1 && rows[j] < (int64_t)v->count);
        CHECK(dist[j] >= -1 && dist[j] <= (int32_t)v->bits);
        CHECK((rows[j] < 0) == (dist[j] < 0));
        if (rows[j] >= 0) CHECK(!es_index_is_deleted(v, (uint64_t)rows[j]));
    }
    uint32_t *all = malloc(sizeof(uint32_t) * v->count);
    if (!all) return;
    CHECK(es_hamming_distances(planes, v->count, v->stride, v->words, queries, all) == 0);
    CHECK(all[0] == 0);
    for (uint64_t r = 0; r < v->count; r++) CHECK(all[r] <= v->bits);
    free(all);
}

static void exercise(const uint8_t *buf, size_t len, int verify) {
    es_index_view v;
    int rc = es_index_parse(buf, len, verify, &v);
    CHECK(es_index_strerror(rc) != 0);
    if (rc != ES_OK) return;
    CHECK(v.live_count <= v.count && v.words * 64 == v.bits && v.count <= v.stride);
    for (uint64_t r = 0; r < v.count; r++) {
        const uint8_t *s = 0;
        uint32_t n = 0;
        uint8_t code[512];
        sink += es_index_id(&v, r) + (uint64_t)es_index_is_deleted(&v, r);
        CHECK(es_index_label(&v, r, &s, &n) == ES_OK);
        read_all(s, n);
        CHECK(es_index_code(&v, r, code) == ES_OK);
        read_all(code, v.code_bytes);
    }
    CHECK(es_index_label(&v, v.count, 0, 0) == ES_ERR_ARGS);
    read_all(v.label_offsets, 4 * ((uint64_t)v.n_labels + 1));
    if (v.meta) read_all(v.meta, v.meta_len);
    if (v.vectors) read_all(v.vectors, v.count * v.dim);
    if (v.mean) read_all(v.mean, 4 * (uint64_t)v.dim);
    if (v.proj) read_all(v.proj, 4 * (uint64_t)v.dim * v.bits);
    read_all(v.codes, (uint64_t)v.words * v.stride * 8);
    search(&v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    exercise(data, size, 1);
    exercise(data, size, 0);
    uint8_t *copy = malloc(size ? size : 1); /* exactly sized (ASan sees one byte too far) */
    if (!copy) return 0;
    memcpy(copy, data, size);
    fix_crcs(copy, size);
    exercise(copy, size, 1);
    free(copy);
    return 0;
}
