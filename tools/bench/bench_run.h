/* The run: connections, links and the threads that drive them.
 *
 * Threads and ownership.  Proton's proactor hands each connection's events
 * to one worker thread at a time, so everything in an hb_conn_t and its
 * links is owned by "the connection's thread" (functions suffixed _ct) and
 * needs no lock.  The controller (main thread, _main) and the pacer thread
 * (_pacer) only
 *   - read the hb_counts_t fields, which the owner writes with relaxed
 *     atomic stores (a plain store on common CPUs: the hot path takes no
 *     lock and does no read-modify-write),
 *   - set run-wide flags and wake connections (hb_conn_wake), and
 *   - read everything else after the worker threads are joined.
 * The histogram of a receiving connection is merged only after the join. */
#ifndef HB_RUN_H
#define HB_RUN_H

#include <proton/connection.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/proactor.h>
#include <proton/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "bench_hist.h"
#include "bench_msg.h"
#include "bench_opts.h"

#define HB_NO_LIMIT  UINT64_MAX
#define HB_ERROR_MAX 512

/* Progress counters of one connection: one writer (its thread). */
typedef struct hb_counts {
  _Atomic uint64_t sent, accepted, rejected, released, received, foreign;
  _Atomic uint64_t links_ready; /* remotely attached with a real terminus */
  _Atomic uint64_t links_done;  /* share sent and settled, or received */
} hb_counts_t;

static inline void hb_bump(_Atomic uint64_t *c) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1, memory_order_relaxed);
}

static inline uint64_t hb_get(_Atomic uint64_t *c) {
  return atomic_load_explicit(c, memory_order_relaxed);
}

struct hb_conn;

typedef struct hb_link {
  struct hb_conn *conn;
  pn_link_t *pn;
  char name[64];
  unsigned index;   /* among the links of its side, for the pacing offset */
  uint64_t share;   /* messages to send or receive; HB_NO_LIMIT */
  uint64_t done;    /* sent, or received (this run's messages only) */
  uint64_t settled; /* sender: outcomes seen */
  bool ready, finished;
  /* sender */
  hb_msg_t msg;
  uint64_t tag;
  uint64_t first_due; /* mono ns when message 0 is due (with --rate) */
  double interval_ns;
  /* receiver: the message being assembled (frames of a large one) */
  uint8_t *buf;
  size_t buf_len, buf_cap;
} hb_link_t;

typedef struct hb_conn {
  struct hb_run *run;
  unsigned id;
  bool sender; /* a connection carries only senders or only receivers */
  pn_connection_t *pn;
  hb_link_t *links;
  unsigned nlinks;
  hb_counts_t counts;
  hb_hist_t *hist; /* receiving connections */

  /* Wakes: the pacer and the controller post; the owner clears. */
  atomic_bool wake_pending;
  _Atomic uint64_t next_due; /* mono ns of the earliest due message; HB_NO_LIMIT */
  pthread_mutex_t lock;      /* guards `pn` against a wake after the transport closed */
  bool transport_closed;     /* under lock */

  /* Owner-only until the join. */
  bool closing;
  uint64_t last_send_ns, first_recv_ns, last_recv_ns, last_settle_ns;
  char error[HB_ERROR_MAX];
  char first_reject[HB_ERROR_MAX];
} hb_conn_t;

typedef struct hb_run {
  const hb_opts_t *o;
  pn_proactor_t *proactor;
  pn_ssl_domain_t *ssl;
  hb_conn_t *conns;
  unsigned nconns;
  unsigned send_links, recv_links;
  uint64_t run_id;
  int64_t wall_minus_mono; /* to turn a due time into a wall-clock stamp */

  /* Set by the controller; go_ns is written before go (release). */
  uint64_t go_ns;
  atomic_bool go, stop_sending, closing;
  atomic_bool failed; /* set by any connection's thread on an error */
  atomic_uint conns_open;

  /* The pacer sleeps until the earliest due time the sending connections
   * published.  A connection that publishes an earlier one (credit came
   * back after it had none, and with it a due time where there was
   * HB_NO_LIMIT) kicks it, or the messages due meanwhile would wait for
   * the pacer's longest sleep: 10 ms of latency that is the client's. */
  _Atomic uint64_t pacer_wake_ns; /* when it wakes; HB_NO_LIMIT while it looks */
  pthread_mutex_t pacer_lock;
  pthread_cond_t pacer_cond; /* on CLOCK_MONOTONIC */
  bool pacer_kicked;         /* under pacer_lock */
} hb_run_t;

/* bench_conn.c */
int hb_conn_start_main(hb_run_t *r, hb_conn_t *c, char *err, size_t errlen);
void hb_conn_handle_ct(pn_event_t *e);
void hb_conn_wake(hb_conn_t *c); /* any thread */
void hb_conn_fail_ct(hb_conn_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void hb_conn_free_main(hb_conn_t *c);

/* bench_send.c */
void hb_send_setup_ct(hb_link_t *l);
void hb_send_run_ct(hb_conn_t *c);
void hb_send_outcome_ct(hb_link_t *l, pn_delivery_t *d);

/* bench_recv.c */
void hb_recv_setup_ct(hb_link_t *l);
void hb_recv_delivery_ct(hb_link_t *l, pn_delivery_t *d);

/* bench_run.c */
void hb_pacer_note_due(hb_run_t *r, uint64_t due); /* any thread */

/* Runs to the end; the result is in the connections. */
typedef struct hb_result hb_result_t;
int hb_run(const hb_opts_t *o, hb_result_t *res);

#endif
