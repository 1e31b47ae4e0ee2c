/* Connection lifecycle: accept, limits, open (with module hooks), sessions,
 * cross-thread work, teardown; and the registry of live connections. */
#include "config.h"

#include "conn.h"

#include <inttypes.h>
#include <proton/codec.h>
#include <proton/condition.h>
#include <proton/netaddr.h>
#include <proton/sasl.h>
#include <proton/session.h>
#include <proton/ssl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hooks.h"
#include "link.h"
#include "log.h"
#include "sasl.h"
#include "util.h"

/* ---- registry ------------------------------------------------------------ */

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static hd_conn_t *reg_head;
static size_t reg_count;
static _Atomic uint64_t next_id = 1;

static void reg_add(hd_conn_t *c) {
  pthread_mutex_lock(&reg_lock);
  c->reg_next = reg_head;
  if (reg_head) reg_head->reg_prev = c;
  reg_head = c;
  reg_count++;
  pthread_mutex_unlock(&reg_lock);
}

static void reg_del(hd_conn_t *c) {
  pthread_mutex_lock(&reg_lock);
  if (c->reg_prev) c->reg_prev->reg_next = c->reg_next; else reg_head = c->reg_next;
  if (c->reg_next) c->reg_next->reg_prev = c->reg_prev;
  reg_count--;
  pthread_mutex_unlock(&reg_lock);
}

size_t hd_conns_count(void) {
  pthread_mutex_lock(&reg_lock);
  size_t n = reg_count;
  pthread_mutex_unlock(&reg_lock);
  return n;
}

void hd_conns_drain(void) {
  pthread_mutex_lock(&reg_lock);
  for (hd_conn_t *c = reg_head; c; c = c->reg_next) hd_conn_post(c, &c->drain_work);
  pthread_mutex_unlock(&reg_lock);
}

void hd_conn_flow_blocked(hd_conn_t *c) {
  pthread_mutex_lock(&reg_lock);
  c->flow_blocked = true;
  pthread_mutex_unlock(&reg_lock);
}

void hd_conns_resume_flow(void) {
  pthread_mutex_lock(&reg_lock);
  for (hd_conn_t *c = reg_head; c; c = c->reg_next)
    if (c->flow_blocked) {
      c->flow_blocked = false;
      hd_conn_post(c, &c->flow_work);
    }
  pthread_mutex_unlock(&reg_lock);
}

/* ---- work items ---------------------------------------------------------- */

bool hd_conn_post(hd_conn_t *c, hd_work_t *w) {
  pthread_mutex_lock(&c->lock);
  bool alive = c->alive;
  if (!w->queued && c->alive) {
    w->queued = true;
    w->next = NULL;
    bool was_empty = !c->work_head;
    if (c->work_tail) c->work_tail->next = w; else c->work_head = w;
    c->work_tail = w;
    /* One wake per batch: the owner drains the whole list. */
    if (was_empty) pn_connection_wake(c->pn);
  }
  pthread_mutex_unlock(&c->lock);
  return alive;
}

void hd_conn_ref(hd_conn_t *c) { atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed); }

void hd_conn_unref(hd_conn_t *c) {
  if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1) return;
  pthread_mutex_destroy(&c->lock);
  free(c->user);
  free(c->container);
  free(c->tls_subject);
  free(c);
}

void hd_conn_unpost(hd_conn_t *c, hd_work_t *w) {
  pthread_mutex_lock(&c->lock);
  if (w->queued) {
    hd_work_t **p = &c->work_head, *prev = NULL;
    while (*p && *p != w) prev = *p, p = &(*p)->next;
    if (*p) {
      *p = w->next;
      if (c->work_tail == w) c->work_tail = prev;
    }
    w->queued = false;
  }
  pthread_mutex_unlock(&c->lock);
}

static void run_work(hd_conn_t *c) {
  /* Bounded, so a connection fed by busy producers elsewhere still lets its
   * other events through; what is left wakes us again. */
  for (int i = 0; i < 256; i++) {
    pthread_mutex_lock(&c->lock);
    hd_work_t *w = c->work_head;
    if (!w) {
      pthread_mutex_unlock(&c->lock);
      return;
    }
    c->work_head = w->next;
    if (!c->work_head) c->work_tail = NULL;
    w->queued = false;
    pthread_mutex_unlock(&c->lock);
    w->run(w);
  }
  pthread_mutex_lock(&c->lock);
  if (c->work_head && c->alive) pn_connection_wake(c->pn);
  pthread_mutex_unlock(&c->lock);
}

static void drain_run(hd_work_t *w) {
  hd_conn_t *c = (hd_conn_t *)((char *)w - offsetof(hd_conn_t, drain_work));
  if (c->outstanding) { /* let the store settle what producers sent first */
    c->drain_waiting = true;
    return;
  }
  pn_condition_t *cond = pn_connection_condition(c->pn);
  pn_condition_set_name(cond, "amqp:connection:forced");
  pn_condition_set_description(cond, "the broker is shutting down; reconnect to another broker or retry later");
  pn_connection_close(c->pn);
}

/* A peer that never finished the handshake: drop the socket (there is no
 * AMQP connection to send a close on). */
static void abort_run(hd_work_t *w) {
  hd_conn_t *c = (hd_conn_t *)((char *)w - offsetof(hd_conn_t, abort_work));
  if (c->opened) return;
  pn_condition_t *cond = pn_transport_condition(c->transport);
  if (!pn_condition_is_set(cond)) {
    pn_condition_set_name(cond, "amqp:resource-limit-exceeded");
    pn_condition_set_description(cond, "no AMQP open within handshake-timeout");
  }
  pn_transport_close_tail(c->transport);
  pn_transport_close_head(c->transport);
}

void hd_conns_check_handshakes(uint64_t now_ms) {
  pthread_mutex_lock(&reg_lock);
  for (hd_conn_t *c = reg_head; c; c = c->reg_next) {
    uint32_t limit = c->listener->conf->handshake_timeout_ms;
    if (!c->opened && limit && now_ms - c->accepted_ms > limit) hd_conn_post(c, &c->abort_work);
  }
  pthread_mutex_unlock(&reg_lock);
}

void hd_conn_outstanding_done(hd_conn_t *c) {
  if (--c->outstanding == 0 && c->drain_waiting) {
    c->drain_waiting = false;
    drain_run(&c->drain_work);
  }
}

static void flow_run(hd_work_t *w) {
  hd_conn_t *c = (hd_conn_t *)((char *)w - offsetof(hd_conn_t, flow_work));
  hd_link_resume_producers(c);
}

/* ---- accept --------------------------------------------------------------- */

void hd_conn_accept(hd_listener_t *l) {
  const hd_settings_t *st = hd_server_settings();
  const hd_listener_conf_t *lc = l->conf;
  hd_conn_t *c = hd_xcalloc(1, sizeof *c);
  atomic_init(&c->refs, 1);
  c->id = atomic_fetch_add(&next_id, 1);
  c->listener = l;
  pthread_mutex_init(&c->lock, NULL);
  c->alive = true;
  c->accepted_ms = hd_now_mono_ms();
  c->flow_work.run = flow_run;
  c->abort_work.run = abort_run;
  c->drain_work.run = drain_run;
  snprintf(c->remote, sizeof c->remote, "?");
  c->pn = pn_connection();
  pn_connection_set_context(c->pn, c);
  pn_connection_set_container(c->pn, "hadron");
  c->transport = pn_transport();
  pn_transport_set_server(c->transport);
  pn_transport_set_max_frame(c->transport, lc->max_frame_size);
  pn_transport_set_channel_max(c->transport, lc->channel_max);
  pn_transport_set_idle_timeout(c->transport, lc->idle_timeout_ms);
  if (l->ssl) pn_ssl_init(pn_ssl(c->transport), l->ssl, NULL);
  hd_sasl_setup(c, c->transport);

  unsigned n = atomic_fetch_add(&l->conns, 1) + 1;
  size_t total = hd_conns_count() + 1;
  if (total > st->max_connections) {
    c->refuse_cond = "amqp:resource-limit-exceeded";
    hd_fmt(c->refuse_desc, "the broker has reached max-connections (%u); retry later", st->max_connections);
  } else if (lc->max_connections && n > lc->max_connections) {
    c->refuse_cond = "amqp:resource-limit-exceeded";
    hd_fmt(c->refuse_desc, "listener '%s' has reached max-connections (%u); retry later", lc->name,
           lc->max_connections);
  }
  reg_add(c);
  pn_listener_accept2(l->pn, c->pn, c->transport);
}

/* ---- open ------------------------------------------------------------------ */

static void set_properties(pn_connection_t *pc) {
  pn_data_t *p = pn_connection_properties(pc);
  pn_data_put_map(p);
  pn_data_enter(p);
  pn_data_put_symbol(p, pn_bytes(7, "product"));
  pn_data_put_string(p, pn_bytes(6, "hadron"));
  pn_data_put_symbol(p, pn_bytes(7, "version"));
  pn_data_put_string(p, pn_bytes(strlen(PACKAGE_VERSION), PACKAGE_VERSION));
  pn_data_exit(p);
  /* Anonymous relay: one sender link can reach any address via 'to'. */
  pn_data_t *caps = pn_connection_offered_capabilities(pc);
  pn_data_put_array(caps, false, PN_SYMBOL);
  pn_data_enter(caps);
  pn_data_put_symbol(caps, pn_bytes(15, "ANONYMOUS-RELAY"));
  pn_data_exit(caps);
}

static void close_with(hd_conn_t *c, const char *cond, const char *desc) {
  pn_condition_t *pc = pn_connection_condition(c->pn);
  pn_condition_set_name(pc, cond);
  pn_condition_set_description(pc, desc);
  pn_connection_open(c->pn); /* a refusal is an open followed by a close */
  pn_connection_close(c->pn);
  HD_LOG(HD_LOG_NOTICE, "core", "connection %" PRIu64 " from %s, refused: %s: %s", c->id, c->remote,
         cond, desc);
}

static void on_remote_open(hd_conn_t *c) {
  pn_transport_t *t = c->transport;
  c->opened = true;
  const char *cid = pn_connection_remote_container(c->pn);
  c->container = hd_xstrdup(cid ? cid : "");
  const char *user = pn_transport_get_user(t);
  c->user = hd_xstrdup(user ? user : "anonymous");
  const char *subject = c->listener->ssl ? pn_ssl_get_remote_subject(pn_ssl(t)) : NULL;
  c->tls_subject = subject ? hd_xstrdup(subject) : NULL;
  c->info = (hd_conn_info_t){.size = sizeof c->info, .id = c->id, .listener = c->listener->conf->name,
                             .remote = c->remote, .container = c->container, .user = c->user,
                             .mechanism = pn_sasl_get_mech(pn_sasl(t)), .tls = c->listener->ssl != NULL,
                             .tls_subject = c->tls_subject};
  if (c->refuse_cond) return close_with(c, c->refuse_cond, c->refuse_desc);
  if (!pn_transport_is_authenticated(t) && !(c->listener->conf->mechs & HD_MECH_ANONYMOUS))
    return close_with(c, "amqp:unauthorized-access",
                      "this listener requires SASL authentication; connect with a user name and password or a client certificate");
  if (hd_server_draining())
    return close_with(c, "amqp:connection:forced", "the broker is shutting down; retry later");
  hd_phase_t phases[2] = {HD_PHASE_CONN_OPEN, HD_PHASE_CONN_AUTH};
  for (int i = 0; i < 2; i++) {
    if (hd_hooks_run(phases[i], &c->info) == HD_VERDICT_DENY) {
      const char *cond = c->info.refusal.condition ? c->info.refusal.condition : "amqp:unauthorized-access";
      const char *desc = c->info.refusal.description[0] ? c->info.refusal.description : "refused by policy";
      return close_with(c, cond, desc);
    }
  }
  set_properties(c->pn);
  pn_connection_open(c->pn);
  HD_LOG(HD_LOG_INFO, "core", "connection %" PRIu64 " from %s, open: user '%s'%s%s, container '%s'",
         c->id, c->remote, c->user, c->info.mechanism ? " via " : "",
         c->info.mechanism ? c->info.mechanism : "", c->container);
}

/* ---- sessions ------------------------------------------------------------- */

#define SESSION_COUNTED ((void *)1)

static void on_session_open(hd_conn_t *c, pn_session_t *s) {
  if (c->sessions >= c->listener->conf->max_sessions) {
    char desc[160];
    hd_fmt(desc, "this connection already has %u sessions (max-sessions); end one first", c->sessions);
    pn_session_open(s);
    pn_condition_set_name(pn_session_condition(s), "amqp:resource-limit-exceeded");
    pn_condition_set_description(pn_session_condition(s), desc);
    pn_session_close(s);
    return;
  }
  c->sessions++;
  pn_session_set_context(s, SESSION_COUNTED);
  pn_session_open(s);
}

static void on_session_close(hd_conn_t *c, pn_session_t *s) {
  /* Ending a session detaches its links without per-link events. */
  for (pn_link_t *l = pn_link_head(c->pn, 0); l; l = pn_link_next(l, 0))
    if (pn_link_session(l) == s) {
      hd_link_cleanup(l);
      if (!(pn_link_state(l) & PN_LOCAL_CLOSED)) pn_link_close(l);
    }
  if (pn_session_get_context(s) == SESSION_COUNTED) {
    c->sessions--;
    pn_session_set_context(s, NULL);
  }
  pn_session_close(s);
}

/* ---- teardown ------------------------------------------------------------- */

static void on_transport_closed(hd_conn_t *c) {
  for (pn_link_t *l = pn_link_head(c->pn, 0); l; l = pn_link_next(l, 0)) hd_link_cleanup(l);
  pthread_mutex_lock(&c->lock);
  c->alive = false;
  hd_work_t *left = c->work_head; /* posted, not yet run: nobody else holds them now */
  c->work_head = c->work_tail = NULL;
  pthread_mutex_unlock(&c->lock);
  for (hd_work_t *w = left, *next; w; w = next) {
    next = w->next;
    w->queued = false;
    if (w->drop) w->drop(w); /* may drop a reference to c; the transport's is still held */
  }
  reg_del(c);
  atomic_fetch_sub(&c->listener->conns, 1);
  pn_condition_t *cond = pn_transport_condition(c->transport);
  if (pn_condition_is_set(cond))
    HD_LOG(HD_LOG_INFO, "core", "connection %" PRIu64 " from %s, closed: %s: %s", c->id, c->remote,
           pn_condition_get_name(cond), pn_condition_get_description(cond) ? pn_condition_get_description(cond) : "");
  else
    HD_LOG(HD_LOG_INFO, "core", "connection %" PRIu64 " from %s, closed", c->id, c->remote);
  pn_connection_set_context(c->pn, NULL);
  c->pn = NULL;
  c->transport = NULL;
  hd_conn_unref(c);
}

/* ---- events ---------------------------------------------------------------- */

void hd_conn_event(pn_event_t *e) {
  pn_connection_t *pc = pn_event_connection(e);
  hd_conn_t *c = pc ? pn_connection_get_context(pc) : NULL;
  if (!c) return;
  switch (pn_event_type(e)) {
  case PN_CONNECTION_BOUND: {
    const pn_netaddr_t *a = pn_transport_remote_addr(c->transport);
    if (a) pn_netaddr_str(a, c->remote, sizeof c->remote);
    break;
  }
  case PN_CONNECTION_REMOTE_OPEN: on_remote_open(c); break;
  case PN_CONNECTION_REMOTE_CLOSE:
    if (!(pn_connection_state(pc) & PN_LOCAL_CLOSED)) pn_connection_close(pc);
    break;
  case PN_SESSION_REMOTE_OPEN:
    if (!(pn_session_state(pn_event_session(e)) & PN_LOCAL_ACTIVE)) on_session_open(c, pn_event_session(e));
    break;
  case PN_SESSION_REMOTE_CLOSE: on_session_close(c, pn_event_session(e)); break;
  case PN_LINK_REMOTE_OPEN:
    if (!(pn_link_state(pn_event_link(e)) & (PN_LOCAL_ACTIVE | PN_LOCAL_CLOSED)))
      hd_link_remote_open(c, pn_event_link(e));
    break;
  case PN_LINK_REMOTE_CLOSE:
  case PN_LINK_REMOTE_DETACH: {
    pn_link_t *l = pn_event_link(e);
    hd_link_cleanup(l);
    /* Answer a detach with a detach and a close with a close. */
    if (!(pn_link_state(l) & PN_LOCAL_CLOSED)) {
      if (pn_event_type(e) == PN_LINK_REMOTE_DETACH)
        pn_link_detach(l);
      else
        pn_link_close(l);
    }
    break;
  }
  case PN_LINK_FLOW: hd_link_flow(pn_event_link(e)); break;
  case PN_DELIVERY: hd_link_delivery(pn_event_delivery(e)); break;
  case PN_CONNECTION_WAKE: run_work(c); break;
  case PN_TRANSPORT_TAIL_CLOSED:
    /* End of stream.  proton waits for the rest of a half-received frame
     * forever, so finish the transport ourselves. */
    /* Only when the peer vanished without a close frame and proton found
     * no error of its own: after a close, or a protocol error, our close
     * frame (or protocol header) must still go out. */
    if (!pn_transport_head_closed(c->transport) && !(pn_connection_state(c->pn) & PN_REMOTE_CLOSED) &&
        !pn_condition_is_set(pn_transport_condition(c->transport))) {
      pn_condition_t *cond = pn_transport_condition(c->transport);
      pn_condition_set_name(cond, "amqp:connection:framing-error");
      pn_condition_set_description(cond, "connection aborted by the peer");
      pn_transport_close_head(c->transport);
    }
    break;
  case PN_TRANSPORT_CLOSED: on_transport_closed(c); break;
  default: break;
  }
}
