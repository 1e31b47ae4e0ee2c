/* Durable queues: what the store means for a queue.
 *
 * Enqueue: a durable message to a durable queue gets its seq and its PUT
 * submitted under the queue lock, so the store commits a queue's messages in
 * seq order.  Only after the commit does the message become visible to
 * consumers and its producer hear `accepted`: a consumer never sees a
 * message that a crash could take back.  Non-durable messages that arrive
 * while earlier durable ones wait ride along as no-ops, keeping order.
 *
 * Paging: while the bytes held in memory exceed the budget, committed
 * messages stay only on disk.  Memory then holds a prefix of the queue
 * (every seq in memory is below `page_seq`); consumers that run low read the
 * next messages back (hd_queue_depage).
 *
 * Delivery mark: before a durable queue sends seq S it has "S may have been
 * delivered" on disk (HD_OP_HWM, asked for some way beyond what it needs so
 * that consumers seldom wait; the way doubles each time a consumer had to
 * wait for it, so that slow flushes do not hold consumers to one stretch
 * per flush).  After a crash, messages up to the mark come back as
 * redeliveries (delivery-count + 1, first-acquirer false).  The
 * raised count is written back before such a message is sent again, so that
 * a second crash raises it once more: every read from disk that raises
 * counts (start-up's included) holds those messages until a barrier behind
 * the updates commits.  The old mark stays while messages below it are
 * still on disk; once start-up has read them all, a fresh mark begins. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "address.h"
#include "log.h"
#include "node.h"
#include "store.h"
#include "util.h"

#define HWM_AHEAD_MIN 512
#define HWM_AHEAD_MAX 65536 /* the most a crash can mark as redelivered needlessly */
#define DEPAGE_LOW 256     /* read from disk when fewer are available */
#define DEPAGE_BATCH 1024  /* ... this many at most ... */
#define DEPAGE_BYTES (4u << 20) /* ... or this many bytes */

static hd_store_t *store;
static int64_t budget = INT64_MAX;

void hd_queues_use_store(hd_store_t *s, int64_t memory_budget) {
  store = s;
  budget = memory_budget;
}

hd_store_t *hd_queues_store(void) { return store; }

static bool over_budget(void) { return hd_msg_mem_used() > budget; }

/* Queues with messages held only on disk.  While there are any (or memory
 * is over the budget) the store writes to LMDB directly rather than to its
 * log: what a queue reads back from disk must be in LMDB. */
static _Atomic long paged_queues;

bool hd_queues_may_page(void) { return atomic_load_explicit(&paged_queues, memory_order_relaxed) > 0 || over_budget(); }

/* Under q->lock. */
static void set_paged(hd_queue_t *q, uint64_t n) {
  if (!q->paged && n) atomic_fetch_add(&paged_queues, 1);
  if (q->paged && !n) atomic_fetch_sub(&paged_queues, 1);
  q->paged = n;
}

void hd_queue_store_destroy(hd_queue_t *q) { set_paged(q, 0); }

bool hd_node_stores(const hd_node_t *n) {
  return store && n->type == HD_NODE_QUEUE && ((const hd_queue_t *)n)->store_id;
}

void hd_queue_make_durable(hd_queue_t *q) {
  if (!store || q->store_id) return;
  q->store_id = hd_store_new_node_id(store);
  q->hwm_ahead = HWM_AHEAD_MIN;
  hd_node_opts_t o = {q->node.dead_letter_address ? q->node.dead_letter_address : "",
                      q->node.expiry_address ? q->node.expiry_address : "",
                      q->node.max_deliveries, q->node.max_depth, 1};
  hd_store_op_t *op = hd_store_op_new(HD_OP_NODE_PUT);
  op->node = q->store_id;
  op->blob = hd_store_node_blob(HD_NODE_QUEUE, q->node.address, &o, &op->blob_len);
  hd_store_submit(store, op);
}

typedef struct after_op {
  hd_store_op_t op;
  void (*fn)(void *arg, int rc);
  void *fn_arg;
} after_op_t;

static void after_done(hd_store_op_t *op, int rc) {
  after_op_t *a = (after_op_t *)op;
  a->fn(a->fn_arg, rc);
  hd_store_op_free(op);
}

void hd_queues_after(void (*fn)(void *arg, int rc), void *arg) {
  /* What this thread delivered and acknowledged comes first: a consumer
   * told that its outcome took effect must find it committed (link_out.c). */
  hd_queues_flush();
  hd_store_after(fn, arg);
}

void hd_store_after(void (*fn)(void *arg, int rc), void *arg) {
  if (!store) {
    fn(arg, 0);
    return;
  }
  _Static_assert(sizeof(after_op_t) <= HD_STORE_OP_SIZE, "after_op_t outgrew HD_STORE_OP_SIZE");
  after_op_t *a = hd_obj_alloc(HD_STORE_OP_SIZE);
  *a = (after_op_t){0};
  a->op.kind = HD_OP_BARRIER;
  a->op.done = after_done;
  a->fn = fn;
  a->fn_arg = arg;
  hd_store_submit(store, &a->op);
}

/* ---- settlement side effects ------------------------------------------------ */

void hd_queue_store_del(hd_queue_t *q, const hd_entry_t *e) {
  if (!store || !(e->flags & HD_ENT_STORED)) return;
  hd_store_op_t *op = hd_store_op_new(HD_OP_DEL);
  op->node = q->store_id;
  op->seq = e->seq;
  hd_store_submit(store, op);
}

void hd_queue_store_dels(hd_queue_t *q, const uint64_t *seqs, size_t n) {
  if (!store || !n) return;
  hd_store_op_t *op = hd_store_op_new(HD_OP_DELS);
  op->node = q->store_id;
  op->blob = hd_xmalloc(n * sizeof *seqs);
  memcpy(op->blob, seqs, n * sizeof *seqs);
  op->blob_len = n * sizeof *seqs;
  hd_store_submit(store, op);
}

void hd_queue_store_update(hd_queue_t *q, const hd_entry_t *e) {
  if (!store || !(e->flags & HD_ENT_STORED)) return;
  hd_store_op_t *op = hd_store_op_new(HD_OP_UPDATE);
  op->node = q->store_id;
  op->seq = e->seq;
  op->delivery_count = e->delivery_count;
  hd_store_submit(store, op);
}

/* ---- the delivery mark ------------------------------------------------------- */

static void hwm_done(hd_store_op_t *op, int rc) {
  hd_queue_t *q = op->arg;
  pthread_mutex_lock(&q->lock);
  if (rc == 0 && op->seq > q->hwm_done) q->hwm_done = op->seq;
  if (rc != 0) q->hwm_asked = q->hwm_done; /* ask again on the next send */
  if (q->hwm_waited && q->hwm_ahead < HWM_AHEAD_MAX) q->hwm_ahead *= 2;
  q->hwm_waited = false;
  hd_queue_dispatch_locked(q);
  pthread_mutex_unlock(&q->lock);
  hd_node_unref(&q->node);
  hd_store_op_free(op);
}

static void hwm_ask(hd_queue_t *q, uint64_t seq) {
  hd_store_op_t *op = hd_store_op_new(HD_OP_HWM);
  op->node = q->store_id;
  op->seq = q->hwm_asked = seq + q->hwm_ahead;
  op->done = hwm_done;
  op->arg = hd_node_ref(&q->node);
  hd_store_submit(store, op);
}

bool hd_queue_may_send_locked(hd_queue_t *q, const hd_entry_t *e) {
  /* Only messages in the store outlive a crash, so only they need the mark. */
  if (!(e->flags & HD_ENT_STORED) || !store) return true;
  if (q->bumps_pending && e->seq <= q->bump_max_seq) return false; /* bumps_done dispatches */
  /* Ask for the next stretch early, so that consumers seldom wait. */
  bool in_time = e->seq <= q->hwm_asked;
  if (e->seq + q->hwm_ahead / 2 > q->hwm_asked) hwm_ask(q, e->seq);
  if (e->seq <= q->hwm_done) return true;
  /* Asked for before this send, and still not on disk: ask further ahead. */
  if (in_time) q->hwm_waited = true;
  return false;
}

/* ---- enqueue ------------------------------------------------------------------- */

typedef struct put_op {
  hd_store_op_t op; /* first: the store frees put_op through it */
  hd_queue_t *q;
  hd_deliver_cb_t *cb;
} put_op_t;

/* Under q->lock: the commit's outcome for one message. */
static void put_place_locked(hd_queue_t *q, hd_store_op_t *op) {
  bool stored = op->kind == HD_OP_PUT && op->rc == 0;
  /* A paging write of a non-durable message that failed keeps the message
   * in memory instead: it was never promised to the disk. */
  bool keep = stored || op->kind == HD_OP_NOP || (op->flags & HD_REC_NONDURABLE);
  q->pending--;
  if (keep) q->st.enqueued++;
  /* Only a record in LMDB can be read back.  One only in the store's log
   * stays in memory; the queue cannot have paged messages then (the store
   * logs nothing while hd_queues_may_page()), so order is kept. */
  if (stored && op->in_tree && (q->paged || over_budget())) {
    set_paged(q, q->paged + 1);
    if (!q->page_seq || op->seq < q->page_seq) q->page_seq = op->seq;
    if (op->seq > q->paged_max) q->paged_max = op->seq;
    hd_queue_wake_idle_locked(q); /* waiting consumers and browsers read it back */
  } else if (keep) {
    hd_entry_t *e = hd_entry_new(op->msg, op->seq, op->delivery_count);
    if (stored) e->flags |= HD_ENT_STORED;
    hd_queue_place_locked(q, e);
  }
}

/* One commit's puts to one queue: the queue lock is taken once for the
 * run, not once per message (consumers contend for it). */
static void put_done_run(hd_store_op_t *first, size_t n) {
  hd_queue_t *locked = NULL;
  hd_store_op_t *op = first;
  for (size_t i = 0; i < n; i++, op = op->next) {
    hd_queue_t *q = ((put_op_t *)op)->q;
    if (q != locked) {
      if (locked) pthread_mutex_unlock(&locked->lock);
      pthread_mutex_lock(&q->lock);
      locked = q;
    }
    put_place_locked(q, op);
  }
  if (locked) pthread_mutex_unlock(&locked->lock);
  op = first;
  for (size_t i = 0; i < n; i++) {
    hd_store_op_t *next = op->next;
    put_op_t *p = (put_op_t *)op;
    bool stored = op->kind == HD_OP_PUT && op->rc == 0;
    if (p->cb) p->cb->done(p->cb, stored ? 0 : op->rc ? op->rc : -EIO);
    hd_node_unref(&p->q->node);
    hd_store_op_free(op);
    op = next;
  }
}

/* The store op of one message to q (seq set by the caller); holds a
 * reference to the message and one to q, which put_done_run drops. */
static put_op_t *put_op_new(hd_queue_t *q, hd_msg_t *m, hd_store_op_kind_t kind, hd_deliver_cb_t *cb) {
  _Static_assert(sizeof(put_op_t) <= HD_STORE_OP_SIZE, "put_op_t outgrew HD_STORE_OP_SIZE");
  put_op_t *p = hd_obj_alloc(HD_STORE_OP_SIZE);
  *p = (put_op_t){0};
  p->op.kind = kind;
  p->op.node = q->store_id;
  p->op.msg = hd_msg_ref(m);
  p->op.delivery_count = m->delivery_count;
  p->op.done_run = put_done_run;
  p->q = (hd_queue_t *)hd_node_ref(&q->node);
  p->cb = cb;
  return p;
}

/* A producer's messages arrive in bursts too (one read from its socket
 * holds dozens).  On a worker thread, durable messages to a queue without
 * max-depth (whose check needs the lock at once) are collected in a run,
 * per thread and queue, and get their seqs and go to the store together:
 * one queue lock and one store hand-off for the run instead of one each per
 * message.  The run is flushed before anything else this thread delivers
 * to that queue (so a producer's order is kept), when it breaks, when the
 * thread asks for a barrier after it (hd_queues_after), and at the end of
 * each event batch (hd_queues_flush, server.c). */
#define PUT_RUN_MAX 256
typedef struct put_run {
  hd_queue_t *q; /* one reference while the run has ops */
  put_op_t *head, *tail;
  size_t n;
} put_run_t;
static _Thread_local put_run_t put_run;

static void puts_flush(void) {
  put_run_t *r = &put_run;
  if (!r->n) return;
  hd_queue_t *q = r->q;
  put_op_t *list = r->head;
  r->q = NULL;
  r->head = r->tail = NULL;
  r->n = 0;
  pthread_mutex_lock(&q->lock);
  if (atomic_load_explicit(&q->node.deleted, memory_order_relaxed)) {
    pthread_mutex_unlock(&q->lock);
    for (put_op_t *p = list, *next; p; p = next) { /* deleted since: refused as before */
      next = (put_op_t *)p->op.next;
      if (p->cb) p->cb->done(p->cb, HD_ENOTFOUND);
      hd_node_unref(&p->q->node);
      hd_store_op_free(&p->op);
    }
  } else {
    for (put_op_t *p = list; p; p = (put_op_t *)p->op.next) {
      p->op.seq = q->next_seq++;
      q->pending++;
    }
    /* Under the queue lock, as single puts are: the store commits this
     * queue's messages in seq order. */
    hd_store_submit_list(store, &list->op);
    pthread_mutex_unlock(&q->lock);
  }
  hd_node_unref(&q->node);
}

void hd_queues_flush(void) {
  puts_flush();
  hd_queue_acks_flush();
}

static int queue_deliver(hd_queue_t *q, hd_msg_t *m, hd_deliver_cb_t *cb) {
  bool durable = m->flags & HD_MSG_DURABLE;
  put_run_t *r = &put_run;
  bool collect = durable && !q->node.max_depth && hd_queues_collecting();
  /* This queue's earlier messages go first; another queue's run ends. */
  if (r->n && (r->q == q ? !collect || r->n == PUT_RUN_MAX : collect)) puts_flush();
  if (collect) {
    if (atomic_load_explicit(&q->node.deleted, memory_order_relaxed)) return HD_ENOTFOUND;
    put_op_t *p = put_op_new(q, m, HD_OP_PUT, cb);
    if (!r->n) r->q = (hd_queue_t *)hd_node_ref(&q->node);
    if (r->tail) r->tail->op.next = &p->op; else r->head = p;
    r->tail = p;
    r->n++;
    return cb ? HD_PENDING : 0;
  }
  pthread_mutex_lock(&q->lock);
  if (atomic_load_explicit(&q->node.deleted, memory_order_relaxed)) {
    pthread_mutex_unlock(&q->lock);
    return HD_ENOTFOUND;
  }
  if (q->node.max_depth &&
      q->available + q->in_flight + q->paged + q->pending >= (uint64_t)q->node.max_depth) {
    pthread_mutex_unlock(&q->lock);
    return HD_EFULL;
  }
  if (!durable && !q->pending && !q->paged && !over_budget()) {
    hd_entry_t *e = hd_entry_new(m, q->next_seq++, m->delivery_count);
    q->st.enqueued++;
    hd_queue_place_locked(q, e);
    pthread_mutex_unlock(&q->lock);
    return 0;
  }
  put_op_t *p = put_op_new(q, m, durable || q->paged || over_budget() ? HD_OP_PUT : HD_OP_NOP,
                           durable ? cb : NULL);
  hd_store_op_t *op = &p->op;
  if (!durable && op->kind == HD_OP_PUT) op->flags = HD_REC_NONDURABLE;
  op->seq = q->next_seq++;
  q->pending++;
  /* Submitted under the queue lock: the store commits this queue's
   * messages in seq order. */
  hd_store_submit(store, op);
  pthread_mutex_unlock(&q->lock);
  return durable && cb ? HD_PENDING : 0;
}

int hd_node_deliver(hd_node_t *n, hd_msg_t *m, hd_deliver_cb_t *cb) {
  if (!hd_node_stores(n)) return hd_node_put(n, m);
  return queue_deliver((hd_queue_t *)n, m, cb);
}

/* ---- reading back from disk --------------------------------------------------- */

typedef struct load {
  hd_queue_t *q;
  uint64_t limit;     /* stop after this seq (0: none) */
  uint64_t hwm;       /* redeliveries up to here */
  hd_entry_t *head, *tail;
  size_t count, bytes, seen;
  size_t max_count, max_bytes; /* one depage read */
  uint64_t last_seq;
  bool stop_at_budget;         /* start-up: fill memory up to the budget */
  bool startup;                /* non-durable records are from a previous run */
  uint64_t bumped_max;         /* highest seq whose raised count was written */
  int err;
} load_t;

static int load_one(const hd_store_rec_t *r, void *arg) {
  load_t *l = arg;
  if (l->limit && r->seq > l->limit) return 1;
  if (l->stop_at_budget && over_budget()) return 1;
  l->seen++;
  l->last_seq = r->seq;
  if ((r->flags & HD_REC_NONDURABLE) && l->startup) {
    /* Written only to page; it does not outlive the process that wrote it. */
    hd_store_op_t *op = hd_store_op_new(HD_OP_DEL);
    op->node = l->q->store_id;
    op->seq = r->seq;
    hd_store_submit(store, op);
    return 0;
  }
  hd_msg_t *m = hd_msg_alloc(r->len);
  if (!m) {
    l->err = -ENOMEM;
    return 1;
  }
  memcpy(m->buf, r->bytes, r->len);
  const char *why;
  if (hd_msg_parse(m, 0, &why) != 0) {
    HD_LOG(HD_LOG_ERR, "core", "queue '%s', stored message %" PRIu64 " is unreadable (%s); skipped, "
           "still on disk for hadron-store check", l->q->node.address, r->seq, why);
    hd_msg_unref(m);
    return 0;
  }
  m->expiry_ms = r->expiry_ms;
  uint32_t dc = r->delivery_count;
  hd_entry_t *e = hd_entry_new(m, r->seq, dc);
  hd_msg_unref(m);
  /* A paged non-durable message keeps its record until it is settled, like
   * a durable one; only a restart drops it (above). */
  e->flags |= HD_ENT_STORED;
  if (r->seq <= l->hwm) { /* may have been delivered before the crash */
    e->delivery_count++;
    e->flags |= HD_ENT_DELIVERED;
    hd_queue_store_update(l->q, e); /* written, and the message held until it is (hold_bumped_locked) */
    l->bumped_max = r->seq;
  }
  if (l->tail) l->tail->next = e; else l->head = e;
  l->tail = e;
  l->count++;
  l->bytes += r->len;
  return (l->max_count && l->count >= l->max_count) || (l->max_bytes && l->bytes >= l->max_bytes);
}

static void bumps_done(void *arg, int rc) {
  (void)rc; /* failed commits are retried before a barrier completes; rc != 0 only at close */
  hd_queue_t *q = arg;
  pthread_mutex_lock(&q->lock);
  if (--q->bumps_pending == 0) q->bump_max_seq = 0;
  hd_queue_dispatch_locked(q);
  pthread_mutex_unlock(&q->lock);
  hd_node_unref(&q->node);
}

/* Under q->lock, with the entries of a read that raised counts up to
 * bumped_max: hold them until the updates are committed. */
static void hold_bumped_locked(hd_queue_t *q, uint64_t bumped_max) {
  if (!bumped_max) return;
  q->bumps_pending++;
  if (bumped_max > q->bump_max_seq) q->bump_max_seq = bumped_max;
  hd_store_after(bumps_done, hd_node_ref(&q->node));
}

static void insert_all(hd_queue_t *q, hd_entry_t *list) {
  for (hd_entry_t *e = list, *next; e; e = next) {
    next = e->next;
    e->next = NULL;
    hd_queue_insert_locked(q, e);
  }
}

void hd_queue_depage(hd_queue_t *q) {
  pthread_mutex_lock(&q->lock);
  bool go = store && q->paged && !q->depaging && q->available < DEPAGE_LOW;
  uint64_t from = q->page_seq, limit = q->paged_max;
  if (go) q->depaging = true;
  pthread_mutex_unlock(&q->lock);
  if (!go) return;
  load_t l = {.q = q, .limit = limit, .hwm = q->hwm_recovered, .max_count = DEPAGE_BATCH,
              .max_bytes = DEPAGE_BYTES};
  long n = hd_store_scan(store, q->store_id, from, SIZE_MAX, load_one, &l);
  pthread_mutex_lock(&q->lock);
  insert_all(q, l.head);
  hold_bumped_locked(q, l.bumped_max);
  if (n < 0 || (l.seen == 0 && q->paged)) {
    HD_LOG(HD_LOG_ERR, "core", "queue '%s', %" PRIu64 " messages are counted on disk but cannot be read (%s); "
           "run hadron-store check", q->node.address, q->paged, n < 0 ? hd_strerror((int)n) : "none found");
    set_paged(q, 0);
  } else {
    set_paged(q, l.seen > q->paged ? 0 : q->paged - l.seen);
    q->page_seq = l.last_seq + 1;
  }
  if (!q->paged) q->page_seq = q->paged_max = 0;
  q->depaging = false;
  hd_queue_dispatch_locked(q);
  pthread_mutex_unlock(&q->lock);
}

/* ---- browsing what is on disk ------------------------------------------------------- */

typedef struct browse_load {
  uint64_t limit, hwm, now;
  size_t want, got;
  bool more; /* stopped with records left */
  hd_entry_t *head, *tail;
} browse_load_t;

static int browse_one(const hd_store_rec_t *r, void *arg) {
  browse_load_t *l = arg;
  if (r->seq > l->limit) return 1;
  if (l->got == l->want) {
    l->more = true;
    return 1;
  }
  if (r->expiry_ms && r->expiry_ms <= l->now) return 0; /* its consumer-side read drops it */
  hd_msg_t *m = hd_msg_alloc(r->len);
  if (!m) return 1;
  memcpy(m->buf, r->bytes, r->len);
  const char *why;
  if (hd_msg_parse(m, 0, &why) != 0) { /* logged when a consumer reads it */
    hd_msg_unref(m);
    return 0;
  }
  m->expiry_ms = r->expiry_ms;
  bool again = r->seq <= l->hwm;
  hd_entry_t *e = hd_entry_new(m, r->seq, r->delivery_count + again);
  hd_msg_unref(m);
  e->flags = HD_ENT_COPY | (again ? HD_ENT_DELIVERED : 0);
  if (l->tail) l->tail->next = e; else l->head = e;
  l->tail = e;
  l->got++;
  return 0;
}

bool hd_queue_browse_disk(hd_queue_t *q, uint64_t from, uint64_t limit, size_t want, hd_entry_t **out) {
  *out = NULL;
  if (!store || !q->store_id || !want) return false;
  browse_load_t l = {.limit = limit, .hwm = q->hwm_recovered, .now = hd_now_wall_ms(), .want = want};
  /* One record beyond `want` tells whether there is more. */
  long n = hd_store_scan(store, q->store_id, from, SIZE_MAX, browse_one, &l);
  *out = l.head;
  return n >= 0 && l.more;
}

/* ---- start-up ----------------------------------------------------------------------- */

static int recover_node(const hd_store_node_t *sn, void *arg) {
  char *err = ((char **)arg)[0];
  size_t errlen = (size_t)(uintptr_t)((char **)arg)[1];
  if (sn->type != HD_NODE_QUEUE) return 0;
  hd_node_t *n = hd_addr_find(sn->address, strlen(sn->address));
  if (n && n->type != HD_NODE_QUEUE) {
    snprintf(err, errlen,
             "the store holds queue '%s' with %" PRIu64 " messages, but the config declares it a topic; "
             "declare it as [queue %s] (or drain it with the old config first)",
             sn->address, sn->count, sn->address);
    hd_node_unref(n);
    return HD_ECONFIG;
  }
  if (!n) n = hd_addr_adopt(sn->address, &sn->opts);
  hd_queue_t *q = (hd_queue_t *)n;
  q->store_id = sn->id;
  q->hwm_ahead = HWM_AHEAD_MIN;
  q->hwm_done = q->hwm_asked = q->hwm_recovered = sn->hwm;
  q->next_seq = (sn->max_seq > sn->hwm ? sn->max_seq : sn->hwm) + 1;
  load_t l = {.q = q, .hwm = sn->hwm, .stop_at_budget = true, .startup = true};
  long got = hd_store_scan(store, q->store_id, 0, SIZE_MAX, load_one, &l);
  pthread_mutex_lock(&q->lock);
  insert_all(q, l.head);
  hold_bumped_locked(q, l.bumped_max);
  pthread_mutex_unlock(&q->lock);
  if (got < 0 || l.err) {
    snprintf(err, errlen, "queue '%s' in the store cannot be read (%s); run hadron-store check",
             sn->address, hd_strerror(got < 0 ? (int)got : l.err));
    hd_node_unref(n);
    return HD_ECONFIG;
  }
  q->st.enqueued = q->available;
  /* Every message up to the mark is loaded and its raised count written:
   * start a new mark, so that the next crash raises only what is delivered
   * from now on.  (Otherwise keep it; reading from disk raises and writes
   * the counts of the rest as they come.) */
  if (sn->hwm && (l.last_seq >= sn->hwm || sn->count == l.seen)) {
    hd_store_op_t *op = hd_store_op_new(HD_OP_HWM);
    op->node = q->store_id;
    op->seq = 0;
    hd_store_submit(store, op);
    q->hwm_done = q->hwm_asked = q->hwm_recovered = 0;
  }
  if (sn->count > l.seen) {
    set_paged(q, sn->count - l.seen);
    q->page_seq = l.seen ? l.last_seq + 1 : 1;
    q->paged_max = sn->max_seq;
  }
  HD_LOG(HD_LOG_NOTICE, "core", "queue '%s', recovered %" PRIu64 " messages (%" PRIu64 " in memory, %" PRIu64
         " on disk)", sn->address, q->available + q->paged, q->available, q->paged);
  hd_node_unref(n);
  return 0;
}

int hd_queues_recover(char *err, size_t errlen) {
  if (!store) return 0;
  char *arg[2] = {err, (char *)(uintptr_t)errlen};
  return hd_store_each_node(store, recover_node, arg, err, errlen);
}
