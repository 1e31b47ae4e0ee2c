/* Nodes: queues (anycast) and topics (multicast), named by address.
 *
 * Threads and locks.  Every queue has its own mutex guarding its entries,
 * its consumers' credit and outboxes.  A topic has a rwlock over its list of
 * subscription queues.  The address table (address.c) has a rwlock over the
 * name -> node map.  Lock order: address table, then topic, then queue, then
 * a connection's lock (taken by a consumer's notify).  Never hold two queue
 * locks at once: moving a message to another queue (dead letters, expiry)
 * happens after the first queue's lock is released. */
#ifndef HD_NODE_H
#define HD_NODE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "hadron/module.h"
#include "message.h"
#include "settings.h"

#define HD_NODE_DYNAMIC 0x1u      /* named by the broker for one link; dies with it */
#define HD_NODE_DECLARED 0x2u     /* from the config file */
#define HD_NODE_AUTO 0x4u         /* created on attach */
#define HD_NODE_SUBSCRIPTION 0x8u /* a topic subscriber's private queue */

typedef struct hd_node {
  atomic_int refs;
  hd_node_type_t type;
  uint32_t flags;
  atomic_bool deleted;
  char *address;
  char *dead_letter_address; /* NULL: none */
  char *expiry_address;      /* NULL: drop expired messages */
  int max_deliveries;        /* 0: unlimited */
  int64_t max_depth;         /* 0: unlimited */
  bool durable;              /* a queue whose durable messages go to the store */
} hd_node_t;

/* A message's place in one queue.  While available it sits in the queue's
 * list; once acquired it belongs to a consumer (outbox, then unsettled
 * delivery) until settled. */
typedef struct hd_entry {
  struct hd_entry *next, *prev;
  hd_msg_t *msg;
  uint64_t seq;
  uint32_t delivery_count; /* failed attempts so far */
  uint32_t flags;
  uint64_t *avoid; /* consumer ids that answered undeliverable-here */
  uint32_t n_avoid;
} hd_entry_t;

#define HD_ENT_DELIVERED 0x1u /* sent before: first-acquirer is false */
#define HD_ENT_COPY 0x2u      /* a browser's copy: not acquired */
#define HD_ENT_STORED 0x4u    /* has a record in the store */

struct hd_queue;

/* A consumer: one sending link (broker -> peer) on one queue.  The owner is
 * the link's connection thread; fields marked [q] are guarded by the queue's
 * lock. */
typedef struct hd_consumer {
  uint64_t id;
  struct hd_queue *queue;
  bool browse;
  /* Called with the queue lock held when the outbox becomes non-empty;
   * must only schedule work (e.g. wake the connection). */
  void (*notify)(struct hd_consumer *c);
  void *owner;
  /* [q] */
  struct hd_consumer *next, *prev;
  int64_t credit;
  hd_entry_t *out_head, *out_tail;
  uint32_t out_count;
  uint64_t browse_seq;
  bool attached;
} hd_consumer_t;

typedef struct hd_queue_stats {
  uint64_t depth;      /* available + in flight */
  uint64_t available;
  uint64_t in_flight;
  uint64_t consumers;
  uint64_t enqueued, acknowledged, expired, dead_lettered, dropped;
} hd_queue_stats_t;

typedef struct hd_queue {
  hd_node_t node;
  pthread_mutex_t lock;
  hd_entry_t *head, *tail; /* available, in seq order */
  uint64_t available, in_flight;
  uint64_t next_seq;
  hd_consumer_t *consumers; /* circular, round-robin cursor */
  hd_consumer_t *browsers;  /* circular */
  uint32_t n_consumers;
  uint64_t next_expiry; /* earliest expiry among available entries, 0: none */
  hd_queue_stats_t st;
  uint64_t reported_expired, reported_dropped; /* server tick only */
  /* Durability (queue_store.c); store_id 0: memory only. */
  uint64_t store_id;
  uint64_t pending;       /* puts submitted and not yet committed */
  uint64_t paged;         /* messages only on disk (beyond the memory budget) */
  uint64_t page_seq;      /* lowest seq that is only on disk */
  uint64_t paged_max;     /* highest seq counted in `paged` */
  bool depaging;          /* a consumer thread is reading from disk */
  uint64_t hwm_done;      /* delivery high-water mark known to be on disk */
  uint64_t hwm_asked;     /* ... and the highest one requested */
  uint64_t hwm_recovered; /* mark found at start-up: up to it, redelivered */
  uint32_t hwm_ahead;     /* how far past a send the mark is asked for (set with store_id) */
  bool hwm_waited;        /* a send waited for the mark asked last */
  uint32_t bumps_pending; /* raised delivery counts read from disk, not yet committed ... */
  uint64_t bump_max_seq;  /* ... for seqs up to here: those wait before being sent */
} hd_queue_t;

typedef struct hd_topic {
  hd_node_t node;
  pthread_rwlock_t lock;
  hd_queue_t **subs;
  size_t n_subs, cap_subs;
} hd_topic_t;

/* ---- nodes ------------------------------------------------------------- */

/* Options are copied; NULL strings and -1 numbers take `defaults`. */
hd_node_t *hd_node_new(hd_node_type_t type, const char *address, uint32_t flags,
                       const hd_node_opts_t *opts, const hd_node_opts_t *defaults);
static inline hd_node_t *hd_node_ref(hd_node_t *n) {
  atomic_fetch_add_explicit(&n->refs, 1, memory_order_relaxed);
  return n;
}
void hd_node_unref(hd_node_t *n);
static inline hd_queue_t *hd_node_queue(hd_node_t *n) {
  return n->type == HD_NODE_QUEUE ? (hd_queue_t *)n : NULL;
}
static inline hd_topic_t *hd_node_topic(hd_node_t *n) {
  return n->type == HD_NODE_TOPIC ? (hd_topic_t *)n : NULL;
}

/* Deliver a message to a node.  The caller keeps its reference.  Returns 0,
 * HD_EFULL (queue at max-depth) or HD_ENOTFOUND (node deleted). */
int hd_node_put(hd_node_t *n, hd_msg_t *m);

/* The outcome of a delivery that waits for the store. */
typedef struct hd_deliver_cb {
  /* Store writer thread: 0 once the message is committed, or HD_EFULL
   * (disk full) / another error when it was not stored. */
  void (*done)(struct hd_deliver_cb *cb, int rc);
} hd_deliver_cb_t;

#define HD_PENDING 1 /* accepted for the store: the outcome comes via cb */

/* Like hd_node_put, but a durable message to a durable queue returns
 * HD_PENDING and reports through cb (when cb is non-NULL) after the commit;
 * until then consumers do not see it. */
int hd_node_deliver(hd_node_t *n, hd_msg_t *m, hd_deliver_cb_t *cb);

/* True if a durable message sent to n waits for the store. */
bool hd_node_stores(const hd_node_t *n);

/* ---- queues ------------------------------------------------------------- */

/* Add an entry for m (taking a new reference).  0, HD_EFULL or HD_ENOTFOUND. */
int hd_queue_put(hd_queue_t *q, hd_msg_t *m, uint32_t delivery_count);

void hd_queue_attach(hd_queue_t *q, hd_consumer_t *c);
/* Detach: entries in the outbox go back, not counted as delivered. */
void hd_queue_detach(hd_queue_t *q, hd_consumer_t *c);

/* What a pump hands the consumer's thread. */
typedef struct hd_batch {
  hd_entry_t *head; /* to send now, in order, linked by next */
  uint32_t n;
  bool drained;     /* drain was asked and nothing is left: advance delivery-count */
  hd_entry_t *expired; /* found expired on the way: for hd_node_expire_list */
} hd_batch_t;

/* Owner thread of c: the link now has `link_credit`; move available
 * entries into c's outbox within that credit and take the outbox. */
void hd_queue_pump(hd_queue_t *q, hd_consumer_t *c, int64_t link_credit, bool drain,
                   hd_batch_t *b);

/* Give back entries the consumer could not send (never delivered). */
void hd_queue_unsend(hd_queue_t *q, hd_entry_t *list);

/* Settlement of an acquired entry. */
void hd_queue_ack(hd_queue_t *q, hd_entry_t *e);
/* On a thread that called hd_queues_collect(true) (the workers, which
 * call hd_queues_flush at the end of each event batch), hd_queue_ack works
 * in runs: one thread's acknowledgements to one queue take the queue's lock
 * and reach the store (one HD_OP_DELS) together, when the run breaks
 * (another queue, or a full run), when the thread asks the store for a
 * barrier after them (hd_queues_after), or here.  Durable messages to durable queues
 * are collected the same way (queue_store.c).  hd_queues_flush flushes
 * both kinds of run. */
void hd_queue_acks_flush(void);
void hd_queues_collect(bool on);
bool hd_queues_collecting(void);
void hd_queues_flush(void);
/* Back to the queue.  `failed`: the delivery counts as an attempt;
 * `avoid_consumer` (non-zero): never offer it to that consumer again.
 * Returns true when the entry was requeued; false when it has used up
 * max-deliveries: the caller then dead-letters it. */
bool hd_queue_release(hd_queue_t *q, hd_entry_t *e, bool failed, uint64_t avoid_consumer);
/* An entry leaves the queue for good: an acquired one dead-lettered or
 * discarded, or an expired one taken from the list.  Counts it, frees it. */
void hd_queue_drop(hd_queue_t *q, hd_entry_t *e, int why);
#define HD_DROP_EXPIRED 1
#define HD_DROP_DEAD 2
#define HD_DROP_DISCARD 3

/* Remove expired available entries (returned as a list). */
hd_entry_t *hd_queue_take_expired(hd_queue_t *q, uint64_t now_ms);

void hd_queue_stats(hd_queue_t *q, hd_queue_stats_t *out);

void hd_entry_free(hd_entry_t *e);

/* ---- durability (queue_store.c) ------------------------------------------ */

struct hd_store;
/* Use s for durable queues, keeping at most memory_budget message bytes in
 * memory (beyond, queues page to disk).  NULL: everything in memory. */
void hd_queues_use_store(struct hd_store *s, int64_t memory_budget);
struct hd_store *hd_queues_store(void);
/* Give a new queue a store id and record it (caller holds the address
 * table's write lock, so no message can reach the queue before). */
void hd_queue_make_durable(hd_queue_t *q);
/* Start-up: rebuild durable queues and their messages from the store. */
int hd_queues_recover(char *err, size_t errlen);

/* queue.c internals shared with queue_store.c (queue lock held). */
hd_entry_t *hd_entry_new(hd_msg_t *m, uint64_t seq, uint32_t delivery_count);
void hd_queue_place_locked(hd_queue_t *q, hd_entry_t *e);
void hd_queue_insert_locked(hd_queue_t *q, hd_entry_t *e);
void hd_queue_dispatch_locked(hd_queue_t *q);
/* Under q->lock: consumers and browsers with credit left and nothing to
 * send look again (a message went to disk, and no entry will wake them). */
void hd_queue_wake_idle_locked(hd_queue_t *q);
/* Read messages from disk into memory when a consumer is about to run dry
 * (consumer thread, no lock held). */
void hd_queue_depage(hd_queue_t *q);
/* True while some queue holds messages only on disk, or memory is over the
 * budget: the store must then write to LMDB, not to its log (any thread). */
bool hd_queues_may_page(void);
/* A queue is going away: it no longer counts as paged. */
void hd_queue_store_destroy(hd_queue_t *q);
/* Copies (HD_ENT_COPY) of up to `want` messages on disk with seqs from
 * `from` to `limit`, for a browser; no lock held.  Returns true when more
 * are on disk beyond them. */
bool hd_queue_browse_disk(hd_queue_t *q, uint64_t from, uint64_t limit, size_t want, hd_entry_t **out);
/* Call fn(arg) on the store's writer thread once everything submitted so
 * far is committed (at once, on this thread, when there is no store).
 * What this thread holds in runs (hd_queues_collect) is not submitted yet:
 * hd_queues_after flushes them first, and must not be called under a
 * queue lock (the flush takes queue locks); hd_store_after may be. */
void hd_store_after(void (*fn)(void *arg, int rc), void *arg);
void hd_queues_after(void (*fn)(void *arg, int rc), void *arg);
/* Store side effects of settlement (queue lock not needed). */
void hd_queue_store_del(hd_queue_t *q, const hd_entry_t *e);
void hd_queue_store_dels(hd_queue_t *q, const uint64_t *seqs, size_t n);
void hd_queue_store_update(hd_queue_t *q, const hd_entry_t *e);
/* May e be sent now?  Durable queues first record a delivery high-water
 * mark (asks for it and answers false when it is not on disk yet). */
bool hd_queue_may_send_locked(hd_queue_t *q, const hd_entry_t *e);

/* ---- topics ------------------------------------------------------------- */

/* A private queue for one subscriber, fed with every later message. */
hd_queue_t *hd_topic_subscribe(hd_topic_t *t);
void hd_topic_unsubscribe(hd_topic_t *t, hd_queue_t *sub);

/* ---- moving messages between nodes (deadletter.c) --------------------- */

/* e has left q (hd_queue_drop done by these): send it to q's dead-letter
 * address annotated with why, or drop and log when q has none. */
void hd_node_dead_letter(hd_queue_t *q, hd_entry_t *e, const char *reason, const char *description);
/* Each entry of the list has expired in q: move to the expiry address or drop. */
void hd_node_expire_list(hd_queue_t *q, hd_entry_t *list);

#endif
