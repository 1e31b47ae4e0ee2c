/* One connection: set-up on the main thread, then its events on whichever
 * worker thread the proactor picks (one at a time).  Errors are recorded
 * once per connection and raise the run's `failed` flag; the controller
 * then closes everything. */
#include "config.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <proton/condition.h>
#include <proton/delivery.h>
#include <proton/sasl.h>
#include <proton/session.h>
#include <proton/terminus.h>
#include <proton/transport.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_run.h"

int hb_conn_start_main(hb_run_t *r, hb_conn_t *c, char *err, size_t errlen) {
  const hb_url_t *u = &r->o->url;
  pn_connection_t *pc = pn_connection();
  pn_transport_t *t = pn_transport();
  if (!pc || !t) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  char container[64];
  snprintf(container, sizeof container, "hadron-bench-%016" PRIx64, r->run_id);
  pn_connection_set_container(pc, container);
  pn_connection_set_hostname(pc, u->host);
  pn_connection_set_context(pc, c);
  pn_sasl_t *sasl = pn_sasl(t);
  if (u->has_user) {
    pn_connection_set_user(pc, u->user);
    if (u->has_password) pn_connection_set_password(pc, u->password);
    /* A user in the URL means PLAIN, also over plain TCP: a benchmark
     * usually runs on a trusted network and the user asked for it. */
    pn_sasl_allowed_mechs(sasl, "PLAIN");
    pn_sasl_set_allow_insecure_mechs(sasl, true);
  }
  if (u->tls) {
    pn_ssl_t *ssl = pn_ssl(t);
    if (!ssl || pn_ssl_init(ssl, r->ssl, NULL) || pn_ssl_set_peer_hostname(ssl, u->host)) {
      snprintf(err, errlen, "cannot set up TLS for connection %u", c->id);
      pn_transport_free(t);
      pn_connection_free(pc);
      return -1;
    }
  }
  char addr[PN_MAX_ADDR];
  pn_proactor_addr(addr, sizeof addr, u->host, u->port);
  c->pn = pc;
  atomic_fetch_add(&r->conns_open, 1);
  pn_proactor_connect2(r->proactor, pc, t, addr);
  return 0;
}

void hb_conn_wake(hb_conn_t *c) {
  if (atomic_exchange(&c->wake_pending, true)) return;
  pthread_mutex_lock(&c->lock);
  /* pn is NULL when the run failed before this connection was started. */
  if (c->pn && !c->transport_closed) pn_connection_wake(c->pn);
  pthread_mutex_unlock(&c->lock);
}

void hb_conn_free_main(hb_conn_t *c) {
  for (unsigned i = 0; i < c->nlinks; i++) {
    hb_msg_free(&c->links[i].msg);
    free(c->links[i].buf);
  }
  free(c->links);
  free(c->hist);
  pthread_mutex_destroy(&c->lock);
}

static void close_ct(hb_conn_t *c) {
  if (c->closing) return;
  c->closing = true;
  if (!(pn_connection_state(c->pn) & PN_LOCAL_CLOSED)) pn_connection_close(c->pn);
}

void hb_conn_fail_ct(hb_conn_t *c, const char *fmt, ...) {
  if (!c->error[0]) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof c->error, fmt, ap);
    va_end(ap);
  }
  atomic_store(&c->run->failed, true);
  close_ct(c);
}

static bool is_ip_literal(const char *host) {
  unsigned char addr[16];
  return inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
}

/* "name: description", "name", or a fallback when the peer gave none. */
static const char *cond_text(pn_condition_t *cond, char *buf, size_t len, const char *fallback) {
  if (!cond || !pn_condition_is_set(cond)) return fallback;
  const char *name = pn_condition_get_name(cond), *desc = pn_condition_get_description(cond);
  snprintf(buf, len, "%s%s%s", name ? name : "error", desc && *desc ? ": " : "",
           desc && *desc ? desc : "");
  return buf;
}

static void setup_link_ct(hb_conn_t *c, pn_session_t *ssn, hb_link_t *l) {
  const hb_opts_t *o = c->run->o;
  l->pn = c->sender ? pn_sender(ssn, l->name) : pn_receiver(ssn, l->name);
  pn_link_set_context(l->pn, l);
  pn_terminus_t *node = c->sender ? pn_link_target(l->pn) : pn_link_source(l->pn);
  pn_terminus_set_address(node, o->address);
  if (o->durable) pn_terminus_set_durability(node, PN_CONFIGURATION);
  /* On a receiver the sender settle mode asks the broker to deliver
   * presettled; on a sender it announces what we do. */
  pn_link_set_snd_settle_mode(l->pn, o->presettled ? PN_SND_SETTLED : PN_SND_UNSETTLED);
  pn_link_set_rcv_settle_mode(l->pn, PN_RCV_FIRST);
  if (c->sender) hb_send_setup_ct(l);
  pn_link_open(l->pn);
  if (!c->sender) hb_recv_setup_ct(l);
}

static void open_ct(hb_conn_t *c) {
  pn_connection_open(c->pn);
  pn_session_t *ssn = pn_session(c->pn);
  pn_session_open(ssn);
  for (unsigned i = 0; i < c->nlinks; i++)
    setup_link_ct(c, ssn, &c->links[i]);
}

static void link_opened_ct(hb_conn_t *c, hb_link_t *l) {
  /* A broker that refuses a link still answers the attach, with no
   * terminus, and then detaches with the reason: wait for that. */
  pn_terminus_t *node = c->sender ? pn_link_remote_target(l->pn) : pn_link_remote_source(l->pn);
  if (l->ready || pn_terminus_get_type(node) == PN_UNSPECIFIED) return;
  l->ready = true;
  hb_bump(&c->counts.links_ready);
}

/* `what` names no connection or link id, so that N links refused for one
 * reason make one line in the report. */
static void remote_closed_ct(hb_conn_t *c, const char *what, bool refused, pn_condition_t *cond) {
  char buf[HB_ERROR_MAX - 64];
  if (c->closing && !pn_condition_is_set(cond)) return;
  hb_conn_fail_ct(c, "%s %s by the broker: %s", what, refused ? "refused" : "closed",
                  cond_text(cond, buf, sizeof buf, "no reason given"));
}

void hb_conn_handle_ct(pn_event_t *e) {
  pn_connection_t *pc = pn_event_connection(e);
  hb_conn_t *c = pc ? pn_connection_get_context(pc) : NULL;
  if (!c) return;
  const hb_opts_t *o = c->run->o;
  pn_link_t *pl = pn_event_link(e);
  hb_link_t *l = pl ? pn_link_get_context(pl) : NULL;
  char buf[HB_ERROR_MAX - 128], what[320];

  switch (pn_event_type(e)) {
  case PN_CONNECTION_INIT: open_ct(c); break;

  case PN_CONNECTION_WAKE:
    /* Clear first: a wake posted while we work must not be lost. */
    atomic_store(&c->wake_pending, false);
    if (atomic_load(&c->run->closing))
      close_ct(c);
    else if (c->sender)
      hb_send_run_ct(c);
    break;

  case PN_LINK_REMOTE_OPEN:
    if (l) link_opened_ct(c, l);
    if (l && c->sender) hb_send_run_ct(c);
    break;

  case PN_LINK_FLOW:
    if (l && c->sender) hb_send_run_ct(c);
    break;

  case PN_DELIVERY:
    if (!l) break;
    if (c->sender)
      hb_send_outcome_ct(l, pn_event_delivery(e));
    else
      hb_recv_delivery_ct(l, pn_event_delivery(e));
    break;

  case PN_LINK_REMOTE_CLOSE:
  case PN_LINK_REMOTE_DETACH:
    if (!l) break;
    snprintf(what, sizeof what, "%s link %s '%.240s'", c->sender ? "sending" : "receiving",
             c->sender ? "to" : "from", o->address);
    /* Before the run started this can only be the answer to our attach. */
    remote_closed_ct(c, what, !atomic_load(&c->run->go), pn_link_remote_condition(pl));
    if (!(pn_link_state(pl) & PN_LOCAL_CLOSED)) pn_link_close(pl);
    break;

  case PN_SESSION_REMOTE_CLOSE:
    remote_closed_ct(c, "session", false, pn_session_remote_condition(pn_event_session(e)));
    break;

  case PN_CONNECTION_REMOTE_CLOSE:
    snprintf(what, sizeof what, "connection to %s:%s", o->url.host, o->url.port);
    remote_closed_ct(c, what, false, pn_connection_remote_condition(pc));
    close_ct(c);
    break;

  case PN_TRANSPORT_ERROR:
    if (!c->closing) {
      const char *text = cond_text(pn_transport_condition(pn_event_transport(e)), buf, sizeof buf,
                                   "unknown error");
      hb_conn_fail_ct(
          c, "connection to %s:%s failed: %s%s", o->url.host, o->url.port, text,
          o->url.tls && is_ip_literal(o->url.host) && strstr(text, "certificate verify failed")
              ? " (proton matches only the DNS names of a certificate: connect by host name, "
                "e.g. localhost)"
              : "");
    }
    break;

  case PN_TRANSPORT_CLOSED:
    pthread_mutex_lock(&c->lock);
    c->transport_closed = true;
    pthread_mutex_unlock(&c->lock);
    if (!c->closing)
      hb_conn_fail_ct(c, "connection to %s:%s closed unexpectedly: %s", o->url.host, o->url.port,
                      cond_text(pn_transport_condition(pn_event_transport(e)), buf, sizeof buf,
                                "no reason given"));
    atomic_fetch_sub(&c->run->conns_open, 1);
    break;

  default: break;
  }
}
