/* floor: the least an AMQP 1.0 forwarder on the proton proactor can do.
 *
 * The benchmark matrix (tests/bench/run-matrix) runs it beside hadrond and
 * RabbitMQ to show what proton allows on this machine: a broker cannot be
 * expected to beat it, so "hadrond / floor" says how much of proton's
 * speed the broker keeps.  It is therefore deliberately minimal but not
 * naive: N proactor threads, one mutex per address, raw message bytes
 * passed through (pn_link_recv / pn_link_send, never decoded), messages
 * queued in batches (one lock per address per event batch), cross-thread
 * hand-off by pn_connection_wake with one wake in flight per connection.
 *
 * Semantics, nothing more:
 *   - any address is created on attach; addresses starting with "topic."
 *     are topics (every subscriber link gets every message sent after it
 *     attached), every other address is a queue (FIFO, competing consumers);
 *   - unsettled transfers are accepted and settled as soon as they are
 *     complete; presettled ones are taken as they are;
 *   - consumers get what their link's credit allows, presettled when they
 *     ask for it (snd-settle-mode settled), else unsettled, and the floor
 *     settles a delivery when the consumer gives any outcome.  Nothing is
 *     redelivered: a released message is gone (no storage, no routing
 *     rules, no redelivery -- it is a floor, not a broker);
 *   - producers get a credit window (-w, 200 like hadrond's credit-window)
 *     while their address holds less than -D messages and -B bytes; then
 *     they wait until consumers have taken it down to half.
 *
 * Threads.  A connection's events, its conn_t and its links belong to the
 * thread the proactor gives them to (functions suffixed _ct).  node_t is
 * shared: its FIFOs, its lists of links and its `full` flag are guarded by
 * its mutex (`full` is also read without it, as a hint).  Lock order:
 * nodes_lock, then one node's lock; a node's lock is held while calling
 * pn_connection_wake() on the connections of its links, which keeps those
 * connections alive: a connection unregisters its links under that lock
 * before it is freed.
 *
 * Build: cc -O2 -o floor floor.c $(pkg-config --cflags --libs libqpid-proton) -lpthread
 * Usage: floor [-a HOST] [-p PORT] [-t THREADS] [-w WINDOW] [-D MSGS] [-B BYTES]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/listener.h>
#include <proton/netaddr.h>
#include <proton/proactor.h>
#include <proton/sasl.h>
#include <proton/session.h>
#include <proton/terminus.h>
#include <proton/transport.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POP_BATCH 64

static struct {
  const char *host, *port;
  unsigned threads;
  int window;
  size_t max_msgs, max_bytes;
} opt = {"127.0.0.1", "5673", 2, 200, 100000, 64u << 20};

static pn_proactor_t *P;

/* ---- messages and FIFOs ---------------------------------------------- */

typedef struct msg {
  atomic_uint refs; /* one per FIFO holding it */
  size_t size, cap;
  char data[];
} msg_t;

static void *xmalloc(size_t n) {
  void *p = malloc(n);
  if (!p) {
    fprintf(stderr, "floor: out of memory\n");
    abort();
  }
  return p;
}

static void *xrealloc(void *p, size_t n) {
  p = realloc(p, n);
  if (!p) {
    fprintf(stderr, "floor: out of memory\n");
    abort();
  }
  return p;
}

static void msg_unref(msg_t *m) {
  if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1) free(m);
}

typedef struct fifo {
  msg_t **v;
  size_t head, len, cap, bytes;
} fifo_t;

static void fifo_push(fifo_t *f, msg_t *m) {
  if (f->len == f->cap) {
    size_t ncap = f->cap ? f->cap * 2 : 256;
    msg_t **nv = xmalloc(ncap * sizeof *nv);
    for (size_t i = 0; i < f->len; i++) nv[i] = f->v[(f->head + i) % f->cap];
    free(f->v);
    f->v = nv;
    f->head = 0;
    f->cap = ncap;
  }
  f->v[(f->head + f->len) % f->cap] = m;
  f->len++;
  f->bytes += m->size;
}

static size_t fifo_pop(fifo_t *f, msg_t **out, size_t want) {
  size_t n = want < f->len ? want : f->len;
  for (size_t i = 0; i < n; i++) {
    out[i] = f->v[f->head];
    f->bytes -= out[i]->size;
    f->head = (f->head + 1) % f->cap;
  }
  f->len -= n;
  return n;
}

static void fifo_clear(fifo_t *f) {
  msg_t *m;
  while (fifo_pop(f, &m, 1)) msg_unref(m);
  free(f->v);
  memset(f, 0, sizeof *f);
}

/* ---- nodes, connections, links ----------------------------------------- */

struct conn;
struct flink;

typedef struct node {
  char *name;
  bool topic;
  pthread_mutex_t lock;
  fifo_t q;              /* a queue's messages (topics: one FIFO per subscriber) */
  struct flink **cons;   /* consumer links (the floor sends) */
  size_t ncons, capcons;
  struct flink **prods;  /* producer links (the floor receives) */
  size_t nprods, capprods;
  atomic_bool full;      /* producers get no more credit */
  struct node *next;
} node_t;

typedef struct flink {
  struct conn *conn;
  pn_link_t *pn; /* NULL once unregistered */
  node_t *node;
  bool consumer;   /* the floor sends on it */
  bool presettled; /* consumer asked for snd-settle-mode settled */
  fifo_t sub;      /* topic subscription */
  uint64_t tag;
  msg_t *cur; /* producer: message being assembled from partial frames */
  struct flink *next;
} flink_t;

typedef struct pending {
  node_t *node;
  msg_t *msg;
} pending_t;

typedef struct conn {
  pn_connection_t *pn;
  atomic_bool wake_pending;
  bool dead; /* transport closed: free after this batch */
  flink_t *links;
  pending_t *pend; /* received this batch, queued at its end */
  size_t npend, cappend;
} conn_t;

static pthread_mutex_t nodes_lock = PTHREAD_MUTEX_INITIALIZER;
static node_t *nodes[4096];

static node_t *node_get(const char *name) {
  uint64_t h = 1469598103934665603ULL;
  for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
  node_t **slot = &nodes[h % (sizeof nodes / sizeof nodes[0])];
  pthread_mutex_lock(&nodes_lock);
  node_t *n = *slot;
  while (n && strcmp(n->name, name)) n = n->next;
  if (!n) {
    n = calloc(1, sizeof *n);
    if (!n) abort();
    n->name = strdup(name);
    n->topic = strncmp(name, "topic.", 6) == 0;
    pthread_mutex_init(&n->lock, NULL);
    n->next = *slot;
    *slot = n;
  }
  pthread_mutex_unlock(&nodes_lock);
  return n;
}

static void list_add(flink_t ***v, size_t *n, size_t *cap, flink_t *l) {
  if (*n == *cap) {
    *cap = *cap ? *cap * 2 : 8;
    *v = xrealloc(*v, *cap * sizeof **v);
  }
  (*v)[(*n)++] = l;
}

static void list_del(flink_t **v, size_t *n, flink_t *l) {
  for (size_t i = 0; i < *n; i++)
    if (v[i] == l) {
      v[i] = v[--*n];
      return;
    }
}

static void conn_wake(conn_t *c) {
  if (!atomic_exchange_explicit(&c->wake_pending, true, memory_order_acq_rel)) pn_connection_wake(c->pn);
}

/* Under n->lock: is the node above its limits? */
static bool node_over_locked(node_t *n, size_t msgs, size_t bytes) {
  if (!n->topic) return n->q.len >= msgs || n->q.bytes >= bytes;
  for (size_t i = 0; i < n->ncons; i++)
    if (n->cons[i]->sub.len >= msgs || n->cons[i]->sub.bytes >= bytes) return true;
  return false;
}

/* ---- producers ---------------------------------------------------------- */

static void refill_ct(flink_t *l) {
  if (!l->pn || atomic_load_explicit(&l->node->full, memory_order_relaxed)) return;
  int credit = pn_link_credit(l->pn);
  if (credit < opt.window / 2) pn_link_flow(l->pn, opt.window - credit);
}

static void received_ct(flink_t *l, pn_delivery_t *d) {
  pn_link_t *pl = l->pn;
  if (!pl || !pn_delivery_readable(d)) return;
  if (pn_delivery_aborted(d)) {
    free(l->cur);
    l->cur = NULL;
    pn_delivery_settle(d);
    return;
  }
  size_t pending = pn_delivery_pending(d);
  msg_t *m = l->cur;
  size_t have = m ? m->size : 0;
  if (!m || m->cap < have + pending) {
    size_t cap = have + pending;
    if (pn_delivery_partial(d) && cap < 2 * have) cap = 2 * have;
    m = xrealloc(m, sizeof *m + cap);
    m->size = have;
    m->cap = cap;
  }
  ssize_t got = pn_link_recv(pl, m->data + m->size, pending);
  if (got > 0) m->size += (size_t)got;
  l->cur = m;
  if (pn_delivery_partial(d)) return;
  l->cur = NULL;
  if (!pn_delivery_settled(d)) pn_delivery_update(d, PN_ACCEPTED);
  pn_delivery_settle(d);

  conn_t *c = l->conn;
  if (c->npend == c->cappend) {
    c->cappend = c->cappend ? c->cappend * 2 : 256;
    c->pend = xrealloc(c->pend, c->cappend * sizeof *c->pend);
  }
  c->pend[c->npend++] = (pending_t){l->node, m};
  refill_ct(l);
}

/* ---- consumers ---------------------------------------------------------- */

static void pump_ct(flink_t *l);

/* Under n->lock, after a consumer took messages: let producers go on. */
static void unblock_locked(node_t *n, conn_t *self, bool *self_refill) {
  if (!atomic_load_explicit(&n->full, memory_order_relaxed)) return;
  if (node_over_locked(n, opt.max_msgs / 2, opt.max_bytes / 2)) return;
  atomic_store(&n->full, false);
  for (size_t i = 0; i < n->nprods; i++) {
    if (n->prods[i]->conn == self)
      *self_refill = true;
    else
      conn_wake(n->prods[i]->conn);
  }
}

static void refill_all_ct(conn_t *c) {
  for (flink_t *l = c->links; l; l = l->next)
    if (!l->consumer) refill_ct(l);
}

static void pump_ct(flink_t *l) {
  pn_link_t *pl = l->pn;
  if (!pl) return;
  node_t *n = l->node;
  fifo_t *f = n->topic ? &l->sub : &n->q;
  msg_t *batch[POP_BATCH];
  bool self_refill = false;
  int credit = pn_link_credit(pl);
  while (credit > 0) {
    size_t want = credit < POP_BATCH ? (size_t)credit : POP_BATCH;
    pthread_mutex_lock(&n->lock);
    size_t got = fifo_pop(f, batch, want);
    if (got) unblock_locked(n, l->conn, &self_refill);
    pthread_mutex_unlock(&n->lock);
    for (size_t i = 0; i < got; i++) {
      msg_t *m = batch[i];
      pn_delivery_t *d = pn_delivery(pl, pn_dtag((const char *)&l->tag, sizeof l->tag));
      l->tag++;
      pn_link_send(pl, m->data, m->size);
      pn_link_advance(pl);
      if (l->presettled) pn_delivery_settle(d);
      msg_unref(m); /* pn_link_send copied the bytes */
    }
    credit -= (int)got;
    if (got < want) break;
  }
  if (credit > 0) pn_link_drained(pl);
  if (self_refill) refill_all_ct(l->conn);
}

/* End of a connection's event batch: queue what arrived, wake consumers. */
static void flush_ct(conn_t *c) {
  size_t i = 0;
  bool pump_self = false;
  while (i < c->npend) {
    node_t *n = c->pend[i].node;
    pthread_mutex_lock(&n->lock);
    for (; i < c->npend && c->pend[i].node == n; i++) {
      msg_t *m = c->pend[i].msg;
      if (!n->topic) {
        atomic_init(&m->refs, 1);
        fifo_push(&n->q, m);
      } else if (n->ncons == 0) {
        free(m);
      } else {
        atomic_init(&m->refs, (unsigned)n->ncons);
        for (size_t k = 0; k < n->ncons; k++) fifo_push(&n->cons[k]->sub, m);
      }
    }
    if (node_over_locked(n, opt.max_msgs, opt.max_bytes)) atomic_store(&n->full, true);
    for (size_t k = 0; k < n->ncons; k++) {
      if (n->cons[k]->conn == c)
        pump_self = true;
      else
        conn_wake(n->cons[k]->conn);
    }
    pthread_mutex_unlock(&n->lock);
  }
  c->npend = 0;
  if (pump_self && !c->dead)
    for (flink_t *l = c->links; l; l = l->next)
      if (l->consumer) pump_ct(l);
}

/* ---- link and connection lifecycle -------------------------------------- */

static void link_unregister_ct(flink_t *l) {
  if (!l->pn) return;
  node_t *n = l->node;
  pthread_mutex_lock(&n->lock);
  if (l->consumer)
    list_del(n->cons, &n->ncons, l);
  else
    list_del(n->prods, &n->nprods, l);
  fifo_clear(&l->sub);
  pthread_mutex_unlock(&n->lock);
  pn_link_set_context(l->pn, NULL);
  l->pn = NULL;
  free(l->cur);
  l->cur = NULL;
}

static void refuse_link_ct(pn_link_t *pl, const char *cond, const char *desc) {
  pn_condition_set_name(pn_link_condition(pl), cond);
  pn_condition_set_description(pn_link_condition(pl), desc);
  pn_link_open(pl);
  pn_link_close(pl);
}

static void link_open_ct(conn_t *c, pn_link_t *pl) {
  bool consumer = pn_link_is_sender(pl);
  pn_terminus_t *remote = consumer ? pn_link_remote_source(pl) : pn_link_remote_target(pl);
  const char *addr = pn_terminus_get_address(remote);
  if (!addr || !*addr || pn_terminus_is_dynamic(remote)) {
    refuse_link_ct(pl, "amqp:not-implemented", "the floor needs a link address");
    return;
  }
  pn_terminus_copy(consumer ? pn_link_source(pl) : pn_link_target(pl), remote);
  pn_link_set_snd_settle_mode(pl, pn_link_remote_snd_settle_mode(pl));
  pn_link_set_rcv_settle_mode(pl, PN_RCV_FIRST);

  flink_t *l = calloc(1, sizeof *l);
  if (!l) abort();
  l->conn = c;
  l->pn = pl;
  l->consumer = consumer;
  l->presettled = consumer && pn_link_remote_snd_settle_mode(pl) == PN_SND_SETTLED;
  l->node = node_get(addr);
  l->next = c->links;
  c->links = l;
  pn_link_set_context(pl, l);
  node_t *n = l->node;
  pthread_mutex_lock(&n->lock);
  if (consumer)
    list_add(&n->cons, &n->ncons, &n->capcons, l);
  else
    list_add(&n->prods, &n->nprods, &n->capprods, l);
  pthread_mutex_unlock(&n->lock);
  pn_link_open(pl);
  if (!consumer) refill_ct(l);
}

static void conn_free_ct(conn_t *c) {
  flush_ct(c); /* what arrived stays queued for others */
  flink_t *l = c->links;
  while (l) {
    flink_t *next = l->next;
    link_unregister_ct(l);
    free(l);
    l = next;
  }
  free(c->pend);
  pn_connection_set_context(c->pn, NULL);
  free(c);
}

static void accept_ct(pn_listener_t *li) {
  conn_t *c = calloc(1, sizeof *c);
  if (!c) abort();
  c->pn = pn_connection();
  pn_transport_t *t = pn_transport();
  pn_transport_set_server(t);
  pn_transport_set_max_frame(t, 128 * 1024); /* hadrond's default */
  pn_sasl_allowed_mechs(pn_sasl(t), "ANONYMOUS");
  pn_connection_set_container(c->pn, "floor");
  pn_connection_set_context(c->pn, c);
  pn_listener_accept2(li, c->pn, t);
}

static void handle_ct(conn_t *c, pn_event_t *e) {
  pn_link_t *pl = pn_event_link(e);
  flink_t *l = pl ? pn_link_get_context(pl) : NULL;
  switch (pn_event_type(e)) {
  case PN_CONNECTION_REMOTE_OPEN: pn_connection_open(pn_event_connection(e)); break;
  case PN_CONNECTION_REMOTE_CLOSE: pn_connection_close(pn_event_connection(e)); break;
  case PN_SESSION_REMOTE_OPEN: pn_session_open(pn_event_session(e)); break;
  case PN_SESSION_REMOTE_CLOSE: pn_session_close(pn_event_session(e)); break;
  case PN_LINK_REMOTE_OPEN:
    if (!l) link_open_ct(c, pl);
    break;
  case PN_LINK_REMOTE_CLOSE:
  case PN_LINK_REMOTE_DETACH:
    if (l) link_unregister_ct(l);
    if (!(pn_link_state(pl) & PN_LOCAL_CLOSED)) pn_link_close(pl);
    break;
  case PN_LINK_FLOW:
    if (l && l->consumer) pump_ct(l);
    break;
  case PN_DELIVERY:
    if (!l) break;
    if (l->consumer) {
      pn_delivery_t *d = pn_event_delivery(e);
      if (pn_delivery_remote_state(d) || pn_delivery_settled(d)) pn_delivery_settle(d);
    } else {
      received_ct(l, pn_event_delivery(e));
    }
    break;
  case PN_CONNECTION_WAKE:
    atomic_store(&c->wake_pending, false); /* first: a wake posted meanwhile is kept */
    for (flink_t *k = c->links; k; k = k->next) {
      if (k->consumer)
        pump_ct(k);
      else
        refill_ct(k);
    }
    break;
  case PN_TRANSPORT_CLOSED: c->dead = true; break;
  default: break;
  }
}

static void *worker(void *arg) {
  (void)arg;
  for (;;) {
    pn_event_batch_t *b = pn_proactor_wait(P);
    conn_t *c = NULL; /* a batch holds one connection's events, or none */
    pn_event_t *e;
    bool stop = false;
    while ((e = pn_event_batch_next(b))) {
      switch (pn_event_type(e)) {
      case PN_LISTENER_ACCEPT: accept_ct(pn_event_listener(e)); break;
      case PN_LISTENER_OPEN: {
        char host[256], port[32];
        pn_netaddr_host_port(pn_listener_addr(pn_event_listener(e)), host, sizeof host, port,
                             sizeof port);
        fprintf(stderr, "floor: listening on %s:%s, %u threads\n", host, port, opt.threads);
        break;
      }
      case PN_LISTENER_CLOSE: {
        pn_condition_t *cond = pn_listener_condition(pn_event_listener(e));
        if (pn_condition_is_set(cond)) {
          fprintf(stderr, "floor: listen failed: %s\n", pn_condition_get_description(cond));
          exit(1);
        }
        break;
      }
      case PN_PROACTOR_INTERRUPT: stop = true; break;
      default:
        if (!c) {
          pn_connection_t *pc = pn_event_connection(e);
          c = pc ? pn_connection_get_context(pc) : NULL;
        }
        if (c) handle_ct(c, e);
        break;
      }
    }
    if (c) {
      if (c->dead)
        conn_free_ct(c);
      else if (c->npend)
        flush_ct(c);
    }
    pn_proactor_done(P, b);
    if (stop) return NULL;
  }
}

static int usage(void) {
  fprintf(stderr,
          "usage: floor [-a HOST] [-p PORT] [-t THREADS] [-w WINDOW] [-D MSGS] [-B BYTES]\n"
          "  -a HOST     listen address (default 127.0.0.1)\n"
          "  -p PORT     port (default 5673; 0 picks one, printed on stderr)\n"
          "  -t THREADS  proactor threads (default: CPU cores)\n"
          "  -w WINDOW   credit window of each producer link (default 200)\n"
          "  -D MSGS     messages an address holds before producers wait (default 100000)\n"
          "  -B BYTES    bytes an address holds before producers wait (default 64 MiB)\n");
  return 2;
}

int main(int argc, char **argv) {
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  opt.threads = ncpu > 0 ? (unsigned)ncpu : 1;
  int ch;
  while ((ch = getopt(argc, argv, "a:p:t:w:D:B:h")) != -1) {
    switch (ch) {
    case 'a': opt.host = optarg; break;
    case 'p': opt.port = optarg; break;
    case 't': opt.threads = (unsigned)atoi(optarg); break;
    case 'w': opt.window = atoi(optarg); break;
    case 'D': opt.max_msgs = (size_t)atoll(optarg); break;
    case 'B': opt.max_bytes = (size_t)atoll(optarg); break;
    default: return usage();
    }
  }
  if (optind < argc || opt.threads < 1 || opt.threads > 256 || opt.window < 2 || opt.max_msgs < 2 ||
      opt.max_bytes < 2)
    return usage();

  /* Queued messages come and go by the ten thousand: keep the heap's top
   * instead of trimming and faulting it in again (sysmalloc and page faults
   * were a tenth of the floor's time without this). */
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  mallopt(M_TOP_PAD, 64 << 20);

  /* Only the main thread takes SIGINT/SIGTERM. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);

  P = pn_proactor();
  char addr[PN_MAX_ADDR];
  pn_proactor_addr(addr, sizeof addr, opt.host, opt.port);
  pn_proactor_listen(P, pn_listener(), addr, 1024);

  pthread_t *th = xmalloc(opt.threads * sizeof *th);
  for (unsigned i = 0; i < opt.threads; i++) pthread_create(&th[i], NULL, worker, NULL);
  int sig;
  sigwait(&sigs, &sig);
  /* A floor keeps no state worth draining: leave at once. */
  fprintf(stderr, "floor: signal %d, exiting\n", sig);
  fflush(stderr);
  _exit(0);
}
