/* A small AMQP 1.0 type codec: enough to find a message's sections, read the
 * header and properties fields the broker acts on, skip everything else, and
 * write header and message-annotation sections.  Bodies are never decoded.
 * Readers work on borrowed buffers and never allocate. */
#ifndef HD_CODEC_H
#define HD_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Format codes (AMQP 1.0 types section). */
enum {
  HD_AMQP_DESCRIBED = 0x00,
  HD_AMQP_NULL = 0x40,
  HD_AMQP_TRUE = 0x41,
  HD_AMQP_FALSE = 0x42,
  HD_AMQP_UINT0 = 0x43,
  HD_AMQP_ULONG0 = 0x44,
  HD_AMQP_LIST0 = 0x45,
  HD_AMQP_UBYTE = 0x50,
  HD_AMQP_SMALLUINT = 0x52,
  HD_AMQP_SMALLULONG = 0x53,
  HD_AMQP_BOOLEAN = 0x56,
  HD_AMQP_UINT = 0x70,
  HD_AMQP_ULONG = 0x80,
  HD_AMQP_TIMESTAMP = 0x83,
  HD_AMQP_VBIN8 = 0xa0,
  HD_AMQP_STR8 = 0xa1,
  HD_AMQP_SYM8 = 0xa3,
  HD_AMQP_VBIN32 = 0xb0,
  HD_AMQP_STR32 = 0xb1,
  HD_AMQP_SYM32 = 0xb3,
  HD_AMQP_LIST8 = 0xc0,
  HD_AMQP_MAP8 = 0xc1,
  HD_AMQP_LIST32 = 0xd0,
  HD_AMQP_MAP32 = 0xd1,
  HD_AMQP_ARRAY8 = 0xe0,
  HD_AMQP_ARRAY32 = 0xf0,
};

/* Message section descriptors (amqp:*:* codes 0x70..0x78). */
enum {
  HD_SEC_HEADER = 0x70,
  HD_SEC_DELIVERY_ANN = 0x71,
  HD_SEC_MESSAGE_ANN = 0x72,
  HD_SEC_PROPERTIES = 0x73,
  HD_SEC_APP_PROPERTIES = 0x74,
  HD_SEC_DATA = 0x75,
  HD_SEC_SEQUENCE = 0x76,
  HD_SEC_VALUE = 0x77,
  HD_SEC_FOOTER = 0x78,
};

typedef struct hd_rd {
  const uint8_t *p, *end;
  bool err; /* sticky: once set, every read fails */
} hd_rd_t;

static inline hd_rd_t hd_rd(const void *buf, size_t len) {
  hd_rd_t r = {(const uint8_t *)buf, (const uint8_t *)buf + len, false};
  return r;
}
static inline size_t hd_rd_left(const hd_rd_t *r) { return r->err ? 0 : (size_t)(r->end - r->p); }

/* Skip one complete value (described values included). */
bool hd_rd_skip(hd_rd_t *r);
/* Read a descriptor after a 0x00 constructor: ulong code, or symbol (the
 * symbol form answers code UINT64_MAX and points sym at the name). */
bool hd_rd_descriptor(hd_rd_t *r, uint64_t *code, const uint8_t **sym, size_t *symlen);
/* Open a list or map: consumes the constructor, size and count; *count is
 * the element count and *inner a reader over the elements. */
bool hd_rd_compound(hd_rd_t *r, bool want_map, uint32_t *count, hd_rd_t *inner);
/* Scalars: the next value must be of a compatible type, or null (then the
 * default is stored and *present is false when present is non-NULL). */
bool hd_rd_bool(hd_rd_t *r, bool *v, bool *present);
bool hd_rd_u64(hd_rd_t *r, uint64_t *v, bool *present); /* ubyte/uint/ulong/timestamp */
/* Strings, symbols and binaries: pointer into the buffer. */
bool hd_rd_bytes(hd_rd_t *r, const uint8_t **v, size_t *len, bool *present);
/* The format code of the next value (without consuming), or -1 at end. */
int hd_rd_peek(const hd_rd_t *r);

/* ---- writer ------------------------------------------------------------ */

typedef struct hd_wr {
  uint8_t *buf;
  size_t len, cap;
  bool heap; /* buf was allocated by the writer */
  bool err;
} hd_wr_t;

/* Writer into caller storage; grows onto the heap if it must. */
void hd_wr_init(hd_wr_t *w, void *stack, size_t cap);
void hd_wr_free(hd_wr_t *w);
void hd_wr_raw(hd_wr_t *w, const void *p, size_t n);
void hd_wr_u8(hd_wr_t *w, uint8_t v);
void hd_wr_descriptor(hd_wr_t *w, uint8_t code); /* 0x00 0x53 code */
void hd_wr_null(hd_wr_t *w);
void hd_wr_bool(hd_wr_t *w, bool v);
void hd_wr_ubyte(hd_wr_t *w, uint8_t v);
void hd_wr_uint(hd_wr_t *w, uint32_t v);
void hd_wr_ulong(hd_wr_t *w, uint64_t v);
void hd_wr_timestamp(hd_wr_t *w, int64_t v);
void hd_wr_string(hd_wr_t *w, const char *s, size_t n);
void hd_wr_symbol(hd_wr_t *w, const char *s, size_t n);
/* list32/map32 with a placeholder size and count, patched by hd_wr_end. */
size_t hd_wr_begin(hd_wr_t *w, uint8_t list32_or_map32);
void hd_wr_end(hd_wr_t *w, size_t mark, uint32_t count);

#endif
