/* Reader of the edge-shitu gallery index format 1.x (docs/index-format.md).
 *
 * Freestanding C11: no libc, no allocation. The caller maps or loads the file and gets
 * pointers into its own buffer, the same zero-copy view the Python reader has. Multi-byte
 * fields are assembled byte by byte, so this works on any host endianness and alignment. */
#ifndef EDGE_SHITU_ESINDEX_H
#define EDGE_SHITU_ESINDEX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define ES_API __attribute__((visibility("default")))
#else
#define ES_API
#endif

#define ES_INDEX_VERSION_MAJOR 1

enum es_index_status {
    ES_OK = 0,
    ES_ERR_ARGS = -1,        /* NULL pointer */
    ES_ERR_TRUNCATED = -2,   /* shorter than the header says */
    ES_ERR_MAGIC = -3,       /* not an index file */
    ES_ERR_VERSION = -4,     /* major version this reader does not know */
    ES_ERR_HEADER_CRC = -5,
    ES_ERR_HEADER = -6,      /* inconsistent header fields */
    ES_ERR_SECTION = -7,     /* section out of bounds, misaligned, missing or of the wrong length */
    ES_ERR_SECTION_CRC = -8,
    ES_ERR_LABELS = -9       /* label table inconsistent */
};

typedef struct {
    uint16_t version_major, version_minor;
    uint32_t bits, code_bytes, words, method, dim, flags;
    uint64_t count, live_count, next_id, generation, stride;
    const uint8_t *codes;     /* word-planar: words * stride * 8 bytes */
    const uint8_t *ids;       /* count x u64 LE */
    const uint8_t *deleted;   /* ceil(count/8) bytes, LSB first */
    const uint8_t *label_of;  /* count x u32 LE */
    uint32_t n_labels;
    const uint8_t *label_offsets; /* (n_labels + 1) x u32 LE */
    const uint8_t *label_bytes;
    const uint8_t *mean;      /* dim x f32 LE, or NULL (sign) */
    const uint8_t *proj;      /* dim x bits f32 LE, or NULL (sign) */
    const uint8_t *meta;      /* UTF-8 JSON or NULL */
    uint64_t meta_len;
} es_index_view;

/* Parse and check a whole index held in buf[0..len). verify_crc != 0 checks every section's
 * CRC32 (reads the whole file); the header CRC is always checked. */
ES_API int es_index_parse(const uint8_t *buf, uint64_t len, int verify_crc, es_index_view *out);
ES_API const char *es_index_strerror(int status);
ES_API uint32_t es_crc32(const uint8_t *data, uint64_t len);
ES_API uint64_t es_index_id(const es_index_view *v, uint64_t row);
ES_API int es_index_is_deleted(const es_index_view *v, uint64_t row);
/* The label of a row: *str points into the buffer (UTF-8, not NUL-terminated). */
ES_API int es_index_label(const es_index_view *v, uint64_t row, const uint8_t **str, uint32_t *len);
/* Copy row `row`'s code (code_bytes bytes, the row order of the spec) out of the planes. */
ES_API int es_index_code(const es_index_view *v, uint64_t row, uint8_t *out);

#ifdef __cplusplus
}
#endif
#endif
