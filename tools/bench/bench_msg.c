#include "config.h"

#include "bench_msg.h"

#include <proton/codec.h>
#include <proton/error.h>
#include <proton/message.h>
#include <stdlib.h>
#include <string.h>

/* Placeholder stamp: its 8 bytes are looked up in the encoding to learn
 * where to patch, so it must not occur anywhere else (the body is 'x's). */
#define STAMP_MAGIC 0x4842545354414d50ull /* "HBTSTAMP" */

static uint64_t be64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v = v << 8 | p[i];
  return v;
}

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int hb_msg_build(hb_msg_t *m, size_t body_size, bool durable, uint64_t run_id) {
  memset(m, 0, sizeof *m);
  pn_message_t *msg = pn_message();
  char *body = malloc(body_size ? body_size : 1);
  if (!msg || !body) goto fail;
  memset(body, 'x', body_size);
  pn_message_set_durable(msg, durable);
  /* inferred: a binary body goes into a data section, not an amqp-value. */
  pn_message_set_inferred(msg, true);
  pn_data_t *ap = pn_message_properties(msg);
  pn_data_put_map(ap);
  pn_data_enter(ap);
  pn_data_put_string(ap, pn_bytes(5, "hb-ts"));
  pn_data_put_long(ap, (int64_t)STAMP_MAGIC);
  pn_data_put_string(ap, pn_bytes(6, "hb-run"));
  pn_data_put_long(ap, (int64_t)run_id);
  pn_data_exit(ap);
  pn_data_put_binary(pn_message_body(msg), pn_bytes(body_size, body));

  size_t cap = body_size + 256;
  for (;;) {
    m->bytes = malloc(cap);
    if (!m->bytes) goto fail;
    size_t len = cap;
    int rc = pn_message_encode(msg, (char *)m->bytes, &len);
    if (rc == 0) {
      m->size = len;
      break;
    }
    free(m->bytes);
    m->bytes = NULL;
    if (rc != PN_OVERFLOW) goto fail;
    cap *= 2;
  }
  /* A long is encoded as 0x81 and 8 big-endian bytes. */
  for (size_t i = 0; i + 9 <= m->size; i++)
    if (m->bytes[i] == 0x81 && be64(m->bytes + i + 1) == STAMP_MAGIC) {
      m->stamp_at = i + 1;
      pn_message_free(msg);
      free(body);
      return 0;
    }
fail:
  hb_msg_free(m);
  pn_message_free(msg);
  free(body);
  return -1;
}

void hb_msg_free(hb_msg_t *m) {
  free(m->bytes);
  memset(m, 0, sizeof *m);
}

/* Size of the encoded value at p (constructor included), or 0 when it does
 * not fit in n bytes.  The format code's high nibble gives the width class. */
static size_t skip_value(const uint8_t *p, size_t n, int depth) {
  if (n < 1 || depth > 8) return 0;
  uint8_t code = p[0];
  size_t len;
  if (code == 0x00) { /* described: descriptor then value */
    size_t d = skip_value(p + 1, n - 1, depth + 1);
    if (!d) return 0;
    size_t v = skip_value(p + 1 + d, n - 1 - d, depth + 1);
    return v ? 1 + d + v : 0;
  }
  switch (code >> 4) {
  case 0x4: len = 1; break;
  case 0x5: len = 2; break;
  case 0x6: len = 3; break;
  case 0x7: len = 5; break;
  case 0x8: len = 9; break;
  case 0x9: len = 17; break;
  case 0xa:
  case 0xc:
  case 0xe: len = n >= 2 ? 2 + (size_t)p[1] : SIZE_MAX; break;
  case 0xb:
  case 0xd:
  case 0xf: len = n >= 5 ? 5 + (size_t)be32(p + 1) : SIZE_MAX; break;
  default: return 0;
  }
  return len <= n ? len : 0;
}

/* Reads an integer property value (long, small long, ulong, timestamp). */
static bool read_int(const uint8_t *p, size_t n, uint64_t *out) {
  if (n >= 9 && (p[0] == 0x81 || p[0] == 0x80 || p[0] == 0x83)) {
    *out = be64(p + 1);
    return true;
  }
  if (n >= 2 && (p[0] == 0x55 || p[0] == 0x53)) {
    *out = p[0] == 0x55 ? (uint64_t)(int64_t)(int8_t)p[1] : p[1];
    return true;
  }
  return false;
}

static bool key_is(const uint8_t *p, size_t n, const char *name) {
  size_t len = strlen(name);
  if (n >= 2 + len && p[0] == 0xa1 && p[1] == len) return !memcmp(p + 2, name, len);
  if (n >= 5 + len && p[0] == 0xb1 && be32(p + 1) == len) return !memcmp(p + 5, name, len);
  return false;
}

static bool scan_map(const uint8_t *p, size_t n, uint64_t *stamp, uint64_t *run) {
  size_t count, hdr;
  if (n >= 3 && p[0] == 0xc1)
    count = p[2], hdr = 3;
  else if (n >= 9 && p[0] == 0xd1)
    count = be32(p + 5), hdr = 9;
  else
    return false;
  bool found = false;
  size_t at = hdr;
  for (size_t i = 0; i < count; i += 2) {
    size_t k = skip_value(p + at, n - at, 0);
    if (!k) return found;
    size_t v = skip_value(p + at + k, n - at - k, 0);
    if (!v) return found;
    if (key_is(p + at, k, "hb-ts"))
      found = read_int(p + at + k, v, stamp) || found;
    else if (key_is(p + at, k, "hb-run"))
      read_int(p + at + k, v, run);
    at += k + v;
  }
  return found;
}

bool hb_msg_scan(const uint8_t *p, size_t n, uint64_t *stamp_ns, uint64_t *run) {
  *run = 0;
  size_t at = 0;
  while (at < n) {
    size_t len = skip_value(p + at, n - at, 0);
    if (!len || p[at] != 0x00) return false;
    /* Section descriptors are small ulongs (0x53 code) in practice; 0x74
     * is application-properties. */
    if (at + 3 <= n && p[at + 1] == 0x53 && p[at + 2] == 0x74)
      return scan_map(p + at + 3, len - 3, stamp_ns, run);
    if (at + 10 <= n && p[at + 1] == 0x80 && be64(p + at + 2) == 0x74)
      return scan_map(p + at + 10, len - 10, stamp_ns, run);
    at += len;
  }
  return false;
}
