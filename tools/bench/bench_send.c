/* Sending links.  Each link holds one pre-encoded message and patches only
 * its 8-byte stamp before handing the bytes to proton: no allocation of
 * ours per message.
 *
 * Without --rate a link sends whenever it has credit and stamps the
 * current time.  With --rate message i of a link is due at
 *     first_due + i * interval
 * and carries that intended time, not the time it actually left: when the
 * broker withholds credit the schedule keeps running and the late messages
 * show the wait in their latency (no coordinated omission).  The pacer
 * thread wakes the connection when its next message falls due. */
#include "config.h"

#include <proton/delivery.h>
#include <proton/disposition.h>
#include <stdio.h>

#include "bench_clock.h"
#include "bench_run.h"

/* Messages one link sends per event before yielding, so that proton
 * writes them out (and the stamps stay close to the wire time) and other
 * links and connections of this thread get their turn. */
#define SEND_BATCH 256

void hb_send_setup_ct(hb_link_t *l) {
  hb_run_t *r = l->conn->run;
  if (hb_msg_build(&l->msg, r->o->body_size, r->o->durable, r->run_id))
    hb_conn_fail_ct(l->conn, "cannot encode a %zu-byte message", r->o->body_size);
}

static void check_finished_ct(hb_link_t *l) {
  if (l->finished || l->done < l->share) return;
  if (!l->conn->run->o->presettled && l->settled < l->done) return;
  l->finished = true;
  hb_bump(&l->conn->counts.links_done);
}

static void send_one_ct(hb_link_t *l, uint64_t due, uint64_t now) {
  hb_conn_t *c = l->conn;
  hb_msg_stamp(&l->msg, (uint64_t)((int64_t)due + c->run->wall_minus_mono));
  uint64_t tag = l->tag++;
  pn_delivery_t *d = pn_delivery(l->pn, pn_dtag((const char *)&tag, sizeof tag));
  pn_link_send(l->pn, (const char *)l->msg.bytes, l->msg.size);
  pn_link_advance(l->pn);
  if (c->run->o->presettled) pn_delivery_settle(d);
  l->done++;
  c->last_send_ns = now;
  hb_bump(&c->counts.sent);
}

void hb_send_run_ct(hb_conn_t *c) {
  hb_run_t *r = c->run;
  if (c->closing || !atomic_load_explicit(&r->go, memory_order_acquire)) return;
  const bool paced = r->o->rate > 0, stop = atomic_load(&r->stop_sending);
  uint64_t now = hb_mono_ns(), next_due = HB_NO_LIMIT;
  bool more = false;

  for (unsigned i = 0; i < c->nlinks; i++) {
    hb_link_t *l = &c->links[i];
    if (!l->ready || l->finished) continue;
    if (stop && l->share > l->done) l->share = l->done;
    if (paced && !l->first_due) {
      l->interval_ns = 1e9 * r->send_links / r->o->rate;
      l->first_due = r->go_ns + (uint64_t)(1e9 * l->index / r->o->rate);
    }
    for (unsigned sent = 0; l->done < l->share && pn_link_credit(l->pn) > 0; sent++) {
      uint64_t due = now;
      if (paced) {
        due = l->first_due + (uint64_t)((double)l->done * l->interval_ns);
        if (due > now && due > (now = hb_mono_ns())) {
          if (due < next_due) next_due = due;
          break;
        }
      } else {
        due = now = hb_mono_ns();
      }
      if (sent == SEND_BATCH) {
        more = true;
        break;
      }
      send_one_ct(l, due, now);
    }
    check_finished_ct(l);
  }
  if (paced) {
    atomic_store(&c->next_due, next_due);
    hb_pacer_note_due(r, next_due);
  }
  if (more) hb_conn_wake(c);
}

void hb_send_outcome_ct(hb_link_t *l, pn_delivery_t *d) {
  hb_conn_t *c = l->conn;
  uint64_t state = pn_delivery_remote_state(d);
  bool terminal =
      state == PN_ACCEPTED || state == PN_REJECTED || state == PN_RELEASED || state == PN_MODIFIED;
  if (!terminal && !pn_delivery_settled(d)) return; /* nothing final yet */
  switch (state) {
  case PN_ACCEPTED: hb_bump(&c->counts.accepted); break;
  case PN_REJECTED:
    if (!c->first_reject[0]) {
      pn_condition_t *cond = pn_disposition_condition(pn_delivery_remote(d));
      const char *name = pn_condition_get_name(cond), *desc = pn_condition_get_description(cond);
      snprintf(c->first_reject, sizeof c->first_reject, "%s%s%s", name ? name : "no condition",
               desc && *desc ? ": " : "", desc && *desc ? desc : "");
    }
    hb_bump(&c->counts.rejected);
    break;
  default: /* released, modified, or settled with no outcome: not stored */
    hb_bump(&c->counts.released);
    break;
  }
  pn_delivery_settle(d);
  l->settled++;
  c->last_settle_ns = hb_mono_ns();
  check_finished_ct(l);
}
