/* Consumer links: the broker sends.  A consumer on a queue competes with the
 * queue's other consumers; on a topic it gets a private subscription queue.
 * Entries arrive in the consumer's outbox (from any thread); this thread
 * sends them within the link's credit and applies the peer's outcomes. */
#include "config.h"

#include <inttypes.h>
#include <proton/codec.h>
#include <proton/condition.h>
#include <proton/disposition.h>
#include <proton/terminus.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "address.h"
#include "codec.h"
#include "hooks.h"
#include "link.h"
#include "log.h"
#include "util.h"

typedef struct hd_later hd_later_t;

typedef struct hd_outlink {
  hd_link_t base;
  hd_later_t *later; /* settlements waiting for the store */
  hd_work_t work;
  hd_consumer_t consumer;
  hd_node_t *node;   /* what the link attached to */
  hd_queue_t *queue; /* what it consumes: the node, or its subscription */
  bool subscription, dynamic, presettle;
  uint64_t tag;
} hd_outlink_t;

static _Atomic uint64_t next_consumer_id = 1;

/* In rcv-settle-mode second the consumer waits for our settlement as proof
 * that its outcome took effect; for stored messages we settle only once
 * the store has committed what the outcome changed. */
struct hd_later {
  hd_work_t work;
  hd_conn_t *conn;   /* one reference */
  hd_outlink_t *o;   /* NULL once the link is gone (owner thread) */
  pn_delivery_t *d;
  hd_later_t *prev, *next;
};

static void later_run(hd_work_t *w) {
  hd_later_t *l = (hd_later_t *)((char *)w - offsetof(hd_later_t, work));
  if (l->o) {
    if (l->prev) l->prev->next = l->next; else l->o->later = l->next;
    if (l->next) l->next->prev = l->prev;
    pn_delivery_settle(l->d);
  }
  hd_conn_t *c = l->conn;
  free(l);
  hd_conn_unref(c);
}

/* The connection closed (or has gone) before the settlement could be sent. */
static void later_forget(hd_work_t *w) {
  hd_later_t *l = (hd_later_t *)((char *)w - offsetof(hd_later_t, work));
  hd_conn_t *c = l->conn;
  free(l);
  hd_conn_unref(c);
}

static void later_done(void *arg, int rc) {
  hd_later_t *l = arg;
  (void)rc; /* a failed commit is retried by the store; a barrier completes after it */
  if (!hd_conn_post(l->conn, &l->work)) later_forget(&l->work); /* the connection has gone */
}

static void settle_after_store(hd_outlink_t *o, pn_delivery_t *d) {
  hd_later_t *l = hd_xcalloc(1, sizeof *l);
  l->work.run = later_run;
  l->work.drop = later_forget;
  l->conn = o->base.conn;
  hd_conn_ref(l->conn);
  l->o = o;
  l->d = d;
  l->next = o->later;
  if (l->next) l->next->prev = l;
  o->later = l;
  hd_queues_after(later_done, l); /* after this thread's acknowledgements */
}

static void notify(hd_consumer_t *c) {
  hd_outlink_t *o = c->owner;
  hd_conn_post(o->base.conn, &o->work);
}

static void send_entry(hd_outlink_t *o, hd_entry_t *e) {
  pn_link_t *l = o->base.pn;
  uint64_t tag = o->tag++;
  pn_delivery_t *d = pn_delivery(l, pn_dtag((const char *)&tag, sizeof tag));
  hd_msg_t *m = e->msg;
  uint8_t hdr[32];
  /* A failed attempt means someone acquired it before, whether or not this
   * process saw it (the count survives restarts; the flag does not). */
  bool first = !(e->flags & (HD_ENT_DELIVERED | HD_ENT_COPY)) && e->delivery_count == 0;
  pn_link_send(l, (const char *)hdr, hd_msg_header(m, e->delivery_count, first, hdr));
  if (m->ma_len) pn_link_send(l, (const char *)m->buf + m->ma_off, m->ma_len);
  pn_link_send(l, (const char *)m->buf + m->bare_off, m->len - m->bare_off);
  pn_link_advance(l);
  e->flags |= HD_ENT_DELIVERED;
  if (o->presettle) {
    /* At-most-once: the message is gone from the queue once sent. */
    pn_delivery_settle(d);
    hd_queue_ack(o->queue, e);
  } else {
    pn_delivery_set_context(d, e);
  }
}

static void pump(hd_outlink_t *o) {
  pn_link_t *l = o->base.pn;
  if (!(pn_link_state(l) & PN_LOCAL_ACTIVE)) return;
  hd_batch_t b;
  hd_queue_pump(o->queue, &o->consumer, pn_link_credit(l), pn_link_get_drain(l), &b);
  for (hd_entry_t *e = b.head, *next; e; e = next) {
    next = e->next;
    e->next = e->prev = NULL;
    send_entry(o, e);
  }
  if (b.drained) pn_link_drained(l);
  if (b.expired) hd_node_expire_list(o->queue, b.expired);
}

static void work_run(hd_work_t *w) {
  hd_outlink_t *o = (hd_outlink_t *)((char *)w - offsetof(hd_outlink_t, work));
  pump(o);
}

void hd_outlink_flow(hd_link_t *lk) { pump((hd_outlink_t *)lk); }

void hd_outlink_open(hd_conn_t *c, pn_link_t *l) {
  pn_terminus_t *rs = pn_link_remote_source(l);
  const char *addr = pn_terminus_get_address(rs);
  bool dynamic = pn_terminus_is_dynamic(rs);
  bool browse = pn_terminus_get_distribution_mode(rs) == PN_DIST_MODE_COPY;
  hd_node_type_t req = hd_link_capability_type(pn_terminus_capabilities(rs));
  hd_link_info_t info = {.size = sizeof info, .conn = &c->info, .name = pn_link_name(l),
                         .role = HD_ROLE_CONSUMER, .address = addr, .dynamic = dynamic,
                         .browse = browse};
  if (hd_hooks_run(HD_PHASE_LINK_ATTACH, &info) == HD_VERDICT_DENY) {
    hd_link_refuse(l, info.refusal.condition ? info.refusal.condition : "amqp:unauthorized-access",
                   info.refusal.description);
    return;
  }
  hd_node_t *node = NULL;
  if (dynamic) {
    node = hd_addr_dynamic(req == HD_NODE_TOPIC ? HD_NODE_TOPIC : HD_NODE_QUEUE);
  } else if (!addr || !*addr) {
    hd_link_refuse(l, "amqp:invalid-field",
                   "a receiving link needs a source address, or dynamic = true for a temporary queue");
    return;
  } else {
    hd_refusal_t ref = {0};
    if (hd_addr_resolve(addr, strlen(addr), HD_PURPOSE_CONSUMER, req, false, &node, &ref) != 0) {
      hd_link_refuse(l, ref.condition ? ref.condition : "amqp:not-found", ref.description);
      return;
    }
  }
  hd_outlink_t *o = hd_xcalloc(1, sizeof *o);
  o->base = (hd_link_t){HD_LINK_OUT, c, l};
  o->work.run = work_run;
  o->node = node;
  o->dynamic = dynamic;
  if (node->type == HD_NODE_TOPIC) {
    o->queue = hd_topic_subscribe((hd_topic_t *)node);
    o->subscription = true;
    browse = false; /* a subscription only sees what arrives after it */
  } else {
    o->queue = (hd_queue_t *)node;
  }
  o->consumer.id = atomic_fetch_add(&next_consumer_id, 1);
  o->consumer.browse = browse;
  o->consumer.notify = notify;
  o->consumer.owner = o;
  o->presettle = pn_link_remote_snd_settle_mode(l) == PN_SND_SETTLED;
  pn_link_set_context(l, &o->base);

  pn_terminus_t *ls = pn_link_source(l);
  pn_terminus_copy(ls, rs);
  if (dynamic) pn_terminus_set_address(ls, node->address);
  hd_link_set_capability(ls, node->type);
  /* Filters (selectors) are not applied: leaving them out of our source
   * tells the peer so, as the spec asks. */
  pn_data_clear(pn_terminus_filter(ls));
  pn_terminus_copy(pn_link_target(l), pn_link_remote_target(l));
  pn_link_set_snd_settle_mode(l, pn_link_remote_snd_settle_mode(l));
  pn_link_set_rcv_settle_mode(l, pn_link_remote_rcv_settle_mode(l));
  hd_queue_attach(o->queue, &o->consumer);
  pn_link_open(l);
  HD_LOG(HD_LOG_DEBUG, "core", "connection %" PRIu64 ", consumer link '%s' attached to %s '%s'%s",
         c->id, pn_link_name(l), node->type == HD_NODE_TOPIC ? "topic" : "queue", node->address,
         browse ? " (browsing)" : "");
}

/* A sent entry did not make it: back to the queue as a failed attempt, or
 * to the dead-letter address when it has had too many. */
static void redeliver(hd_outlink_t *o, hd_entry_t *e, bool failed, uint64_t avoid) {
  if (!hd_queue_release(o->queue, e, failed, avoid)) {
    char desc[96];
    hd_fmt(desc, "delivered %u times without being accepted", e->delivery_count);
    hd_node_dead_letter(o->queue, e, "max-deliveries", desc);
  }
}

/* Merge the annotations of a modified outcome into the entry's message. */
static void apply_annotations(hd_entry_t *e, pn_data_t *ann) {
  if (!ann || pn_data_size(ann) == 0) return;
  char stack[1024];
  ssize_t n = pn_data_encode(ann, stack, sizeof stack);
  char *buf = stack;
  if (n == PN_OVERFLOW) {
    n = pn_data_encoded_size(ann);
    buf = hd_xmalloc((size_t)n);
    n = pn_data_encode(ann, buf, (size_t)n);
  }
  hd_rd_t r = hd_rd(buf, n > 0 ? (size_t)n : 0);
  uint32_t count;
  hd_rd_t inner;
  if (n > 0 && hd_rd_compound(&r, true, &count, &inner)) {
    hd_msg_t *m = hd_msg_annotate(e->msg, inner.p, hd_rd_left(&inner), count);
    if (m) {
      hd_msg_unref(e->msg);
      e->msg = m;
    }
  }
  if (buf != stack) free(buf);
}

void hd_outlink_delivery(hd_link_t *lk, pn_delivery_t *d) {
  hd_outlink_t *o = (hd_outlink_t *)lk;
  hd_entry_t *e = pn_delivery_get_context(d);
  uint64_t state = pn_delivery_remote_state(d);
  bool settled = pn_delivery_settled(d);
  if (!e) {
    if (settled) pn_delivery_settle(d);
    return;
  }
  if ((!state && !settled) || state == PN_RECEIVED) return; /* no outcome yet */
  pn_delivery_set_context(d, NULL);
  bool wait = !settled && (e->flags & HD_ENT_STORED) &&
              pn_link_rcv_settle_mode(lk->pn) == PN_RCV_SECOND && hd_queues_store();
  pn_disposition_t *disp = pn_delivery_remote(d);
  switch (state) {
  case 0: /* settled without an outcome: the peer is done with it */
  case PN_ACCEPTED: hd_queue_ack(o->queue, e); break;
  case PN_RELEASED: redeliver(o, e, false, 0); break;
  case PN_MODIFIED:
    apply_annotations(e, pn_disposition_annotations(disp));
    redeliver(o, e, pn_disposition_is_failed(disp),
              pn_disposition_is_undeliverable(disp) ? o->consumer.id : 0);
    break;
  case PN_REJECTED: {
    pn_condition_t *c = pn_disposition_condition(disp);
    const char *desc = pn_condition_get_description(c);
    const char *name = pn_condition_get_name(c);
    char why[512];
    hd_fmt(why, "%s%s%s", name ? name : "", name && desc ? ": " : "", desc ? desc : "");
    if (e->flags & HD_ENT_COPY)
      hd_queue_ack(o->queue, e); /* a browser cannot reject what it does not own */
    else
      hd_node_dead_letter(o->queue, e, "rejected", why);
    break;
  }
  default:
    HD_LOG(HD_LOG_DEBUG, "core", "connection %" PRIu64 ", consumer link '%s': outcome 0x%" PRIx64
           " not supported here; message released", lk->conn->id, pn_link_name(lk->pn), state);
    redeliver(o, e, false, 0);
    break;
  }
  if (wait)
    settle_after_store(o, d);
  else
    pn_delivery_settle(d);
}

void hd_outlink_cleanup(hd_link_t *lk) {
  hd_outlink_t *o = (hd_outlink_t *)lk;
  for (hd_later_t *l = o->later, *next; l; l = next) { /* the store still reports */
    next = l->next;
    l->o = NULL;
    l->prev = l->next = NULL;
  }
  o->later = NULL;
  hd_queue_detach(o->queue, &o->consumer);
  hd_conn_unpost(lk->conn, &o->work);
  /* Sent but never settled: a failed attempt (delivery-count + 1). */
  for (pn_delivery_t *d = pn_unsettled_head(lk->pn), *next; d; d = next) {
    next = pn_unsettled_next(d);
    hd_entry_t *e = pn_delivery_get_context(d);
    if (!e) continue;
    pn_delivery_set_context(d, NULL);
    redeliver(o, e, true, 0);
  }
  if (o->subscription) hd_topic_unsubscribe((hd_topic_t *)o->node, o->queue);
  if (o->dynamic) hd_addr_remove(o->node);
  hd_node_unref(o->node);
  free(o);
}
