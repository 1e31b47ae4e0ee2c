/* Queues: an ordered list of available entries and a ring of consumers.
 * A new entry goes straight to a consumer with credit (round robin), or
 * waits in the list; a consumer's thread pumps the list when it gets credit.
 * Entries handed to a consumer sit in its outbox until its thread sends them. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "node.h"
#include "util.h"

void hd_entry_free(hd_entry_t *e) {
  if (!e) return;
  hd_msg_unref(e->msg);
  free(e->avoid);
  hd_obj_free(e, sizeof *e);
}

hd_entry_t *hd_entry_new(hd_msg_t *m, uint64_t seq, uint32_t delivery_count) {
  /* Made on the producer's (or store's) thread, freed on the consumer's. */
  hd_entry_t *e = hd_obj_alloc(sizeof *e);
  *e = (hd_entry_t){0};
  e->msg = hd_msg_ref(m);
  e->seq = seq;
  e->delivery_count = delivery_count;
  return e;
}

static bool avoids(const hd_entry_t *e, uint64_t consumer) {
  for (uint32_t i = 0; i < e->n_avoid; i++)
    if (e->avoid[i] == consumer) return true;
  return false;
}

/* ---- the available list (seq order) ---------------------------------- */

static void avail_unlink(hd_queue_t *q, hd_entry_t *e) {
  if (e->prev) e->prev->next = e->next; else q->head = e->next;
  if (e->next) e->next->prev = e->prev; else q->tail = e->prev;
  e->next = e->prev = NULL;
  q->available--;
}

/* Insert keeping seq order; new entries land at the tail in O(1), returned
 * ones usually near the head. */
static void avail_insert(hd_queue_t *q, hd_entry_t *e) {
  hd_entry_t *after = q->tail;
  while (after && after->seq > e->seq) after = after->prev;
  e->prev = after;
  e->next = after ? after->next : q->head;
  if (e->next) e->next->prev = e; else q->tail = e;
  if (after) after->next = e; else q->head = e;
  q->available++;
  if (e->msg->expiry_ms && (!q->next_expiry || e->msg->expiry_ms < q->next_expiry))
    q->next_expiry = e->msg->expiry_ms;
}

/* ---- consumers ---------------------------------------------------------- */

static void ring_add(hd_consumer_t **ring, hd_consumer_t *c) {
  if (!*ring) {
    c->next = c->prev = c;
    *ring = c;
  } else {
    hd_consumer_t *h = *ring;
    c->next = h;
    c->prev = h->prev;
    h->prev->next = c;
    h->prev = c;
  }
}

static void ring_del(hd_consumer_t **ring, hd_consumer_t *c) {
  if (c->next == c) {
    *ring = NULL;
  } else {
    c->prev->next = c->next;
    c->next->prev = c->prev;
    if (*ring == c) *ring = c->next;
  }
  c->next = c->prev = NULL;
}

static void outbox_push(hd_consumer_t *c, hd_entry_t *e) {
  e->next = NULL;
  e->prev = c->out_tail;
  if (c->out_tail) c->out_tail->next = e; else c->out_head = e;
  c->out_tail = e;
  if (c->out_count++ == 0 && c->notify) c->notify(c);
}

/* The next consumer in turn that has credit and may take e, or NULL. */
static hd_consumer_t *pick(hd_queue_t *q, const hd_entry_t *e) {
  hd_consumer_t *start = q->consumers, *c = start;
  if (!c) return NULL;
  do {
    if (c->credit > 0 && !avoids(e, c->id)) return c;
    c = c->next;
  } while (c != start);
  return NULL;
}

static void give(hd_queue_t *q, hd_consumer_t *c, hd_entry_t *e) {
  c->credit--;
  q->in_flight++;
  q->consumers = c->next; /* round robin */
  outbox_push(c, e);
}

static bool any_credit(hd_queue_t *q) {
  hd_consumer_t *c = q->consumers;
  if (!c) return false;
  do {
    if (c->credit > 0) return true;
    c = c->next;
  } while (c != q->consumers);
  return false;
}

/* After entries come back or credit appears: offer waiting entries, walking
 * past any that only some consumers may take. */
static void dispatch_waiting(hd_queue_t *q) {
  for (hd_entry_t *e = q->head, *next; e && any_credit(q); e = next) {
    next = e->next;
    /* Later entries have higher seqs: if this one must wait, so do they. */
    if (!hd_queue_may_send_locked(q, e)) break;
    hd_consumer_t *c = pick(q, e);
    if (c) {
      avail_unlink(q, e);
      give(q, c, e);
    }
  }
}

/* Links with credit and nothing to send hear that there may be something
 * for them that no entry in memory shows (a message that went to disk):
 * their next pump reads it back. */
static void wake_idle(hd_consumer_t *ring) {
  hd_consumer_t *c = ring;
  if (!c) return;
  do {
    if (c->credit > 0 && c->out_count == 0 && c->notify) c->notify(c);
    c = c->next;
  } while (c != ring);
}

static void wake_browsers(hd_queue_t *q) { wake_idle(q->browsers); }

int hd_queue_put(hd_queue_t *q, hd_msg_t *m, uint32_t delivery_count) {
  if (atomic_load_explicit(&q->node.deleted, memory_order_relaxed)) return HD_ENOTFOUND;
  pthread_mutex_lock(&q->lock);
  if (q->node.max_depth &&
      q->available + q->in_flight + q->paged + q->pending >= (uint64_t)q->node.max_depth) {
    pthread_mutex_unlock(&q->lock);
    return HD_EFULL;
  }
  hd_entry_t *e = hd_entry_new(m, q->next_seq++, delivery_count);
  q->st.enqueued++;
  hd_queue_place_locked(q, e);
  pthread_mutex_unlock(&q->lock);
  return 0;
}

void hd_queue_place_locked(hd_queue_t *q, hd_entry_t *e) {
  /* FIFO: entries already waiting go first. */
  hd_consumer_t *c = q->head ? NULL : pick(q, e);
  if (c && hd_queue_may_send_locked(q, e)) {
    give(q, c, e);
  } else {
    avail_insert(q, e);
    if (q->head != e && any_credit(q)) dispatch_waiting(q);
  }
  wake_browsers(q);
}

void hd_queue_insert_locked(hd_queue_t *q, hd_entry_t *e) { avail_insert(q, e); }

void hd_queue_wake_idle_locked(hd_queue_t *q) {
  wake_idle(q->consumers);
  wake_idle(q->browsers);
}

void hd_queue_dispatch_locked(hd_queue_t *q) {
  dispatch_waiting(q);
  wake_browsers(q);
}

void hd_queue_attach(hd_queue_t *q, hd_consumer_t *c) {
  pthread_mutex_lock(&q->lock);
  c->queue = q;
  c->credit = 0;
  c->attached = true;
  if (c->browse) {
    ring_add(&q->browsers, c);
  } else {
    ring_add(&q->consumers, c);
    q->n_consumers++;
  }
  pthread_mutex_unlock(&q->lock);
}

void hd_queue_detach(hd_queue_t *q, hd_consumer_t *c) {
  pthread_mutex_lock(&q->lock);
  if (!c->attached) {
    pthread_mutex_unlock(&q->lock);
    return;
  }
  c->attached = false;
  if (c->browse) {
    ring_del(&q->browsers, c);
  } else {
    ring_del(&q->consumers, c);
    q->n_consumers--;
  }
  hd_entry_t *e = c->out_head;
  c->out_head = c->out_tail = NULL;
  c->out_count = 0;
  c->credit = 0;
  while (e) {
    hd_entry_t *next = e->next;
    if (e->flags & HD_ENT_COPY) {
      hd_entry_free(e);
    } else {
      q->in_flight--;
      avail_insert(q, e);
    }
    e = next;
  }
  dispatch_waiting(q);
  pthread_mutex_unlock(&q->lock);
}

static bool expired(const hd_entry_t *e, uint64_t now) {
  return e->msg->expiry_ms && e->msg->expiry_ms <= now;
}

static void pump_browser(hd_queue_t *q, hd_consumer_t *c, uint64_t now) {
  for (hd_entry_t *e = q->head; e && c->credit > 0; e = e->next) {
    if (e->seq < c->browse_seq || expired(e, now)) continue;
    hd_entry_t *copy = hd_entry_new(e->msg, e->seq, e->delivery_count);
    copy->flags = HD_ENT_COPY | (e->flags & HD_ENT_DELIVERED);
    c->browse_seq = e->seq + 1;
    c->credit--;
    outbox_push(c, copy);
  }
}

/* Read outside the queue lock; what the browser saw meanwhile is skipped. */
static void browse_disk(hd_queue_t *q, hd_consumer_t *c, uint64_t from, uint64_t limit, bool drain,
                        hd_batch_t *b) {
  hd_entry_t *list;
  bool more = hd_queue_browse_disk(q, from, limit, (size_t)c->credit, &list);
  hd_entry_t **tail = &b->head;
  while (*tail) tail = &(*tail)->next;
  pthread_mutex_lock(&q->lock);
  while (list) {
    hd_entry_t *e = list;
    list = e->next;
    e->next = NULL;
    if (e->seq < c->browse_seq || c->credit <= 0) {
      hd_entry_free(e);
      continue;
    }
    c->browse_seq = e->seq + 1;
    c->credit--;
    *tail = e;
    tail = &e->next;
    b->n++;
  }
  /* Read to the end of what was on disk: nothing more for a drain. */
  if (drain && c->credit > 0 && !more) {
    b->drained = true;
    c->credit = 0;
  }
  pthread_mutex_unlock(&q->lock);
}

void hd_queue_pump(hd_queue_t *q, hd_consumer_t *c, int64_t link_credit, bool drain,
                   hd_batch_t *b) {
  memset(b, 0, sizeof *b);
  if (q->paged) hd_queue_depage(q); /* racy peek; depage looks again under the lock */
  pthread_mutex_lock(&q->lock);
  uint64_t now = q->next_expiry ? hd_now_wall_ms() : 0;
  bool waiting = false; /* entries there, but held for the delivery mark */
  c->credit = link_credit - (int64_t)c->out_count;
  if (c->browse) {
    pump_browser(q, c, now);
  } else {
    hd_entry_t *e = q->head;
    while (e && c->credit > 0) {
      hd_entry_t *next = e->next;
      if (now && expired(e, now)) {
        avail_unlink(q, e);
        e->next = b->expired;
        b->expired = e;
      } else if (!hd_queue_may_send_locked(q, e)) {
        waiting = true; /* the mark's commit will dispatch them */
        break;
      } else if (!avoids(e, c->id)) {
        avail_unlink(q, e);
        c->credit--;
        q->in_flight++;
        outbox_push(c, e);
      }
      e = next;
    }
  }
  /* Take the outbox; entries that expired on the way there are not sent. */
  b->head = c->out_head;
  b->n = c->out_count;
  c->out_head = c->out_tail = NULL;
  c->out_count = 0;
  for (hd_entry_t **p = &b->head; *p;) {
    hd_entry_t *e = *p;
    if (e->msg->expiry_ms && !(e->flags & HD_ENT_COPY) && expired(e, now ? now : (now = hd_now_wall_ms()))) {
      *p = e->next;
      q->in_flight--; /* hd_node_expire_list counts it as taken from the list */
      e->next = b->expired;
      b->expired = e;
      b->n--;
    } else {
      p = &e->next;
    }
  }
  if (link_credit < 0) link_credit = 0;
  if (b->n > link_credit) {
    hd_entry_t *e = b->head, *prev = NULL;
    for (int64_t i = 0; i < link_credit; i++) prev = e, e = e->next;
    if (prev) prev->next = NULL; else b->head = NULL;
    b->n = (uint32_t)link_credit;
    while (e) {
      hd_entry_t *next = e->next;
      if (e->flags & HD_ENT_COPY) {
        c->browse_seq = c->browse_seq > e->seq ? e->seq : c->browse_seq;
        hd_entry_free(e);
      } else {
        q->in_flight--;
        avail_insert(q, e);
      }
      e = next;
    }
  }
  c->credit = link_credit - (int64_t)b->n;
  /* A browser past the part in memory reads copies from disk.  Memory holds
   * a prefix of the queue (seqs below page_seq), so it goes on from there. */
  bool disk = c->browse && c->credit > 0 && q->paged && c->browse_seq <= q->paged_max;
  uint64_t from = c->browse_seq > q->page_seq ? c->browse_seq : q->page_seq, limit = q->paged_max;
  /* Messages still on disk or held for the mark are coming: not drained
   * yet.  (Uncommitted ones are not available, so they do not count.) */
  if (drain && c->credit > 0 && !waiting && (c->browse ? !disk : !q->paged)) {
    b->drained = true;
    c->credit = 0;
  }
  pthread_mutex_unlock(&q->lock);
  if (disk) browse_disk(q, c, from, limit, drain, b);
}

void hd_queue_unsend(hd_queue_t *q, hd_entry_t *list) {
  pthread_mutex_lock(&q->lock);
  while (list) {
    hd_entry_t *next = list->next;
    if (list->flags & HD_ENT_COPY) {
      hd_entry_free(list);
    } else {
      q->in_flight--;
      avail_insert(q, list);
    }
    list = next;
  }
  dispatch_waiting(q);
  pthread_mutex_unlock(&q->lock);
}

/* A consumer's acknowledgements arrive in bursts (one disposition frame
 * settles a range of deliveries).  Taken one by one, each would take the
 * queue's lock (which producers and the store's completions contend for)
 * and hand the store an operation of its own.  A run is one thread's
 * acknowledgements to one queue, applied together (hd_queue_acks_flush). */
#define ACK_RUN_MAX 256
typedef struct ack_run {
  hd_queue_t *q; /* one reference while the run has entries */
  hd_entry_t *head; /* chained through next */
  size_t n;
  uint64_t seqs[ACK_RUN_MAX]; /* of the stored ones */
  size_t nseqs;
} ack_run_t;
static _Thread_local ack_run_t ack_run;
/* Only threads that flush at the end of each event batch collect runs;
 * on others every acknowledgement (and delivery) takes effect at once. */
static _Thread_local bool collecting;

void hd_queues_collect(bool on) { collecting = on; }
bool hd_queues_collecting(void) { return collecting; }

void hd_queue_acks_flush(void) {
  ack_run_t *r = &ack_run;
  if (!r->n) return;
  hd_queue_t *q = r->q;
  hd_entry_t *list = r->head;
  size_t n = r->n;
  /* Emptied first: what follows may free the queue, never ack again. */
  hd_queue_store_dels(q, r->seqs, r->nseqs);
  r->q = NULL;
  r->head = NULL;
  r->n = r->nseqs = 0;
  pthread_mutex_lock(&q->lock);
  q->in_flight -= n;
  q->st.acknowledged += n;
  pthread_mutex_unlock(&q->lock);
  for (hd_entry_t *e = list, *next; e; e = next) {
    next = e->next;
    hd_entry_free(e);
  }
  hd_node_unref(&q->node);
}

void hd_queue_ack(hd_queue_t *q, hd_entry_t *e) {
  if (e->flags & HD_ENT_COPY) {
    hd_entry_free(e);
    return;
  }
  ack_run_t *r = &ack_run;
  if (r->n && (r->q != q || r->n == ACK_RUN_MAX)) hd_queue_acks_flush();
  if (!r->n) r->q = (hd_queue_t *)hd_node_ref(&q->node);
  if (e->flags & HD_ENT_STORED) r->seqs[r->nseqs++] = e->seq;
  e->prev = NULL;
  e->next = r->head;
  r->head = e;
  r->n++;
  if (!collecting) hd_queue_acks_flush();
}

bool hd_queue_release(hd_queue_t *q, hd_entry_t *e, bool failed, uint64_t avoid_consumer) {
  if (e->flags & HD_ENT_COPY) {
    hd_entry_free(e);
    return true;
  }
  if (failed) {
    e->delivery_count++;
    hd_queue_store_update(q, e);
  }
  if (avoid_consumer && !avoids(e, avoid_consumer)) {
    e->avoid = hd_xrealloc(e->avoid, (e->n_avoid + 1) * sizeof *e->avoid);
    e->avoid[e->n_avoid++] = avoid_consumer;
  }
  pthread_mutex_lock(&q->lock);
  if (failed && q->node.max_deliveries && e->delivery_count >= (uint32_t)q->node.max_deliveries) {
    pthread_mutex_unlock(&q->lock);
    return false; /* still in flight: hd_queue_drop accounts for it */
  }
  q->in_flight--;
  if (atomic_load_explicit(&q->node.deleted, memory_order_relaxed)) {
    q->st.dropped++;
    pthread_mutex_unlock(&q->lock);
    hd_entry_free(e);
    return true;
  }
  avail_insert(q, e);
  dispatch_waiting(q);
  wake_browsers(q);
  pthread_mutex_unlock(&q->lock);
  return true;
}

void hd_queue_drop(hd_queue_t *q, hd_entry_t *e, int why) {
  pthread_mutex_lock(&q->lock);
  if (why != HD_DROP_EXPIRED) q->in_flight--; /* expired entries come from the list */
  hd_queue_store_del(q, e);
  switch (why) {
  case HD_DROP_EXPIRED: q->st.expired++; break;
  case HD_DROP_DEAD: q->st.dead_lettered++; break;
  default: q->st.dropped++; break;
  }
  pthread_mutex_unlock(&q->lock);
  hd_entry_free(e);
}

hd_entry_t *hd_queue_take_expired(hd_queue_t *q, uint64_t now) {
  hd_entry_t *out = NULL;
  pthread_mutex_lock(&q->lock);
  if (q->next_expiry && q->next_expiry <= now) {
    uint64_t next = 0;
    for (hd_entry_t *e = q->head, *n; e; e = n) {
      n = e->next;
      if (expired(e, now)) {
        avail_unlink(q, e);
        e->next = out;
        out = e;
      } else if (e->msg->expiry_ms && (!next || e->msg->expiry_ms < next)) {
        next = e->msg->expiry_ms;
      }
    }
    q->next_expiry = next;
  }
  pthread_mutex_unlock(&q->lock);
  return out;
}

void hd_queue_stats(hd_queue_t *q, hd_queue_stats_t *out) {
  pthread_mutex_lock(&q->lock);
  *out = q->st;
  out->available = q->available;
  out->in_flight = q->in_flight;
  out->depth = q->available + q->in_flight + q->paged + q->pending;
  out->consumers = q->n_consumers;
  pthread_mutex_unlock(&q->lock);
}
