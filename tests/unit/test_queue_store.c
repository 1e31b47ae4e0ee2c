/* A durable queue on a real store (in a temporary directory), without any
 * network: the runs in which a worker thread hands a queue's messages and
 * acknowledgements to the store (node.h, hd_queues_collect). */
#include "config.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "codec.h"
#include "hadron/module.h"
#include "message.h"
#include "node.h"
#include "store.h"
#include "unit_msg.h"

#define NMSG 3
#define WAIT_MS 10000

static char dir[64];
static hd_store_t *store;
static hd_queue_t *q;
static hd_msg_t *msgs[NMSG];

/* ---- outcomes, reported on the store's writer thread --------------------- */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

typedef struct outcome {
  hd_deliver_cb_t cb; /* first */
  int rc;
  int index;
} outcome_t;
static outcome_t outs[NMSG];
static int order[NMSG], n_done;

static void on_done(hd_deliver_cb_t *cb, int rc) {
  outcome_t *o = (outcome_t *)cb;
  pthread_mutex_lock(&mu);
  o->rc = rc;
  order[n_done++] = o->index;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
}

typedef struct barrier {
  bool done;
  uint64_t ops; /* the store's operation count when it completed */
} barrier_t;

static void on_barrier(void *arg, int rc) {
  barrier_t *b = arg;
  hd_store_stats_t st;
  hd_store_get_stats(store, &st);
  (void)rc; /* a barrier completes once what came before is committed, or at close */
  pthread_mutex_lock(&mu);
  b->ops = st.ops;
  b->done = true;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
}

static void wait_for(const int *counter, int want, const bool *flag) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += WAIT_MS / 1000;
  pthread_mutex_lock(&mu);
  bool late = false;
  while (!late && (flag ? !*flag : *counter < want)) late = pthread_cond_timedwait(&cv, &mu, &until) != 0;
  pthread_mutex_unlock(&mu); /* before failing: the writer's reports take it */
  if (late) fail_msg("the store did not report in time");
}

/* Everything submitted so far is committed. */
static uint64_t settle_store(void) {
  barrier_t b = {0};
  hd_queues_after(on_barrier, &b);
  wait_for(NULL, 0, &b.done);
  return b.ops;
}

/* ---- fixtures -------------------------------------------------------------- */

static hd_msg_t *durable_msg(int i) {
  hd_msg_t *m = unit_msg(i);
  m->flags |= HD_MSG_DURABLE; /* as a header section with durable = true makes it */
  return m;
}

static int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/hd-unit-qstore-XXXXXX");
  assert_non_null(mkdtemp(dir));
  hd_store_opts_t o = {.map_size = 16u << 20, .log_size = 4u << 20};
  char err[512] = "";
  if (hd_store_open(dir, &o, &store, err, sizeof err) != 0) fail_msg("%s", err);
  hd_queues_use_store(store, INT64_MAX);
  assert_int_equal(hd_store_start(store), 0);
  hd_node_opts_t defaults = {"", "", 0, 0, 0};
  hd_node_opts_t opts = {NULL, NULL, 0, 0, 1};
  q = hd_node_queue(hd_node_new(HD_NODE_QUEUE, "q", 0, &opts, &defaults));
  assert_non_null(q);
  hd_queue_make_durable(q);
  for (int i = 0; i < NMSG; i++) {
    msgs[i] = durable_msg(i);
    outs[i] = (outcome_t){.cb.done = on_done, .rc = -1, .index = i};
  }
  n_done = 0;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  hd_queues_collect(false);
  hd_node_unref(&q->node);
  for (int i = 0; i < NMSG; i++) hd_msg_unref(msgs[i]);
  hd_store_close(store);
  hd_queues_use_store(NULL, INT64_MAX);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
  return 0;
}

/* A consumer on q, and the NMSG messages it takes (the first pump may
 * have to wait for the delivery mark to be committed). */
static hd_batch_t attach_and_pump(hd_consumer_t *c) {
  memset(c, 0, sizeof *c);
  c->id = 1;
  hd_queue_attach(q, c);
  hd_batch_t b = {0};
  for (int tries = 0; tries < 1000 && b.n == 0; tries++) {
    hd_queue_pump(q, c, NMSG, false, &b);
    if (b.n == 0) usleep(10000);
  }
  assert_int_equal(b.n, NMSG);
  return b;
}

/* ---- tests ----------------------------------------------------------------- */

/* On a worker, durable messages wait in the thread's run until it is
 * flushed, then get consecutive seqs, are committed in the order sent, and
 * reach a consumer in that order. */
static void t_put_run(void **state) {
  (void)state;
  hd_queues_collect(true);
  for (int i = 0; i < NMSG; i++) assert_int_equal(hd_node_deliver(&q->node, msgs[i], &outs[i].cb), HD_PENDING);
  settle_store(); /* hd_queues_after flushes the run first */
  /* Copied under the lock, checked outside it: a failed check leaves the
   * test at once, and the writer's reports still need the lock. */
  pthread_mutex_lock(&mu);
  int done = n_done, seen[NMSG], rcs[NMSG];
  for (int i = 0; i < NMSG; i++) seen[i] = order[i], rcs[i] = outs[i].rc;
  pthread_mutex_unlock(&mu);
  assert_int_equal(done, NMSG);
  for (int i = 0; i < NMSG; i++) {
    assert_int_equal(seen[i], i);
    assert_int_equal(rcs[i], 0);
  }

  hd_consumer_t c;
  hd_batch_t b = attach_and_pump(&c);
  hd_entry_t *e = b.head;
  uint64_t seq0 = e->seq;
  for (int i = 0; i < NMSG; i++, e = e->next) {
    assert_ptr_equal(e->msg, msgs[i]);
    assert_int_equal(e->seq, seq0 + (uint64_t)i);
  }
  for (e = b.head; e;) {
    hd_entry_t *next = e->next; /* an ack reuses next */
    hd_queue_ack(q, e);
    e = next;
  }
  hd_queues_flush();
  hd_queue_detach(q, &c);
}

/* A barrier asked for after acknowledgements completes only once their
 * deletes are committed: a consumer in rcv-settle-mode second hears that
 * its accept took effect from such a barrier (link_out.c). */
static void t_barrier_after_acks(void **state) {
  (void)state;
  for (int i = 0; i < NMSG; i++) assert_int_equal(hd_node_deliver(&q->node, msgs[i], &outs[i].cb), HD_PENDING);
  wait_for(&n_done, NMSG, NULL);
  hd_consumer_t c;
  hd_batch_t b = attach_and_pump(&c);
  uint64_t before = settle_store(); /* the delivery mark committed too */
  hd_queues_collect(true);
  for (hd_entry_t *e = b.head; e;) {
    hd_entry_t *next = e->next;
    hd_queue_ack(q, e);
    e = next;
  }
  barrier_t after = {0};
  hd_queues_after(on_barrier, &after); /* as link_out.c asks for it */
  wait_for(NULL, 0, &after.done);
  /* The three deletes and the barrier itself. */
  assert_true(after.ops >= before + NMSG + 1);
  hd_queue_stats_t st;
  hd_queue_stats(q, &st);
  assert_int_equal(st.acknowledged, NMSG);
  assert_int_equal(st.depth, 0);
  hd_queue_detach(q, &c);
}

/* hd_store_after is called under a queue's lock (a read from disk that
 * raised delivery counts holds its messages until a barrier): it must not
 * flush this thread's runs, whose flush takes that lock.  (A hang here
 * ends in main's alarm.) */
static void t_store_after_under_queue_lock(void **state) {
  (void)state;
  hd_queues_collect(true);
  assert_int_equal(hd_node_deliver(&q->node, msgs[0], &outs[0].cb), HD_PENDING); /* in the run */
  barrier_t b = {0};
  pthread_mutex_lock(&q->lock);
  hd_store_after(on_barrier, &b);
  pthread_mutex_unlock(&q->lock);
  wait_for(NULL, 0, &b.done);
  pthread_mutex_lock(&mu);
  int done = n_done;
  pthread_mutex_unlock(&mu);
  assert_int_equal(done, 0); /* still in the run */
  hd_queues_flush();
  wait_for(&n_done, 1, NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(t_put_run, setup, teardown),
      cmocka_unit_test_setup_teardown(t_barrier_after_acks, setup, teardown),
      cmocka_unit_test_setup_teardown(t_store_after_under_queue_lock, setup, teardown),
  };
  alarm(60); /* a deadlock fails the test instead of stopping make check */
  return cmocka_run_group_tests(tests, NULL, NULL);
}
