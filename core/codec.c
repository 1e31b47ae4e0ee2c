#include "config.h"

#include "codec.h"

#include <stdlib.h>
#include <string.h>

static inline uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t be64(const uint8_t *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }

static bool bad(hd_rd_t *r) {
  r->err = true;
  return false;
}

static bool need(hd_rd_t *r, size_t n) {
  if (r->err || (size_t)(r->end - r->p) < n) return bad(r);
  return true;
}

int hd_rd_peek(const hd_rd_t *r) { return r->err || r->p >= r->end ? -1 : *r->p; }

/* Width of the fixed part that follows a primitive constructor, or -1 for a
 * variable-width one (whose length prefix is 1 or 4 bytes: see below). */
static int fixed_width(uint8_t c) {
  switch (c >> 4) {
  case 0x4: return 0;
  case 0x5: return 1;
  case 0x6: return 2;
  case 0x7: return 4;
  case 0x8: return 8;
  case 0x9: return 16;
  default: return -1;
  }
}

static int skip_depth(hd_rd_t *r, int depth);

static bool skip_constructor_body(hd_rd_t *r, uint8_t c, int depth) {
  int w = fixed_width(c);
  if (w >= 0) {
    if (!need(r, (size_t)w)) return false;
    r->p += w;
    return true;
  }
  size_t len;
  switch (c >> 4) {
  case 0xa: case 0xc: case 0xe:
    if (!need(r, 1)) return false;
    len = *r->p++;
    break;
  case 0xb: case 0xd: case 0xf:
    if (!need(r, 4)) return false;
    len = be32(r->p);
    r->p += 4;
    break;
  default: return bad(r); /* reserved codes */
  }
  if (!need(r, len)) return false;
  (void)depth;
  r->p += len;
  return true;
}

static int skip_depth(hd_rd_t *r, int depth) {
  if (depth > 64 || !need(r, 1)) return bad(r);
  uint8_t c = *r->p++;
  if (c == HD_AMQP_DESCRIBED) {
    if (!skip_depth(r, depth + 1)) return false; /* descriptor */
    return skip_depth(r, depth + 1);             /* value */
  }
  return skip_constructor_body(r, c, depth);
}

bool hd_rd_skip(hd_rd_t *r) { return skip_depth(r, 0); }

bool hd_rd_descriptor(hd_rd_t *r, uint64_t *code, const uint8_t **sym, size_t *symlen) {
  int c = hd_rd_peek(r);
  if (c == HD_AMQP_SYM8 || c == HD_AMQP_SYM32) {
    *code = UINT64_MAX;
    return hd_rd_bytes(r, sym, symlen, NULL);
  }
  bool present;
  if (!hd_rd_u64(r, code, &present)) return false;
  return present ? true : bad(r);
}

bool hd_rd_compound(hd_rd_t *r, bool want_map, uint32_t *count, hd_rd_t *inner) {
  if (!need(r, 1)) return false;
  uint8_t c = *r->p++;
  uint32_t size, n;
  if (c == HD_AMQP_LIST0 && !want_map) {
    *count = 0;
    *inner = hd_rd(r->p, 0);
    return true;
  }
  if (c == (want_map ? HD_AMQP_MAP8 : HD_AMQP_LIST8)) {
    if (!need(r, 2)) return false;
    size = r->p[0];
    n = r->p[1];
    r->p += 2;
    if (size < 1) return bad(r);
    size -= 1;
  } else if (c == (want_map ? HD_AMQP_MAP32 : HD_AMQP_LIST32)) {
    if (!need(r, 8)) return false;
    size = be32(r->p);
    n = be32(r->p + 4);
    r->p += 8;
    if (size < 4) return bad(r);
    size -= 4;
  } else {
    return bad(r);
  }
  if (!need(r, size)) return false;
  if (want_map && (n & 1)) return bad(r);
  *inner = hd_rd(r->p, size);
  *count = n;
  r->p += size;
  return true;
}

bool hd_rd_bool(hd_rd_t *r, bool *v, bool *present) {
  if (!need(r, 1)) return false;
  uint8_t c = *r->p++;
  if (present) *present = c != HD_AMQP_NULL;
  switch (c) {
  case HD_AMQP_NULL: *v = false; return true;
  case HD_AMQP_TRUE: *v = true; return true;
  case HD_AMQP_FALSE: *v = false; return true;
  case HD_AMQP_BOOLEAN:
    if (!need(r, 1)) return false;
    *v = *r->p++ != 0;
    return true;
  default: return bad(r);
  }
}

bool hd_rd_u64(hd_rd_t *r, uint64_t *v, bool *present) {
  if (!need(r, 1)) return false;
  uint8_t c = *r->p++;
  if (present) *present = c != HD_AMQP_NULL;
  switch (c) {
  case HD_AMQP_NULL:
  case HD_AMQP_UINT0:
  case HD_AMQP_ULONG0: *v = 0; return true;
  case HD_AMQP_UBYTE:
  case HD_AMQP_SMALLUINT:
  case HD_AMQP_SMALLULONG:
    if (!need(r, 1)) return false;
    *v = *r->p++;
    return true;
  case HD_AMQP_UINT:
    if (!need(r, 4)) return false;
    *v = be32(r->p);
    r->p += 4;
    return true;
  case HD_AMQP_ULONG:
  case HD_AMQP_TIMESTAMP:
    if (!need(r, 8)) return false;
    *v = be64(r->p);
    r->p += 8;
    return true;
  default: return bad(r);
  }
}

bool hd_rd_bytes(hd_rd_t *r, const uint8_t **v, size_t *len, bool *present) {
  if (!need(r, 1)) return false;
  uint8_t c = *r->p++;
  if (present) *present = c != HD_AMQP_NULL;
  size_t n;
  switch (c) {
  case HD_AMQP_NULL: *v = NULL; *len = 0; return true;
  case HD_AMQP_VBIN8: case HD_AMQP_STR8: case HD_AMQP_SYM8:
    if (!need(r, 1)) return false;
    n = *r->p++;
    break;
  case HD_AMQP_VBIN32: case HD_AMQP_STR32: case HD_AMQP_SYM32:
    if (!need(r, 4)) return false;
    n = be32(r->p);
    r->p += 4;
    break;
  default: return bad(r);
  }
  if (!need(r, n)) return false;
  *v = r->p;
  *len = n;
  r->p += n;
  return true;
}

/* ---- writer ------------------------------------------------------------ */

void hd_wr_init(hd_wr_t *w, void *stack, size_t cap) {
  w->buf = stack;
  w->len = 0;
  w->cap = stack ? cap : 0;
  w->heap = false;
  w->err = false;
}

void hd_wr_free(hd_wr_t *w) {
  if (w->heap) free(w->buf);
  w->buf = NULL;
  w->cap = w->len = 0;
  w->heap = false;
}

static bool grow(hd_wr_t *w, size_t n) {
  if (w->err) return false;
  if (w->len + n <= w->cap) return true;
  size_t cap = w->cap ? w->cap * 2 : 256;
  while (cap < w->len + n) cap *= 2;
  uint8_t *nb = w->heap ? realloc(w->buf, cap) : malloc(cap);
  if (!nb) {
    w->err = true;
    return false;
  }
  if (!w->heap && w->len) memcpy(nb, w->buf, w->len);
  w->buf = nb;
  w->cap = cap;
  w->heap = true;
  return true;
}

void hd_wr_raw(hd_wr_t *w, const void *p, size_t n) {
  if (!grow(w, n)) return;
  memcpy(w->buf + w->len, p, n);
  w->len += n;
}

void hd_wr_u8(hd_wr_t *w, uint8_t v) { hd_wr_raw(w, &v, 1); }

static void put32(hd_wr_t *w, uint32_t v) {
  uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
  hd_wr_raw(w, b, 4);
}

static void put64(hd_wr_t *w, uint64_t v) {
  put32(w, (uint32_t)(v >> 32));
  put32(w, (uint32_t)v);
}

void hd_wr_descriptor(hd_wr_t *w, uint8_t code) {
  uint8_t b[3] = {HD_AMQP_DESCRIBED, HD_AMQP_SMALLULONG, code};
  hd_wr_raw(w, b, 3);
}

void hd_wr_null(hd_wr_t *w) { hd_wr_u8(w, HD_AMQP_NULL); }
void hd_wr_bool(hd_wr_t *w, bool v) { hd_wr_u8(w, v ? HD_AMQP_TRUE : HD_AMQP_FALSE); }

void hd_wr_ubyte(hd_wr_t *w, uint8_t v) {
  uint8_t b[2] = {HD_AMQP_UBYTE, v};
  hd_wr_raw(w, b, 2);
}

void hd_wr_uint(hd_wr_t *w, uint32_t v) {
  if (v == 0) {
    hd_wr_u8(w, HD_AMQP_UINT0);
  } else if (v < 256) {
    uint8_t b[2] = {HD_AMQP_SMALLUINT, (uint8_t)v};
    hd_wr_raw(w, b, 2);
  } else {
    hd_wr_u8(w, HD_AMQP_UINT);
    put32(w, v);
  }
}

void hd_wr_ulong(hd_wr_t *w, uint64_t v) {
  if (v == 0) {
    hd_wr_u8(w, HD_AMQP_ULONG0);
  } else if (v < 256) {
    uint8_t b[2] = {HD_AMQP_SMALLULONG, (uint8_t)v};
    hd_wr_raw(w, b, 2);
  } else {
    hd_wr_u8(w, HD_AMQP_ULONG);
    put64(w, v);
  }
}

void hd_wr_timestamp(hd_wr_t *w, int64_t v) {
  hd_wr_u8(w, HD_AMQP_TIMESTAMP);
  put64(w, (uint64_t)v);
}

static void var(hd_wr_t *w, uint8_t c8, uint8_t c32, const char *s, size_t n) {
  if (n < 256) {
    uint8_t b[2] = {c8, (uint8_t)n};
    hd_wr_raw(w, b, 2);
  } else {
    hd_wr_u8(w, c32);
    put32(w, (uint32_t)n);
  }
  hd_wr_raw(w, s, n);
}

void hd_wr_string(hd_wr_t *w, const char *s, size_t n) { var(w, HD_AMQP_STR8, HD_AMQP_STR32, s, n); }
void hd_wr_symbol(hd_wr_t *w, const char *s, size_t n) { var(w, HD_AMQP_SYM8, HD_AMQP_SYM32, s, n); }

size_t hd_wr_begin(hd_wr_t *w, uint8_t code) {
  hd_wr_u8(w, code);
  size_t mark = w->len;
  put64(w, 0);
  return mark;
}

void hd_wr_end(hd_wr_t *w, size_t mark, uint32_t count) {
  if (w->err) return;
  uint32_t size = (uint32_t)(w->len - mark - 4);
  uint8_t *p = w->buf + mark;
  p[0] = (uint8_t)(size >> 24); p[1] = (uint8_t)(size >> 16); p[2] = (uint8_t)(size >> 8); p[3] = (uint8_t)size;
  p[4] = (uint8_t)(count >> 24); p[5] = (uint8_t)(count >> 16); p[6] = (uint8_t)(count >> 8); p[7] = (uint8_t)count;
}
