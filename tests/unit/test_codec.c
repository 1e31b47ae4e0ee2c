/* core/codec.h: the reader must find the end of every AMQP value without
 * decoding it, fail (stickily) on truncated input, and the writer must pick
 * the smallest encodings and patch compound sizes. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "codec.h"

#define LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Skipping `enc` must consume exactly its bytes and leave the marker 0x40
 * that follows untouched. */
static void skips_exactly(const uint8_t *enc, size_t len) {
  uint8_t buf[600];
  assert_true(len + 1 <= sizeof buf);
  memcpy(buf, enc, len);
  buf[len] = HD_AMQP_NULL;
  hd_rd_t r = hd_rd(buf, len + 1);
  assert_true(hd_rd_skip(&r));
  assert_false(r.err);
  assert_int_equal(hd_rd_left(&r), 1);
  assert_int_equal(hd_rd_peek(&r), HD_AMQP_NULL);
}

/* Every proper prefix of `enc` must fail to skip and set the sticky error. */
static void truncations_fail(const uint8_t *enc, size_t len) {
  for (size_t cut = 0; cut < len; cut++) {
    hd_rd_t r = hd_rd(enc, cut);
    assert_false(hd_rd_skip(&r));
    assert_true(r.err);
    assert_int_equal(hd_rd_left(&r), 0);
    assert_int_equal(hd_rd_peek(&r), -1);
  }
}

static void check_value(const uint8_t *enc, size_t len) {
  skips_exactly(enc, len);
  truncations_fail(enc, len);
}

#define CHECK(...)                                 \
  do {                                             \
    static const uint8_t v_[] = {__VA_ARGS__};     \
    check_value(v_, sizeof v_);                    \
  } while (0)

/* Fixed-width primitives: widths 0, 1, 2, 4, 8 and 16 by format code. */
static void t_skip_fixed_widths(void **state) {
  (void)state;
  CHECK(0x40);                                     /* null */
  CHECK(0x41);                                     /* true */
  CHECK(0x42);                                     /* false */
  CHECK(0x43);                                     /* uint0 */
  CHECK(0x44);                                     /* ulong0 */
  CHECK(0x45);                                     /* list0 */
  CHECK(0x50, 0xff);                               /* ubyte */
  CHECK(0x51, 0x80);                               /* byte */
  CHECK(0x52, 0x07);                               /* smalluint */
  CHECK(0x53, 0x07);                               /* smallulong */
  CHECK(0x54, 0xfe);                               /* smallint */
  CHECK(0x55, 0xfe);                               /* smalllong */
  CHECK(0x56, 0x01);                               /* boolean */
  CHECK(0x60, 0x12, 0x34);                         /* ushort */
  CHECK(0x61, 0x12, 0x34);                         /* short */
  CHECK(0x70, 0, 0, 1, 0);                         /* uint */
  CHECK(0x71, 0xff, 0xff, 0xff, 0xff);             /* int */
  CHECK(0x72, 0x3f, 0x80, 0, 0);                   /* float */
  CHECK(0x73, 0, 0, 0, 0x41);                      /* char */
  CHECK(0x74, 1, 2, 3, 4);                         /* decimal32 */
  CHECK(0x80, 0, 0, 0, 0, 0, 0, 1, 0);             /* ulong */
  CHECK(0x81, 1, 2, 3, 4, 5, 6, 7, 8);             /* long */
  CHECK(0x82, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0);       /* double */
  CHECK(0x83, 0, 0, 1, 0x7f, 0, 0, 0, 0);          /* timestamp */
  CHECK(0x84, 1, 2, 3, 4, 5, 6, 7, 8);             /* decimal64 */
  CHECK(0x94, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16); /* decimal128 */
  CHECK(0x98, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16); /* uuid */
}

/* Variable-width values with 1- and 4-byte length prefixes. */
static void t_skip_variable(void **state) {
  (void)state;
  CHECK(0xa0, 3, 1, 2, 3);                         /* vbin8 */
  CHECK(0xa1, 5, 'h', 'e', 'l', 'l', 'o');         /* str8 */
  CHECK(0xa3, 2, 'a', 'b');                        /* sym8 */
  CHECK(0xa1, 0);                                  /* empty str8 */
  CHECK(0xb0, 0, 0, 0, 2, 9, 9);                   /* vbin32 */
  CHECK(0xb1, 0, 0, 0, 3, 'a', 'b', 'c');          /* str32 */
  CHECK(0xb3, 0, 0, 0, 1, 'x');                    /* sym32 */
  CHECK(0xb1, 0, 0, 0, 0);                         /* empty str32 */

  /* A str32 longer than 255 bytes, so that a length byte misread as the
   * whole length would stop early. */
  uint8_t big[5 + 300];
  big[0] = 0xb1;
  big[1] = 0; big[2] = 0; big[3] = 0x01; big[4] = 0x2c; /* 300 */
  memset(big + 5, 'z', 300);
  check_value(big, sizeof big);
}

/* Lists, maps and arrays, in their 8- and 32-bit forms. */
static void t_skip_compounds(void **state) {
  (void)state;
  CHECK(0xc0, 0x01, 0x00);                                  /* empty list8 */
  CHECK(0xc0, 0x04, 0x02, 0x41, 0x52, 0x05);                /* list8 [true, 5] */
  CHECK(0xd0, 0, 0, 0, 0x06, 0, 0, 0, 0x02, 0x41, 0x40);    /* list32 [true, null] */
  CHECK(0xc1, 0x05, 0x02, 0xa3, 0x01, 'k', 0x41);           /* map8 {k: true} */
  CHECK(0xd1, 0, 0, 0, 0x08, 0, 0, 0, 0x02, 0xa3, 0x01, 'k', 0x41); /* map32 */
  CHECK(0xe0, 0x04, 0x02, 0x50, 0x01, 0x02);                /* array8 of 2 ubyte */
  CHECK(0xf0, 0, 0, 0, 0x07, 0, 0, 0, 0x02, 0x50, 0x01, 0x02); /* array32 */
}

/* Described values: numeric and symbolic descriptors, descriptors on
 * compound values, and values nested inside each other. */
static void t_skip_described_and_nested(void **state) {
  (void)state;
  CHECK(0x00, 0x53, 0x75, 0xa0, 0x02, 0xca, 0xfe);          /* amqp:data */
  CHECK(0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x77, 0x40);       /* ulong descriptor */
  CHECK(0x00, 0xa3, 0x03, 'a', ':', 'b', 0x52, 0x01);       /* symbolic descriptor */
  CHECK(0x00, 0x53, 0x70, 0xc0, 0x02, 0x01, 0x41);          /* described list */
  /* A described value as the descriptor of another, and as a list item. */
  CHECK(0x00, 0x00, 0x53, 0x01, 0x53, 0x02, 0x40);
  CHECK(0xc0, 0x08, 0x02,                                   /* list8 of 2: */
        0x00, 0x53, 0x77, 0xa1, 0x01, 'x',                  /*   described str */
        0x45);                                              /*   list0 */
  /* map8 whose value is a list32 holding a map8. */
  CHECK(0xc1, 0x14, 0x02, 0xa1, 0x01, 'k',
        0xd0, 0, 0, 0, 0x0b, 0, 0, 0, 0x01,
        0xc1, 0x05, 0x02, 0xa3, 0x01, 'q', 0x40);
}

/* Reserved format codes are not skippable. */
static void t_skip_reserved_code(void **state) {
  (void)state;
  static const uint8_t bad[] = {0x10, 0x00, 0x00};
  hd_rd_t r = hd_rd(bad, sizeof bad);
  assert_false(hd_rd_skip(&r));
  assert_true(r.err);
}

/* Once a read has failed on truncated input, every later read fails too,
 * even one pointed back at a valid value. */
static void t_sticky_error(void **state) {
  (void)state;
  static const uint8_t buf[] = {0x41, 0x70, 0x00, 0x01};
  hd_rd_t r = hd_rd(buf, sizeof buf);
  bool b = false;
  uint64_t v = 0;
  assert_true(hd_rd_bool(&r, &b, NULL));
  assert_true(b);
  assert_false(hd_rd_u64(&r, &v, NULL));
  assert_true(r.err);
  r.p = buf;
  assert_false(hd_rd_bool(&r, &b, NULL));
  assert_false(hd_rd_skip(&r));
  assert_int_equal(hd_rd_left(&r), 0);
  assert_int_equal(hd_rd_peek(&r), -1);
}

/* hd_rd_compound on every list/map form, with the element counts and an
 * inner reader bounded to the elements. */
static void t_compound_forms(void **state) {
  (void)state;
  uint32_t n;
  hd_rd_t in;

  static const uint8_t list0[] = {0x45, 0x41};
  hd_rd_t r = hd_rd(list0, sizeof list0);
  assert_true(hd_rd_compound(&r, false, &n, &in));
  assert_int_equal(n, 0);
  assert_int_equal(hd_rd_left(&in), 0);
  assert_int_equal(hd_rd_peek(&r), 0x41);

  static const uint8_t list8[] = {0xc0, 0x04, 0x02, 0x41, 0x52, 0x09, 0x42};
  r = hd_rd(list8, sizeof list8);
  assert_true(hd_rd_compound(&r, false, &n, &in));
  assert_int_equal(n, 2);
  assert_int_equal(hd_rd_left(&in), 3);
  bool b;
  uint64_t v;
  assert_true(hd_rd_bool(&in, &b, NULL));
  assert_true(b);
  assert_true(hd_rd_u64(&in, &v, NULL));
  assert_int_equal(v, 9);
  assert_int_equal(hd_rd_left(&in), 0);
  assert_int_equal(hd_rd_peek(&r), 0x42); /* outer reader is past the list */

  static const uint8_t list32[] = {0xd0, 0, 0, 0, 0x05, 0, 0, 0, 0x01, 0x43, 0x42};
  r = hd_rd(list32, sizeof list32);
  assert_true(hd_rd_compound(&r, false, &n, &in));
  assert_int_equal(n, 1);
  assert_int_equal(hd_rd_left(&in), 1);
  assert_int_equal(hd_rd_peek(&in), 0x43);
  assert_int_equal(hd_rd_peek(&r), 0x42);

  static const uint8_t map8[] = {0xc1, 0x05, 0x02, 0xa3, 0x01, 'k', 0x41};
  r = hd_rd(map8, sizeof map8);
  assert_true(hd_rd_compound(&r, true, &n, &in));
  assert_int_equal(n, 2);
  const uint8_t *s;
  size_t len;
  assert_true(hd_rd_bytes(&in, &s, &len, NULL));
  assert_int_equal(len, 1);
  assert_memory_equal(s, "k", 1);
  assert_true(hd_rd_bool(&in, &b, NULL));
  assert_true(b);
  assert_int_equal(hd_rd_left(&r), 0);

  static const uint8_t map32[] = {0xd1, 0, 0, 0, 0x08, 0, 0, 0, 0x02, 0xa3, 0x01, 'k', 0x40};
  r = hd_rd(map32, sizeof map32);
  assert_true(hd_rd_compound(&r, true, &n, &in));
  assert_int_equal(n, 2);
  assert_int_equal(hd_rd_left(&in), 4);
  assert_int_equal(hd_rd_left(&r), 0);
}

/* Asking for a map where a list is (and the reverse), an odd map count, a
 * size below the count field, and sizes past the end are refused. */
static void t_compound_wrong(void **state) {
  (void)state;
  uint32_t n;
  hd_rd_t in;
  static const struct {
    uint8_t b[12];
    size_t len;
    bool want_map;
  } cases[] = {
      {{0xc0, 0x01, 0x00}, 3, true},                          /* list8 as map */
      {{0xd0, 0, 0, 0, 4, 0, 0, 0, 0}, 9, true},              /* list32 as map */
      {{0x45}, 1, true},                                      /* list0 as map */
      {{0xc1, 0x01, 0x00}, 3, false},                         /* map8 as list */
      {{0xd1, 0, 0, 0, 4, 0, 0, 0, 0}, 9, false},             /* map32 as list */
      {{0xa1, 0x01, 'x'}, 3, false},                          /* string */
      {{0x40}, 1, false},                                     /* null */
      {{0xe0, 0x02, 0x00, 0x40}, 4, false},                   /* array */
      {{0xc1, 0x03, 0x01, 0x41, 0x41}, 5, true},              /* odd map count */
      {{0xc0, 0x00, 0x00}, 3, false},                         /* size 0 < count byte */
      {{0xd0, 0, 0, 0, 3, 0, 0, 0, 0}, 9, false},             /* size 3 < count field */
      {{0xc0, 0x05, 0x01, 0x41}, 4, false},                   /* size past the end */
      {{0xd0, 0, 0, 0, 9, 0, 0, 0, 1, 0x41}, 10, false},      /* size past the end */
      {{0xc0, 0x01}, 2, false},                               /* truncated header */
      {{0xd1, 0, 0, 0}, 4, true},                             /* truncated header */
      {{0}, 0, false},                                        /* nothing */
  };
  for (size_t i = 0; i < LEN(cases); i++) {
    hd_rd_t r = hd_rd(cases[i].b, cases[i].len);
    if (hd_rd_compound(&r, cases[i].want_map, &n, &in)) fail_msg("case %zu accepted", i);
    assert_true(r.err);
  }
}

/* hd_rd_u64 accepts every unsigned form and timestamps, maps null to the
 * default with present = false, and refuses other types. */
static void t_u64(void **state) {
  (void)state;
  static const struct {
    uint8_t b[9];
    size_t len;
    uint64_t v;
    bool present;
  } ok[] = {
      {{0x40}, 1, 0, false},
      {{0x43}, 1, 0, true},
      {{0x44}, 1, 0, true},
      {{0x50, 0xfe}, 2, 0xfe, true},
      {{0x52, 0x07}, 2, 7, true},
      {{0x53, 0x08}, 2, 8, true},
      {{0x70, 0x01, 0x02, 0x03, 0x04}, 5, 0x01020304u, true},
      {{0x80, 0x01, 0, 0, 0, 0, 0, 0, 0x02}, 9, 0x0100000000000002ull, true},
      {{0x83, 0, 0, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00}, 9, 0x0000018bcfe56800ull, true},
  };
  for (size_t i = 0; i < LEN(ok); i++) {
    hd_rd_t r = hd_rd(ok[i].b, ok[i].len);
    uint64_t v = 99;
    bool present = !ok[i].present;
    assert_true(hd_rd_u64(&r, &v, &present));
    assert_int_equal(v, ok[i].v);
    assert_int_equal(present, ok[i].present);
    assert_int_equal(hd_rd_left(&r), 0);
    /* present may be NULL */
    r = hd_rd(ok[i].b, ok[i].len);
    assert_true(hd_rd_u64(&r, &v, NULL));
    assert_int_equal(v, ok[i].v);
  }
  static const uint8_t wrong[][3] = {{0x41}, {0xa1, 0x01, 'x'}, {0x71, 0, 0}, {0x45}};
  for (size_t i = 0; i < LEN(wrong); i++) {
    hd_rd_t r = hd_rd(wrong[i], sizeof wrong[i]);
    uint64_t v;
    assert_false(hd_rd_u64(&r, &v, NULL));
    assert_true(r.err);
  }
  static const uint8_t shortv[] = {0x80, 0, 0, 0, 0, 0, 0, 1};
  hd_rd_t r = hd_rd(shortv, sizeof shortv);
  uint64_t v;
  assert_false(hd_rd_u64(&r, &v, NULL));
}

/* hd_rd_bool: true/false/boolean forms, null as absent, other types refused. */
static void t_bool(void **state) {
  (void)state;
  static const struct {
    uint8_t b[2];
    size_t len;
    bool v, present;
  } ok[] = {
      {{0x40}, 1, false, false},
      {{0x41}, 1, true, true},
      {{0x42}, 1, false, true},
      {{0x56, 0x01}, 2, true, true},
      {{0x56, 0x00}, 2, false, true},
  };
  for (size_t i = 0; i < LEN(ok); i++) {
    hd_rd_t r = hd_rd(ok[i].b, ok[i].len);
    bool v = !ok[i].v, present = !ok[i].present;
    assert_true(hd_rd_bool(&r, &v, &present));
    assert_int_equal(v, ok[i].v);
    assert_int_equal(present, ok[i].present);
    assert_int_equal(hd_rd_left(&r), 0);
  }
  static const uint8_t notbool[] = {0x52, 0x01};
  hd_rd_t r = hd_rd(notbool, sizeof notbool);
  bool v;
  assert_false(hd_rd_bool(&r, &v, NULL));
  static const uint8_t truncated[] = {0x56};
  r = hd_rd(truncated, sizeof truncated);
  assert_false(hd_rd_bool(&r, &v, NULL));
  assert_true(r.err);
}

/* hd_rd_bytes: every binary/string/symbol form points into the buffer;
 * null is absent; other types and truncated lengths are refused. */
static void t_bytes(void **state) {
  (void)state;
  static const uint8_t buf[] = {0x40,                          /* null */
                                0xa0, 0x02, 0x01, 0x02,        /* vbin8 */
                                0xa1, 0x03, 'a', 'b', 'c',     /* str8 */
                                0xa3, 0x01, 's',               /* sym8 */
                                0xb0, 0, 0, 0, 0x01, 0xff,     /* vbin32 */
                                0xb1, 0, 0, 0, 0x02, 'h', 'i', /* str32 */
                                0xb3, 0, 0, 0, 0x00};          /* empty sym32 */
  hd_rd_t r = hd_rd(buf, sizeof buf);
  const uint8_t *p = buf;
  size_t len = 99;
  bool present = true;
  assert_true(hd_rd_bytes(&r, &p, &len, &present));
  assert_false(present);
  assert_null(p);
  assert_int_equal(len, 0);

  struct {
    size_t off, len;
  } want[] = {{3, 2}, {7, 3}, {12, 1}, {18, 1}, {24, 2}, {31, 0}};
  for (size_t i = 0; i < LEN(want); i++) {
    assert_true(hd_rd_bytes(&r, &p, &len, &present));
    assert_true(present);
    assert_ptr_equal(p, buf + want[i].off); /* borrowed, not copied */
    assert_int_equal(len, want[i].len);
  }
  assert_int_equal(hd_rd_left(&r), 0);

  static const uint8_t notbytes[] = {0x52, 0x01};
  r = hd_rd(notbytes, sizeof notbytes);
  assert_false(hd_rd_bytes(&r, &p, &len, NULL));
  static const uint8_t truncated[] = {0xb1, 0, 0, 0, 0x05, 'a', 'b'};
  r = hd_rd(truncated, sizeof truncated);
  assert_false(hd_rd_bytes(&r, &p, &len, NULL));
  assert_true(r.err);
}

/* Descriptors: numeric code, symbol (code UINT64_MAX), null refused. */
static void t_descriptor(void **state) {
  (void)state;
  uint64_t code;
  const uint8_t *sym = NULL;
  size_t symlen = 0;
  static const uint8_t num[] = {0x53, 0x73};
  hd_rd_t r = hd_rd(num, sizeof num);
  assert_true(hd_rd_descriptor(&r, &code, &sym, &symlen));
  assert_int_equal(code, 0x73);

  static const uint8_t sym8[] = {0xa3, 0x04, 'a', 'm', 'q', 'p'};
  r = hd_rd(sym8, sizeof sym8);
  assert_true(hd_rd_descriptor(&r, &code, &sym, &symlen));
  assert_true(code == UINT64_MAX);
  assert_int_equal(symlen, 4);
  assert_memory_equal(sym, "amqp", 4);

  static const uint8_t null[] = {0x40};
  r = hd_rd(null, sizeof null);
  assert_false(hd_rd_descriptor(&r, &code, &sym, &symlen));
  assert_true(r.err);
}

/* ---- writer ------------------------------------------------------------ */

/* uint and ulong use the 0-byte, 1-byte and full forms by value. */
static void t_wr_uint_ulong_smallest(void **state) {
  (void)state;
  uint8_t st[64];
  hd_wr_t w;
  hd_wr_init(&w, st, sizeof st);
  hd_wr_uint(&w, 0);
  hd_wr_uint(&w, 1);
  hd_wr_uint(&w, 255);
  hd_wr_uint(&w, 256);
  hd_wr_uint(&w, UINT32_MAX);
  static const uint8_t want_u[] = {0x43, 0x52, 0x01, 0x52, 0xff, 0x70, 0, 0, 1, 0,
                                   0x70, 0xff, 0xff, 0xff, 0xff};
  assert_int_equal(w.len, sizeof want_u);
  assert_memory_equal(w.buf, want_u, sizeof want_u);

  hd_wr_init(&w, st, sizeof st);
  hd_wr_ulong(&w, 0);
  hd_wr_ulong(&w, 200);
  hd_wr_ulong(&w, 256);
  hd_wr_ulong(&w, UINT64_MAX);
  static const uint8_t want_l[] = {0x44, 0x53, 200, 0x80, 0, 0, 0, 0, 0, 0, 1, 0,
                                   0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  assert_int_equal(w.len, sizeof want_l);
  assert_memory_equal(w.buf, want_l, sizeof want_l);
  assert_false(w.heap);
  assert_false(w.err);

  /* And each reads back. */
  hd_rd_t r = hd_rd(w.buf, w.len);
  uint64_t v;
  assert_true(hd_rd_u64(&r, &v, NULL));
  assert_int_equal(v, 0);
  assert_true(hd_rd_u64(&r, &v, NULL));
  assert_int_equal(v, 200);
  assert_true(hd_rd_u64(&r, &v, NULL));
  assert_int_equal(v, 256);
  assert_true(hd_rd_u64(&r, &v, NULL));
  assert_true(v == UINT64_MAX);
  hd_wr_free(&w);
}

/* The fixed encodings of null, booleans, ubyte, timestamp, descriptor. */
static void t_wr_scalars(void **state) {
  (void)state;
  uint8_t st[64];
  hd_wr_t w;
  hd_wr_init(&w, st, sizeof st);
  hd_wr_null(&w);
  hd_wr_bool(&w, true);
  hd_wr_bool(&w, false);
  hd_wr_ubyte(&w, 9);
  hd_wr_timestamp(&w, 0x0102030405060708ll);
  hd_wr_descriptor(&w, 0x72);
  hd_wr_u8(&w, 0xee);
  static const uint8_t want[] = {0x40, 0x41, 0x42, 0x50, 9, 0x83, 1, 2, 3, 4, 5, 6, 7, 8,
                                 0x00, 0x53, 0x72, 0xee};
  assert_int_equal(w.len, sizeof want);
  assert_memory_equal(w.buf, want, sizeof want);
  hd_wr_free(&w);
}

/* Strings and symbols use the 8-bit form up to 255 bytes, 32-bit above. */
static void t_wr_strings_symbols(void **state) {
  (void)state;
  char text[300];
  memset(text, 'q', sizeof text);
  hd_wr_t w;
  hd_wr_init(&w, NULL, 0);
  hd_wr_string(&w, "hi", 2);
  hd_wr_symbol(&w, "sym", 3);
  hd_wr_string(&w, text, 255); /* largest str8 */
  hd_wr_string(&w, text, 256); /* smallest str32 */
  hd_wr_symbol(&w, text, 300);
  hd_wr_string(&w, "", 0);
  assert_false(w.err);

  hd_rd_t r = hd_rd(w.buf, w.len);
  const uint8_t *p;
  size_t len;
  assert_int_equal(hd_rd_peek(&r), HD_AMQP_STR8);
  assert_true(hd_rd_bytes(&r, &p, &len, NULL));
  assert_int_equal(len, 2);
  assert_memory_equal(p, "hi", 2);
  assert_int_equal(hd_rd_peek(&r), HD_AMQP_SYM8);
  assert_true(hd_rd_bytes(&r, &p, &len, NULL));
  assert_int_equal(len, 3);
  assert_memory_equal(p, "sym", 3);
  assert_int_equal(hd_rd_peek(&r), HD_AMQP_STR8);
  assert_true(hd_rd_bytes(&r, &p, &len, NULL));
  assert_int_equal(len, 255);
  assert_int_equal(hd_rd_peek(&r), HD_AMQP_STR32);
  assert_true(hd_rd_bytes(&r, &p, &len, NULL));
  assert_int_equal(len, 256);
  assert_memory_equal(p, text, 256);
  assert_int_equal(hd_rd_peek(&r), HD_AMQP_SYM32);
  assert_true(hd_rd_bytes(&r, &p, &len, NULL));
  assert_int_equal(len, 300);
  assert_int_equal(hd_rd_peek(&r), HD_AMQP_STR8);
  assert_true(hd_rd_bytes(&r, &p, &len, NULL));
  assert_int_equal(len, 0);
  assert_int_equal(hd_rd_left(&r), 0);
  /* Exact total: 2+2 + 2+3 + 2+255 + 5+256 + 5+300 + 2+0 */
  assert_int_equal(w.len, 4 + 5 + 257 + 261 + 305 + 2);
  hd_wr_free(&w);
}

/* hd_wr_begin/hd_wr_end patch a list32/map32 size (count field included)
 * and count, also when nested. */
static void t_wr_begin_end(void **state) {
  (void)state;
  uint8_t st[128];
  hd_wr_t w;
  hd_wr_init(&w, st, sizeof st);
  size_t outer = hd_wr_begin(&w, HD_AMQP_MAP32);
  hd_wr_symbol(&w, "k", 1);
  size_t inner = hd_wr_begin(&w, HD_AMQP_LIST32);
  hd_wr_uint(&w, 5);
  hd_wr_null(&w);
  hd_wr_end(&w, inner, 2);
  hd_wr_end(&w, outer, 2);
  static const uint8_t want[] = {0xd1, 0, 0, 0, 0x13, 0, 0, 0, 0x02,
                                 0xa3, 0x01, 'k',
                                 0xd0, 0, 0, 0, 0x07, 0, 0, 0, 0x02, 0x52, 0x05, 0x40};
  assert_int_equal(w.len, sizeof want);
  assert_memory_equal(w.buf, want, sizeof want);

  /* The codec reads its own output. */
  hd_rd_t r = hd_rd(w.buf, w.len), m, l;
  uint32_t n;
  assert_true(hd_rd_compound(&r, true, &n, &m));
  assert_int_equal(n, 2);
  assert_true(hd_rd_skip(&m));
  assert_true(hd_rd_compound(&m, false, &n, &l));
  assert_int_equal(n, 2);
  assert_int_equal(hd_rd_left(&l), 3);
  assert_int_equal(hd_rd_left(&m), 0);
  assert_int_equal(hd_rd_left(&r), 0);

  /* An empty list32 has size 4 (just the count). */
  hd_wr_init(&w, st, sizeof st);
  size_t e = hd_wr_begin(&w, HD_AMQP_LIST32);
  hd_wr_end(&w, e, 0);
  static const uint8_t empty[] = {0xd0, 0, 0, 0, 4, 0, 0, 0, 0};
  assert_int_equal(w.len, sizeof empty);
  assert_memory_equal(w.buf, empty, sizeof empty);
  hd_wr_free(&w);
}

/* A writer that starts in a small caller buffer moves to the heap when it
 * must, keeping what was written, and leaves the caller's buffer alone. */
static void t_wr_growth(void **state) {
  (void)state;
  uint8_t st[8];
  memset(st, 0xaa, sizeof st);
  hd_wr_t w;
  hd_wr_init(&w, st, 4);
  hd_wr_uint(&w, 0x01020304); /* 5 bytes > 4 */
  assert_false(w.err);
  assert_true(w.heap);
  assert_ptr_not_equal(w.buf, st);
  assert_true(w.cap >= 5);
  uint8_t big[1000];
  for (size_t i = 0; i < sizeof big; i++) big[i] = (uint8_t)i;
  hd_wr_raw(&w, big, sizeof big);
  assert_int_equal(w.len, 5 + sizeof big);
  static const uint8_t head[] = {0x70, 1, 2, 3, 4};
  assert_memory_equal(w.buf, head, 5);
  assert_memory_equal(w.buf + 5, big, sizeof big);
  /* Caller storage beyond cap was never touched. */
  for (size_t i = 4; i < sizeof st; i++) assert_int_equal(st[i], 0xaa);
  hd_wr_free(&w);
  assert_null(w.buf);
  assert_int_equal(w.len, 0);
  assert_false(w.heap);

  /* Data written while on the stack is carried over when growing. */
  hd_wr_init(&w, st, sizeof st);
  hd_wr_string(&w, "abc", 3); /* 5 bytes, fits */
  assert_false(w.heap);
  assert_ptr_equal(w.buf, st);
  hd_wr_string(&w, "defgh", 5); /* 7 more: grows */
  assert_true(w.heap);
  static const uint8_t want[] = {0xa1, 3, 'a', 'b', 'c', 0xa1, 5, 'd', 'e', 'f', 'g', 'h'};
  assert_int_equal(w.len, sizeof want);
  assert_memory_equal(w.buf, want, sizeof want);
  hd_wr_free(&w);

  /* No initial storage at all. */
  hd_wr_init(&w, NULL, 0);
  hd_wr_null(&w);
  assert_true(w.heap);
  assert_int_equal(w.len, 1);
  assert_int_equal(w.buf[0], 0x40);
  hd_wr_free(&w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(t_skip_fixed_widths),
      cmocka_unit_test(t_skip_variable),
      cmocka_unit_test(t_skip_compounds),
      cmocka_unit_test(t_skip_described_and_nested),
      cmocka_unit_test(t_skip_reserved_code),
      cmocka_unit_test(t_sticky_error),
      cmocka_unit_test(t_compound_forms),
      cmocka_unit_test(t_compound_wrong),
      cmocka_unit_test(t_u64),
      cmocka_unit_test(t_bool),
      cmocka_unit_test(t_bytes),
      cmocka_unit_test(t_descriptor),
      cmocka_unit_test(t_wr_uint_ulong_smallest),
      cmocka_unit_test(t_wr_scalars),
      cmocka_unit_test(t_wr_strings_symbols),
      cmocka_unit_test(t_wr_begin_end),
      cmocka_unit_test(t_wr_growth),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
