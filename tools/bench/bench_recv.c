/* Receiving links: keep a credit window open, read each message (frames
 * of a large one are assembled in a per-link buffer that only grows),
 * find its stamp, record the latency, accept. */
#include "config.h"

#include <proton/delivery.h>
#include <proton/disposition.h>
#include <stdlib.h>
#include <string.h>

#include "bench_clock.h"
#include "bench_run.h"

/* Tops the credit up to the window once half of it is used, never past
 * the link's share: a receiver with a count takes exactly that many
 * messages off the queue, even when several links compete. */
static void top_up_ct(hb_link_t *l) {
  uint64_t window = l->conn->run->o->credit;
  uint64_t remaining = l->share == HB_NO_LIMIT ? HB_NO_LIMIT : l->share - l->done;
  int target = (int)(remaining < window ? remaining : window);
  int credit = pn_link_credit(l->pn);
  if (target > credit && credit <= target / 2) pn_link_flow(l->pn, target - credit);
}

void hb_recv_setup_ct(hb_link_t *l) {
  /* More links than messages: some have nothing to wait for. */
  if (l->share == 0) {
    l->finished = true;
    hb_bump(&l->conn->counts.links_done);
  }
  top_up_ct(l);
}

static bool reserve(hb_link_t *l, size_t need) {
  if (need <= l->buf_cap) return true;
  size_t cap = l->buf_cap ? l->buf_cap : 4096;
  while (cap < need)
    cap *= 2;
  uint8_t *p = realloc(l->buf, cap);
  if (!p) return false;
  l->buf = p;
  l->buf_cap = cap;
  return true;
}

static void record_ct(hb_link_t *l, uint64_t now) {
  hb_conn_t *c = l->conn;
  hb_run_t *r = c->run;
  uint64_t stamp, run;
  bool stamped = hb_msg_scan(l->buf, l->buf_len, &stamp, &run);
  /* Alone, a receiver takes whatever it finds; next to our own senders only
   * this run's messages count, so leftovers cannot fake a complete run. */
  bool ours = r->o->mode == HB_MODE_RECEIVE || (stamped && run == r->run_id);
  if (!ours) {
    hb_bump(&c->counts.foreign);
    return;
  }
  if (stamped) {
    int64_t lat = (int64_t)(now + (uint64_t)r->wall_minus_mono) - (int64_t)stamp;
    hb_hist_record(c->hist, lat > 0 ? (uint64_t)lat : 0);
  }
  if (!c->last_recv_ns) c->first_recv_ns = now;
  c->last_recv_ns = now;
  l->done++;
  hb_bump(&c->counts.received);
}

void hb_recv_delivery_ct(hb_link_t *l, pn_delivery_t *d) {
  if (pn_delivery_aborted(d)) {
    l->buf_len = 0;
    pn_delivery_settle(d);
    top_up_ct(l);
    return;
  }
  if (!pn_delivery_readable(d)) return;
  for (;;) {
    size_t want = pn_delivery_pending(d);
    if (want < 4096) want = 4096;
    if (!reserve(l, l->buf_len + want)) {
      hb_conn_fail_ct(l->conn, "out of memory reading a message on link '%s'", l->name);
      return;
    }
    ssize_t n = pn_link_recv(l->pn, (char *)l->buf + l->buf_len, l->buf_cap - l->buf_len);
    if (n <= 0) break;
    l->buf_len += (size_t)n;
  }
  if (pn_delivery_partial(d)) return;

  record_ct(l, hb_mono_ns());
  l->buf_len = 0;
  if (!pn_delivery_settled(d)) pn_delivery_update(d, PN_ACCEPTED);
  pn_link_advance(l->pn);
  pn_delivery_settle(d);
  if (!l->finished && l->done >= l->share) {
    l->finished = true;
    hb_bump(&l->conn->counts.links_done);
  }
  top_up_ct(l);
}
