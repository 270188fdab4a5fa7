/* See esindex.h. Kept free of libc so the same file builds for Android without the NDK. */
#include "esindex.h"

#define HEADER_BYTES 128u
#define ENTRY_BYTES 32u
#define ALIGN 64u

enum { SEC_CODES = 1, SEC_IDS, SEC_DELETED, SEC_LABEL_OF, SEC_LABELS, SEC_HASH_MEAN, SEC_HASH_PROJ, SEC_META };

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }

/* Bitwise-reflected CRC32 (zlib's), table built on first use. Concurrent first calls write
 * identical values, so the race is benign. */
static uint32_t crc_table[256];
static volatile int crc_ready;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
    crc_ready = 1;
}

uint32_t es_crc32(const uint8_t *data, uint64_t len) {
    if (!crc_ready) crc_init();
    uint32_t c = 0xFFFFFFFFu;
    for (uint64_t i = 0; i < len; i++) c = crc_table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

const char *es_index_strerror(int status) {
    switch (status) {
    case ES_OK: return "ok";
    case ES_ERR_ARGS: return "bad arguments";
    case ES_ERR_TRUNCATED: return "file truncated";
    case ES_ERR_MAGIC: return "not an edge-shitu index (bad magic)";
    case ES_ERR_VERSION: return "index format version not supported by this reader";
    case ES_ERR_HEADER_CRC: return "header CRC mismatch";
    case ES_ERR_HEADER: return "inconsistent header";
    case ES_ERR_SECTION: return "section missing, out of bounds or of the wrong length";
    case ES_ERR_SECTION_CRC: return "section CRC mismatch";
    case ES_ERR_LABELS: return "label table inconsistent";
    default: return "unknown error";
    }
}

int es_index_parse(const uint8_t *buf, uint64_t len, int verify_crc, es_index_view *v) {
    static const uint8_t magic[8] = {'E', 'S', 'H', 'I', 'D', 'X', '\r', '\n'};
    if (!buf || !v) return ES_ERR_ARGS;
    if (len < HEADER_BYTES) return ES_ERR_TRUNCATED;
    for (int i = 0; i < 8; i++)
        if (buf[i] != magic[i]) return ES_ERR_MAGIC;
    v->version_major = rd16(buf + 8);
    v->version_minor = rd16(buf + 10);
    if (v->version_major != ES_INDEX_VERSION_MAJOR) return ES_ERR_VERSION;
    if (es_crc32(buf, HEADER_BYTES - 4) != rd32(buf + HEADER_BYTES - 4)) return ES_ERR_HEADER_CRC;
    v->bits = rd32(buf + 16);
    v->code_bytes = rd32(buf + 20);
    v->count = rd64(buf + 24);
    v->live_count = rd64(buf + 32);
    v->next_id = rd64(buf + 40);
    v->method = rd32(buf + 48);
    v->dim = rd32(buf + 52);
    uint32_t nsec = rd32(buf + 56);
    v->flags = rd32(buf + 60);
    uint64_t table = rd64(buf + 64), file_bytes = rd64(buf + 72);
    v->generation = rd64(buf + 80);
    if (file_bytes != len) return ES_ERR_TRUNCATED;
    if (v->bits == 0 || v->bits % 64 || v->code_bytes * 8 != v->bits || v->method > 1 || v->dim == 0 ||
        (v->method == 0 && v->dim != v->bits) || v->count > (len / 8) || v->live_count > v->count)
        return ES_ERR_HEADER;
    if (table < HEADER_BYTES || nsec > 1024 || table + (uint64_t)nsec * ENTRY_BYTES > len) return ES_ERR_SECTION;
    v->words = v->bits / 64;
    v->stride = (v->count + 7) / 8 * 8;

    const uint8_t *sec[SEC_META + 1];
    uint64_t slen[SEC_META + 1];
    for (int i = 0; i <= SEC_META; i++) { /* a loop, not = {0}: compilers lower that to a memset call */
        sec[i] = 0;
        slen[i] = 0;
    }
    for (uint32_t i = 0; i < nsec; i++) {
        const uint8_t *e = buf + table + (uint64_t)i * ENTRY_BYTES;
        uint32_t kind = rd32(e), crc = rd32(e + 4);
        uint64_t off = rd64(e + 8), n = rd64(e + 16);
        if (off % ALIGN || off > len || n > len - off) return ES_ERR_SECTION;
        if (verify_crc && es_crc32(buf + off, n) != crc) return ES_ERR_SECTION_CRC;
        if (kind >= 1 && kind <= SEC_META) {
            sec[kind] = buf + off;
            slen[kind] = n;
        } /* unknown kinds: skipped (minor versions may add them) */
    }
    uint64_t count = v->count;
    if (!sec[SEC_CODES] || slen[SEC_CODES] != (uint64_t)v->words * v->stride * 8) return ES_ERR_SECTION;
    if (!sec[SEC_IDS] || slen[SEC_IDS] != count * 8) return ES_ERR_SECTION;
    if (!sec[SEC_DELETED] || slen[SEC_DELETED] != (count + 7) / 8) return ES_ERR_SECTION;
    if (!sec[SEC_LABEL_OF] || slen[SEC_LABEL_OF] != count * 4) return ES_ERR_SECTION;
    if (!sec[SEC_LABELS] || slen[SEC_LABELS] < 8) return ES_ERR_SECTION;
    v->codes = sec[SEC_CODES];
    v->ids = sec[SEC_IDS];
    v->deleted = sec[SEC_DELETED];
    v->label_of = sec[SEC_LABEL_OF];
    v->mean = v->proj = 0;
    if (v->method == 1) {
        if (!sec[SEC_HASH_MEAN] || slen[SEC_HASH_MEAN] != (uint64_t)v->dim * 4) return ES_ERR_SECTION;
        if (!sec[SEC_HASH_PROJ] || slen[SEC_HASH_PROJ] != (uint64_t)v->dim * v->bits * 4) return ES_ERR_SECTION;
        v->mean = sec[SEC_HASH_MEAN];
        v->proj = sec[SEC_HASH_PROJ];
    }
    v->meta = sec[SEC_META];
    v->meta_len = slen[SEC_META];

    /* labels: u32 n, u32 offsets[n+1], bytes */
    const uint8_t *lab = sec[SEC_LABELS];
    uint64_t lab_len = slen[SEC_LABELS];
    uint32_t n = rd32(lab);
    if ((uint64_t)4 + 4 * ((uint64_t)n + 1) > lab_len) return ES_ERR_LABELS;
    v->n_labels = n;
    v->label_offsets = lab + 4;
    v->label_bytes = lab + 4 + 4 * ((uint64_t)n + 1);
    uint64_t blob = lab_len - 4 - 4 * ((uint64_t)n + 1), prev = 0;
    if (rd32(v->label_offsets) != 0) return ES_ERR_LABELS;
    for (uint32_t i = 1; i <= n; i++) {
        uint64_t o = rd32(v->label_offsets + 4 * (uint64_t)i);
        if (o < prev) return ES_ERR_LABELS;
        prev = o;
    }
    if (prev != blob) return ES_ERR_LABELS;

    uint64_t deleted = 0;
    for (uint64_t r = 0; r < count; r++) {
        if (rd32(v->label_of + 4 * r) >= n) return ES_ERR_LABELS;
        deleted += (v->deleted[r >> 3] >> (r & 7)) & 1;
    }
    if (count - deleted != v->live_count) return ES_ERR_HEADER;
    return ES_OK;
}

uint64_t es_index_id(const es_index_view *v, uint64_t row) { return rd64(v->ids + 8 * row); }

int es_index_is_deleted(const es_index_view *v, uint64_t row) { return (v->deleted[row >> 3] >> (row & 7)) & 1; }

int es_index_label(const es_index_view *v, uint64_t row, const uint8_t **str, uint32_t *len) {
    if (!v || !str || !len || row >= v->count) return ES_ERR_ARGS;
    uint32_t li = rd32(v->label_of + 4 * row);
    uint32_t a = rd32(v->label_offsets + 4 * (uint64_t)li), b = rd32(v->label_offsets + 4 * ((uint64_t)li + 1));
    *str = v->label_bytes + a;
    *len = b - a;
    return ES_OK;
}

int es_index_code(const es_index_view *v, uint64_t row, uint8_t *out) {
    if (!v || !out || row >= v->count) return ES_ERR_ARGS;
    for (uint32_t w = 0; w < v->words; w++) {
        const uint8_t *src = v->codes + ((uint64_t)w * v->stride + row) * 8;
        for (int b = 0; b < 8; b++) out[8 * w + b] = src[b];
    }
    return ES_OK;
}
