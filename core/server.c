/* The proactor loop.  N worker threads wait on one proactor; proton hands
 * each connection's events to one thread at a time.  Signals arrive on the
 * main thread (sigwait) and are passed in as proactor interrupts, so all
 * broker state changes happen on worker threads. */
#include "config.h"

#include "server.h"

#include <inttypes.h>
#include <proton/condition.h>
#include <proton/event.h>
#include <proton/netaddr.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "address.h"
#include "message.h"
#include "conn.h"
#include "hooks.h"
#include "log.h"
#include "modload.h"
#include "store.h"
#include "tls.h"
#include "users.h"
#include "util.h"

#define TICK_MS 1000

static struct {
  pn_proactor_t *proactor;
  _Atomic(const hd_settings_t *) st;
  hd_settings_t **old; /* every settings object, freed at exit */
  size_t n_old;
  const char *config_path;
  hd_listener_t *listeners;
  atomic_int listeners_open;
  atomic_bool shutdown_req, reload_req, resume_req, draining, finishing, stopping;
  int exit_code;
  int nworkers;
  atomic_int running; /* workers still in their loop */
  hd_store_t *store;
} S;

const hd_settings_t *hd_server_settings(void) { return atomic_load_explicit(&S.st, memory_order_acquire); }
pn_proactor_t *hd_server_proactor(void) { return S.proactor; }
bool hd_server_draining(void) { return atomic_load(&S.draining); }

void hd_server_request_resume(void) {
  if (!atomic_exchange(&S.resume_req, true)) pn_proactor_interrupt(S.proactor);
}

static void keep_settings(hd_settings_t *st) {
  S.old = hd_xrealloc(S.old, (S.n_old + 1) * sizeof *S.old);
  S.old[S.n_old++] = st;
}

/* ---- periodic work ------------------------------------------------------- */

static void expire_and_report(hd_queue_t *q, void *arg) {
  uint64_t now = *(uint64_t *)arg;
  hd_entry_t *gone = hd_queue_take_expired(q, now);
  if (gone) hd_node_expire_list(q, gone);
  hd_queue_stats_t st;
  hd_queue_stats(q, &st);
  if (st.expired > q->reported_expired) {
    if (!q->node.expiry_address)
      HD_LOG(HD_LOG_INFO, "core", "queue '%s', %" PRIu64 " expired messages dropped (no expiry-address; %" PRIu64 " in all)",
             q->node.address, st.expired - q->reported_expired, st.expired);
    q->reported_expired = st.expired;
  }
  if (st.dropped > q->reported_dropped) {
    HD_LOG(HD_LOG_WARNING, "core",
           "queue '%s', %" PRIu64 " messages discarded (%" PRIu64 " in all): no dead-letter-address, or it "
           "or a subscription was full",
           q->node.address, st.dropped - q->reported_dropped, st.dropped);
    q->reported_dropped = st.dropped;
  }
}

static void tick(void) {
  uint64_t now = hd_now_wall_ms();
  hd_addr_each_queue(expire_and_report, &now);
  hd_conns_check_handshakes(hd_now_mono_ms());
  hd_tick_t t = {sizeof t, hd_now_mono_ms()};
  hd_hooks_notify(HD_PHASE_TICK, &t);
}

/* ---- drain and stop ----------------------------------------------------- */

static void stop_workers(void) {
  if (atomic_exchange(&S.stopping, true)) return;
  /* The worker that leaves wakes the next (see worker()): interrupts
   * sent at once can be merged into one event. */
  pn_proactor_interrupt(S.proactor);
}

/* Once every peer is gone, cancel the drain deadline; proton then reports
 * PN_PROACTOR_INACTIVE after it has released every connection, and only
 * then do the workers stop (stopping earlier leaks what proton still holds). */
static void maybe_finish(void) {
  if (atomic_load(&S.draining) && hd_conns_count() == 0 && atomic_load(&S.listeners_open) == 0 &&
      !atomic_exchange(&S.finishing, true)) {
    HD_LOG(HD_LOG_NOTICE, "core", "broker, drained; stopping");
    pn_proactor_cancel_timeout(S.proactor);
  }
}

static void begin_drain(void) {
  if (atomic_exchange(&S.draining, true)) return;
  HD_LOG(HD_LOG_NOTICE, "core", "broker, draining: no new connections; closing %zu connections",
         hd_conns_count());
  for (hd_listener_t *l = S.listeners; l; l = l->next)
    if (l->pn) pn_listener_close(l->pn);
  hd_hooks_notify(HD_PHASE_SHUTDOWN, NULL);
  hd_conns_drain();
  /* The drain deadline replaces the tick timer. */
  pn_proactor_set_timeout(S.proactor, (pn_millis_t)hd_server_settings()->drain_timeout_ms);
  maybe_finish();
}

/* ---- reload ------------------------------------------------------------------ */

static void reload(void) {
  char err[1024];
  if (!S.config_path) {
    HD_LOG(HD_LOG_NOTICE, "core", "config, SIGHUP ignored: running the embedded default");
    return;
  }
  hd_config_t *cfg = NULL;
  hd_settings_t *st = NULL;
  hd_users_t *users = NULL;
  int rc = hd_cfg_parse_file(S.config_path, &cfg, err, sizeof err);
  if (!rc) rc = hd_settings_build(cfg, &st, err, sizeof err);
  if (!rc && st->users_file) rc = hd_users_load(st->users_file, &users, err, sizeof err);
  if (!rc) rc = hd_modules_reload(st->cfg, err, sizeof err);
  if (rc) {
    HD_LOG(HD_LOG_ERR, "core", "config, reload failed, keeping the running configuration: %s", err);
    hd_users_free(users);
    hd_settings_free(st);
    return;
  }
  if (st->users_file) hd_users_install(users);
  hd_log_use_syslog(st->log_syslog);
  hd_log_set_level(st->log_level);
  keep_settings(st);
  atomic_store_explicit(&S.st, st, memory_order_release);
  hd_addr_set_settings(st);
  HD_LOG(HD_LOG_NOTICE, "core",
         "config, reloaded from %s (log level, users, node defaults and modules; listener changes "
         "need a restart)",
         S.config_path);
}

/* ---- events ------------------------------------------------------------------ */

static void listener_opened(hd_listener_t *l) {
  for (const pn_netaddr_t *a = pn_listener_addr(l->pn); a; a = pn_netaddr_next(a)) {
    char host[256], port[32];
    if (pn_netaddr_host_port(a, host, sizeof host, port, sizeof port) == 0)
      HD_LOG(HD_LOG_NOTICE, "core", "listener '%s', listening on %s%s%s:%s%s", l->conf->name,
             strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", port,
             l->ssl ? " (TLS)" : "");
  }
}

static void handle(pn_event_t *e) {
  switch (pn_event_type(e)) {
  case PN_LISTENER_OPEN: listener_opened(pn_listener_get_context(pn_event_listener(e))); break;
  case PN_LISTENER_ACCEPT: {
    hd_listener_t *l = pn_listener_get_context(pn_event_listener(e));
    hd_conn_accept(l);
    break;
  }
  case PN_LISTENER_CLOSE: {
    hd_listener_t *l = pn_listener_get_context(pn_event_listener(e));
    pn_condition_t *c = pn_listener_condition(pn_event_listener(e));
    atomic_fetch_sub(&S.listeners_open, 1);
    if (pn_condition_is_set(c) && !atomic_load(&S.draining)) {
      HD_LOG(HD_LOG_ERR, "core", "listener '%s', cannot listen on %s:%d: %s; is another broker using the port?",
             l->conf->name, l->conf->host, l->conf->port, pn_condition_get_description(c));
      S.exit_code = 1;
      begin_drain();
    }
    maybe_finish();
    break;
  }
  case PN_PROACTOR_INTERRUPT:
    if (atomic_exchange(&S.shutdown_req, false)) begin_drain();
    if (atomic_exchange(&S.reload_req, false)) reload();
    if (atomic_exchange(&S.resume_req, false)) hd_conns_resume_flow();
    break;
  case PN_PROACTOR_TIMEOUT:
    if (atomic_load(&S.draining)) {
      HD_LOG(HD_LOG_WARNING, "core", "broker, drain-timeout passed with %zu connections open; closing them",
             hd_conns_count());
      pn_condition_t *c = pn_condition();
      pn_condition_set_name(c, "amqp:connection:forced");
      pn_condition_set_description(c, "the broker is shutting down");
      pn_proactor_disconnect(S.proactor, c);
      pn_condition_free(c);
    } else {
      tick();
      pn_proactor_set_timeout(S.proactor, TICK_MS);
    }
    break;
  case PN_PROACTOR_INACTIVE:
    if (atomic_load(&S.finishing)) stop_workers();
    break;
  case PN_TRANSPORT_CLOSED:
    hd_conn_event(e);
    maybe_finish();
    break;
  default: hd_conn_event(e); break;
  }
}

static void *worker(void *arg) {
  (void)arg;
  pthread_setname_np(pthread_self(), "hd-worker"); /* for top -H, perf and gdb */
  hd_queues_collect(true);
  while (!atomic_load(&S.stopping)) {
    pn_event_batch_t *b = pn_proactor_wait(S.proactor);
    for (pn_event_t *e; (e = pn_event_batch_next(b));) handle(e);
    hd_queues_flush(); /* before the next batch, maybe of another connection */
    pn_proactor_done(S.proactor, b);
  }
  if (atomic_fetch_sub(&S.running, 1) > 1) pn_proactor_interrupt(S.proactor);
  hd_msg_thread_done();
  return NULL;
}

/* ---- start and run ------------------------------------------------------- */

static void on_memory_low(void) { hd_server_request_resume(); }

/* Open the store and rebuild durable queues from it. */
static int open_store(const hd_settings_t *st) {
  char err[1024];
  hd_store_opts_t o = {.flush_interval = st->store_flush_interval,
                       .interval_ms = st->store_flush_interval_ms,
                       .map_size = (uint64_t)st->store_map_size,
                       .reserve = (uint64_t)st->store_reserve,
                       .log_size = (uint64_t)st->store_log_size,
                       .on_space = hd_server_request_resume,
                       .may_page = hd_queues_may_page};
  hd_store_guard_install("hadrond", st->data_dir, true);
  const char *g = hd_store_guard_enter("reading it at start-up; nothing was changed");
  int rc = hd_store_open(st->data_dir, &o, &S.store, err, sizeof err);
  if (!rc) {
    hd_queues_use_store(S.store, st->queue_memory);
    rc = hd_queues_recover(err, sizeof err);
  }
  hd_store_guard_leave(g);
  if (!rc) {
    hd_addr_durable_declared();
    rc = hd_store_start(S.store);
    if (rc) snprintf(err, sizeof err, "store: cannot start its writer thread: %s", hd_strerror(rc));
  }
  if (rc) HD_LOG(HD_LOG_ERR, "core", "%s", err);
  return rc;
}

static int open_listeners(const hd_settings_t *st) {
  hd_listener_t **tail = &S.listeners;
  for (const hd_listener_conf_t *lc = st->listeners; lc; lc = lc->next) {
    hd_listener_t *l = hd_xcalloc(1, sizeof *l);
    l->conf = lc;
    *tail = l;
    tail = &l->next;
    if (lc->tls_cert) {
      char err[1024];
      if (hd_tls_server_domain(lc->tls_cert, lc->tls_key, lc->tls_ca, lc->tls_client_auth, &l->ssl, err,
                               sizeof err) != 0) {
        HD_LOG(HD_LOG_ERR, "core", "listener '%s' (%s), TLS setup failed: %s", lc->name, lc->where, err);
        return HD_ECONFIG;
      }
    }
    char addr[PN_MAX_ADDR], port[16];
    snprintf(port, sizeof port, "%d", lc->port);
    pn_proactor_addr(addr, sizeof addr, lc->host, port);
    l->pn = pn_listener();
    pn_listener_set_context(l->pn, l);
    atomic_fetch_add(&S.listeners_open, 1);
    pn_proactor_listen(S.proactor, l->pn, addr, 1024);
  }
  return 0;
}

int hd_server_run(hd_settings_t *st, const char *config_path) {
  char err[1024];
  S.config_path = config_path;
  atomic_store(&S.st, st);
  keep_settings(st);
  S.nworkers = st->workers;
  S.proactor = pn_proactor();
  hd_msg_mem_watch(st->memory_limit, st->memory_limit - st->memory_limit / 10, on_memory_low);
  hd_addr_init(st);

  /* Signals go to the main thread only: block them before threads start. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);

  int rc = hd_modules_init(err, sizeof err);
  if (!rc) rc = hd_modules_start(err, sizeof err);
  if (rc) HD_LOG(HD_LOG_ERR, "core", "%s", err);
  if (!rc) rc = open_store(st);
  if (!rc) rc = open_listeners(st);
  if (rc) {
    S.exit_code = 1;
    atomic_store(&S.draining, true);
    for (hd_listener_t *l = S.listeners; l; l = l->next)
      if (l->pn) pn_listener_close(l->pn);
  } else {
    pn_proactor_set_timeout(S.proactor, TICK_MS);
    HD_LOG(HD_LOG_NOTICE, "core", "broker, started: hadron %s, %d worker threads, data in %s",
           PACKAGE_VERSION, S.nworkers, st->data_dir);
  }

  pthread_t *threads = hd_xcalloc((size_t)S.nworkers, sizeof *threads);
  atomic_store(&S.running, S.nworkers);
  for (int i = 0; i < S.nworkers; i++) pthread_create(&threads[i], NULL, worker, NULL);
  if (rc) stop_workers();

  /* The main thread turns signals into requests until the broker stops. */
  while (!atomic_load(&S.stopping)) {
    struct timespec ts = {0, 200 * 1000 * 1000};
    int sig = sigtimedwait(&set, NULL, &ts);
    if (sig == SIGTERM || sig == SIGINT) {
      HD_LOG(HD_LOG_NOTICE, "core", "broker, %s received", sig == SIGTERM ? "SIGTERM" : "SIGINT");
      atomic_store(&S.shutdown_req, true);
      pn_proactor_interrupt(S.proactor);
    } else if (sig == SIGHUP) {
      atomic_store(&S.reload_req, true);
      pn_proactor_interrupt(S.proactor);
    }
  }
  for (int i = 0; i < S.nworkers; i++) pthread_join(threads[i], NULL);
  free(threads);

  pn_proactor_free(S.proactor);
  /* After the workers: whatever they submitted is committed before exit. */
  hd_store_close(S.store);
  hd_store_guard_uninstall();
  hd_queues_use_store(NULL, INT64_MAX);
  for (hd_listener_t *l = S.listeners, *n; l; l = n) {
    n = l->next;
    if (l->ssl) pn_ssl_domain_free(l->ssl);
    free(l);
  }
  hd_modules_unload();
  hd_addr_fini();
  hd_users_shutdown();
  for (size_t i = 0; i < S.n_old; i++) hd_settings_free(S.old[i]);
  free(S.old);
  hd_msg_thread_done(); /* the main thread allocated during recovery */
  HD_LOG(HD_LOG_NOTICE, "core", "broker, stopped");
  return S.exit_code;
}
