/* Producer links: the peer sends, the broker receives.  Each complete
 * message is parsed, routed to the link's node (or, on an anonymous-relay
 * link, to the node its 'to' names) and settled with the outcome. */
#include "config.h"

#include <inttypes.h>
#include <proton/condition.h>
#include <proton/disposition.h>
#include <proton/terminus.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "address.h"
#include "store.h"
#include "hooks.h"
#include "link.h"
#include "log.h"
#include "util.h"

typedef struct hd_pending hd_pending_t;

typedef struct hd_inlink {
  hd_link_t base;
  hd_pending_t *pending; /* deliveries waiting for the store */
  hd_node_t *node; /* NULL on an anonymous-relay link */
  bool dynamic;
  bool blocked;    /* waiting for memory before giving credit */
  hd_node_t *relay_node; /* last 'to' resolved on a relay link */
  char *relay_addr;
  size_t relay_len;
} hd_inlink_t;

/* A producer's delivery waiting for its message to be committed.  The store
 * reports on its writer thread; the outcome is then posted back to the
 * connection's own thread, which settles the delivery (if its link is still
 * there). */
struct hd_pending {
  hd_deliver_cb_t cb;
  hd_work_t work;
  hd_conn_t *conn;  /* one reference */
  hd_inlink_t *in;  /* NULL once the link is gone (owner thread) */
  pn_delivery_t *d;
  int rc;
  hd_pending_t *prev, *next; /* in->pending */
};

/* Bytes of a message arriving in several transfers. */
typedef struct partial {
  uint8_t *buf;
  size_t len, cap;
} partial_t;

static void refuse_ref(pn_link_t *l, const hd_refusal_t *r) {
  hd_link_refuse(l, r->condition ? r->condition : "amqp:not-found", r->description);
}

void hd_inlink_open(hd_conn_t *c, pn_link_t *l) {
  pn_terminus_t *rt = pn_link_remote_target(l);
  const char *addr = pn_terminus_get_address(rt);
  bool dynamic = pn_terminus_is_dynamic(rt);
  if (pn_terminus_get_type(rt) == PN_COORDINATOR) {
    hd_link_refuse(l, "amqp:not-implemented",
                   "transactions are not available on this broker; load the dedup module");
    return;
  }
  hd_node_type_t req = hd_link_capability_type(pn_terminus_capabilities(rt));
  hd_link_info_t info = {.size = sizeof info, .conn = &c->info, .name = pn_link_name(l),
                         .role = HD_ROLE_PRODUCER, .address = addr && *addr ? addr : NULL,
                         .dynamic = dynamic};
  if (hd_hooks_run(HD_PHASE_LINK_ATTACH, &info) == HD_VERDICT_DENY) {
    if (!info.refusal.condition) info.refusal.condition = "amqp:unauthorized-access";
    refuse_ref(l, &info.refusal);
    return;
  }
  hd_node_t *node = NULL;
  if (dynamic) {
    node = hd_addr_dynamic(req == HD_NODE_TOPIC ? HD_NODE_TOPIC : HD_NODE_QUEUE);
  } else if (addr && *addr) {
    hd_refusal_t ref = {0};
    if (hd_addr_resolve(addr, strlen(addr), HD_PURPOSE_PRODUCER, req, false, &node, &ref) != 0) {
      refuse_ref(l, &ref);
      return;
    }
  }
  hd_inlink_t *in = hd_xcalloc(1, sizeof *in);
  in->base = (hd_link_t){HD_LINK_IN, c, l};
  in->node = node;
  in->dynamic = dynamic;
  pn_link_set_context(l, &in->base);

  pn_terminus_copy(pn_link_source(l), pn_link_remote_source(l));
  pn_terminus_t *lt = pn_link_target(l);
  pn_terminus_copy(lt, rt);
  if (node) {
    if (dynamic) pn_terminus_set_address(lt, node->address);
    hd_link_set_capability(lt, node->type);
  }
  pn_link_set_snd_settle_mode(l, pn_link_remote_snd_settle_mode(l));
  pn_link_set_rcv_settle_mode(l, pn_link_remote_rcv_settle_mode(l));
  pn_link_set_max_message_size(l, (uint64_t)hd_server_settings()->max_message_size);
  pn_link_open(l);
  HD_LOG(HD_LOG_DEBUG, "core", "connection %" PRIu64 ", producer link '%s' attached to %s", c->id,
         pn_link_name(l), node ? node->address : "the anonymous relay");
  hd_inlink_resume(&in->base);
}

void hd_inlink_cleanup(hd_link_t *lk) {
  hd_inlink_t *in = (hd_inlink_t *)lk;
  /* The store will still report; the delivery goes with the link. */
  for (hd_pending_t *p = in->pending, *next; p; p = next) {
    next = p->next;
    p->in = NULL;
    p->d = NULL;
    p->prev = p->next = NULL;
  }
  in->pending = NULL;
  /* Drop half-received messages. */
  for (pn_delivery_t *d = pn_unsettled_head(lk->pn); d; d = pn_unsettled_next(d)) {
    partial_t *p = pn_delivery_get_context(d);
    if (p) {
      free(p->buf);
      free(p);
      pn_delivery_set_context(d, NULL);
    }
  }
  if (in->dynamic && in->node) hd_addr_remove(in->node);
  hd_node_unref(in->node);
  hd_node_unref(in->relay_node);
  free(in->relay_addr);
  free(in);
}

/* Give credit back up to the window, unless memory is over the limit. */
void hd_inlink_resume(hd_link_t *lk) {
  hd_inlink_t *in = (hd_inlink_t *)lk;
  const hd_settings_t *st = hd_server_settings();
  if (hd_server_draining()) return; /* shutting down: no fresh credit */
  hd_store_t *store = hd_queues_store();
  if (hd_msg_mem_used() >= st->memory_limit || (store && hd_store_full(store))) {
    if (!in->blocked)
      HD_LOG(HD_LOG_DEBUG, "core", "connection %" PRIu64 ", producer link '%s' waits for memory",
             lk->conn->id, pn_link_name(lk->pn));
    in->blocked = true;
    hd_conn_flow_blocked(lk->conn);
    /* Memory may have come back before we registered; look again. */
    if (hd_msg_mem_used() < st->memory_limit && !(store && hd_store_full(store)))
      hd_server_request_resume();
    return;
  }
  in->blocked = false;
  int credit = pn_link_credit(lk->pn);
  int window = (int)st->credit_window;
  if (credit <= window / 2) pn_link_flow(lk->pn, window - credit);
}

static void settle(pn_link_t *l, pn_delivery_t *d, uint64_t outcome, const char *cond, const char *desc) {
  if (pn_delivery_settled(d)) { /* pre-settled: the sender wants no outcome */
    pn_delivery_settle(d);
    return;
  }
  if (cond) {
    pn_condition_t *c = pn_disposition_condition(pn_delivery_local(d));
    pn_condition_set_name(c, cond);
    pn_condition_set_description(c, desc);
  }
  pn_delivery_update(d, outcome);
  /* In rcv-settle-mode second the sender settles first; we settle on the
   * PN_DELIVERY event that tells us so. */
  if (pn_link_rcv_settle_mode(l) == PN_RCV_FIRST) pn_delivery_settle(d);
}

static void pending_settle(hd_work_t *w) {
  hd_pending_t *p = (hd_pending_t *)((char *)w - offsetof(hd_pending_t, work));
  hd_conn_t *c = p->conn;
  if (p->in) {
    hd_inlink_t *in = p->in;
    if (p->prev) p->prev->next = p->next; else in->pending = p->next;
    if (p->next) p->next->prev = p->prev;
    if (p->rc == 0)
      settle(in->base.pn, p->d, PN_ACCEPTED, NULL, NULL);
    else if (p->rc == HD_EFULL)
      settle(in->base.pn, p->d, PN_REJECTED, "amqp:resource-limit-exceeded",
             "the broker's disk is full; the message was not stored: retry later");
    else if (p->rc == HD_ENOTFOUND) /* deleted just after it arrived (queue_store.c) */
      settle(in->base.pn, p->d, PN_REJECTED, "amqp:resource-deleted",
             "the queue was deleted before the message was stored");
    else
      settle(in->base.pn, p->d, PN_REJECTED, "amqp:internal-error",
             "the broker could not store the message; see its log, retry later");
  }
  hd_conn_outstanding_done(c);
  hd_obj_free(p, sizeof *p);
  hd_conn_unref(c);
}

/* The connection closed (or has gone) before the outcome could be given. */
static void pending_forget(hd_work_t *w) {
  hd_pending_t *p = (hd_pending_t *)((char *)w - offsetof(hd_pending_t, work));
  hd_conn_t *c = p->conn;
  hd_obj_free(p, sizeof *p);
  hd_conn_unref(c);
}

static void pending_done(hd_deliver_cb_t *cb, int rc) {
  hd_pending_t *p = (hd_pending_t *)cb;
  p->rc = rc;
  if (!hd_conn_post(p->conn, &p->work)) pending_forget(&p->work); /* the connection has gone */
}

static hd_pending_t *pending_new(hd_inlink_t *in, pn_delivery_t *d) {
  hd_pending_t *p = hd_obj_alloc(sizeof *p);
  *p = (hd_pending_t){0};
  p->cb.done = pending_done;
  p->work.run = pending_settle;
  p->work.drop = pending_forget;
  p->conn = in->base.conn;
  hd_conn_ref(p->conn);
  p->in = in;
  p->d = d;
  p->next = in->pending;
  if (p->next) p->next->prev = p;
  in->pending = p;
  return p;
}

static void pending_drop(hd_pending_t *p) {
  hd_inlink_t *in = p->in;
  if (p->prev) p->prev->next = p->next; else in->pending = p->next;
  if (p->next) p->next->prev = p->prev;
  hd_conn_unref(p->conn);
  hd_obj_free(p, sizeof *p);
}

static hd_node_t *relay_target(hd_inlink_t *in, hd_msg_t *m, hd_refusal_t *ref) {
  const char *to = (const char *)m->buf + m->to_off;
  size_t len = m->to_len;
  if (in->relay_node && in->relay_len == len && memcmp(in->relay_addr, to, len) == 0 &&
      !atomic_load_explicit(&in->relay_node->deleted, memory_order_relaxed))
    return in->relay_node;
  hd_node_t *n = NULL;
  hd_node_type_t hint = m->jms_dest == 0 || m->jms_dest == 2   ? HD_NODE_QUEUE
                        : m->jms_dest == 1 || m->jms_dest == 3 ? HD_NODE_TOPIC
                                                               : HD_NODE_UNSPEC;
  if (hd_addr_resolve(to, len, HD_PURPOSE_RELAY, hint, false, &n, ref) != 0) return NULL;
  hd_node_unref(in->relay_node);
  free(in->relay_addr);
  in->relay_node = n;
  in->relay_addr = hd_xstrndup(to, len);
  in->relay_len = len;
  return n;
}

static void route(hd_inlink_t *in, pn_delivery_t *d, hd_msg_t *m) {
  pn_link_t *l = in->base.pn;
  const char *why;
  if (hd_msg_parse(m, HD_MSG_NOW, &why) != 0) {
    settle(l, d, PN_REJECTED, "amqp:decode-error", why);
    return;
  }
  hd_node_t *node = in->node;
  hd_refusal_t ref = {0};
  if (!node) {
    if (!m->to_len) {
      settle(l, d, PN_REJECTED, "amqp:precondition-failed",
             "a message on an anonymous-relay link needs a 'to' address in its properties");
      return;
    }
    if (!(node = relay_target(in, m, &ref))) {
      settle(l, d, PN_REJECTED, ref.condition ? ref.condition : "amqp:not-found", ref.description);
      return;
    }
  }
  /* An unsettled durable message to a durable queue is accepted only once
   * the store has it. */
  bool wait = !pn_delivery_settled(d) && (m->flags & HD_MSG_DURABLE) && hd_node_stores(node);
  hd_pending_t *p = wait ? pending_new(in, d) : NULL;
  int rc = hd_node_deliver(node, m, p ? &p->cb : NULL);
  if (rc == HD_PENDING) {
    in->base.conn->outstanding++;
    return;
  }
  if (p) pending_drop(p);
  if (rc == 0) {
    settle(l, d, PN_ACCEPTED, NULL, NULL);
  } else if (rc == HD_EFULL) {
    char desc[256];
    hd_fmt(desc, "queue '%s' is full (max-depth %" PRId64 "); consume from it or retry later",
           node->address, node->max_depth);
    settle(l, d, PN_REJECTED, "amqp:resource-limit-exceeded", desc);
  } else {
    char desc[256];
    hd_fmt(desc, "address '%s' was deleted", node->address);
    settle(l, d, PN_REJECTED, "amqp:resource-deleted", desc);
  }
}

static void too_big(hd_inlink_t *in, pn_delivery_t *d, size_t size) {
  char desc[160];
  hd_fmt(desc, "message of %zu bytes or more exceeds max-message-size (%" PRId64 ")", size,
         hd_server_settings()->max_message_size);
  pn_condition_t *c = pn_link_condition(in->base.pn);
  pn_condition_set_name(c, "amqp:link:message-size-exceeded");
  pn_condition_set_description(c, desc);
  pn_link_close(in->base.pn);
}

void hd_inlink_delivery(hd_link_t *lk, pn_delivery_t *d) {
  hd_inlink_t *in = (hd_inlink_t *)lk;
  pn_link_t *l = lk->pn;
  if (pn_delivery_local_state(d)) { /* answered; the sender now settles */
    if (pn_delivery_settled(d)) pn_delivery_settle(d);
    return;
  }
  partial_t *p = pn_delivery_get_context(d);
  /* After our close (or detach) nothing can be settled any more: taking
   * the message would store one its producer never hears about, and will
   * send again.  Leave it unsettled; the producer resends it elsewhere. */
  if ((pn_connection_state(lk->conn->pn) & PN_LOCAL_CLOSED) || (pn_link_state(l) & PN_LOCAL_CLOSED)) {
    char scratch[4096];
    while (pn_link_recv(l, scratch, sizeof scratch) > 0) {}
    if (p) free(p->buf), free(p);
    pn_delivery_set_context(d, NULL);
    if (!pn_delivery_partial(d)) pn_link_advance(l);
    return;
  }
  if (pn_delivery_aborted(d)) {
    if (p) free(p->buf), free(p);
    pn_delivery_set_context(d, NULL);
    pn_delivery_settle(d);
    hd_inlink_resume(lk);
    return;
  }
  if (!pn_delivery_readable(d)) return;
  size_t pending = pn_delivery_pending(d);
  size_t have = p ? p->len : 0;
  size_t max = (size_t)hd_server_settings()->max_message_size;
  if (have + pending > max) {
    too_big(in, d, have + pending);
    return;
  }
  if (pn_delivery_partial(d)) {
    if (!p) {
      p = hd_xcalloc(1, sizeof *p);
      pn_delivery_set_context(d, p);
    }
    if (p->len + pending > p->cap) {
      size_t cap = p->cap ? p->cap : 65536;
      while (cap < p->len + pending) cap *= 2;
      p->buf = hd_xrealloc(p->buf, cap);
      p->cap = cap;
    }
    ssize_t n = pn_link_recv(l, (char *)p->buf + p->len, pending);
    if (n > 0) p->len += (size_t)n;
    return;
  }
  hd_msg_t *m = hd_msg_alloc(have + pending);
  if (!m) {
    char scratch[4096];
    while (pn_link_recv(l, scratch, sizeof scratch) > 0) {}
    if (p) free(p->buf), free(p);
    pn_delivery_set_context(d, NULL);
    pn_link_advance(l);
    settle(l, d, PN_REJECTED, "amqp:resource-limit-exceeded", "the broker is out of memory");
    return;
  }
  if (p) memcpy(m->buf, p->buf, have);
  size_t got = have;
  while (got < m->len) {
    ssize_t n = pn_link_recv(l, (char *)m->buf + got, m->len - got);
    if (n <= 0) break;
    got += (size_t)n;
  }
  if (p) free(p->buf), free(p);
  pn_delivery_set_context(d, NULL);
  pn_link_advance(l);
  if (got != m->len)
    settle(l, d, PN_REJECTED, "amqp:decode-error", "message shorter than announced");
  else
    route(in, d, m);
  hd_msg_unref(m);
  hd_inlink_resume(lk);
}
