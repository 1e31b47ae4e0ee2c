/* What one file of the store's log holds that LMDB does not yet
 * (store_log.h): the net effect of the operations logged in it since it
 * was started, kept by the writer thread only (one table per file).  A
 * delete of a message put in the same file, or in the other one while that
 * file's table is still pending, cancels the put, so LMDB never sees
 * either; the rest is written to LMDB at the file's checkpoint.  Relies on
 * a queue never reusing a seq.
 *
 * A queue's puts arrive in seq order and its deletes mostly in the same
 * order, so each node keeps its live puts in a ring indexed by seq: a put
 * appends, a delete clears a slot and the ring's front moves past cleared
 * slots.  No per-message allocation and no hash lookups, which mattered:
 * with a few hundred thousand messages in the log, a hash's cache misses
 * were the writer thread's largest cost.  A put that does not fit the ring
 * (older than its front, or far past its end) goes to a hash instead. */
#ifndef HD_STORE_TABLE_H
#define HD_STORE_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "message.h"
#include "store_log.h"

/* One live put as the table reports it. */
typedef struct hd_pend {
  uint64_t node, seq;
  uint32_t flags, delivery_count;
  hd_msg_t *msg; /* the table's reference; msg->expiry_ms is the record's expiry */
} hd_pend_t;

typedef struct hd_keyop {
  uint64_t node, seq;
  uint32_t delivery_count;
} hd_keyop_t;

typedef struct hd_keyops {
  hd_keyop_t *v;
  size_t n, cap;
} hd_keyops_t;

typedef struct hd_tnode hd_tnode_t;

/* A chained hash keyed by (node, seq); its elements start with a link. */
typedef struct hd_tlink {
  struct hd_tlink *next;
  uint64_t node, seq;
} hd_tlink_t;

typedef struct hd_tchain {
  hd_tlink_t **b;
  size_t n, count; /* buckets (a power of two), elements */
} hd_tchain_t;

typedef struct hd_table {
  size_t count;        /* live puts, rings and hash together */
  hd_tchain_t nodes;   /* per-node state, by node id (seq 0) */
  hd_tnode_t *last;    /* the node the previous operation found */
  hd_tchain_t xputs;   /* puts that did not fit their node's ring */
  hd_keyops_t dels;    /* of messages already in LMDB */
  hd_keyops_t updates; /* delivery counts of messages already in LMDB */
  hd_keyops_t hwms;    /* one per node: the latest mark */
  hd_keyops_t maxseq;  /* one per node: the highest seq put, even if since deleted */
} hd_table_t;

void hd_table_put(hd_table_t *t, uint64_t node, uint64_t seq, uint32_t flags,
                  uint32_t delivery_count, hd_msg_t *msg);
/* A delete: cancels a live put here or in `older` (the table of the log's
 * other file, or NULL), else is kept here for LMDB. */
void hd_table_del(hd_table_t *t, hd_table_t *older, uint64_t node, uint64_t seq);
/* A delivery count: changes a live put here or in `older`, else is kept
 * here for LMDB. */
void hd_table_update(hd_table_t *t, hd_table_t *older, uint64_t node, uint64_t seq, uint32_t delivery_count);
void hd_table_hwm(hd_table_t *t, uint64_t node, uint64_t seq);
/* The live put at (node, seq) removed, or its count changed: true;
 * false: there is none here (and nothing changed). */
bool hd_table_drop(hd_table_t *t, uint64_t node, uint64_t seq);
bool hd_table_recount(hd_table_t *t, uint64_t node, uint64_t seq, uint32_t delivery_count);
/* One logged operation.  A put takes a reference to msg, or (msg NULL, as
 * when reading a log back) a copy of op->bytes.  `older` (or NULL) is the
 * table of the log's other file: a delete or count of a put still alive
 * there changes that put (so that the checkpoint of that file writes the
 * message as it is now, or not at all); a crash later replays the same
 * operation against LMDB, where it finds nothing (a delete of a missing
 * record does nothing) or the same count.  0, or -ENOMEM. */
int hd_table_apply(hd_table_t *t, hd_table_t *older, const hd_slog_op_t *op, hd_msg_t *msg);
/* Nothing to write at a checkpoint. */
int hd_table_empty(const hd_table_t *t);
/* The puts still alive, sorted by node and seq (malloc'd; *n of them; the
 * messages are the table's references, valid until it changes). */
hd_pend_t *hd_table_sorted(const hd_table_t *t, size_t *n);
/* Forget everything (after a checkpoint, or at close). */
void hd_table_clear(hd_table_t *t);

#endif
