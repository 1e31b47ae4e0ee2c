/* core/message.h: finding the sections of hand-built messages, the header
 * written per delivery, re-annotation, and memory accounting. */
#include "config.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec.h"
#include "hadron/module.h"
#include "message.h"
#include "util.h"

#define NOW 1000000u

/* ---- building messages ---------------------------------------------------- */

static hd_msg_t *msg_from(const uint8_t *bytes, size_t len) {
  hd_msg_t *m = hd_msg_alloc(len);
  assert_non_null(m);
  if (len) memcpy(m->buf, bytes, len);
  return m;
}

/* Parse bytes; returns the message (caller unrefs) and the result code. */
static hd_msg_t *parse(const uint8_t *bytes, size_t len, uint64_t now, int *rc, const char **why) {
  hd_msg_t *m = msg_from(bytes, len);
  *why = NULL;
  *rc = hd_msg_parse(m, now, why);
  return m;
}

/* A writer's bytes parse; frees the writer first. */
static void expect_ok_w(hd_wr_t *w) {
  int rc;
  const char *why;
  hd_msg_unref(parse(w->buf, w->len, NOW, &rc, &why));
  hd_wr_free(w);
  if (rc != 0) fail_msg("refused: %s", why ? why : "(no reason)");
}

/* Refused with HD_EPROTO and a reason containing `word` (NULL: any reason).
 * The message is freed before asserting, so a failure leaks nothing. */
static void expect_eproto(const uint8_t *bytes, size_t len, const char *word) {
  int rc;
  const char *why;
  hd_msg_unref(parse(bytes, len, NOW, &rc, &why));
  if (rc != HD_EPROTO) fail_msg("expected HD_EPROTO (%d), got %d", HD_EPROTO, rc);
  assert_non_null(why);
  assert_true(why[0] != '\0');
  if (word && !strstr(why, word)) fail_msg("reason '%s' lacks '%s'", why, word);
}

/* Same, for a writer's bytes; frees the writer first. */
static void expect_eproto_w(hd_wr_t *w, const char *word) {
  int rc;
  const char *why;
  hd_msg_unref(parse(w->buf, w->len, NOW, &rc, &why));
  hd_wr_free(w);
  if (rc != HD_EPROTO) fail_msg("expected HD_EPROTO (%d), got %d", HD_EPROTO, rc);
  assert_non_null(why);
  if (word && !strstr(why, word)) fail_msg("reason '%s' lacks '%s'", why, word);
}

static void w_str(hd_wr_t *w, const char *s) { hd_wr_string(w, s, strlen(s)); }
static void w_sym(hd_wr_t *w, const char *s) { hd_wr_symbol(w, s, strlen(s)); }

static void w_header(hd_wr_t *w, bool durable, int priority, int64_t ttl, uint32_t dc) {
  hd_wr_descriptor(w, HD_SEC_HEADER);
  size_t m = hd_wr_begin(w, HD_AMQP_LIST32);
  hd_wr_bool(w, durable);
  if (priority >= 0) hd_wr_ubyte(w, (uint8_t)priority); else hd_wr_null(w);
  if (ttl >= 0) hd_wr_uint(w, (uint32_t)ttl); else hd_wr_null(w);
  hd_wr_bool(w, false);
  hd_wr_uint(w, dc);
  hd_wr_end(w, m, 5);
}

/* A one-entry annotation map section (delivery or message annotations). */
static void w_ann(hd_wr_t *w, uint8_t code, const char *key, const char *value) {
  hd_wr_descriptor(w, code);
  size_t m = hd_wr_begin(w, HD_AMQP_MAP32);
  w_sym(w, key);
  w_str(w, value);
  hd_wr_end(w, m, 2);
}

/* Properties with message-id, to and absolute-expiry-time (0: null). */
static void w_props(hd_wr_t *w, const char *id, const char *to, uint64_t abs_expiry) {
  hd_wr_descriptor(w, HD_SEC_PROPERTIES);
  size_t m = hd_wr_begin(w, HD_AMQP_LIST32);
  if (id) w_str(w, id); else hd_wr_null(w);
  hd_wr_null(w); /* user-id */
  if (to) w_str(w, to); else hd_wr_null(w);
  for (int i = 0; i < 5; i++) hd_wr_null(w); /* subject .. content-encoding */
  if (abs_expiry) hd_wr_timestamp(w, (int64_t)abs_expiry); else hd_wr_null(w);
  hd_wr_end(w, m, 9);
}

static void w_app_props(hd_wr_t *w) {
  hd_wr_descriptor(w, HD_SEC_APP_PROPERTIES);
  size_t m = hd_wr_begin(w, HD_AMQP_MAP32);
  w_str(w, "colour");
  w_str(w, "blue");
  hd_wr_end(w, m, 2);
}

static void w_data(hd_wr_t *w, const char *payload) {
  hd_wr_descriptor(w, HD_SEC_DATA);
  uint8_t h[2] = {HD_AMQP_VBIN8, (uint8_t)strlen(payload)};
  hd_wr_raw(w, h, 2);
  hd_wr_raw(w, payload, strlen(payload));
}

static void w_value(hd_wr_t *w, const char *s) {
  hd_wr_descriptor(w, HD_SEC_VALUE);
  w_str(w, s);
}

static void w_sequence(hd_wr_t *w) {
  hd_wr_descriptor(w, HD_SEC_SEQUENCE);
  size_t m = hd_wr_begin(w, HD_AMQP_LIST32);
  hd_wr_uint(w, 1);
  hd_wr_end(w, m, 1);
}

static void w_footer(hd_wr_t *w) {
  hd_wr_descriptor(w, HD_SEC_FOOTER);
  size_t m = hd_wr_begin(w, HD_AMQP_MAP32);
  w_sym(w, "x-sum");
  hd_wr_uint(w, 77);
  hd_wr_end(w, m, 2);
}

/* ---- hd_msg_parse ------------------------------------------------------------ */

/* Every section present: offsets and fields land where they were written. */
static void t_parse_all_sections(void **state) {
  (void)state;
  hd_wr_t w;
  hd_wr_init(&w, NULL, 0);
  w_header(&w, true, 7, 5000, 2);
  w_ann(&w, HD_SEC_DELIVERY_ANN, "x-opt-hop", "h1");
  size_t ma = w.len;
  w_ann(&w, HD_SEC_MESSAGE_ANN, "x-opt-a", "v");
  size_t bare = w.len;
  w_props(&w, "id-1", "orders", 0);
  w_app_props(&w);
  w_data(&w, "payload");
  w_footer(&w);
  assert_false(w.err);

  int rc;
  const char *why;
  hd_msg_t *m = parse(w.buf, w.len, NOW, &rc, &why);
  assert_int_equal(rc, 0);
  assert_int_equal(m->ma_off, ma);
  assert_int_equal(m->ma_len, bare - ma);
  assert_int_equal(m->bare_off, bare);
  assert_true(m->flags & HD_MSG_DURABLE);
  assert_true(m->flags & HD_MSG_HAS_PRIORITY);
  assert_true(m->flags & HD_MSG_HAS_TTL);
  assert_int_equal(m->priority, 7);
  assert_int_equal(m->ttl, 5000);
  assert_int_equal(m->expiry_ms, NOW + 5000);
  assert_int_equal(m->delivery_count, 2);
  assert_int_equal(m->to_len, 6);
  assert_memory_equal(m->buf + m->to_off, "orders", 6);
  /* message-id stays encoded: str8 "id-1" */
  static const uint8_t id[] = {HD_AMQP_STR8, 4, 'i', 'd', '-', '1'};
  assert_int_equal(m->id_len, sizeof id);
  assert_memory_equal(m->buf + m->id_off, id, sizeof id);
  hd_msg_unref(m);
  hd_wr_free(&w);
}

/* Only a body: defaults everywhere, the whole message is bare. */
static void t_parse_body_only(void **state) {
  (void)state;
  hd_wr_t w;
  hd_wr_init(&w, NULL, 0);
  w_value(&w, "hello");
  int rc;
  const char *why;
  hd_msg_t *m = parse(w.buf, w.len, NOW, &rc, &why);
  assert_int_equal(rc, 0);
  assert_int_equal(m->bare_off, 0);
  assert_int_equal(m->ma_len, 0);
  assert_int_equal(m->to_len, 0);
  assert_int_equal(m->id_len, 0);
  assert_int_equal(m->priority, 4);
  assert_int_equal(m->flags, 0);
  assert_int_equal(m->expiry_ms, 0);
  assert_int_equal(m->delivery_count, 0);
  hd_msg_unref(m);
  hd_wr_free(&w);
}

/* A header followed directly by the body: bare_off is the body's offset;
 * null priority and ttl leave the defaults and no flags. */
static void t_parse_header_nulls(void **state) {
  (void)state;
  hd_wr_t w;
  hd_wr_init(&w, NULL, 0);
  w_header(&w, false, -1, -1, 0);
  size_t body = w.len;
  w_data(&w, "x");
  int rc;
  const char *why;
  hd_msg_t *m = parse(w.buf, w.len, NOW, &rc, &why);
  assert_int_equal(rc, 0);
  assert_int_equal(m->bare_off, body);
  assert_int_equal(m->flags, 0);
  assert_int_equal(m->priority, 4);
  assert_int_equal(m->expiry_ms, 0);
  hd_msg_unref(m);
  hd_wr_free(&w);
}

static uint64_t expiry_at(uint64_t now, int64_t ttl, uint64_t abs_expiry) {
  hd_wr_t w;
  hd_wr_init(&w, NULL, 0);
  if (ttl >= 0) w_header(&w, false, -1, ttl, 0);
  w_props(&w, NULL, NULL, abs_expiry);
  w_value(&w, "b");
  int rc;
  const char *why;
  hd_msg_t *m = parse(w.buf, w.len, now, &rc, &why);
  assert_int_equal(rc, 0);
  uint64_t e = m->expiry_ms;
  hd_msg_unref(m);
  hd_wr_free(&w);
  return e;
}

static uint64_t expiry_of(int64_t ttl, uint64_t abs_expiry) { return expiry_at(NOW, ttl, abs_expiry); }

/* ttl anchors on now; absolute-expiry-time applies alone, and when both are
 * given the earlier one wins.  HD_MSG_NOW anchors a ttl on the clock read
 * during the parse. */
static void t_parse_expiry(void **state) {
  (void)state;
  uint64_t before = hd_now_wall_ms();
  uint64_t e = expiry_at(HD_MSG_NOW, 10000, 0);
  uint64_t after = hd_now_wall_ms();
  assert_in_range(e, before + 10000, after + 10000);
  assert_int_equal(expiry_at(HD_MSG_NOW, -1, 0), 0);
  assert_int_equal(expiry_at(HD_MSG_NOW, -1, NOW + 3000), NOW + 3000);
  assert_int_equal(expiry_of(10000, 0), NOW + 10000);
  assert_int_equal(expiry_of(-1, NOW + 3000), NOW + 3000);
  assert_int_equal(expiry_of(10000, NOW + 3000), NOW + 3000);  /* absolute earlier */
  assert_int_equal(expiry_of(10000, NOW + 50000), NOW + 10000); /* ttl earlier */
  assert_int_equal(expiry_of(-1, 0), 0);
}

/* Sections named by symbol instead of code are recognised the same way. */
static void t_parse_symbolic_descriptors(void **state) {
  (void)state;
  hd_wr_t w;
  hd_wr_init(&w, NULL, 0);
  hd_wr_u8(&w, HD_AMQP_DESCRIBED);
  w_sym(&w, "amqp:header:list");
  uint8_t hdr[] = {HD_AMQP_LIST8, 0x02, 0x01, HD_AMQP_TRUE};
  hd_wr_raw(&w, hdr, sizeof hdr);
  size_t ma = w.len;
  hd_wr_u8(&w, HD_AMQP_DESCRIBED);
  w_sym(&w, "amqp:message-annotations:map");
  uint8_t map[] = {HD_AMQP_MAP8, 0x01, 0x00};
  hd_wr_raw(&w, map, sizeof map);
  size_t bare = w.len;
  hd_wr_u8(&w, HD_AMQP_DESCRIBED);
  w_sym(&w, "amqp:properties:list");
  size_t l = hd_wr_begin(&w, HD_AMQP_LIST32);
  hd_wr_ulong(&w, 42); /* message-id */
  hd_wr_null(&w);
  w_str(&w, "q1");
  hd_wr_end(&w, l, 3);
  hd_wr_u8(&w, HD_AMQP_DESCRIBED);
  w_sym(&w, "amqp:data:binary");
  uint8_t data[] = {HD_AMQP_VBIN8, 1, 'z'};
  hd_wr_raw(&w, data, sizeof data);

  int rc;
  const char *why;
  hd_msg_t *m = parse(w.buf, w.len, NOW, &rc, &why);
  if (rc) fail_msg("refused: %s", why);
  assert_true(m->flags & HD_MSG_DURABLE);
  assert_int_equal(m->ma_off, ma);
  assert_int_equal(m->bare_off, bare);
  assert_int_equal(m->to_len, 2);
  assert_memory_equal(m->buf + m->to_off, "q1", 2);
  static const uint8_t id[] = {HD_AMQP_SMALLULONG, 42};
  assert_int_equal(m->id_len, sizeof id);
  assert_memory_equal(m->buf + m->id_off, id, sizeof id);
  hd_msg_unref(m);
  hd_wr_free(&w);

  /* A symbol that names no section. */
  hd_wr_init(&w, NULL, 0);
  hd_wr_u8(&w, HD_AMQP_DESCRIBED);
  w_sym(&w, "amqp:headers:list");
  hd_wr_raw(&w, hdr, sizeof hdr);
  expect_eproto_w(&w, "unknown");
}

/* Sections out of order, or a non-repeatable one given twice, are refused;
 * several data (or sequence) sections are one body and are accepted. */
static void t_parse_order(void **state) {
  (void)state;
  hd_wr_t w;

  hd_wr_init(&w, NULL, 0);
  w_props(&w, "i", "a", 0);
  w_header(&w, true, -1, -1, 0);
  w_value(&w, "b");
  expect_eproto_w(&w, "order");

  hd_wr_init(&w, NULL, 0);
  w_header(&w, true, -1, -1, 0);
  w_header(&w, true, -1, -1, 0);
  w_value(&w, "b");
  expect_eproto_w(&w, "repeated");

  hd_wr_init(&w, NULL, 0);
  w_value(&w, "b");
  w_ann(&w, HD_SEC_MESSAGE_ANN, "x-opt-late", "v");
  expect_eproto_w(&w, "order");

  hd_wr_init(&w, NULL, 0);
  w_value(&w, "one");
  w_value(&w, "two");
  expect_eproto_w(&w, "repeated");

  hd_wr_init(&w, NULL, 0);
  w_data(&w, "body");
  w_footer(&w);
  w_footer(&w);
  expect_eproto_w(&w, "repeated");

  hd_wr_init(&w, NULL, 0);
  w_props(&w, "i", "a", 0);
  w_data(&w, "part1");
  w_data(&w, "part2");
  w_data(&w, "part3");
  w_footer(&w);
  expect_ok_w(&w);

  hd_wr_init(&w, NULL, 0);
  w_sequence(&w);
  w_sequence(&w);
  expect_ok_w(&w);
}

/* The body is either data sections, or sequence sections, or one value:
 * mixing kinds is not a valid AMQP message even in code order. */
static void t_parse_mixed_body(void **state) {
  (void)state;
  hd_wr_t w;
  hd_wr_init(&w, NULL, 0);
  w_data(&w, "d");
  w_value(&w, "v");
  expect_eproto_w(&w, NULL);

  hd_wr_init(&w, NULL, 0);
  w_data(&w, "d");
  w_sequence(&w);
  expect_eproto_w(&w, NULL);
}

/* Unknown section codes, non-described top-level values, malformed fields
 * and the empty message are refused with a reason. */
static void t_parse_invalid(void **state) {
  (void)state;
  static const uint8_t unknown_low[] = {0x00, 0x53, 0x6f, 0x45};
  expect_eproto(unknown_low, sizeof unknown_low, "unknown");
  static const uint8_t unknown_high[] = {0x00, 0x53, 0x79, 0x45};
  expect_eproto(unknown_high, sizeof unknown_high, "unknown");
  static const uint8_t not_described[] = {0xa1, 0x01, 'x'};
  expect_eproto(not_described, sizeof not_described, "described");
  static const uint8_t null_descriptor[] = {0x00, 0x40, 0x45};
  expect_eproto(null_descriptor, sizeof null_descriptor, "descriptor");
  /* durable given as a string */
  static const uint8_t bad_header[] = {0x00, 0x53, 0x70, 0xc0, 0x04, 0x01, 0xa1, 0x01, 'y',
                                       0x00, 0x53, 0x77, 0x40};
  expect_eproto(bad_header, sizeof bad_header, "malformed");
  /* properties.to given as a list */
  static const uint8_t bad_to[] = {0x00, 0x53, 0x73, 0xc0, 0x04, 0x03, 0x40, 0x40, 0x45,
                                   0x00, 0x53, 0x77, 0x40};
  expect_eproto(bad_to, sizeof bad_to, "malformed");
  /* message annotations as a list */
  static const uint8_t ann_list[] = {0x00, 0x53, 0x72, 0x45, 0x00, 0x53, 0x77, 0x40};
  expect_eproto(ann_list, sizeof ann_list, "malformed");

  int rc;
  const char *why;
  hd_msg_t *m = parse(NULL, 0, NOW, &rc, &why);
  assert_int_equal(rc, HD_EPROTO);
  assert_non_null(why);
  assert_non_null(strstr(why, "empty"));
  hd_msg_unref(m);
}

/* Cutting a valid message anywhere inside a section makes it malformed. */
static void t_parse_truncated(void **state) {
  (void)state;
  hd_wr_t w;
  hd_wr_init(&w, NULL, 0);
  size_t bounds[8], nb = 0;
  w_header(&w, true, 5, 100, 1);
  bounds[nb++] = w.len;
  w_ann(&w, HD_SEC_MESSAGE_ANN, "x-opt-a", "v");
  bounds[nb++] = w.len;
  w_props(&w, "id", "to", 0);
  bounds[nb++] = w.len;
  w_data(&w, "abcdef");
  bounds[nb++] = w.len;
  for (size_t cut = 1; cut < w.len; cut++) {
    bool boundary = false;
    for (size_t i = 0; i < nb; i++) boundary |= bounds[i] == cut;
    if (boundary) continue;
    int rc;
    const char *why;
    hd_msg_t *m = parse(w.buf, cut, NOW, &rc, &why);
    if (rc != HD_EPROTO) fail_msg("cut at %zu of %zu accepted", cut, w.len);
    assert_non_null(why);
    hd_msg_unref(m);
  }
  hd_wr_free(&w);
}

/* ---- hd_msg_header --------------------------------------------------------- */

typedef struct hdr {
  uint32_t count;
  bool durable, durable_null;
  uint64_t priority, ttl, dc;
  bool priority_present, ttl_present;
  bool first_acquirer;
} hdr_t;

/* Decode a header section with the codec; it must be exactly len bytes. */
static hdr_t decode_header(const uint8_t *buf, size_t len) {
  hdr_t h = {0};
  hd_rd_t r = hd_rd(buf, len), l;
  uint64_t code;
  const uint8_t *sym;
  size_t symlen;
  assert_int_equal(hd_rd_peek(&r), HD_AMQP_DESCRIBED);
  r.p++;
  assert_true(hd_rd_descriptor(&r, &code, &sym, &symlen));
  assert_int_equal(code, HD_SEC_HEADER);
  assert_true(hd_rd_compound(&r, false, &h.count, &l));
  assert_int_equal(hd_rd_left(&r), 0);
  bool present;
  if (h.count > 0) {
    assert_true(hd_rd_bool(&l, &h.durable, &present));
    h.durable_null = !present;
  }
  if (h.count > 1) assert_true(hd_rd_u64(&l, &h.priority, &h.priority_present));
  if (h.count > 2) assert_true(hd_rd_u64(&l, &h.ttl, &h.ttl_present));
  if (h.count > 3) assert_true(hd_rd_bool(&l, &h.first_acquirer, NULL));
  if (h.count > 4) assert_true(hd_rd_u64(&l, &h.dc, NULL));
  assert_int_equal(hd_rd_left(&l), 0); /* no fields beyond count */
  assert_false(l.err);
  return h;
}

static hd_msg_t *msg_with_header(bool durable, int priority, int64_t ttl) {
  hd_wr_t w;
  hd_wr_init(&w, NULL, 0);
  w_header(&w, durable, priority, ttl, 0);
  w_value(&w, "b");
  int rc;
  const char *why;
  hd_msg_t *m = parse(w.buf, w.len, NOW, &rc, &why);
  assert_int_equal(rc, 0);
  hd_wr_free(&w);
  return m;
}

/* The header carries only as many fields as the last non-default one. */
static void t_header_minimal_fields(void **state) {
  (void)state;
  uint8_t out[32];
  hdr_t h;

  hd_msg_t *m = msg_with_header(false, -1, -1);
  size_t n = hd_msg_header(m, 0, false, out);
  assert_true(n <= 32);
  h = decode_header(out, n);
  assert_int_equal(h.count, 0);
  hd_msg_unref(m);

  m = msg_with_header(true, -1, -1);
  h = decode_header(out, hd_msg_header(m, 0, false, out));
  assert_int_equal(h.count, 1);
  assert_true(h.durable);

  h = decode_header(out, hd_msg_header(m, 0, true, out));
  assert_int_equal(h.count, 4);
  assert_true(h.durable);
  assert_false(h.priority_present);
  assert_false(h.ttl_present);
  assert_true(h.first_acquirer);

  h = decode_header(out, hd_msg_header(m, 3, false, out));
  assert_int_equal(h.count, 5);
  assert_false(h.first_acquirer);
  assert_int_equal(h.dc, 3);
  hd_msg_unref(m);

  m = msg_with_header(false, 9, -1);
  h = decode_header(out, hd_msg_header(m, 0, false, out));
  assert_int_equal(h.count, 2);
  assert_true(h.durable_null || !h.durable);
  assert_true(h.priority_present);
  assert_int_equal(h.priority, 9);
  hd_msg_unref(m);

  m = msg_with_header(false, -1, 60000);
  h = decode_header(out, hd_msg_header(m, 0, false, out));
  assert_int_equal(h.count, 3);
  assert_false(h.priority_present);
  assert_true(h.ttl_present);
  assert_int_equal(h.ttl, 60000);
  hd_msg_unref(m);

  /* Everything set, with a large delivery count: still within 32 bytes. */
  m = msg_with_header(true, 255, 4000000000ll);
  n = hd_msg_header(m, 4000000000u, true, out);
  assert_true(n <= 32);
  h = decode_header(out, n);
  assert_int_equal(h.count, 5);
  assert_true(h.durable);
  assert_int_equal(h.priority, 255);
  assert_int_equal(h.ttl, 4000000000u);
  assert_true(h.first_acquirer);
  assert_int_equal(h.dc, 4000000000u);
  hd_msg_unref(m);
}

/* ---- hd_msg_annotate --------------------------------------------------------- */

/* Read the message-annotations of m into parallel key/value arrays
 * (symbol keys, values as raw encoded bytes). */
typedef struct ann {
  size_t n;
  char key[8][64];
  const uint8_t *val[8];
  size_t val_len[8];
} ann_t;

static ann_t read_ann(const hd_msg_t *m) {
  ann_t a;
  memset(&a, 0, sizeof a);
  assert_true(m->ma_len > 0);
  hd_rd_t r = hd_rd(m->buf + m->ma_off, m->ma_len), in;
  uint64_t code;
  const uint8_t *sym;
  size_t symlen;
  uint32_t count;
  r.p++;
  assert_true(hd_rd_descriptor(&r, &code, &sym, &symlen));
  assert_int_equal(code, HD_SEC_MESSAGE_ANN);
  assert_true(hd_rd_compound(&r, true, &count, &in));
  assert_int_equal(hd_rd_left(&r), 0);
  for (uint32_t i = 0; i < count; i += 2) {
    const uint8_t *k;
    size_t kn;
    assert_true(hd_rd_bytes(&in, &k, &kn, NULL));
    assert_true(kn < 64 && a.n < 8);
    memcpy(a.key[a.n], k, kn);
    a.val[a.n] = in.p;
    assert_true(hd_rd_skip(&in));
    a.val_len[a.n] = (size_t)(in.p - a.val[a.n]);
    a.n++;
  }
  assert_int_equal(hd_rd_left(&in), 0);
  return a;
}

static const uint8_t *ann_get(const ann_t *a, const char *key, size_t *len) {
  const uint8_t *v = NULL;
  for (size_t i = 0; i < a->n; i++)
    if (strcmp(a->key[i], key) == 0) {
      assert_null(v); /* each key once */
      v = a->val[i];
      *len = a->val_len[i];
    }
  return v;
}

/* Encoded entries: key as sym8 or sym32, value a str8. */
static void w_entry(hd_wr_t *w, const char *key, bool sym32, const char *value) {
  if (sym32) {
    size_t n = strlen(key);
    uint8_t h[5] = {HD_AMQP_SYM32, 0, 0, 0, (uint8_t)n};
    hd_wr_raw(w, h, 5);
    hd_wr_raw(w, key, n);
  } else {
    w_sym(w, key);
  }
  w_str(w, value);
}

static void assert_str_value(const ann_t *a, const char *key, const char *want) {
  size_t len = 0;
  const uint8_t *v = ann_get(a, key, &len);
  if (!v) fail_msg("annotation '%s' missing", key);
  hd_rd_t r = hd_rd(v, len);
  const uint8_t *s;
  size_t n;
  assert_true(hd_rd_bytes(&r, &s, &n, NULL));
  assert_int_equal(n, strlen(want));
  assert_memory_equal(s, want, n);
}

/* A message with header, delivery annotations and annotations gets a new
 * key; the old key stays; everything before the annotations and the whole
 * bare message are kept byte for byte; the copy parses with the same fields. */
static void t_annotate_adds(void **state) {
  (void)state;
  hd_wr_t w;
  hd_wr_init(&w, NULL, 0);
  w_header(&w, true, 6, 9000, 3);
  w_ann(&w, HD_SEC_DELIVERY_ANN, "x-opt-hop", "h");
  size_t ma = w.len;
  w_ann(&w, HD_SEC_MESSAGE_ANN, "x-opt-old", "kept");
  size_t bare = w.len;
  w_props(&w, "id-9", "dest", 0);
  w_app_props(&w);
  w_data(&w, "body-bytes");
  w_footer(&w);
  int rc;
  const char *why;
  hd_msg_t *m = parse(w.buf, w.len, NOW, &rc, &why);
  assert_int_equal(rc, 0);

  hd_wr_t e;
  hd_wr_init(&e, NULL, 0);
  w_entry(&e, "x-opt-new", false, "added");
  hd_msg_t *c = hd_msg_annotate(m, e.buf, e.len, 2);
  assert_non_null(c);
  assert_int_equal(c->refs, 1);

  /* Prefix (header, delivery annotations) unchanged. */
  assert_int_equal(c->ma_off, ma);
  assert_memory_equal(c->buf, m->buf, ma);
  /* Bare message unchanged. */
  assert_int_equal(c->len - c->bare_off, m->len - m->bare_off);
  assert_memory_equal(c->buf + c->bare_off, m->buf + bare, m->len - bare);
  assert_int_equal(c->bare_off, c->ma_off + c->ma_len);

  ann_t a = read_ann(c);
  assert_int_equal(a.n, 2);
  assert_str_value(&a, "x-opt-old", "kept");
  assert_str_value(&a, "x-opt-new", "added");

  /* Fields carried over; expiry counts from the original arrival. */
  assert_int_equal(c->expiry_ms, NOW + 9000);
  assert_int_equal(c->delivery_count, 3);
  assert_int_equal(c->priority, 6);
  assert_true(c->flags & HD_MSG_DURABLE);
  assert_int_equal(c->to_len, 4);
  assert_memory_equal(c->buf + c->to_off, "dest", 4);
  /* The original is untouched. */
  ann_t orig = read_ann(m);
  assert_int_equal(orig.n, 1);

  hd_msg_unref(c);
  hd_msg_unref(m);
  hd_wr_free(&e);
  hd_wr_free(&w);
}

/* A key already present is replaced, whether the old and new keys are
 * written as sym8 or sym32. */
static void t_annotate_replaces(void **state) {
  (void)state;
  for (int old32 = 0; old32 < 2; old32++)
    for (int new32 = 0; new32 < 2; new32++) {
      hd_wr_t w;
      hd_wr_init(&w, NULL, 0);
      hd_wr_descriptor(&w, HD_SEC_MESSAGE_ANN);
      size_t mk = hd_wr_begin(&w, HD_AMQP_MAP32);
      w_entry(&w, "x-opt-k", old32, "old");
      w_entry(&w, "x-opt-other", false, "same");
      hd_wr_end(&w, mk, 4);
      w_value(&w, "body");
      int rc;
      const char *why;
      hd_msg_t *m = parse(w.buf, w.len, NOW, &rc, &why);
      assert_int_equal(rc, 0);

      hd_wr_t e;
      hd_wr_init(&e, NULL, 0);
      w_entry(&e, "x-opt-k", new32, "new");
      hd_msg_t *c = hd_msg_annotate(m, e.buf, e.len, 2);
      assert_non_null(c);
      ann_t a = read_ann(c);
      if (a.n != 2) fail_msg("old %s, new %s: %zu entries", old32 ? "sym32" : "sym8",
                             new32 ? "sym32" : "sym8", a.n);
      assert_str_value(&a, "x-opt-k", "new");
      assert_str_value(&a, "x-opt-other", "same");
      hd_msg_unref(c);
      hd_msg_unref(m);
      hd_wr_free(&e);
      hd_wr_free(&w);
    }
}

/* Without prior annotations the section is inserted between the header
 * (and delivery annotations) and the bare message. */
static void t_annotate_without_prior(void **state) {
  (void)state;
  hd_wr_t w;
  hd_wr_init(&w, NULL, 0);
  w_header(&w, false, 2, -1, 0);
  w_ann(&w, HD_SEC_DELIVERY_ANN, "x-opt-hop", "h");
  size_t bare = w.len;
  w_props(&w, "i", "t", 0);
  w_data(&w, "d1");
  w_data(&w, "d2");
  int rc;
  const char *why;
  hd_msg_t *m = parse(w.buf, w.len, NOW, &rc, &why);
  assert_int_equal(rc, 0);
  assert_int_equal(m->ma_len, 0);

  hd_wr_t e;
  hd_wr_init(&e, NULL, 0);
  w_entry(&e, "x-opt-a", false, "1");
  w_entry(&e, "x-opt-b", true, "2");
  hd_msg_t *c = hd_msg_annotate(m, e.buf, e.len, 4);
  assert_non_null(c);
  assert_int_equal(c->ma_off, bare);
  assert_memory_equal(c->buf, m->buf, bare);
  assert_int_equal(c->bare_off, bare + c->ma_len);
  assert_int_equal(c->len, m->len + c->ma_len);
  assert_memory_equal(c->buf + c->bare_off, m->buf + bare, m->len - bare);
  ann_t a = read_ann(c);
  assert_int_equal(a.n, 2);
  assert_str_value(&a, "x-opt-a", "1");
  assert_str_value(&a, "x-opt-b", "2");
  assert_int_equal(c->priority, 2);
  hd_msg_unref(c);
  hd_msg_unref(m);
  hd_wr_free(&e);
  hd_wr_free(&w);

  /* A body-only message. */
  hd_wr_init(&w, NULL, 0);
  w_value(&w, "v");
  m = parse(w.buf, w.len, NOW, &rc, &why);
  assert_int_equal(rc, 0);
  hd_wr_init(&e, NULL, 0);
  w_entry(&e, "x-opt-z", false, "z");
  c = hd_msg_annotate(m, e.buf, e.len, 2);
  assert_non_null(c);
  assert_int_equal(c->ma_off, 0);
  assert_memory_equal(c->buf + c->bare_off, m->buf, m->len);
  a = read_ann(c);
  assert_int_equal(a.n, 1);
  assert_str_value(&a, "x-opt-z", "z");
  hd_msg_unref(c);
  hd_msg_unref(m);
  hd_wr_free(&e);
  hd_wr_free(&w);
}

/* ---- memory accounting ------------------------------------------------------- */

static int low_calls;
static void on_low(void) { low_calls++; }

/* Teardown: a failed assertion must not leave the watch armed. */
static int unwatch(void **state) {
  (void)state;
  hd_msg_mem_watch(INT64_MAX, INT64_MAX, NULL);
  return 0;
}

/* Allocation adds the message's size, the last unref takes it back. */
static void t_mem_used(void **state) {
  (void)state;
  int64_t base = hd_msg_mem_used();
  hd_msg_t *m = hd_msg_alloc(1000);
  assert_non_null(m);
  int64_t with = hd_msg_mem_used();
  assert_true(with >= base + 1000);
  assert_int_equal(with, base + (int64_t)sizeof(hd_msg_t) + 1000);
  hd_msg_ref(m);
  hd_msg_unref(m);
  assert_int_equal(hd_msg_mem_used(), with); /* still referenced */
  hd_msg_unref(m);
  assert_int_equal(hd_msg_mem_used(), base);
}

/* Above high, then freed down: the callback runs once, on the free that
 * crosses below low, not on frees that stay above it. */
static void t_mem_low_water_once(void **state) {
  (void)state;
  int64_t base = hd_msg_mem_used();
  low_calls = 0;
  hd_msg_mem_watch(base + 10000, base + 5000, on_low);
  hd_msg_t *a = hd_msg_alloc(6000), *b = hd_msg_alloc(6000), *c = hd_msg_alloc(100);
  assert_true(hd_msg_mem_used() > base + 10000);
  hd_msg_unref(a); /* ~6100 left: above low */
  assert_int_equal(low_calls, 0);
  hd_msg_unref(b); /* crosses */
  assert_int_equal(low_calls, 1);
  hd_msg_unref(c); /* already below */
  assert_int_equal(low_calls, 1);
}

/* Usage that never went above high does not fire the callback when it
 * falls below low (the contract in message.h: "after having been above
 * high"). */
static void t_mem_low_water_needs_high(void **state) {
  (void)state;
  int64_t base = hd_msg_mem_used();
  low_calls = 0;
  hd_msg_mem_watch(base + 10000, base + 5000, on_low);
  hd_msg_t *a = hd_msg_alloc(7000); /* between low and high */
  assert_true(hd_msg_mem_used() < base + 10000);
  hd_msg_unref(a);
  assert_int_equal(low_calls, 0);
  /* And after one real crossing, a second dip without passing high again
   * stays quiet as well. */
  a = hd_msg_alloc(12000);
  hd_msg_unref(a);
  assert_int_equal(low_calls, 1);
  a = hd_msg_alloc(7000);
  hd_msg_unref(a);
  assert_int_equal(low_calls, 1);
}


/* Buffers freed on one thread come back to another through the depot:
 * thread B frees what the main thread allocated; the main thread allocates
 * again and gets B's buffers back; no buffer is handed out twice, contents
 * stay intact, and the byte count returns to where it was. */
#define XN 4000
static hd_msg_t *xmsgs[XN];
static pthread_barrier_t xbar;

static int x_check_free(void) {
  for (int i = 0; i < XN; i++) {
    for (size_t j = 0; j < xmsgs[i]->len; j++)
      if (xmsgs[i]->buf[j] != (uint8_t)(i + j)) return 1;
    hd_msg_unref(xmsgs[i]);
  }
  return 0;
}

static void *x_thread_b(void *arg) {
  int *bad = arg;
  *bad = x_check_free();
  pthread_barrier_wait(&xbar); /* freed: the main thread allocates again */
  pthread_barrier_wait(&xbar); /* ... and is done */
  hd_msg_thread_done();
  return NULL;
}

static void x_alloc_all(void) {
  for (int i = 0; i < XN; i++) {
    xmsgs[i] = hd_msg_alloc(64 + (size_t)(i * 37) % 1500);
    assert_non_null(xmsgs[i]);
    for (size_t j = 0; j < xmsgs[i]->len; j++) xmsgs[i]->buf[j] = (uint8_t)(i + j);
  }
}

static int ptr_cmp(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) * (hd_msg_t *const *)a, y = (uintptr_t) * (hd_msg_t *const *)b;
  return x < y ? -1 : x > y;
}

/* Of `later` (n pointers, sorted here), how many are also in `first`; each
 * pointer handed out once: no duplicates in `later`. */
static int reused_of(void **later, void **first, int n) {
  qsort(later, (size_t)n, sizeof later[0], ptr_cmp);
  for (int i = 1; i < n; i++) assert_true(later[i - 1] != later[i]);
  qsort(first, (size_t)n, sizeof first[0], ptr_cmp);
  int reused = 0;
  for (int i = 0; i < n; i++) reused += bsearch(&later[i], first, (size_t)n, sizeof first[0], ptr_cmp) != NULL;
  return reused;
}

static void t_buffers_cross_threads(void **state) {
  (void)state;
  int64_t base = hd_msg_mem_used();
  static hd_msg_t *first[XN], *second[XN];
  x_alloc_all();
  memcpy(first, xmsgs, sizeof first);
  pthread_t b;
  int bad = -1;
  assert_int_equal(pthread_barrier_init(&xbar, NULL, 2), 0);
  assert_int_equal(pthread_create(&b, NULL, x_thread_b, &bad), 0);
  pthread_barrier_wait(&xbar);
  assert_int_equal(bad, 0);
  assert_int_equal(hd_msg_mem_used(), base);
  size_t in_depot = hd_msg_depot_bytes();
  assert_true(in_depot > (size_t)XN * 64 / 2); /* B handed most of them over */
  x_alloc_all();
  assert_true(hd_msg_depot_bytes() < in_depot / 4); /* ... and they came back here */
  memcpy(second, xmsgs, sizeof second);
  assert_int_equal(x_check_free(), 0);
  pthread_barrier_wait(&xbar);
  pthread_join(b, NULL);
  pthread_barrier_destroy(&xbar);
  assert_int_equal(hd_msg_mem_used(), base);
  /* Handed out once each, and the same buffers, not new ones. */
  assert_true(reused_of((void **)second, (void **)first, XN) > XN / 2);
  hd_msg_thread_done();
}

/* Small objects (queue entries, store operations) ride the same caches:
 * made on one thread, freed on another, and reused rather than malloc'd. */
#define ON 2048
static void *objs[ON];

static void *o_free_all(void *arg) {
  for (int i = 0; i < ON; i++) {
    unsigned char *p = objs[i];
    for (size_t j = 0; j < 56; j++)
      if (p[j] != (unsigned char)i) *(int *)arg = 1;
    hd_obj_free(objs[i], 56);
  }
  pthread_barrier_wait(&xbar); /* freed: the main thread allocates again */
  pthread_barrier_wait(&xbar); /* ... and is done */
  hd_msg_thread_done();
  return NULL;
}

static void t_objects_cross_threads(void **state) {
  (void)state;
  int64_t base = hd_msg_mem_used();
  static void *first[ON];
  for (int i = 0; i < ON; i++) memset(objs[i] = first[i] = hd_obj_alloc(56), i, 56);
  assert_int_equal(hd_msg_mem_used(), base); /* not message bytes */
  int bad = 0;
  pthread_t t;
  assert_int_equal(pthread_barrier_init(&xbar, NULL, 2), 0);
  assert_int_equal(pthread_create(&t, NULL, o_free_all, &bad), 0);
  pthread_barrier_wait(&xbar);
  assert_int_equal(bad, 0);
  for (int i = 0; i < ON; i++) memset(objs[i] = hd_obj_alloc(56), 0, 56);
  pthread_barrier_wait(&xbar);
  pthread_join(t, NULL);
  pthread_barrier_destroy(&xbar);
  assert_true(reused_of(objs, first, ON) > ON / 2);
  /* A message buffer never comes out of an object's class, and sizes
   * beyond the object classes still work. */
  hd_msg_t *m = hd_msg_alloc(8);
  assert_null(bsearch(&m, objs, ON, sizeof objs[0], ptr_cmp));
  hd_msg_unref(m);
  void *big = hd_obj_alloc(4096);
  memset(big, 1, 4096);
  hd_obj_free(big, 4096);
  for (int i = 0; i < ON; i++) hd_obj_free(objs[i], 56);
  hd_msg_thread_done();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(t_parse_all_sections),
      cmocka_unit_test(t_parse_body_only),
      cmocka_unit_test(t_parse_header_nulls),
      cmocka_unit_test(t_parse_expiry),
      cmocka_unit_test(t_parse_symbolic_descriptors),
      cmocka_unit_test(t_parse_order),
      cmocka_unit_test(t_parse_mixed_body),
      cmocka_unit_test(t_parse_invalid),
      cmocka_unit_test(t_parse_truncated),
      cmocka_unit_test(t_header_minimal_fields),
      cmocka_unit_test(t_annotate_adds),
      cmocka_unit_test(t_annotate_replaces),
      cmocka_unit_test(t_annotate_without_prior),
      cmocka_unit_test(t_mem_used),
      cmocka_unit_test(t_buffers_cross_threads),
      cmocka_unit_test(t_objects_cross_threads),
      cmocka_unit_test_teardown(t_mem_low_water_once, unwatch),
      cmocka_unit_test_teardown(t_mem_low_water_needs_high, unwatch),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
