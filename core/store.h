/* The durable store: one LMDB environment in <data-dir>/store.
 *
 * Named databases:
 *   meta    "format" -> u32 format version; "next-node" -> u64
 *   nodes   node id (u64 BE) -> node record (type, address, options)
 *   msgs    node id, seq (2 x u64 BE) -> message record (flags, delivery
 *           count, expiry, then the message bytes as received)
 *   qstat   node id -> message count and highest seq, kept by the writer so
 *           that start-up need not walk every message
 *   hwm     node id -> delivery high-water mark (see below)
 *
 * Writes: one writer thread owns every write transaction.  Other threads
 * submit operations (hd_store_submit) and never wait on disk; the writer
 * takes everything queued, applies it in one transaction, commits (one
 * fsync pair for the lot: group commit) and then calls each operation's
 * done() in submission order.  Order is kept per submitter, so a queue that
 * submits its operations under its own lock sees them complete in order.
 *
 * Delivery high-water mark: a durable queue records, before sending a
 * message, that messages up to some seq may have been delivered (it
 * reserves ahead, so this costs one small write per few hundred messages).
 * After a crash every message at or below the mark comes back with
 * delivery-count + 1 and first-acquirer false: a message that was sent and
 * not settled is never presented as new.
 *
 * Threads: hd_store_submit from any thread; reads (hd_store_scan) from any
 * thread, concurrently with the writer; open/recover/close single-threaded.
 */
#ifndef HD_STORE_H
#define HD_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hadron/module.h"
#include "message.h"
#include "settings.h"

#define HD_STORE_FORMAT 3

typedef struct hd_store hd_store_t;

/* Record flags. */
#define HD_REC_NONDURABLE 0x1u /* written only for paging; dropped at start-up */

typedef enum {
  HD_OP_PUT = 1,   /* msgs[node, seq] = record(msg); the op holds a msg reference */
  HD_OP_DEL,       /* delete msgs[node, seq] */
  HD_OP_UPDATE,    /* rewrite delivery count of msgs[node, seq] */
  HD_OP_NODE_PUT,  /* nodes[node] = blob */
  HD_OP_NODE_DEL,  /* delete the node and all its messages */
  HD_OP_HWM,       /* hwm[node] = seq */
  HD_OP_NOP,       /* writes nothing; completes in order with the others */
  HD_OP_BARRIER,   /* writes nothing; completes only once everything before it is committed */
  HD_OP_DELS,      /* delete msgs[node, s] for each s in blob (uint64_t[blob_len / 8]): a
                    * consumer's acknowledgements in one op (hd_queue_ack) */
} hd_store_op_kind_t;

typedef struct hd_store_op {
  struct hd_store_op *next;
  hd_store_op_kind_t kind;
  uint32_t flags;          /* HD_REC_* for PUT */
  uint32_t delivery_count; /* PUT, UPDATE */
  uint32_t body_crc;       /* PUT: crc32c of msg's bytes, set by hd_store_submit */
  uint64_t node, seq;
  hd_msg_t *msg;           /* PUT (and NOP, for the caller's use): one reference */
  void *blob;              /* NODE_PUT: malloc'd, freed by the store */
  size_t blob_len;
  /* Called on the writer thread after the commit (rc 0) or its failure
   * (rc < 0; HD_EFULL when the disk is full).  It owns the op from then on
   * and must free it with hd_store_op_free.  NULL: the store frees it. */
  void (*done)(struct hd_store_op *op, int rc);
  /* Optional, instead of done: consecutive ops of one commit with the same
   * done_run and node are completed in one call (first, then n - 1 more
   * through next; the list ends there), so that the owner takes its lock
   * once per run rather than once per message.  Each op's rc is set. */
  void (*done_run)(struct hd_store_op *first, size_t n);
  void *arg;
  int rc;       /* set by the store */
  bool in_tree; /* set by the store: a PUT's record is in LMDB (hd_store_scan
                 * finds it), not only in the store's log */
} hd_store_op_t;

/* Every op is allocated at this size (hd_obj_alloc), so that owners may
 * embed hd_store_op_t first in a larger struct of at most this size. */
#define HD_STORE_OP_SIZE 128
hd_store_op_t *hd_store_op_new(hd_store_op_kind_t kind);
void hd_store_op_free(hd_store_op_t *op);

typedef struct hd_store_opts {
  bool flush_interval;      /* true: commit without fsync, sync every interval_ms */
  uint32_t interval_ms;
  uint64_t map_size;        /* initial LMDB map size; grows when full */
  uint64_t reserve;         /* refuse new messages below this much free space */
  uint64_t log_size;        /* the log in front of LMDB (0: none) */
  void (*on_space)(void);   /* called (writer thread) when space is back */
  /* True while anything may be read back from disk (paged queues): the
   * writer then commits to LMDB directly.  NULL: never. */
  bool (*may_page)(void);
} hd_store_opts_t;

/* Open (creating if needed) and check the format.  err names the problem
 * and what to do.  A store that is refused is left as it was; one that
 * opens has what its log held moved into LMDB (an older format is raised
 * to HD_STORE_FORMAT then, or before the first commit to the log). */
int hd_store_open(const char *data_dir, const hd_store_opts_t *opts, hd_store_t **out, char *err,
                  size_t errlen);
/* Start the writer thread (after recovery). */
int hd_store_start(hd_store_t *s);
/* Finish queued operations, stop the writer, close the environment. */
void hd_store_close(hd_store_t *s);

/* True while producers should stop getting credit: free space is below
 * the reserve (new messages are then refused with HD_EFULL), or the
 * messages waiting for the writer exceed a few tens of MiB.  opts.on_space
 * is called when either ends.  Any thread. */
bool hd_store_full(const hd_store_t *s);

/* Queue an operation (any thread).  Ownership passes to the store. */
void hd_store_submit(hd_store_t *s, hd_store_op_t *op);
/* The same for a chain of ops (through next), in that order, with one
 * lock round trip. */
void hd_store_submit_list(hd_store_t *s, hd_store_op_t *head);

/* ---- reading ------------------------------------------------------------ */

typedef struct hd_store_node {
  uint64_t id;
  hd_node_type_t type;
  const char *address;
  hd_node_opts_t opts;   /* strings borrowed for the callback */
  uint64_t count;        /* messages */
  uint64_t max_seq;
  uint64_t hwm;
} hd_store_node_t;

/* Call fn for every stored node.  Single-threaded start-up use. */
int hd_store_each_node(hd_store_t *s, int (*fn)(const hd_store_node_t *n, void *arg), void *arg,
                       char *err, size_t errlen);

typedef struct hd_store_rec {
  uint64_t seq;
  uint32_t flags, delivery_count;
  uint64_t expiry_ms;
  const uint8_t *bytes; /* the message; borrowed for the callback */
  size_t len;
} hd_store_rec_t;

/* Read node's messages with seq >= from, in order, until fn returns
 * non-zero or max records were read.  Returns the number read, or < 0. */
long hd_store_scan(hd_store_t *s, uint64_t node, uint64_t from, size_t max,
                   int (*fn)(const hd_store_rec_t *r, void *arg), void *arg);

/* A fresh node id (persisted by the NODE_PUT that uses it). */
uint64_t hd_store_new_node_id(hd_store_t *s);

/* Encode a node record for HD_OP_NODE_PUT (malloc'd). */
void *hd_store_node_blob(hd_node_type_t type, const char *address, const hd_node_opts_t *opts,
                         size_t *len);

typedef struct hd_store_stats {
  uint64_t commits, ops, syncs, failed_commits, map_size, map_grows, log_batches, checkpoints;
  uint64_t log_switches; /* of the checkpoints, those of one full log file */
  uint64_t ckpt_puts;    /* messages the checkpoints wrote to LMDB */
} hd_store_stats_t;
void hd_store_get_stats(hd_store_t *s, hd_store_stats_t *out);

/* ---- offline inspection (hadron-store; store_inspect.c) ------------------ */

/* Print the store's format, size and every queue with its message count
 * (through `say`, one line per call).  Read-only: safe while a broker runs. */
int hd_store_info(const char *data_dir, void (*say)(const char *line, void *arg), void *arg,
                  char *err, size_t errlen);
/* Consistency check: every record parses (messages as AMQP), each node's
 * count and highest seq match its statistics, no message belongs to an
 * unknown node.  Reports problems through `say`; returns how many there
 * were, or < 0 (err filled) when the store cannot be read at all. */
long hd_store_check(const char *data_dir, void (*say)(const char *line, void *arg), void *arg,
                    char *err, size_t errlen);

/* Damaged stores (store_guard.c): install() once, then each stretch of
 * LMDB work is bracketed by enter(what) and leave(the value enter
 * returned).  A crash inside one prints "<who>: store DATA_DIR/store:
 * damaged, LMDB crashed (signal N) while <what>" and what to do (with
 * suggest_check, the hadron-store command to look closer), and exits 1. */
void hd_store_guard_install(const char *who, const char *data_dir, bool suggest_check);
void hd_store_guard_uninstall(void);
const char *hd_store_guard_enter(const char *what);
void hd_store_guard_leave(const char *prev);

#endif
