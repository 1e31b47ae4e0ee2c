/* idle: open N AMQP 1.0 connections to a broker and hold them, idle.
 *
 * For the "memory per idle connection" row of the benchmark matrix
 * (tests/bench/run-matrix).  A connection counts as open once the broker's
 * open frame arrived, i.e. after the whole handshake (protocol headers,
 * SASL ANONYMOUS unless -S, open/open).  At most -w handshakes are in
 * flight at once, so that no connection waits long enough to hit a
 * broker's handshake timeout.  When every connection is open (or failed)
 * it prints one line "open N failed F seconds T" on stdout and flushes it,
 * so a script can sample the broker's memory while they are held; after
 * -s seconds it closes them and prints a JSON summary line.
 * Heartbeats the broker asks for (its idle-timeout) are answered by proton,
 * so the connections stay open however long they are held.
 *
 * Build: cc -O2 -o idle idle.c $(pkg-config --cflags --libs libqpid-proton) -lpthread
 * Usage: idle [-n CONNECTIONS] [-s SECONDS] [-w WINDOW] [-t THREADS] [-S] [HOST:PORT]
 * The process needs `ulimit -n` above N (it raises its soft limit to the hard one).
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/event.h>
#include <proton/proactor.h>
#include <proton/sasl.h>
#include <proton/transport.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

typedef struct iconn {
  pn_connection_t *pn;
  bool opened, done;     /* owned by the connection's thread */
  bool transport_closed; /* under life_lock: pn is freed after this */
} iconn_t;

static pn_proactor_t *P;
static atomic_uint n_open, n_ever_open, n_failed, n_closed, in_flight;
/* Guards pn_connection_wake() from the main thread against the proactor
 * freeing a connection whose transport closed. */
static pthread_mutex_t life_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_bool closing;
static pthread_mutex_t err_lock = PTHREAD_MUTEX_INITIALIZER;
static char first_error[512];

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void note_error(const char *what, pn_condition_t *cond) {
  pthread_mutex_lock(&err_lock);
  if (!first_error[0])
    snprintf(first_error, sizeof first_error, "%s: %s: %s", what,
             cond && pn_condition_get_name(cond) ? pn_condition_get_name(cond) : "no condition",
             cond && pn_condition_get_description(cond) ? pn_condition_get_description(cond) : "");
  pthread_mutex_unlock(&err_lock);
}

/* The connection's thread: the first end of a handshake, open or failed. */
static void settle_handshake_ct(iconn_t *c, bool ok) {
  if (c->opened || c->done) return;
  if (ok) {
    c->opened = true;
    atomic_fetch_add(&n_open, 1);
    atomic_fetch_add(&n_ever_open, 1);
  } else {
    c->done = true;
    atomic_fetch_add(&n_failed, 1);
  }
  atomic_fetch_sub(&in_flight, 1);
}

static void handle_ct(pn_event_t *e) {
  pn_connection_t *pc = pn_event_connection(e);
  iconn_t *c = pc ? pn_connection_get_context(pc) : NULL;
  if (!c) return;
  switch (pn_event_type(e)) {
  case PN_CONNECTION_INIT: pn_connection_open(pc); break;
  case PN_CONNECTION_REMOTE_OPEN: settle_handshake_ct(c, true); break;
  case PN_CONNECTION_WAKE:
    if (atomic_load(&closing) && !(pn_connection_state(pc) & PN_LOCAL_CLOSED)) pn_connection_close(pc);
    break;
  case PN_CONNECTION_REMOTE_CLOSE:
    if (!atomic_load(&closing)) note_error("closed by the broker", pn_connection_remote_condition(pc));
    if (!(pn_connection_state(pc) & PN_LOCAL_CLOSED)) pn_connection_close(pc);
    break;
  case PN_TRANSPORT_CLOSED:
    if (!atomic_load(&closing)) {
      note_error("connection lost", pn_transport_condition(pn_event_transport(e)));
      if (c->opened) {
        atomic_fetch_sub(&n_open, 1);
        atomic_fetch_add(&n_failed, 1);
      }
    }
    settle_handshake_ct(c, false);
    pthread_mutex_lock(&life_lock);
    c->transport_closed = true;
    pthread_mutex_unlock(&life_lock);
    atomic_fetch_add(&n_closed, 1);
    break;
  default: break;
  }
}

static void *worker(void *arg) {
  (void)arg;
  for (;;) {
    pn_event_batch_t *b = pn_proactor_wait(P);
    pn_event_t *e;
    bool stop = false;
    while ((e = pn_event_batch_next(b))) {
      if (pn_event_type(e) == PN_PROACTOR_INTERRUPT)
        stop = true;
      else
        handle_ct(e);
    }
    pn_proactor_done(P, b);
    if (stop) return NULL;
  }
}

static int usage(void) {
  fprintf(stderr, "usage: idle [-n CONNECTIONS] [-s SECONDS] [-w WINDOW] [-t THREADS] [-S] [HOST:PORT]\n"
                  "  -n N      connections to open (default 10000)\n"
                  "  -s SECS   how long to hold them once all are open (default 10)\n"
                  "  -w N      handshakes in flight at once (default 100)\n"
                  "  -t N      proactor threads (default 1)\n"
                  "  -S        no SASL layer (default: SASL ANONYMOUS)\n"
                  "  HOST:PORT broker (default 127.0.0.1:5672)\n");
  return 2;
}

int main(int argc, char **argv) {
  unsigned n = 10000, window = 100, threads = 1;
  double hold = 10;
  bool sasl = true;
  int ch;
  while ((ch = getopt(argc, argv, "n:s:w:t:Sh")) != -1) {
    switch (ch) {
    case 'n': n = (unsigned)atoi(optarg); break;
    case 's': hold = atof(optarg); break;
    case 'w': window = (unsigned)atoi(optarg); break;
    case 't': threads = (unsigned)atoi(optarg); break;
    case 'S': sasl = false; break;
    default: return usage();
    }
  }
  const char *target = optind < argc ? argv[optind++] : "127.0.0.1:5672";
  if (optind < argc || n < 1 || window < 1 || threads < 1 || threads > 64 || hold < 0) return usage();
  char host[256];
  const char *colon = strrchr(target, ':');
  if (!colon || colon == target || (size_t)(colon - target) >= sizeof host) return usage();
  memcpy(host, target, (size_t)(colon - target));
  host[colon - target] = '\0';
  const char *port = colon + 1;

  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)n + 64)
    fprintf(stderr, "idle: warning: open files limit %ju is below %u connections\n", (uintmax_t)rl.rlim_cur, n);

  iconn_t *conns = calloc(n, sizeof *conns);
  if (!conns) return 1;
  P = pn_proactor();
  pthread_t *th = calloc(threads, sizeof *th);
  for (unsigned i = 0; i < threads; i++) pthread_create(&th[i], NULL, worker, NULL);

  char addr[PN_MAX_ADDR];
  pn_proactor_addr(addr, sizeof addr, host, port);
  double t0 = now_s();
  for (unsigned i = 0; i < n; i++) {
    while (atomic_load(&in_flight) >= window) usleep(200);
    iconn_t *c = &conns[i];
    c->pn = pn_connection();
    pn_transport_t *t = pn_transport();
    char container[64];
    snprintf(container, sizeof container, "idle-%u-%u", (unsigned)getpid(), i);
    pn_connection_set_container(c->pn, container);
    pn_connection_set_hostname(c->pn, host);
    pn_connection_set_context(c->pn, c);
    if (sasl) pn_sasl_allowed_mechs(pn_sasl(t), "ANONYMOUS");
    atomic_fetch_add(&in_flight, 1);
    pn_proactor_connect2(P, c->pn, t, addr);
  }
  while (atomic_load(&in_flight) > 0) usleep(1000);
  double open_s = now_s() - t0;
  printf("open %u failed %u seconds %.3f\n", atomic_load(&n_open), atomic_load(&n_failed), open_s);
  fflush(stdout);

  usleep((useconds_t)(hold * 1e6));
  unsigned still_open = atomic_load(&n_open);

  atomic_store(&closing, true);
  for (unsigned i = 0; i < n; i++) {
    pthread_mutex_lock(&life_lock);
    if (!conns[i].transport_closed) pn_connection_wake(conns[i].pn);
    pthread_mutex_unlock(&life_lock);
  }
  double deadline = now_s() + 30;
  while (atomic_load(&n_closed) < n && now_s() < deadline) usleep(2000);
  for (unsigned i = 0; i < threads; i++) pn_proactor_interrupt(P);
  for (unsigned i = 0; i < threads; i++) pthread_join(th[i], NULL);

  printf("{\"connections\": %u, \"opened\": %u, \"still_open_after_hold\": %u, \"failed\": %u, "
         "\"open_s\": %.3f, \"held_s\": %.1f, \"error\": \"%s\"}\n",
         n, atomic_load(&n_ever_open), still_open,
         atomic_load(&n_failed), open_s, hold, first_error);
  pn_proactor_free(P);
  return atomic_load(&n_failed) ? 1 : 0;
}
