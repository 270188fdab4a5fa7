/* Reader of the edge-shitu gallery index format 1.x (docs/index-format.md): writes 1.2,
 * reads 1.0, 1.1, 1.2 and later 1.x files whose unknown sections are marked optional.
 *
 * Freestanding C11: no libc, no allocation. The caller maps or loads the file and gets
 * pointers into its own buffer, the same zero-copy view the Python reader has. Multi-byte
 * fields are assembled byte by byte, so this works on any host endianness and alignment.
 * Every byte of the file is checked (CRCs, zero padding and reserved fields, the section
 * layout) before any field is believed: a damaged file gives an error, never a different view. */
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
#define ES_INDEX_VERSION_MINOR 2 /* the newest minor version this reader knows */
#define ES_SECTION_OPTIONAL 1u   /* section entry flag: readers that do not know the kind skip it */

enum es_index_status {
    ES_OK = 0,
    ES_ERR_ARGS = -1,        /* NULL pointer */
    ES_ERR_TRUNCATED = -2,   /* shorter than the header says */
    ES_ERR_MAGIC = -3,       /* not an index file */
    ES_ERR_VERSION = -4,     /* major version this reader does not know, or a newer minor version's
                                required section kind / flag */
    ES_ERR_HEADER_CRC = -5,
    ES_ERR_HEADER = -6,      /* inconsistent header fields */
    ES_ERR_SECTION = -7,     /* section out of bounds, misaligned, missing or of the wrong length */
    ES_ERR_SECTION_CRC = -8,
    ES_ERR_LABELS = -9,      /* label table inconsistent */
    ES_ERR_TABLE_CRC = -10,  /* section table CRC mismatch (format 1.2+) */
    ES_ERR_PADDING = -11     /* non-zero padding or reserved bytes, or bytes after the last section */
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
    const uint8_t *meta;      /* UTF-8 JSON or NULL (not parsed here: readers that use it must
                                 refuse a META that is not a JSON object) */
    uint64_t meta_len;
    const uint8_t *vectors;   /* RERANK_VECTORS: count x dim int8, row-major, or NULL */
} es_index_view;

/* Parse and check a whole index held in buf[0..len). verify_crc != 0 checks every section's
 * CRC32 and the zero padding between sections (reads the whole file); the header, its CRC, the
 * section table and its CRC are always checked. */
ES_API int es_index_parse(const uint8_t *buf, uint64_t len, int verify_crc, es_index_view *out);
ES_API const char *es_index_strerror(int status);
ES_API uint32_t es_crc32(const uint8_t *data, uint64_t len);
/* Row accessors: row must be < count (not checked). */
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
