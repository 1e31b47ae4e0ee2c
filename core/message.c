#include "config.h"

#include "message.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "hadron/module.h"
#include "util.h"

static _Atomic int64_t mem_used;
static int64_t mem_high = INT64_MAX, mem_low = INT64_MAX;
static void (*mem_on_low)(void);
static atomic_bool mem_was_high; /* usage reached `high` since the last low call */

int64_t hd_msg_mem_used(void) { return atomic_load_explicit(&mem_used, memory_order_relaxed); }

void hd_msg_mem_watch(int64_t high, int64_t low, void (*on_low)(void)) {
  mem_high = high;
  mem_low = low;
  mem_on_low = on_low;
}

/* Message buffers are recycled rather than returned to malloc.  A message
 * is allocated on the producer's thread and freed on the consumer's, so
 * with plain malloc/free every message would take a glibc arena lock on
 * both sides (the two threads contend for the producer's arena) and the
 * arenas would keep growing and shrinking under a deep queue.  Instead each
 * thread keeps a small cache per size class (128-byte classes up to 8 KiB,
 * at most 127 bytes wasted), and threads trade whole magazines of MAG
 * buffers through a shared depot: the consumer's thread hands full
 * magazines in, the producer's takes them out, one lock per MAG messages.
 * The depot keeps at most DEPOT_BYTES; beyond that buffers go back to
 * malloc.  Queue entries and store operations cross threads the same way
 * (made by a producer or the store writer, freed by a consumer or the
 * writer), so they use the same machinery (hd_obj_alloc): about 12% less
 * broker CPU per durable message, measured in back-to-back runs. */
#define CLASS_SHIFT 7
#define MSG_CLASSES 64
/* Small objects (hd_obj_alloc) have classes of their own, 64 bytes apart:
 * queue entries would waste half of a 128-byte class. */
#define OBJ_SHIFT 6
#define OBJ_CLASSES 4
#define CLASSES (MSG_CLASSES + OBJ_CLASSES)
#define MAG 32
#define DEPOT_BYTES (32u << 20)

typedef struct cached {
  struct cached *next;     /* within a magazine or a thread's list */
  struct cached *next_mag; /* first buffer of a magazine: the next magazine in the depot */
} cached_t;

static _Thread_local struct {
  cached_t *free[CLASSES];
  uint32_t n[CLASSES];
} cache;

static struct {
  pthread_mutex_t lock;
  cached_t *mags[CLASSES]; /* full magazines of MAG buffers each */
  size_t bytes;
} depot = {PTHREAD_MUTEX_INITIALIZER, {NULL}, 0};

static size_t class_of(size_t total) { return (total - 1) >> CLASS_SHIFT; } /* >= MSG_CLASSES: none */
static size_t class_bytes(size_t c) {
  return c < MSG_CLASSES ? (c + 1) << CLASS_SHIFT : (c - MSG_CLASSES + 1) << OBJ_SHIFT;
}

static void free_list(cached_t *b) {
  while (b) {
    cached_t *next = b->next;
    free(b);
    b = next;
  }
}

void hd_msg_thread_done(void) {
  for (size_t c = 0; c < CLASSES; c++) {
    free_list(cache.free[c]);
    cache.free[c] = NULL;
    cache.n[c] = 0;
  }
  /* Only at shutdown: the depot empties with the threads that fed it. */
  pthread_mutex_lock(&depot.lock);
  for (size_t c = 0; c < CLASSES; c++)
    while (depot.mags[c]) {
      cached_t *m = depot.mags[c];
      depot.mags[c] = m->next_mag;
      free_list(m);
    }
  depot.bytes = 0;
  pthread_mutex_unlock(&depot.lock);
}

size_t hd_msg_depot_bytes(void) {
  pthread_mutex_lock(&depot.lock);
  size_t n = depot.bytes;
  pthread_mutex_unlock(&depot.lock);
  return n;
}

static size_t alloc_size(size_t total) {
  size_t c = class_of(total);
  return c < MSG_CLASSES ? class_bytes(c) : total;
}

static void *class_alloc(size_t c) {
  if (!cache.free[c]) {
    pthread_mutex_lock(&depot.lock);
    cached_t *m = depot.mags[c];
    if (m) {
      depot.mags[c] = m->next_mag;
      depot.bytes -= MAG * class_bytes(c);
    }
    pthread_mutex_unlock(&depot.lock);
    if (!m) return malloc(class_bytes(c));
    cache.free[c] = m;
    cache.n[c] = MAG;
  }
  cached_t *b = cache.free[c];
  cache.free[c] = b->next;
  cache.n[c]--;
  return b;
}

static void *buf_alloc(size_t total) {
  size_t c = class_of(total);
  return c < MSG_CLASSES ? class_alloc(c) : malloc(total);
}

static void class_free(void *p, size_t c) {
  cached_t *b = p;
  b->next = cache.free[c];
  cache.free[c] = b;
  if (++cache.n[c] < 2 * MAG) return;
  /* Keep MAG for this thread, hand the other MAG over as one magazine. */
  cached_t *m = cache.free[c], *last = m;
  for (int i = 1; i < MAG; i++) last = last->next;
  cache.free[c] = last->next;
  last->next = NULL;
  cache.n[c] -= MAG;
  m->next_mag = NULL;
  pthread_mutex_lock(&depot.lock);
  bool room = depot.bytes + MAG * class_bytes(c) <= DEPOT_BYTES;
  if (room) {
    m->next_mag = depot.mags[c];
    depot.mags[c] = m;
    depot.bytes += MAG * class_bytes(c);
  }
  pthread_mutex_unlock(&depot.lock);
  if (!room) free_list(m);
}

static void buf_free(void *p, size_t total) {
  size_t c = class_of(total);
  if (c < MSG_CLASSES)
    class_free(p, c);
  else
    free(p);
}

static size_t obj_class(size_t size) { return MSG_CLASSES + ((size - 1) >> OBJ_SHIFT); }

void *hd_obj_alloc(size_t size) {
  if (size > OBJ_CLASSES << OBJ_SHIFT) return hd_xmalloc(size);
  void *p = class_alloc(obj_class(size));
  return p ? p : hd_xmalloc(class_bytes(obj_class(size))); /* hd_xmalloc aborts with a message */
}

void hd_obj_free(void *p, size_t size) {
  if (!p) return;
  if (size > OBJ_CLASSES << OBJ_SHIFT)
    free(p);
  else
    class_free(p, obj_class(size));
}

hd_msg_t *hd_msg_alloc(size_t len) {
  if (len > UINT32_MAX) return NULL;
  hd_msg_t *m = buf_alloc(sizeof *m + len);
  if (!m) return NULL;
  memset(m, 0, sizeof *m);
  m->alloc_size = (uint32_t)alloc_size(sizeof *m + len);
  atomic_init(&m->refs, 1);
  m->len = (uint32_t)len;
  m->priority = 4;
  m->jms_dest = 0xff;
  int64_t now = atomic_fetch_add_explicit(&mem_used, (int64_t)(sizeof *m + len), memory_order_relaxed);
  if (now + (int64_t)(sizeof *m + len) >= mem_high && !atomic_load_explicit(&mem_was_high, memory_order_relaxed))
    atomic_store(&mem_was_high, true);
  return m;
}

void hd_msg_unref(hd_msg_t *m) {
  if (!m || atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) != 1) return;
  int64_t sz = (int64_t)(sizeof *m + m->len);
  buf_free(m, m->alloc_size);
  int64_t before = atomic_fetch_sub_explicit(&mem_used, sz, memory_order_relaxed);
  /* Only the free that crosses the low-water mark pays for the wake-up. */
  if (before >= mem_low && before - sz < mem_low && mem_on_low && atomic_exchange(&mem_was_high, false))
    mem_on_low();
}

/* Map a symbolic section descriptor to its numeric code. */
static uint64_t section_code(const uint8_t *sym, size_t len) {
  static const char *const names[] = {
      "amqp:header:list",     "amqp:delivery-annotations:map", "amqp:message-annotations:map",
      "amqp:properties:list", "amqp:application-properties:map", "amqp:data:binary",
      "amqp:amqp-sequence:list", "amqp:amqp-value:*",          "amqp:footer:map"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strlen(names[i]) == len && memcmp(names[i], sym, len) == 0) return 0x70 + i;
  return UINT64_MAX;
}

static int parse_header(hd_msg_t *m, hd_rd_t *r, uint64_t now_ms) {
  uint32_t n;
  hd_rd_t l;
  if (!hd_rd_compound(r, false, &n, &l)) return HD_EPROTO;
  bool b, present;
  uint64_t v;
  if (n > 0) {
    if (!hd_rd_bool(&l, &b, NULL)) return HD_EPROTO;
    if (b) m->flags |= HD_MSG_DURABLE;
  }
  if (n > 1) {
    if (!hd_rd_u64(&l, &v, &present)) return HD_EPROTO;
    if (present) {
      m->priority = (uint8_t)(v > 255 ? 255 : v);
      m->flags |= HD_MSG_HAS_PRIORITY;
    }
  }
  if (n > 2) {
    if (!hd_rd_u64(&l, &v, &present)) return HD_EPROTO;
    if (present) {
      m->ttl = (uint32_t)v;
      m->flags |= HD_MSG_HAS_TTL;
      m->expiry_ms = (now_ms == HD_MSG_NOW ? hd_now_wall_ms() : now_ms) + v;
    }
  }
  if (n > 3 && !hd_rd_bool(&l, &b, NULL)) return HD_EPROTO; /* first-acquirer: ours to set */
  if (n > 4) {
    if (!hd_rd_u64(&l, &v, NULL)) return HD_EPROTO;
    m->delivery_count = (uint32_t)v;
  }
  return 0;
}

static int parse_properties(hd_msg_t *m, hd_rd_t *r) {
  uint32_t n;
  hd_rd_t l;
  if (!hd_rd_compound(r, false, &n, &l)) return HD_EPROTO;
  for (uint32_t i = 0; i < n; i++) {
    const uint8_t *start = l.p;
    if (i == 0) { /* message-id: kept encoded, for duplicate detection */
      if (!hd_rd_skip(&l)) return HD_EPROTO;
      if (*start != HD_AMQP_NULL) {
        m->id_off = (uint32_t)(start - m->buf);
        m->id_len = (uint32_t)(l.p - start);
      }
    } else if (i == 2) { /* to */
      const uint8_t *s;
      size_t len;
      bool present;
      if (!hd_rd_bytes(&l, &s, &len, &present)) return HD_EPROTO;
      if (present) {
        m->to_off = (uint32_t)(s - m->buf);
        m->to_len = (uint32_t)len;
      }
    } else if (i == 8) { /* absolute-expiry-time */
      uint64_t v;
      bool present;
      if (!hd_rd_u64(&l, &v, &present)) return HD_EPROTO;
      if (present && v && (!m->expiry_ms || v < m->expiry_ms)) m->expiry_ms = v;
    } else {
      if (!hd_rd_skip(&l)) return HD_EPROTO;
    }
  }
  return 0;
}

/* JMS clients sending through the anonymous relay say in x-opt-jms-dest
 * whether 'to' names a queue (0, 2) or a topic (1, 3). */
static int scan_annotations(hd_msg_t *m, hd_rd_t *r, uint32_t n) {
  static const char key[] = "x-opt-jms-dest";
  for (uint32_t i = 0; i < n; i += 2) {
    int c = hd_rd_peek(r);
    if (c == HD_AMQP_SYM8 || c == HD_AMQP_SYM32) {
      const uint8_t *k;
      size_t kn;
      if (!hd_rd_bytes(r, &k, &kn, NULL)) return HD_EPROTO;
      if (kn == sizeof key - 1 && memcmp(k, key, kn) == 0 && hd_rd_peek(r) == 0x51 &&
          hd_rd_left(r) >= 2) {
        m->jms_dest = r->p[1];
      }
    } else if (!hd_rd_skip(r)) {
      return HD_EPROTO;
    }
    if (!hd_rd_skip(r)) return HD_EPROTO;
  }
  return 0;
}

int hd_msg_parse(hd_msg_t *m, uint64_t now_ms, const char **why) {
  hd_rd_t r = hd_rd(m->buf, m->len);
  uint64_t last = 0;
  bool body = false;
  m->bare_off = m->len;
  if (m->len == 0) {
    *why = "empty message: a message needs at least a body section";
    return HD_EPROTO;
  }
  while (hd_rd_left(&r)) {
    const uint8_t *start = r.p;
    uint64_t code;
    if (hd_rd_left(&r) >= 3 && r.p[0] == HD_AMQP_DESCRIBED && r.p[1] == HD_AMQP_SMALLULONG) {
      code = r.p[2]; /* the encoding every client we know uses */
      r.p += 3;
    } else {
      if (*r.p++ != HD_AMQP_DESCRIBED) {
        *why = "message section is not a described type";
        return HD_EPROTO;
      }
      const uint8_t *sym;
      size_t symlen;
      if (!hd_rd_descriptor(&r, &code, &sym, &symlen)) {
        *why = "unreadable section descriptor";
        return HD_EPROTO;
      }
      if (code == UINT64_MAX) code = section_code(sym, symlen);
    }
    if (code < HD_SEC_HEADER || code > HD_SEC_FOOTER) {
      *why = "unknown message section";
      return HD_EPROTO;
    }
    bool repeatable = code == HD_SEC_DATA || code == HD_SEC_SEQUENCE;
    if (code < last || (code == last && !repeatable)) {
      *why = "message sections out of order or repeated";
      return HD_EPROTO;
    }
    bool is_body = code >= HD_SEC_DATA && code <= HD_SEC_VALUE;
    if (is_body && body && code != last) {
      *why = "a body mixes data, amqp-sequence and amqp-value sections";
      return HD_EPROTO;
    }
    if (code >= HD_SEC_PROPERTIES && m->bare_off == m->len) m->bare_off = (uint32_t)(start - m->buf);
    int rc = 0;
    switch (code) {
    case HD_SEC_HEADER: rc = parse_header(m, &r, now_ms); break;
    case HD_SEC_PROPERTIES: rc = parse_properties(m, &r); break;
    case HD_SEC_DELIVERY_ANN:
    case HD_SEC_MESSAGE_ANN:
    case HD_SEC_APP_PROPERTIES:
    case HD_SEC_FOOTER: {
      uint32_t n;
      hd_rd_t inner;
      if (!hd_rd_compound(&r, true, &n, &inner)) rc = HD_EPROTO;
      if (code == HD_SEC_MESSAGE_ANN && !rc) {
        m->ma_off = (uint32_t)(start - m->buf);
        m->ma_len = (uint32_t)(r.p - start);
        rc = scan_annotations(m, &inner, n);
      }
      break;
    }
    default:
      if (!hd_rd_skip(&r)) rc = HD_EPROTO;
      break;
    }
    if (rc || r.err) {
      *why = "malformed message section";
      return HD_EPROTO;
    }
    last = code;
    body |= is_body;
  }
  return 0;
}

size_t hd_msg_header(const hd_msg_t *m, uint32_t delivery_count, bool first_acquirer,
                     uint8_t out[32]) {
  /* Written byte by byte: this runs for every delivery. */
  uint8_t *p = out;
  *p++ = HD_AMQP_DESCRIBED;
  *p++ = HD_AMQP_SMALLULONG;
  *p++ = HD_SEC_HEADER;
  /* Only as many fields as needed; defaults in between are null. */
  uint8_t n = delivery_count ? 5 : first_acquirer ? 4 : (m->flags & HD_MSG_HAS_TTL) ? 3
            : (m->flags & HD_MSG_HAS_PRIORITY) ? 2 : (m->flags & HD_MSG_DURABLE) ? 1 : 0;
  uint8_t *list = p;
  *p++ = HD_AMQP_LIST8;
  p++; /* size, below */
  *p++ = n;
  if (n > 0) *p++ = (m->flags & HD_MSG_DURABLE) ? HD_AMQP_TRUE : HD_AMQP_NULL;
  if (n > 1) {
    if (m->flags & HD_MSG_HAS_PRIORITY) {
      *p++ = HD_AMQP_UBYTE;
      *p++ = m->priority;
    } else {
      *p++ = HD_AMQP_NULL;
    }
  }
  if (n > 2) {
    if (m->flags & HD_MSG_HAS_TTL) {
      *p++ = HD_AMQP_UINT;
      *p++ = (uint8_t)(m->ttl >> 24);
      *p++ = (uint8_t)(m->ttl >> 16);
      *p++ = (uint8_t)(m->ttl >> 8);
      *p++ = (uint8_t)m->ttl;
    } else {
      *p++ = HD_AMQP_NULL;
    }
  }
  if (n > 3) *p++ = first_acquirer ? HD_AMQP_TRUE : HD_AMQP_FALSE;
  if (n > 4) {
    *p++ = HD_AMQP_UINT;
    *p++ = (uint8_t)(delivery_count >> 24);
    *p++ = (uint8_t)(delivery_count >> 16);
    *p++ = (uint8_t)(delivery_count >> 8);
    *p++ = (uint8_t)delivery_count;
  }
  list[1] = (uint8_t)(p - list - 2);
  return (size_t)(p - out);
}

/* Does the encoded key at k equal any key among `entries`? Keys compare by
 * their type class and bytes, so sym8 "x" equals sym32 "x". */
static bool key_bytes(hd_rd_t *r, int *cls, const uint8_t **p, size_t *n) {
  int c = hd_rd_peek(r);
  if (c == HD_AMQP_SYM8 || c == HD_AMQP_SYM32 || c == HD_AMQP_STR8 || c == HD_AMQP_STR32) {
    *cls = (c == HD_AMQP_SYM8 || c == HD_AMQP_SYM32) ? 1 : 2;
    return hd_rd_bytes(r, p, n, NULL);
  }
  const uint8_t *s = r->p;
  if (!hd_rd_skip(r)) return false;
  *cls = 3;
  *p = s;
  *n = (size_t)(r->p - s);
  return true;
}

static bool key_in(int cls, const uint8_t *k, size_t kn, const uint8_t *entries, size_t len,
                   uint32_t count) {
  hd_rd_t r = hd_rd(entries, len);
  for (uint32_t i = 0; i < count; i += 2) {
    int c2;
    const uint8_t *p;
    size_t n;
    if (!key_bytes(&r, &c2, &p, &n) || !hd_rd_skip(&r)) return false;
    if (c2 == cls && n == kn && memcmp(p, k, n) == 0) return true;
  }
  return false;
}

hd_msg_t *hd_msg_annotate(const hd_msg_t *m, const uint8_t *entries, size_t len, uint32_t count) {
  hd_wr_t w;
  hd_wr_init(&w, NULL, 0);
  hd_wr_descriptor(&w, HD_SEC_MESSAGE_ANN);
  size_t mark = hd_wr_begin(&w, HD_AMQP_MAP32);
  uint32_t n = 0;
  if (m->ma_len) {
    hd_rd_t r = hd_rd(m->buf + m->ma_off, m->ma_len);
    uint64_t code;
    const uint8_t *sym;
    size_t symlen;
    uint32_t items;
    hd_rd_t inner;
    r.p++; /* 0x00 */
    if (!hd_rd_descriptor(&r, &code, &sym, &symlen) || !hd_rd_compound(&r, true, &items, &inner)) {
      hd_wr_free(&w);
      return NULL;
    }
    for (uint32_t i = 0; i < items; i += 2) {
      const uint8_t *kstart = inner.p, *k;
      size_t kn;
      int cls;
      if (!key_bytes(&inner, &cls, &k, &kn) || !hd_rd_skip(&inner)) {
        hd_wr_free(&w);
        return NULL;
      }
      if (key_in(cls, k, kn, entries, len, count)) continue;
      hd_wr_raw(&w, kstart, (size_t)(inner.p - kstart));
      n += 2;
    }
  }
  hd_wr_raw(&w, entries, len);
  n += count;
  hd_wr_end(&w, mark, n);
  if (w.err) {
    hd_wr_free(&w);
    return NULL;
  }
  /* New layout: what preceded the old annotations (header, delivery
   * annotations), the new annotations, then the bare message. */
  size_t pre = m->ma_len ? m->ma_off : m->bare_off;
  size_t bare = m->len - m->bare_off;
  hd_msg_t *c = hd_msg_alloc(pre + w.len + bare);
  if (!c) {
    hd_wr_free(&w);
    return NULL;
  }
  memcpy(c->buf, m->buf, pre);
  memcpy(c->buf + pre, w.buf, w.len);
  memcpy(c->buf + pre + w.len, m->buf + m->bare_off, bare);
  hd_wr_free(&w);
  const char *why;
  if (hd_msg_parse(c, 0, &why) != 0) {
    hd_msg_unref(c);
    return NULL;
  }
  c->expiry_ms = m->expiry_ms; /* ttl counts from the original arrival */
  c->delivery_count = m->delivery_count;
  return c;
}
