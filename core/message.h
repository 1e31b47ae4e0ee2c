/* A message as the broker holds it: the bytes the producer sent, plus the few
 * fields routing and expiry need.  Immutable after hd_msg_parse() and shared
 * by reference count (a topic's subscribers share one).  When the broker must
 * change annotations it makes a new message (hd_msg_annotate).
 *
 * On the way out the broker writes a fresh header section (the per-delivery
 * delivery-count and first-acquirer live in the queue entry), then the
 * message-annotations, then the bare message byte for byte.  Delivery
 * annotations are for the next hop only and are not forwarded. */
#ifndef HD_MESSAGE_H
#define HD_MESSAGE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HD_MSG_DURABLE 0x1u
#define HD_MSG_HAS_TTL 0x2u
#define HD_MSG_HAS_PRIORITY 0x4u

typedef struct hd_msg {
  atomic_uint refs;
  uint32_t len;              /* bytes in buf */
  uint32_t ma_off, ma_len;   /* message-annotations section, ma_len 0 if none */
  uint32_t bare_off;         /* bare message (and footer) run to len */
  uint32_t to_off, to_len;   /* properties.to within buf, to_len 0 if none */
  uint32_t id_off, id_len;   /* properties.message-id, encoded, 0 if none */
  uint32_t ttl;              /* header.ttl when HD_MSG_HAS_TTL */
  uint32_t delivery_count;   /* header.delivery-count as received */
  uint8_t priority;          /* header.priority (default 4) */
  uint8_t flags;
  uint8_t jms_dest;          /* x-opt-jms-dest annotation (JMS destination type), or 0xff */
  uint64_t expiry_ms;        /* absolute wall-clock ms; 0: never */
  uint64_t store_id;         /* durable store key; 0: in memory only */
  uint32_t alloc_size;       /* bytes allocated for this struct and buf */
  uint8_t buf[];
} hd_msg_t;

/* New message with room for len bytes and one reference; NULL when memory
 * is exhausted.  The caller fills buf and calls hd_msg_parse. */
hd_msg_t *hd_msg_alloc(size_t len);
/* Find the sections and read header/properties; 0 or HD_EPROTO with a reason
 * in why (static string).  now_ms (wall clock) anchors header.ttl;
 * HD_MSG_NOW reads the clock, only when the message has a ttl (most have
 * none, and a clock read per message was 1% of a broker's CPU). */
#define HD_MSG_NOW UINT64_MAX
int hd_msg_parse(hd_msg_t *m, uint64_t now_ms, const char **why);

static inline hd_msg_t *hd_msg_ref(hd_msg_t *m) {
  atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
  return m;
}
void hd_msg_unref(hd_msg_t *m);

/* A thread that allocated or freed messages is about to exit: give its
 * cached buffers back (worker and store threads call this). */
void hd_msg_thread_done(void);
/* Bytes of freed message buffers waiting in the shared depot for reuse. */
size_t hd_msg_depot_bytes(void);

/* Small fixed-size objects that are made on one thread and freed on
 * another (queue entries, store operations): the same per-thread caches
 * and depot as message buffers.  Free with the size given to alloc. */
void *hd_obj_alloc(size_t size);
void hd_obj_free(void *p, size_t size);

/* Bytes of messages alive in this process (for flow control). */
int64_t hd_msg_mem_used(void);
/* Called (from any thread) when usage falls back below `low` after
 * having been above `high`; set once at start-up. */
void hd_msg_mem_watch(int64_t high, int64_t low, void (*on_low)(void));

/* The header section for one delivery of m; returns its length (<= 32). */
size_t hd_msg_header(const hd_msg_t *m, uint32_t delivery_count, bool first_acquirer,
                     uint8_t out[32]);

/* A copy of m whose message-annotations also hold `entries`: `count` map
 * items (keys and values interleaved), already encoded.  Keys already in m
 * are replaced.  Returns NULL on allocation failure. */
hd_msg_t *hd_msg_annotate(const hd_msg_t *m, const uint8_t *entries, size_t len, uint32_t count);

#endif
