/* See esindex.h. Kept free of libc so the same file builds for Android without the NDK. */
#include "esindex.h"

#define HEADER_BYTES 128u
#define ENTRY_BYTES 32u
#define ALIGN 64u
#define MAX_SECTIONS 1024u
#define FLAG_L2_NORMALIZE 1u

enum { SEC_CODES = 1, SEC_IDS, SEC_DELETED, SEC_LABEL_OF, SEC_LABELS, SEC_HASH_MEAN, SEC_HASH_PROJ, SEC_META,
       SEC_RERANK_VECTORS, SEC_LAST = SEC_RERANK_VECTORS };

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
    case ES_ERR_VERSION: return "index format version (or a newer version's section or flag) not supported by this reader";
    case ES_ERR_HEADER_CRC: return "header CRC mismatch";
    case ES_ERR_HEADER: return "inconsistent header";
    case ES_ERR_SECTION: return "section missing, misplaced, repeated, unknown or of the wrong length or content";
    case ES_ERR_SECTION_CRC: return "section CRC mismatch";
    case ES_ERR_LABELS: return "label table inconsistent";
    case ES_ERR_TABLE_CRC: return "section table CRC mismatch";
    case ES_ERR_PADDING: return "non-zero padding or reserved bytes, or bytes after the last section";
    default: return "unknown error";
    }
}

static int all_zero(const uint8_t *p, uint64_t n) {
    uint8_t acc = 0;
    for (uint64_t i = 0; i < n; i++) acc |= p[i];
    return acc == 0;
}

/* n little-endian f32 values all finite (exponent not all ones). */
static int all_finite(const uint8_t *p, uint64_t n) {
    for (uint64_t i = 0; i < n; i++)
        if ((rd32(p + 4 * i) & 0x7F800000u) == 0x7F800000u) return 0;
    return 1;
}

/* a * b == want, without overflow and without a 64-bit division (32-bit ARM has no
 * instruction for it and this file links without libgcc). */
static int mul_equals(uint64_t a, uint32_t b, uint64_t want) {
    uint64_t hi = (a >> 32) * b, lo = (a & 0xFFFFFFFFu) * b;
    if (hi >> 32) return 0;
    uint64_t sum = (hi << 32) + lo;
    return sum >= lo && sum == want;
}

/* The header; called only once its CRC matched and the major version is known. */
static int parse_header(const uint8_t *buf, uint64_t len, es_index_view *v, uint32_t *nsec) {
    int newer = v->version_minor > ES_INDEX_VERSION_MINOR;
    uint32_t table_crc = rd32(buf + 88);
    if (rd32(buf + 12) != HEADER_BYTES || rd64(buf + 64) != HEADER_BYTES) return ES_ERR_HEADER;
    if ((!newer && !all_zero(buf + 92, 32)) || (v->version_minor < 2 && table_crc)) return ES_ERR_PADDING;
    if (rd64(buf + 72) != len) return ES_ERR_TRUNCATED;
    *nsec = rd32(buf + 56);
    if (*nsec > MAX_SECTIONS || HEADER_BYTES + (uint64_t)*nsec * ENTRY_BYTES > len) return ES_ERR_SECTION;
    if (v->version_minor >= 2 && es_crc32(buf + HEADER_BYTES, (uint64_t)*nsec * ENTRY_BYTES) != table_crc)
        return ES_ERR_TABLE_CRC;
    v->bits = rd32(buf + 16);
    v->code_bytes = rd32(buf + 20);
    v->count = rd64(buf + 24);
    v->live_count = rd64(buf + 32);
    v->next_id = rd64(buf + 40);
    v->method = rd32(buf + 48);
    v->dim = rd32(buf + 52);
    v->flags = rd32(buf + 60);
    v->generation = rd64(buf + 80);
    if (v->flags & ~FLAG_L2_NORMALIZE) return newer ? ES_ERR_VERSION : ES_ERR_HEADER;
    if (v->bits < 64 || v->bits > 4096 || v->bits % 64 || v->code_bytes != v->bits / 8 || v->method > 1 ||
        v->dim == 0 || (v->method == 0 && v->dim != v->bits) || v->count > len / 8 || v->live_count > v->count)
        return ES_ERR_HEADER;
    v->words = v->bits / 64;
    v->stride = (v->count + 7) / 8 * 8;
    return ES_OK;
}

/* The section table: sections follow it in table order, each at the next multiple of 64, the
 * gaps zero, the file ending with the last one. sec/slen are indexed by kind (known kinds). */
static int parse_table(const uint8_t *buf, uint64_t len, uint32_t nsec, int verify_crc, int minor,
                       const uint8_t **sec, uint64_t *slen) {
    int newer = minor > ES_INDEX_VERSION_MINOR;
    uint32_t seen = 0;
    uint64_t pos = HEADER_BYTES + (uint64_t)nsec * ENTRY_BYTES;
    for (uint32_t i = 0; i < nsec; i++) {
        const uint8_t *e = buf + HEADER_BYTES + (uint64_t)i * ENTRY_BYTES;
        uint32_t kind = rd32(e), crc = rd32(e + 4), eflags = rd32(e + 24), ereserved = rd32(e + 28);
        uint64_t off = rd64(e + 8), n = rd64(e + 16);
        if ((minor < 2 && eflags) || (!newer && ereserved)) return ES_ERR_PADDING;
        if (eflags & ~ES_SECTION_OPTIONAL) return newer ? ES_ERR_VERSION : ES_ERR_SECTION;
        if (off != (pos + ALIGN - 1) / ALIGN * ALIGN || off > len || n > len - off) return ES_ERR_SECTION;
        if (verify_crc && !all_zero(buf + pos, off - pos)) return ES_ERR_PADDING;
        if (verify_crc && es_crc32(buf + off, n) != crc) return ES_ERR_SECTION_CRC;
        pos = off + n;
        if (kind >= 1 && kind <= SEC_LAST) {
            if (seen & (1u << kind)) return ES_ERR_SECTION;
            seen |= 1u << kind;
            sec[kind] = buf + off;
            slen[kind] = n;
            continue;
        }
        for (uint32_t j = 0; j < i; j++) /* unknown kinds are rare: a scan finds repeats */
            if (rd32(buf + HEADER_BYTES + (uint64_t)j * ENTRY_BYTES) == kind) return ES_ERR_SECTION;
        if (!(eflags & ES_SECTION_OPTIONAL)) return newer ? ES_ERR_VERSION : ES_ERR_SECTION;
    }
    return pos == len ? ES_OK : ES_ERR_PADDING;
}

/* Strict UTF-8 (as Python's decoder): no overlong forms, surrogates or code points > U+10FFFF. */
static int utf8_valid(const uint8_t *p, uint64_t n) {
    uint64_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        uint32_t need, min, cp;
        if (c >= 0xC2 && c <= 0xDF) need = 1, min = 0x80, cp = c & 0x1F;
        else if (c >= 0xE0 && c <= 0xEF) need = 2, min = 0x800, cp = c & 0x0F;
        else if (c >= 0xF0 && c <= 0xF4) need = 3, min = 0x10000, cp = c & 0x07;
        else return 0;
        if (n - i <= need) return 0;
        for (uint32_t k = 1; k <= need; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += need + 1;
    }
    return 1;
}

static int parse_labels(const uint8_t *lab, uint64_t lab_len, es_index_view *v) {
    /* u32 n, u32 offsets[n+1] (offsets[0] = 0, non-decreasing, offsets[n] = bytes), bytes */
    if (!lab || lab_len < 8) return ES_ERR_SECTION;
    uint32_t n = rd32(lab);
    if ((uint64_t)4 + 4 * ((uint64_t)n + 1) > lab_len) return ES_ERR_LABELS;
    v->n_labels = n;
    v->label_offsets = lab + 4;
    v->label_bytes = lab + 4 + 4 * ((uint64_t)n + 1);
    uint64_t blob = lab_len - 4 - 4 * ((uint64_t)n + 1), prev = 0;
    if (rd32(v->label_offsets) != 0) return ES_ERR_LABELS;
    for (uint32_t i = 1; i <= n; i++) {
        uint64_t o = rd32(v->label_offsets + 4 * (uint64_t)i);
        if (o < prev || o > blob || !utf8_valid(v->label_bytes + prev, o - prev)) return ES_ERR_LABELS;
        prev = o;
    }
    return prev == blob ? ES_OK : ES_ERR_LABELS;
}

int es_index_parse(const uint8_t *buf, uint64_t len, int verify_crc, es_index_view *v) {
    static const uint8_t magic[8] = {'E', 'S', 'H', 'I', 'D', 'X', '\r', '\n'};
    if (!buf || !v) return ES_ERR_ARGS;
    /* 1. what the file is: magic, then the header CRC, and only then the version */
    for (uint64_t i = 0; i < 8 && i < len; i++)
        if (buf[i] != magic[i]) return ES_ERR_MAGIC;
    if (len < HEADER_BYTES) return ES_ERR_TRUNCATED;
    if (es_crc32(buf, HEADER_BYTES - 4) != rd32(buf + HEADER_BYTES - 4)) return ES_ERR_HEADER_CRC;
    v->version_major = rd16(buf + 8);
    v->version_minor = rd16(buf + 10);
    if (v->version_major != ES_INDEX_VERSION_MAJOR) return ES_ERR_VERSION;
    /* 2. the header fields and the section table (its CRC before any entry is used) */
    uint32_t nsec = 0;
    int rc = parse_header(buf, len, v, &nsec);
    if (rc != ES_OK) return rc;
    const uint8_t *sec[SEC_LAST + 1];
    uint64_t slen[SEC_LAST + 1];
    for (int i = 0; i <= SEC_LAST; i++) { /* a loop, not = {0}: compilers lower that to a memset call */
        sec[i] = 0;
        slen[i] = 0;
    }
    rc = parse_table(buf, len, nsec, verify_crc, v->version_minor, sec, slen);
    if (rc != ES_OK) return rc;
    /* 3. the sections a writer of this version writes, and no others */
    uint64_t count = v->count;
    if (v->method == 0 && (sec[SEC_HASH_MEAN] || sec[SEC_HASH_PROJ])) return ES_ERR_SECTION;
    if ((v->version_minor == 0 && sec[SEC_RERANK_VECTORS]) || (v->version_minor == 1 && !sec[SEC_RERANK_VECTORS]))
        return ES_ERR_SECTION;
    if (!sec[SEC_CODES] || slen[SEC_CODES] != (uint64_t)v->words * v->stride * 8) return ES_ERR_SECTION;
    if (!sec[SEC_IDS] || slen[SEC_IDS] != count * 8) return ES_ERR_SECTION;
    if (!sec[SEC_DELETED] || slen[SEC_DELETED] != (count + 7) / 8) return ES_ERR_SECTION;
    if (!sec[SEC_LABEL_OF] || slen[SEC_LABEL_OF] != count * 4) return ES_ERR_SECTION;
    rc = parse_labels(sec[SEC_LABELS], slen[SEC_LABELS], v);
    if (rc != ES_OK) return rc;
    v->codes = sec[SEC_CODES];
    v->ids = sec[SEC_IDS];
    v->deleted = sec[SEC_DELETED];
    v->label_of = sec[SEC_LABEL_OF];
    if ((count & 7) && (v->deleted[count >> 3] >> (count & 7))) return ES_ERR_SECTION; /* marks past the end */
    uint64_t deleted = 0;
    for (uint64_t r = 0; r < count; r++) {
        if (rd32(v->label_of + 4 * r) >= v->n_labels) return ES_ERR_LABELS;
        deleted += (v->deleted[r >> 3] >> (r & 7)) & 1;
    }
    v->mean = v->proj = 0;
    if (v->method == 1) {
        if (!sec[SEC_HASH_MEAN] || slen[SEC_HASH_MEAN] != (uint64_t)v->dim * 4) return ES_ERR_SECTION;
        if (!sec[SEC_HASH_PROJ] || slen[SEC_HASH_PROJ] != (uint64_t)v->dim * v->bits * 4) return ES_ERR_SECTION;
        if (!all_finite(sec[SEC_HASH_MEAN], v->dim) || !all_finite(sec[SEC_HASH_PROJ], (uint64_t)v->dim * v->bits))
            return ES_ERR_SECTION;
        v->mean = sec[SEC_HASH_MEAN];
        v->proj = sec[SEC_HASH_PROJ];
    }
    v->vectors = sec[SEC_RERANK_VECTORS];
    if (v->vectors && !mul_equals(count, v->dim, slen[SEC_RERANK_VECTORS])) return ES_ERR_SECTION;
    v->meta = sec[SEC_META];
    v->meta_len = slen[SEC_META];
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
