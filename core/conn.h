/* Connections and cross-thread work.
 *
 * Each connection is served by one proactor thread at a time (its owner for
 * that moment).  Other threads never touch its proton objects: they post a
 * work item (hd_conn_post), which wakes the connection, and the item runs on
 * the owner thread.  c->lock guards only `alive` and the work list. */
#ifndef HD_CONN_H
#define HD_CONN_H

#include <proton/connection.h>
#include <proton/event.h>
#include <proton/transport.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "hadron/module.h"
#include "server.h"

typedef struct hd_work {
  struct hd_work *next;
  void (*run)(struct hd_work *w); /* owner thread */
  /* Owner thread, instead of run, for work still queued when the
   * connection closes: frees what run would have freed (NULL: nothing). */
  void (*drop)(struct hd_work *w);
  bool queued;                    /* [c->lock] */
} hd_work_t;

typedef struct hd_conn {
  atomic_int refs;     /* the transport's, and one per store completion in flight */
  uint64_t id;
  pn_connection_t *pn; /* owner thread */
  pn_transport_t *transport;
  hd_listener_t *listener;
  pthread_mutex_t lock;
  bool alive;                    /* [lock] pn may be woken */
  hd_work_t *work_head, *work_tail; /* [lock] */
  hd_work_t flow_work;           /* gives producers credit back */
  hd_work_t drain_work;          /* closes the connection at shutdown */
  hd_work_t abort_work;          /* drops a peer stuck before open */
  uint64_t accepted_ms;          /* monotonic */
  bool opened;                   /* the peer's open arrived (owner thread) */
  bool flow_blocked;             /* [registry lock] */
  uint32_t sessions, links;      /* owner thread */
  uint32_t outstanding;          /* producer deliveries waiting for the store (owner) */
  bool drain_waiting;            /* shutdown closes once outstanding reaches 0 */
  const char *refuse_cond;       /* set at accept when over a limit */
  char refuse_desc[200];
  hd_conn_info_t info;
  char remote[96];
  char *user, *container, *tls_subject;
  char sasl_user[256]; /* proton keeps a pointer to the SASL user name */
  struct hd_conn *reg_next, *reg_prev; /* registry */
} hd_conn_t;

/* Accept a pending connection on l (PN_LISTENER_ACCEPT). */
void hd_conn_accept(hd_listener_t *l);
/* Connection, session, link, delivery and transport events. */
void hd_conn_event(pn_event_t *e);
/* Run w on c's owner thread soon.  Any thread.  False (and nothing queued)
 * when the connection has gone. */
bool hd_conn_post(hd_conn_t *c, hd_work_t *w);
void hd_conn_ref(hd_conn_t *c);
void hd_conn_unref(hd_conn_t *c); /* any thread; frees at zero */
/* Owner thread: one outstanding delivery got its outcome. */
void hd_conn_outstanding_done(hd_conn_t *c);
/* Take w off c's work list if it is there (owner thread, before freeing w). */
void hd_conn_unpost(hd_conn_t *c, hd_work_t *w);

/* Every connection: close at shutdown, or give producers credit again. */
void hd_conns_drain(void);
void hd_conns_resume_flow(void);
/* Remember that c has a producer waiting for memory (owner thread). */
void hd_conn_flow_blocked(hd_conn_t *c);
size_t hd_conns_count(void);
/* Drop peers that have not sent open within their listener's
 * handshake-timeout (server tick). */
void hd_conns_check_handshakes(uint64_t now_ms);

#endif
