/* The controller: builds the connections, runs the worker threads (and the
 * pacer with --rate), decides when the run is over, prints progress, and
 * gathers the result once every thread has stopped. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "bench_clock.h"
#include "bench_report.h"
#include "bench_run.h"

#define MS      1000000ull
#define POLL_NS (10 * MS)
/* The pacer sleeps at least this long: below 10000 msgs/s per connection
 * every message leaves on time; above, they leave in batches (each still
 * stamped with its own due time), which costs far less CPU than a wake per
 * message. */
#define PACER_MIN_NS  100000ull
#define PACER_MAX_NS  (10 * MS)
#define CLOSE_WAIT_NS (5000 * MS)

static volatile sig_atomic_t interrupts;

static void on_sigint(int sig) {
  (void)sig;
  interrupts++;
}

static void sleep_until(uint64_t mono_ns) {
  struct timespec ts = {(time_t)(mono_ns / 1000000000u), (long)(mono_ns % 1000000000u)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    if (interrupts) return;
  }
}

/* ---- threads ------------------------------------------------------------ */

/* Ctrl-C is for the controller: its sleep ends at once, and proton's
 * threads never see an interrupted system call. */
static void block_sigint(void) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
}

static void *worker(void *arg) {
  hb_run_t *r = arg;
  block_sigint();
  for (bool quit = false; !quit;) {
    pn_event_batch_t *b = pn_proactor_wait(r->proactor);
    pn_event_t *e;
    while ((e = pn_event_batch_next(b))) {
      if (pn_event_type(e) == PN_PROACTOR_INTERRUPT)
        quit = true;
      else
        hb_conn_handle_ct(e);
    }
    pn_proactor_done(r->proactor, b);
  }
  /* One batch may carry several interrupts: pass one on so that every
   * worker leaves, whoever got them. */
  pn_proactor_interrupt(r->proactor);
  return NULL;
}

/* Wakes each sending connection when its next message falls due.  A wake
 * already pending is not repeated (hb_conn_wake), so a busy connection
 * simply sends everything due when it gets to it. */
static void *pacer(void *arg) {
  hb_run_t *r = arg;
  block_sigint();
  while (!atomic_load(&r->closing)) {
    /* While it looks, every due time published is a kick: one published
     * after its look at that connection would otherwise go unseen. */
    pthread_mutex_lock(&r->pacer_lock);
    r->pacer_kicked = false;
    atomic_store(&r->pacer_wake_ns, HB_NO_LIMIT);
    pthread_mutex_unlock(&r->pacer_lock);

    uint64_t now = hb_mono_ns(), next = now + PACER_MAX_NS;
    for (unsigned i = 0; i < r->nconns; i++) {
      hb_conn_t *c = &r->conns[i];
      if (!c->sender) continue;
      uint64_t due = atomic_load(&c->next_due);
      if (due <= now) {
        /* It may be busy and publish its next due time only when done:
         * look again soon rather than at PACER_MAX_NS. */
        hb_conn_wake(c);
        next = now;
      } else if (due < next) {
        next = due;
      }
    }
    if (next < now + PACER_MIN_NS) next = now + PACER_MIN_NS;

    atomic_store(&r->pacer_wake_ns, next);
    struct timespec ts = {(time_t)(next / 1000000000u), (long)(next % 1000000000u)};
    pthread_mutex_lock(&r->pacer_lock);
    while (!r->pacer_kicked && !atomic_load(&r->closing))
      if (pthread_cond_timedwait(&r->pacer_cond, &r->pacer_lock, &ts) == ETIMEDOUT) break;
    pthread_mutex_unlock(&r->pacer_lock);
  }
  return NULL;
}

static void pacer_kick(hb_run_t *r) {
  pthread_mutex_lock(&r->pacer_lock);
  r->pacer_kicked = true;
  pthread_cond_signal(&r->pacer_cond);
  pthread_mutex_unlock(&r->pacer_lock);
}

/* A due time later than the pacer's wake-up by less than its shortest
 * sleep is not worth a kick: it would be woken for nothing. */
void hb_pacer_note_due(hb_run_t *r, uint64_t due) {
  uint64_t wake = atomic_load(&r->pacer_wake_ns);
  if (due == HB_NO_LIMIT || (wake != HB_NO_LIMIT && due + PACER_MIN_NS >= wake)) return;
  pacer_kick(r);
}

/* ---- set-up ------------------------------------------------------------- */

static uint64_t random_id(void) {
  uint64_t v = 0;
  if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
    v = hb_wall_ns() ^ ((uint64_t)getpid() << 32);
  return v ? v : 1;
}

static int make_ssl(hb_run_t *r, char *err, size_t errlen) {
  const hb_opts_t *o = r->o;
  r->ssl = pn_ssl_domain(PN_SSL_MODE_CLIENT);
  if (!r->ssl) {
    snprintf(err, errlen, "this proton library has no TLS support");
    return -1;
  }
  if (o->ca && pn_ssl_domain_set_trusted_ca_db(r->ssl, o->ca)) {
    snprintf(err, errlen, "--ca %s: cannot load the CA certificates", o->ca);
    return -1;
  }
  if (pn_ssl_domain_set_peer_authentication(r->ssl, PN_SSL_VERIFY_PEER_NAME, NULL)) {
    snprintf(err, errlen, "cannot enable TLS peer verification");
    return -1;
  }
  if (o->cert && pn_ssl_domain_set_credentials(r->ssl, o->cert, o->key, NULL)) {
    snprintf(err, errlen, "--cert %s --key %s: cannot load the client certificate and key", o->cert,
             o->key);
    return -1;
  }
  return 0;
}

/* Splits `total` over `n` links: the first total % n get one more. */
static uint64_t share_of(uint64_t total, unsigned n, unsigned k) {
  if (total == 0) return HB_NO_LIMIT;
  return total / n + (k < total % n ? 1 : 0);
}

static int make_conns(hb_run_t *r) {
  const hb_opts_t *o = r->o;
  unsigned sides = o->mode == HB_MODE_BOTH ? 2 : 1;
  r->nconns = o->connections * sides;
  r->conns = calloc(r->nconns, sizeof *r->conns);
  if (!r->conns) return -1;
  unsigned side_links = o->connections * o->links;
  if (o->mode != HB_MODE_RECEIVE) r->send_links = side_links;
  if (o->mode != HB_MODE_SEND) r->recv_links = side_links;
  for (unsigned i = 0; i < r->nconns; i++) {
    hb_conn_t *c = &r->conns[i];
    c->run = r;
    c->id = i + 1;
    c->sender = o->mode == HB_MODE_SEND || (o->mode == HB_MODE_BOTH && i < o->connections);
    c->next_due = HB_NO_LIMIT;
    pthread_mutex_init(&c->lock, NULL);
    c->nlinks = o->links;
    c->links = calloc(o->links, sizeof *c->links);
    if (!c->links) return -1;
    if (!c->sender) {
      c->hist = malloc(sizeof *c->hist);
      if (!c->hist) return -1;
      hb_hist_init(c->hist);
    }
    unsigned first = (i % o->connections) * o->links;
    for (unsigned j = 0; j < o->links; j++) {
      hb_link_t *l = &c->links[j];
      l->conn = c;
      l->index = first + j;
      /* With a duration alone senders stop on the clock and receivers take
       * what comes; otherwise both sides split the count. */
      l->share = share_of(o->count, side_links, l->index);
      snprintf(l->name, sizeof l->name, "hadron-bench-%016" PRIx64 "-%s-%u", r->run_id,
               c->sender ? "send" : "recv", l->index);
    }
  }
  return 0;
}

/* ---- the control loop ----------------------------------------------------- */

typedef struct totals {
  uint64_t sent, accepted, rejected, released, received, foreign;
  uint64_t ready, send_done, recv_done;
} totals_t;

static void sum(hb_run_t *r, totals_t *t) {
  memset(t, 0, sizeof *t);
  for (unsigned i = 0; i < r->nconns; i++) {
    hb_counts_t *k = &r->conns[i].counts;
    t->sent += hb_get(&k->sent);
    t->accepted += hb_get(&k->accepted);
    t->rejected += hb_get(&k->rejected);
    t->released += hb_get(&k->released);
    t->received += hb_get(&k->received);
    t->foreign += hb_get(&k->foreign);
    t->ready += hb_get(&k->links_ready);
    if (r->conns[i].sender)
      t->send_done += hb_get(&k->links_done);
    else
      t->recv_done += hb_get(&k->links_done);
  }
}

static void wake_all(hb_run_t *r, bool senders_only) {
  for (unsigned i = 0; i < r->nconns; i++)
    if (!senders_only || r->conns[i].sender) hb_conn_wake(&r->conns[i]);
}

static void progress(hb_run_t *r, const totals_t *t, const totals_t *prev, uint64_t now) {
  double secs = (double)(now - r->go_ns) / 1e9;
  fprintf(stderr, "\r  %5.1f s", secs);
  if (r->send_links)
    fprintf(stderr, "  sent %" PRIu64 " (%" PRIu64 "/s)", t->sent, t->sent - prev->sent);
  if (r->recv_links)
    fprintf(stderr, "  received %" PRIu64 " (%" PRIu64 "/s)", t->received,
            t->received - prev->received);
  fprintf(stderr, "\033[K");
  fflush(stderr);
}

/* Runs until the work is done, an error, a stall or a second Ctrl-C.
 * Returns a reason to fail (stall, interrupt) or NULL; errors of the
 * connections themselves are collected later. */
static const char *control(hb_run_t *r, pthread_t *pacer_thread, bool *pacer_started, char *why,
                           size_t whylen) {
  const hb_opts_t *o = r->o;
  const bool tty = isatty(STDERR_FILENO);
  const uint64_t timeout_ns = (uint64_t)(o->timeout_s * 1e9);
  const uint64_t all_links = r->send_links + r->recv_links;
  uint64_t last_change = hb_mono_ns(), last_value = 0, next_progress = 0;
  totals_t t, prev = {0};
  bool printed = false, stop_seen = false;
  const char *reason = NULL;

  for (;;) {
    uint64_t now = hb_mono_ns();
    sum(r, &t);
    if (atomic_load(&r->failed)) break;

    bool go = atomic_load(&r->go);
    if (!go && t.ready == all_links) {
      /* Every link attached (in mode both, the receivers too, so that not a
       * message is sent to a topic before its subscribers exist). */
      r->go_ns = now;
      atomic_store_explicit(&r->go, true, memory_order_release);
      go = true;
      next_progress = now + 1000 * MS;
      if (o->rate > 0 && !pthread_create(pacer_thread, NULL, pacer, r)) *pacer_started = true;
      wake_all(r, true);
    }
    if (interrupts >= 2) {
      snprintf(why, whylen, "interrupted");
      reason = why;
      break;
    }
    if (go && !stop_seen &&
        (interrupts == 1 || (o->duration_s > 0 && o->rate == 0 &&
                             now - r->go_ns >= (uint64_t)(o->duration_s * 1e9)))) {
      stop_seen = true;
      atomic_store(&r->stop_sending, true);
      wake_all(r, true);
    }

    bool senders_done = t.send_done == r->send_links;
    bool done;
    switch (o->mode) {
    case HB_MODE_SEND: done = go && senders_done; break;
    case HB_MODE_RECEIVE:
      done = go && (o->count ? t.recv_done == r->recv_links
                             : (interrupts || now - r->go_ns >= (uint64_t)(o->duration_s * 1e9)));
      break;
    default: done = go && senders_done && t.received >= t.sent; break;
    }
    if (done) break;

    uint64_t value =
        t.sent + t.accepted + t.rejected + t.released + t.received + t.foreign + t.ready;
    if (value != last_value) {
      last_value = value;
      last_change = now;
    } else if (timeout_ns && now - last_change >= timeout_ns) {
      if (o->mode == HB_MODE_BOTH && senders_done)
        snprintf(why, whylen,
                 "%" PRIu64 " messages lost: received %" PRIu64 " of %" PRIu64
                 " sent (none arrived for %g s)",
                 t.sent - t.received, t.received, t.sent, o->timeout_s);
      else if (o->mode == HB_MODE_RECEIVE && o->count)
        snprintf(why, whylen,
                 "received %" PRIu64 " of %" PRIu64 " messages (none arrived for %g s)", t.received,
                 o->count, o->timeout_s);
      else if (!go)
        snprintf(why, whylen, "only %" PRIu64 " of %" PRIu64 " links attached within %g s", t.ready,
                 all_links, o->timeout_s);
      else
        snprintf(why, whylen,
                 "no progress for %g s (sent %" PRIu64 ", settled %" PRIu64 ", received %" PRIu64
                 ")",
                 o->timeout_s, t.sent, t.accepted + t.rejected + t.released, t.received);
      reason = why;
      break;
    }

    if (tty && go && now >= next_progress) {
      progress(r, &t, &prev, now);
      prev = t;
      printed = true;
      next_progress += 1000 * MS;
    }
    sleep_until(now + POLL_NS);
  }
  if (printed) fprintf(stderr, "\r\033[K");
  return reason;
}

static void shut_down(hb_run_t *r) {
  atomic_store(&r->closing, true);
  pacer_kick(r);
  wake_all(r, false);
  uint64_t deadline = hb_mono_ns() + CLOSE_WAIT_NS;
  while (atomic_load(&r->conns_open) > 0 && hb_mono_ns() < deadline)
    sleep_until(hb_mono_ns() + MS);
  if (atomic_load(&r->conns_open) > 0) {
    /* The broker did not answer our close: drop the sockets. */
    pn_proactor_disconnect(r->proactor, NULL);
    deadline = hb_mono_ns() + CLOSE_WAIT_NS;
    while (atomic_load(&r->conns_open) > 0 && hb_mono_ns() < deadline)
      sleep_until(hb_mono_ns() + MS);
  }
}

/* ---- result ------------------------------------------------------------- */

/* `reason` (a stall, an interrupt) comes first; the count checks only add
 * what no earlier error explains. */
static void gather(hb_run_t *r, hb_result_t *res, const char *reason) {
  const hb_opts_t *o = r->o;
  totals_t t;
  sum(r, &t);
  res->sent = t.sent;
  res->accepted = t.accepted;
  res->rejected = t.rejected;
  res->released = t.released;
  res->received = t.received;
  res->foreign = t.foreign;
  res->unsettled = o->presettled ? 0 : t.sent - (t.accepted + t.rejected + t.released);

  uint64_t last_send = 0, last_recv = 0, last_settle = 0, first_recv = UINT64_MAX;
  const char *reject = NULL;
  hb_hist_init(&res->hist);
  if (reason) hb_result_error(res, "%s", reason);
  for (unsigned i = 0; i < r->nconns; i++) {
    hb_conn_t *c = &r->conns[i];
    if (c->error[0]) hb_result_error(res, "%s", c->error);
    if (c->first_reject[0] && !reject) reject = c->first_reject;
    if (c->hist) hb_hist_merge(&res->hist, c->hist);
    if (c->last_send_ns > last_send) last_send = c->last_send_ns;
    if (c->last_recv_ns > last_recv) last_recv = c->last_recv_ns;
    if (c->first_recv_ns && c->first_recv_ns < first_recv) first_recv = c->first_recv_ns;
    if (c->last_settle_ns > last_settle) last_settle = c->last_settle_ns;
  }
  uint64_t last = last_settle;
  if (last_send > last) last = last_send;
  if (last_recv > last) last = last_recv;
  /* Senders start at `go`.  Alone, a receiver measures from its first
   * message: the queue may have been empty for a while after it attached,
   * or full, so that messages came before the controller saw the attach. */
  uint64_t start =
      o->mode == HB_MODE_RECEIVE ? (first_recv == UINT64_MAX ? 0 : first_recv) : r->go_ns;
  if (start && last > start) res->duration_s = (double)(last - start) / 1e9;
  /* Unsettled, a message counts as sent once the broker has settled it:
   * what a socket buffer swallows is not yet throughput. */
  uint64_t send_end =
      o->presettled ? last_send : (last_settle > last_send ? last_settle : last_send);
  if (start && send_end > start)
    res->send_rate = (double)t.sent / ((double)(send_end - start) / 1e9);
  if (start && last_recv > start)
    res->recv_rate = (double)t.received / ((double)(last_recv - start) / 1e9);

  if (t.rejected)
    hb_result_error(res, "%" PRIu64 " messages rejected by the broker (first: %s)", t.rejected,
                    reject ? reject : "?");
  if (t.released)
    hb_result_error(res, "%" PRIu64 " messages released or modified by the broker", t.released);
  if (res->unsettled && !res->nerrors)
    hb_result_error(res, "%" PRIu64 " messages never settled by the broker", res->unsettled);
  if (o->mode == HB_MODE_BOTH && t.received < t.sent && !res->nerrors)
    hb_result_error(res, "%" PRIu64 " messages lost: received %" PRIu64 " of %" PRIu64 " sent",
                    t.sent - t.received, t.received, t.sent);
  if (o->mode == HB_MODE_BOTH && t.received > t.sent)
    hb_result_error(res, "received %" PRIu64 " messages but sent %" PRIu64 ": duplicates",
                    t.received, t.sent);
  if (o->mode == HB_MODE_RECEIVE && o->count && t.received < o->count && !res->nerrors)
    hb_result_error(res, "received %" PRIu64 " of %" PRIu64 " messages", t.received, o->count);
}

int hb_run(const hb_opts_t *o, hb_result_t *res) {
  hb_run_t run = {0}, *r = &run;
  char err[HB_ERROR_MAX], why[HB_ERROR_MAX];
  r->o = o;
  r->run_id = random_id();
  r->wall_minus_mono = (int64_t)(hb_wall_ns() - hb_mono_ns());
  r->pacer_wake_ns = HB_NO_LIMIT;
  pthread_mutex_init(&r->pacer_lock, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&r->pacer_cond, &ca);
  pthread_condattr_destroy(&ca);
  r->proactor = pn_proactor();
  if (!r->proactor || make_conns(r)) {
    hb_result_error(res, "out of memory");
    goto out;
  }
  if (o->url.tls && make_ssl(r, err, sizeof err)) {
    hb_result_error(res, "%s", err);
    goto out;
  }

  struct sigaction sa = {0};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);

  pthread_t *threads = calloc(o->threads, sizeof *threads);
  unsigned nthreads = 0;
  for (; threads && nthreads < o->threads; nthreads++)
    if (pthread_create(&threads[nthreads], NULL, worker, r)) break;
  pthread_t pacer_thread;
  bool pacer_started = false;
  const char *reason = NULL;
  if (nthreads == 0) {
    hb_result_error(res, "cannot start a worker thread");
  } else {
    bool started = true;
    for (unsigned i = 0; i < r->nconns && started; i++)
      if (hb_conn_start_main(r, &r->conns[i], err, sizeof err)) {
        hb_result_error(res, "%s", err);
        atomic_store(&r->failed, true);
        started = false;
      }
    reason = control(r, &pacer_thread, &pacer_started, why, sizeof why);
  }
  shut_down(r);
  if (pacer_started) pthread_join(pacer_thread, NULL);
  if (nthreads) pn_proactor_interrupt(r->proactor);
  for (unsigned i = 0; i < nthreads; i++)
    pthread_join(threads[i], NULL);
  free(threads);
  signal(SIGINT, SIG_DFL);
  gather(r, res, reason);

out:
  if (r->proactor) pn_proactor_free(r->proactor);
  if (r->ssl) pn_ssl_domain_free(r->ssl);
  for (unsigned i = 0; i < r->nconns && r->conns; i++)
    hb_conn_free_main(&r->conns[i]);
  free(r->conns);
  pthread_cond_destroy(&r->pacer_cond);
  pthread_mutex_destroy(&r->pacer_lock);
  return res->nerrors ? 1 : 0;
}
