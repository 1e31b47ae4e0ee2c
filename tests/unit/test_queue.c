/* core/node.h queues without any network: FIFO order, exact credit, round
 * robin, outcomes (release, failed release, undeliverable-here), browsing,
 * max-depth, expiry and statistics. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "codec.h"
#include "hadron/module.h"
#include "message.h"
#include "node.h"
#include "unit_msg.h"

#define NMSG 8

/* ---- fixtures ------------------------------------------------------------- */

/* Consumers' notify calls, in order, by consumer id. */
static uint64_t notified[64];
static size_t n_notified;

static void on_notify(hd_consumer_t *c) {
  assert_true(n_notified < 64);
  notified[n_notified++] = c->id;
}

static hd_msg_t *msgs[NMSG];

/* unit_msg(i) with an expiry. */
static hd_msg_t *make_msg(int i, uint64_t expiry_ms) {
  hd_msg_t *m = unit_msg(i);
  m->expiry_ms = expiry_ms;
  return m;
}

static int64_t mem_before;

static int setup(void **state) {
  (void)state;
  mem_before = hd_msg_mem_used();
  n_notified = 0;
  for (int i = 0; i < NMSG; i++) msgs[i] = make_msg(i, 0);
  return 0;
}

/* Every test must leave no message alive: the queue and its entries must
 * have dropped their references. */
static int teardown(void **state) {
  (void)state;
  for (int i = 0; i < NMSG; i++) {
    hd_msg_unref(msgs[i]);
    msgs[i] = NULL;
  }
  assert_int_equal(hd_msg_mem_used(), mem_before);
  return 0;
}

static hd_queue_t *new_queue(int max_deliveries, int64_t max_depth) {
  hd_node_opts_t defaults = {"", "", 0, 0, 0};
  hd_node_opts_t opts = {NULL, NULL, max_deliveries, max_depth, 0};
  hd_node_t *n = hd_node_new(HD_NODE_QUEUE, "q", 0, &opts, &defaults);
  assert_non_null(n);
  hd_queue_t *q = hd_node_queue(n);
  assert_non_null(q);
  assert_int_equal(q->node.max_deliveries, max_deliveries);
  assert_int_equal(q->node.max_depth, max_depth);
  return q;
}

static void consumer_init(hd_consumer_t *c, uint64_t id, bool browse) {
  memset(c, 0, sizeof *c);
  c->id = id;
  c->browse = browse;
  c->notify = on_notify;
}

static void put(hd_queue_t *q, int i) { assert_int_equal(hd_queue_put(q, msgs[i], 0), 0); }

/* Pump and check the batch holds exactly the messages `want` (indexes,
 * -1 terminated), in order.  Returns the entries, linked by next. */
static hd_entry_t *pump_expect(hd_queue_t *q, hd_consumer_t *c, int64_t credit, const int *want) {
  hd_batch_t b;
  hd_queue_pump(q, c, credit, false, &b);
  size_t n = 0;
  while (want[n] >= 0) n++;
  if (b.n != n) fail_msg("consumer %llu: batch of %u, expected %zu", (unsigned long long)c->id, b.n, n);
  hd_entry_t *e = b.head;
  for (size_t i = 0; i < n; i++, e = e->next) {
    assert_non_null(e);
    if (e->msg != msgs[want[i]]) fail_msg("consumer %llu: item %zu is not m%d", (unsigned long long)c->id, i, want[i]);
  }
  assert_null(e);
  assert_null(b.expired);
  return b.head;
}

static void ack_all(hd_queue_t *q, hd_entry_t *list) {
  while (list) {
    hd_entry_t *next = list->next;
    hd_queue_ack(q, list);
    list = next;
  }
}

static hd_queue_stats_t stats(hd_queue_t *q) {
  hd_queue_stats_t s;
  hd_queue_stats(q, &s);
  assert_int_equal(s.depth, s.available + s.in_flight);
  return s;
}

static const int NONE[] = {-1};

/* ---- tests ---------------------------------------------------------------- */

/* Messages put before any consumer come out in the order they were put,
 * with increasing sequence numbers; acks empty the queue. */
static void t_fifo(void **state) {
  (void)state;
  hd_queue_t *q = new_queue(0, 0);
  for (int i = 0; i < 5; i++) put(q, i);
  hd_queue_stats_t s = stats(q);
  assert_int_equal(s.available, 5);
  assert_int_equal(s.enqueued, 5);
  assert_int_equal(s.in_flight, 0);

  hd_consumer_t c;
  consumer_init(&c, 1, false);
  hd_queue_attach(q, &c);
  hd_entry_t *got = pump_expect(q, &c, 10, (const int[]){0, 1, 2, 3, 4, -1});
  for (hd_entry_t *e = got; e && e->next; e = e->next) assert_true(e->seq < e->next->seq);
  s = stats(q);
  assert_int_equal(s.available, 0);
  assert_int_equal(s.in_flight, 5);
  ack_all(q, got);
  s = stats(q);
  assert_int_equal(s.depth, 0);
  assert_int_equal(s.acknowledged, 5);
  hd_queue_detach(q, &c);
  hd_node_unref(&q->node);
}

/* A consumer gets exactly as many messages as its credit; lowering the
 * credit gives the excess of its outbox back, in order; drain uses up the
 * credit so later messages wait. */
static void t_credit_exact(void **state) {
  (void)state;
  hd_queue_t *q = new_queue(0, 0);
  for (int i = 0; i < 5; i++) put(q, i);
  hd_consumer_t c;
  consumer_init(&c, 1, false);
  hd_queue_attach(q, &c);
  hd_entry_t *a = pump_expect(q, &c, 1, (const int[]){0, -1});
  assert_int_equal(stats(q).available, 4);
  hd_entry_t *b = pump_expect(q, &c, 2, (const int[]){1, 2, -1});
  assert_int_equal(stats(q).available, 2);
  hd_entry_t *none = pump_expect(q, &c, 0, NONE);
  assert_null(none);
  ack_all(q, a);
  ack_all(q, b);

  /* Drain: two available, credit 5 -> two sent, credit gone. */
  hd_batch_t bt;
  hd_queue_pump(q, &c, 5, true, &bt);
  assert_int_equal(bt.n, 2);
  assert_true(bt.drained);
  ack_all(q, bt.head);
  n_notified = 0;
  put(q, 5);
  assert_int_equal(n_notified, 0);
  assert_int_equal(stats(q).available, 1);
  hd_entry_t *d = pump_expect(q, &c, 1, (const int[]){5, -1});
  ack_all(q, d);

  /* Credit 3 with nothing waiting: the next puts go to the outbox and the
   * consumer is woken once; then the peer lowers its credit to 1. */
  none = pump_expect(q, &c, 3, NONE);
  n_notified = 0;
  put(q, 6);
  put(q, 7);
  assert_int_equal(n_notified, 1);
  assert_int_equal(notified[0], 1);
  assert_int_equal(stats(q).in_flight, 2);
  hd_entry_t *e = pump_expect(q, &c, 1, (const int[]){6, -1});
  hd_queue_stats_t s = stats(q);
  assert_int_equal(s.available, 1);
  assert_int_equal(s.in_flight, 1);
  hd_entry_t *f = pump_expect(q, &c, 1, (const int[]){7, -1});
  ack_all(q, e);
  ack_all(q, f);
  assert_int_equal(stats(q).acknowledged, 8);
  hd_queue_detach(q, &c);
  hd_node_unref(&q->node);
}

/* Two consumers with credit share new messages alternately; each is woken
 * when its outbox becomes non-empty. */
static void t_round_robin(void **state) {
  (void)state;
  hd_queue_t *q = new_queue(0, 0);
  hd_consumer_t a, b;
  consumer_init(&a, 1, false);
  consumer_init(&b, 2, false);
  hd_queue_attach(q, &a);
  hd_queue_attach(q, &b);
  assert_int_equal(stats(q).consumers, 2);
  pump_expect(q, &a, 2, NONE);
  pump_expect(q, &b, 2, NONE);
  n_notified = 0;
  for (int i = 0; i < 5; i++) put(q, i);
  assert_int_equal(n_notified, 2);
  assert_int_equal(notified[0], 1);
  assert_int_equal(notified[1], 2);
  hd_entry_t *ga = pump_expect(q, &a, 2, (const int[]){0, 2, -1});
  hd_entry_t *gb = pump_expect(q, &b, 2, (const int[]){1, 3, -1});
  /* No credit left anywhere: the fifth waits. */
  assert_int_equal(stats(q).available, 1);
  ack_all(q, ga);
  ack_all(q, gb);
  hd_entry_t *gc = pump_expect(q, &b, 1, (const int[]){4, -1});
  ack_all(q, gc);
  hd_queue_detach(q, &a);
  hd_queue_detach(q, &b);
  assert_int_equal(stats(q).consumers, 0);
  hd_node_unref(&q->node);
}

/* Entries in a detaching consumer's outbox go back (not as failed
 * deliveries) and reach another consumer with credit, in order. */
static void t_detach_returns_outbox(void **state) {
  (void)state;
  hd_queue_t *q = new_queue(0, 0);
  hd_consumer_t a, b;
  consumer_init(&a, 1, false);
  consumer_init(&b, 2, false);
  hd_queue_attach(q, &a);
  pump_expect(q, &a, 3, NONE);
  put(q, 0);
  put(q, 1);
  assert_int_equal(stats(q).in_flight, 2);
  hd_queue_attach(q, &b);
  pump_expect(q, &b, 5, NONE);
  n_notified = 0;
  hd_queue_detach(q, &a);
  assert_int_equal(n_notified, 1);
  assert_int_equal(notified[0], 2);
  hd_entry_t *got = pump_expect(q, &b, 5, (const int[]){0, 1, -1});
  for (hd_entry_t *e = got; e; e = e->next) {
    assert_int_equal(e->delivery_count, 0);
    assert_false(e->flags & HD_ENT_DELIVERED);
  }
  ack_all(q, got);

  /* Without another consumer they wait in the list. */
  pump_expect(q, &b, 2, NONE);
  put(q, 2);
  put(q, 3);
  hd_queue_detach(q, &b);
  hd_queue_stats_t s = stats(q);
  assert_int_equal(s.available, 2);
  assert_int_equal(s.in_flight, 0);
  /* Detaching twice is harmless. */
  hd_queue_detach(q, &b);
  hd_node_unref(&q->node); /* frees the two waiting entries */
}

/* Released (not failed) entries go back in sequence order, before newer
 * ones, with their delivery count unchanged. */
static void t_release_requeues_in_order(void **state) {
  (void)state;
  hd_queue_t *q = new_queue(0, 0);
  for (int i = 0; i < 4; i++) put(q, i);
  hd_consumer_t c;
  consumer_init(&c, 1, false);
  hd_queue_attach(q, &c);
  hd_entry_t *got = pump_expect(q, &c, 4, (const int[]){0, 1, 2, 3, -1});
  hd_entry_t *e[4];
  for (int i = 0; i < 4; i++, got = got->next) e[i] = got;
  put(q, 4);
  assert_true(hd_queue_release(q, e[2], false, 0));
  assert_true(hd_queue_release(q, e[0], false, 0));
  hd_queue_stats_t s = stats(q);
  assert_int_equal(s.available, 3);
  assert_int_equal(s.in_flight, 2);
  hd_entry_t *again = pump_expect(q, &c, 10, (const int[]){0, 2, 4, -1});
  for (hd_entry_t *x = again; x; x = x->next) assert_int_equal(x->delivery_count, 0);
  ack_all(q, again);
  hd_queue_ack(q, e[1]);
  hd_queue_ack(q, e[3]);
  assert_int_equal(stats(q).depth, 0);

  /* hd_queue_unsend gives back never-sent entries the same way. */
  put(q, 5);
  put(q, 6);
  put(q, 7);
  got = pump_expect(q, &c, 3, (const int[]){5, 6, 7, -1});
  hd_queue_unsend(q, got->next);
  got->next = NULL;
  assert_int_equal(stats(q).available, 2);
  hd_entry_t *rest = pump_expect(q, &c, 3, (const int[]){6, 7, -1});
  ack_all(q, got);
  ack_all(q, rest);
  hd_queue_detach(q, &c);
  hd_node_unref(&q->node);
}

/* A failed release counts a delivery; at max-deliveries release answers
 * false and the entry stays acquired until the caller drops it. */
static void t_failed_release_max_deliveries(void **state) {
  (void)state;
  hd_queue_t *q = new_queue(3, 0);
  put(q, 0);
  hd_consumer_t c;
  consumer_init(&c, 1, false);
  hd_queue_attach(q, &c);
  for (uint32_t attempt = 1; attempt <= 3; attempt++) {
    hd_entry_t *e = pump_expect(q, &c, 1, (const int[]){0, -1});
    assert_int_equal(e->delivery_count, attempt - 1);
    bool requeued = hd_queue_release(q, e, true, 0);
    assert_int_equal(e->delivery_count, attempt);
    if (attempt < 3) {
      assert_true(requeued);
      assert_int_equal(stats(q).available, 1);
    } else {
      assert_false(requeued);
      hd_queue_stats_t s = stats(q);
      assert_int_equal(s.available, 0);
      assert_int_equal(s.in_flight, 1);
      hd_queue_drop(q, e, HD_DROP_DEAD);
    }
  }
  hd_queue_stats_t s = stats(q);
  assert_int_equal(s.depth, 0);
  assert_int_equal(s.dead_lettered, 1);
  pump_expect(q, &c, 1, NONE);
  hd_queue_detach(q, &c);
  hd_node_unref(&q->node);

  /* max-deliveries 0: unlimited. */
  q = new_queue(0, 0);
  put(q, 1);
  hd_queue_attach(q, &c);
  for (int i = 0; i < 20; i++) {
    hd_entry_t *e = pump_expect(q, &c, 1, (const int[]){1, -1});
    assert_true(hd_queue_release(q, e, true, 0));
  }
  hd_entry_t *e = pump_expect(q, &c, 1, (const int[]){1, -1});
  assert_int_equal(e->delivery_count, 20);
  hd_queue_drop(q, e, HD_DROP_DISCARD);
  assert_int_equal(stats(q).dropped, 1);
  hd_queue_detach(q, &c);
  hd_node_unref(&q->node);
}

/* undeliverable-here: the entry is never offered to that consumer again,
 * others get it, and it does not block messages behind it. */
static void t_undeliverable_here(void **state) {
  (void)state;
  hd_queue_t *q = new_queue(0, 0);
  hd_consumer_t a, b, c;
  consumer_init(&a, 11, false);
  consumer_init(&b, 22, false);
  consumer_init(&c, 33, false);
  hd_queue_attach(q, &a);
  hd_queue_attach(q, &b);
  put(q, 0);
  hd_entry_t *e = pump_expect(q, &a, 1, (const int[]){0, -1});
  assert_true(hd_queue_release(q, e, false, a.id));
  assert_int_equal(e->n_avoid, 1);
  pump_expect(q, &a, 1, NONE); /* a keeps its credit */
  /* A newer message is not held up by the one a may not take. */
  put(q, 1);
  hd_entry_t *a1 = pump_expect(q, &a, 1, (const int[]){1, -1});
  ack_all(q, a1);

  e = pump_expect(q, &b, 1, (const int[]){0, -1});
  assert_true(hd_queue_release(q, e, false, b.id));
  assert_int_equal(e->n_avoid, 2);
  pump_expect(q, &a, 5, NONE);
  pump_expect(q, &b, 5, NONE);
  assert_int_equal(stats(q).available, 1);

  hd_queue_attach(q, &c);
  e = pump_expect(q, &c, 1, (const int[]){0, -1});
  /* Avoiding a consumer already avoided records it once. */
  assert_true(hd_queue_release(q, e, false, a.id));
  assert_int_equal(e->n_avoid, 2);
  e = pump_expect(q, &c, 1, (const int[]){0, -1});
  ack_all(q, e);
  hd_queue_detach(q, &a);
  hd_queue_detach(q, &b);
  hd_queue_detach(q, &c);
  hd_node_unref(&q->node);
}

/* A browser gets copies: the queue keeps every message, a browser sees each
 * message once, and is woken for new ones; consumers still get them all. */
static void t_browse(void **state) {
  (void)state;
  hd_queue_t *q = new_queue(0, 0);
  for (int i = 0; i < 3; i++) put(q, i);
  hd_consumer_t br, c;
  consumer_init(&br, 5, true);
  consumer_init(&c, 6, false);
  hd_queue_attach(q, &br);
  assert_int_equal(stats(q).consumers, 0);
  hd_entry_t *copies = pump_expect(q, &br, 10, (const int[]){0, 1, 2, -1});
  for (hd_entry_t *e = copies; e; e = e->next) assert_true(e->flags & HD_ENT_COPY);
  hd_queue_stats_t s = stats(q);
  assert_int_equal(s.available, 3);
  assert_int_equal(s.in_flight, 0);
  ack_all(q, copies); /* settling a copy consumes nothing */
  assert_int_equal(stats(q).available, 3);
  assert_int_equal(stats(q).acknowledged, 0);

  pump_expect(q, &br, 10, NONE); /* seen them all */
  n_notified = 0;
  put(q, 3);
  assert_int_equal(n_notified, 1);
  assert_int_equal(notified[0], 5);
  copies = pump_expect(q, &br, 10, (const int[]){3, -1});
  ack_all(q, copies);

  /* Credit limits copies too; the rest come with the next pump. */
  put(q, 4);
  put(q, 5);
  copies = pump_expect(q, &br, 1, (const int[]){4, -1});
  ack_all(q, copies);
  copies = pump_expect(q, &br, 5, (const int[]){5, -1});
  ack_all(q, copies);

  hd_queue_attach(q, &c);
  hd_entry_t *all = pump_expect(q, &c, 10, (const int[]){0, 1, 2, 3, 4, 5, -1});
  ack_all(q, all);
  assert_int_equal(stats(q).depth, 0);
  hd_queue_detach(q, &br);
  hd_queue_detach(q, &c);
  hd_node_unref(&q->node);
}

/* max-depth counts available and in-flight entries; a full queue refuses
 * with HD_EFULL and accepts again after an ack. */
static void t_max_depth(void **state) {
  (void)state;
  hd_queue_t *q = new_queue(0, 2);
  put(q, 0);
  put(q, 1);
  assert_int_equal(hd_queue_put(q, msgs[2], 0), HD_EFULL);
  assert_int_equal(hd_node_put(&q->node, msgs[2]), HD_EFULL);
  assert_int_equal(stats(q).enqueued, 2);
  hd_consumer_t c;
  consumer_init(&c, 1, false);
  hd_queue_attach(q, &c);
  hd_entry_t *e = pump_expect(q, &c, 1, (const int[]){0, -1});
  assert_int_equal(hd_queue_put(q, msgs[2], 0), HD_EFULL); /* in flight still counts */
  ack_all(q, e);
  put(q, 2);
  hd_entry_t *all = pump_expect(q, &c, 5, (const int[]){1, 2, -1});
  ack_all(q, all);
  hd_queue_detach(q, &c);
  hd_node_unref(&q->node);
}

/* hd_queue_take_expired removes exactly the available entries whose expiry
 * has passed; a pump sets aside expired entries instead of sending them. */
static void t_expiry(void **state) {
  (void)state;
  hd_queue_t *q = new_queue(0, 0);
  msgs[0]->expiry_ms = 1000;
  msgs[2]->expiry_ms = 3000;
  msgs[3]->expiry_ms = 2000;
  for (int i = 0; i < 4; i++) put(q, i);
  assert_null(hd_queue_take_expired(q, 500));
  assert_int_equal(stats(q).available, 4);

  hd_entry_t *ex = hd_queue_take_expired(q, 2000);
  bool seen[4] = {false};
  size_t n = 0;
  while (ex) {
    hd_entry_t *next = ex->next;
    for (int i = 0; i < 4; i++)
      if (ex->msg == msgs[i]) seen[i] = true;
    n++;
    hd_queue_drop(q, ex, HD_DROP_EXPIRED);
    ex = next;
  }
  assert_int_equal(n, 2);
  assert_true(seen[0] && seen[3]);
  hd_queue_stats_t s = stats(q);
  assert_int_equal(s.expired, 2);
  assert_int_equal(s.available, 2);
  assert_int_equal(s.in_flight, 0);
  assert_null(hd_queue_take_expired(q, 2999));
  ex = hd_queue_take_expired(q, 3000);
  assert_non_null(ex);
  assert_ptr_equal(ex->msg, msgs[2]);
  assert_null(ex->next);
  hd_queue_drop(q, ex, HD_DROP_EXPIRED);
  assert_int_equal(stats(q).expired, 3);

  /* Expired long ago (wall clock): a pump does not deliver it. */
  msgs[4]->expiry_ms = 1;
  put(q, 4);
  put(q, 5);
  hd_consumer_t c;
  consumer_init(&c, 1, false);
  hd_queue_attach(q, &c);
  hd_batch_t b;
  hd_queue_pump(q, &c, 10, false, &b);
  assert_int_equal(b.n, 2);
  assert_ptr_equal(b.head->msg, msgs[1]);
  assert_ptr_equal(b.head->next->msg, msgs[5]);
  assert_non_null(b.expired);
  assert_ptr_equal(b.expired->msg, msgs[4]);
  assert_null(b.expired->next);
  hd_queue_drop(q, b.expired, HD_DROP_EXPIRED);
  ack_all(q, b.head);
  s = stats(q);
  assert_int_equal(s.expired, 4);
  assert_int_equal(s.depth, 0);
  assert_int_equal(s.acknowledged, 2);
  assert_int_equal(s.enqueued, 6);
  hd_queue_detach(q, &c);
  hd_node_unref(&q->node);
}

/* An entry that has expired by the time a consumer pumps is never handed
 * out, also when it reached the consumer's outbox directly (put while the
 * consumer had credit, or released after its expiry to a consumer with
 * credit): the pump sets it aside in b.expired like a waiting one. */
static void t_expired_never_delivered(void **state) {
  (void)state;
  hd_queue_t *q = new_queue(0, 0);
  hd_consumer_t c;
  consumer_init(&c, 1, false);
  hd_queue_attach(q, &c);
  pump_expect(q, &c, 5, NONE);
  msgs[0]->expiry_ms = 1; /* long past on the wall clock */
  put(q, 0);
  put(q, 1);
  hd_batch_t b;
  hd_queue_pump(q, &c, 5, false, &b);
  bool sent_expired = false;
  for (hd_entry_t *e = b.head; e; e = e->next) sent_expired |= e->msg == msgs[0];
  hd_entry_t *gone = b.expired;
  size_t n = b.n;
  hd_entry_t *head = b.head;
  /* Free whatever came back before asserting, so a failure leaks nothing. */
  for (hd_entry_t *e = gone, *next; e; e = next) {
    next = e->next;
    hd_queue_drop(q, e, HD_DROP_EXPIRED);
  }
  ack_all(q, head);
  uint64_t expired = stats(q).expired;
  hd_queue_detach(q, &c);
  hd_node_unref(&q->node);
  assert_false(sent_expired);
  assert_int_equal(n, 1);
  assert_non_null(gone);
  assert_int_equal(expired, 1);
}

/* The counters add up over a mixed history. */
static void t_stats(void **state) {
  (void)state;
  hd_queue_t *q = new_queue(2, 0);
  hd_consumer_t c;
  consumer_init(&c, 1, false);
  hd_queue_attach(q, &c);
  for (int i = 0; i < 4; i++) put(q, i);
  hd_entry_t *got = pump_expect(q, &c, 3, (const int[]){0, 1, 2, -1});
  hd_entry_t *e0 = got, *e1 = got->next, *e2 = got->next->next;
  hd_queue_stats_t s = stats(q);
  assert_int_equal(s.enqueued, 4);
  assert_int_equal(s.available, 1);
  assert_int_equal(s.in_flight, 3);
  assert_int_equal(s.depth, 4);
  assert_int_equal(s.consumers, 1);
  hd_queue_ack(q, e0);
  assert_true(hd_queue_release(q, e1, true, 0)); /* 1 of 2 */
  hd_queue_drop(q, e2, HD_DROP_DISCARD);
  s = stats(q);
  assert_int_equal(s.acknowledged, 1);
  assert_int_equal(s.dropped, 1);
  assert_int_equal(s.available, 2);
  assert_int_equal(s.in_flight, 0);
  got = pump_expect(q, &c, 5, (const int[]){1, 3, -1});
  hd_entry_t *e3 = got->next;
  assert_false(hd_queue_release(q, got, true, 0)); /* 2 of 2 */
  hd_queue_drop(q, got, HD_DROP_DEAD);
  hd_queue_ack(q, e3);
  s = stats(q);
  assert_int_equal(s.dead_lettered, 1);
  assert_int_equal(s.acknowledged, 2);
  assert_int_equal(s.depth, 0);
  hd_queue_detach(q, &c);
  hd_node_unref(&q->node);
}

/* On a worker (hd_queues_collect), a thread's acknowledgements to one
 * queue take effect (counted, their messages freed) together, when the run
 * is flushed or breaks at another queue; elsewhere each at once. */
static void t_ack_runs(void **state) {
  (void)state;
  hd_queue_t *q = new_queue(0, 0), *q2 = new_queue(0, 0);
  hd_consumer_t c, c2;
  consumer_init(&c, 1, false);
  consumer_init(&c2, 2, false);
  hd_queue_attach(q, &c);
  hd_queue_attach(q2, &c2);
  for (int i = 0; i < 4; i++) put(q, i);
  put(q2, 4);
  hd_entry_t *got = pump_expect(q, &c, 4, (const int[]){0, 1, 2, 3, -1});
  hd_entry_t *got2 = pump_expect(q2, &c2, 1, (const int[]){4, -1});
  hd_entry_t *e0 = got, *e1 = got->next, *e2 = e1->next, *e3 = e2->next; /* an ack reuses next */
  hd_queue_ack(q, e0); /* not a worker: at once */
  assert_int_equal(stats(q).in_flight, 3);
  assert_int_equal(stats(q).acknowledged, 1);
  hd_queues_collect(true);
  hd_queue_ack(q, e1);
  hd_queue_ack(q, e2);
  assert_int_equal(stats(q).in_flight, 3); /* in the run */
  assert_int_equal(stats(q).acknowledged, 1);
  hd_queue_ack(q2, got2); /* another queue: q's run is applied */
  assert_int_equal(stats(q).in_flight, 1);
  assert_int_equal(stats(q).acknowledged, 3);
  assert_int_equal(stats(q2).in_flight, 1);
  hd_queue_ack(q, e3);
  assert_int_equal(stats(q2).in_flight, 0);
  assert_int_equal(stats(q2).acknowledged, 1);
  hd_queues_flush();
  hd_queues_flush(); /* nothing left: a no-op */
  hd_queues_collect(false);
  assert_int_equal(stats(q).depth, 0);
  assert_int_equal(stats(q).acknowledged, 4);
  hd_queue_detach(q, &c);
  hd_queue_detach(q2, &c2);
  hd_node_unref(&q->node);
  hd_node_unref(&q2->node);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(t_fifo, setup, teardown),
      cmocka_unit_test_setup_teardown(t_credit_exact, setup, teardown),
      cmocka_unit_test_setup_teardown(t_round_robin, setup, teardown),
      cmocka_unit_test_setup_teardown(t_detach_returns_outbox, setup, teardown),
      cmocka_unit_test_setup_teardown(t_release_requeues_in_order, setup, teardown),
      cmocka_unit_test_setup_teardown(t_failed_release_max_deliveries, setup, teardown),
      cmocka_unit_test_setup_teardown(t_undeliverable_here, setup, teardown),
      cmocka_unit_test_setup_teardown(t_browse, setup, teardown),
      cmocka_unit_test_setup_teardown(t_max_depth, setup, teardown),
      cmocka_unit_test_setup_teardown(t_expiry, setup, teardown),
      cmocka_unit_test_setup_teardown(t_expired_never_delivered, setup, teardown),
      cmocka_unit_test_setup_teardown(t_stats, setup, teardown),
      cmocka_unit_test_setup_teardown(t_ack_runs, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
