/* Offline inspection of a store: hadron-store info and check.  Opens the
 * environment read-only, so it never changes what it looks at. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "message.h"
#include "store.h"
#include "store_format.h"
#include "store_log.h"
#include "store_table.h"
#include "util.h"

typedef struct ro {
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi meta, nodes, msgs, qstat, hwm;
  uint64_t format;
  /* What the store's log holds beyond LMDB (a running broker's latest
   * commits, or a crashed one's): read, never applied. */
  hd_table_t log;
  long log_batches; /* < 0: the log cannot be read */
  uint64_t log_ops;
  char log_err[96]; /* why, when it is not an errno */
  /* The log's live puts, by node and seq, and how many of them LMDB does
   * not have yet (after a crash in the middle of a checkpoint it has some:
   * they must not be counted twice). */
  hd_pend_t *pend;
  bool *pend_new; /* pend[i] is not in LMDB */
  size_t npend;
  uint64_t log_new;
} ro_t;

typedef struct out {
  void (*say)(const char *line, void *arg);
  void *arg;
  long problems;
} out_t;

static void sayf(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sayf(out_t *o, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  o->say(line, o->arg);
}

static int log_one(const hd_slog_op_t *op, void *arg) { return hd_table_apply(arg, NULL, op, NULL); }

static bool in_lmdb(ro_t *r, uint64_t node, uint64_t seq) {
  uint8_t kb[16];
  hd_msg_key(kb, node, seq);
  MDB_val k = {16, kb}, d;
  return mdb_get(r->txn, r->msgs, &k, &d) == 0;
}

static const char *log_problem(const ro_t *r) {
  return r->log_err[0] ? r->log_err : hd_strerror((int)r->log_batches);
}

/* How many of LMDB's records the log deletes (at most `of`). */
static uint64_t log_deleted(ro_t *r, uint64_t of) {
  uint64_t n = 0;
  for (size_t i = 0; i < r->log.dels.n && n < of; i++) n += in_lmdb(r, r->log.dels.v[i].node, r->log.dels.v[i].seq);
  return n;
}

/* A node's messages as LMDB and the log together say. */
static void log_adjust(ro_t *r, uint64_t id, uint64_t *count, uint64_t *max_seq, uint64_t *hwm) {
  hd_table_t *t = &r->log;
  for (size_t i = 0; i < r->npend; i++)
    if (r->pend[i].node == id && r->pend_new[i]) (*count)++;
  for (size_t i = 0; i < t->dels.n; i++)
    if (t->dels.v[i].node == id && in_lmdb(r, id, t->dels.v[i].seq) && *count) (*count)--;
  for (size_t i = 0; i < t->maxseq.n; i++)
    if (t->maxseq.v[i].node == id && t->maxseq.v[i].seq > *max_seq) *max_seq = t->maxseq.v[i].seq;
  for (size_t i = 0; i < t->hwms.n; i++)
    if (t->hwms.v[i].node == id) *hwm = t->hwms.v[i].seq;
}

static int ro_open(const char *data_dir, ro_t *r, char *err, size_t errlen) {
  char path[4096];
  struct stat sb;
  memset(r, 0, sizeof *r);
  snprintf(path, sizeof path, "%s/store", data_dir);
  if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
    snprintf(err, errlen, "%s: no store here (is %s the broker's data-dir?)", path, data_dir);
    return -1;
  }
  int rc = mdb_env_create(&r->env);
  if (!rc) mdb_env_set_maxdbs(r->env, 8);
  if (!rc) rc = mdb_env_open(r->env, path, MDB_RDONLY | MDB_NOTLS, 0);
  if (!rc) rc = mdb_txn_begin(r->env, NULL, MDB_RDONLY, &r->txn);
  if (rc) {
    snprintf(err, errlen, "%s: cannot open: %s", path, mdb_strerror(rc));
    if (r->env) mdb_env_close(r->env);
    return -1;
  }
  if ((rc = mdb_dbi_open(r->txn, "meta", 0, &r->meta)) || (rc = mdb_dbi_open(r->txn, "nodes", 0, &r->nodes)) ||
      (rc = mdb_dbi_open(r->txn, "msgs", 0, &r->msgs)) || (rc = mdb_dbi_open(r->txn, "qstat", 0, &r->qstat)) ||
      (rc = mdb_dbi_open(r->txn, "hwm", 0, &r->hwm))) {
    snprintf(err, errlen, "%s: %s (%s)", path,
             rc == MDB_NOTFOUND ? "not a Hadron store (its tables are missing)" : "corrupt", mdb_strerror(rc));
    mdb_txn_abort(r->txn);
    mdb_env_close(r->env);
    return -1;
  }
  MDB_val k = {6, "format"}, d;
  if (mdb_get(r->txn, r->meta, &k, &d) != 0 || d.mv_size != 8) {
    snprintf(err, errlen, "%s: its format record is missing or damaged", path);
    mdb_txn_abort(r->txn);
    mdb_env_close(r->env);
    return -1;
  }
  r->format = hd_get64(d.mv_data);
  MDB_val lk = {7, "log-lsn"}, fk = {8, "log-file"};
  if (r->format >= 1 && r->format <= HD_STORE_FORMAT) {
    /* Format 1: no log-lsn yet, the log starts at 1; formats 1 and 2: in file 0. */
    uint64_t lsn = mdb_get(r->txn, r->meta, &lk, &d) == 0 && d.mv_size == 8 ? hd_get64(d.mv_data) : 1, next;
    uint64_t file = mdb_get(r->txn, r->meta, &fk, &d) == 0 && d.mv_size == 8 ? hd_get64(d.mv_data) : 0;
    if (file >= HD_SLOG_FILES) {
      r->log_batches = -EINVAL;
      snprintf(r->log_err, sizeof r->log_err, "its meta record log-file is %" PRIu64 " (0 or 1 expected)", file);
    } else {
      r->log_batches = hd_slog_replay(path, (int)file, lsn, log_one, &r->log, &next, &r->log_ops);
    }
  }
  r->pend = hd_table_sorted(&r->log, &r->npend);
  r->pend_new = hd_xmalloc((r->npend ? r->npend : 1) * sizeof *r->pend_new);
  for (size_t i = 0; i < r->npend; i++)
    r->log_new += r->pend_new[i] = !in_lmdb(r, r->pend[i].node, r->pend[i].seq);
  return 0;
}

static void ro_close(ro_t *r) {
  free(r->pend);
  free(r->pend_new);
  hd_table_clear(&r->log);
  mdb_txn_abort(r->txn);
  mdb_env_close(r->env);
}

/* A node's address from its record, or "?" */
static void node_address(const MDB_val *d, char *buf, size_t len) {
  const uint8_t *p = d->mv_data;
  snprintf(buf, len, "?");
  if (d->mv_size < 18 || p[0] != HD_NODE_REC_VERSION) return;
  size_t n = (size_t)p[16] << 8 | p[17];
  if (n + 18 > d->mv_size) return;
  snprintf(buf, len, "%.*s", (int)n, (const char *)p + 18);
}

static void node_stats(ro_t *r, uint64_t id, uint64_t *count, uint64_t *max_seq, uint64_t *hwm) {
  uint8_t kb[8];
  hd_put64(kb, id);
  MDB_val k = {8, kb}, d;
  *count = *max_seq = *hwm = 0;
  if (mdb_get(r->txn, r->qstat, &k, &d) == 0 && d.mv_size == 16) {
    *count = hd_get64(d.mv_data);
    *max_seq = hd_get64((uint8_t *)d.mv_data + 8);
  }
  if (mdb_get(r->txn, r->hwm, &k, &d) == 0 && d.mv_size == 8) *hwm = hd_get64(d.mv_data);
}

int hd_store_info(const char *data_dir, void (*say)(const char *line, void *arg), void *arg,
                  char *err, size_t errlen) {
  ro_t r;
  if (ro_open(data_dir, &r, err, errlen)) return -1;
  out_t o = {say, arg, 0};
  MDB_envinfo ei;
  MDB_stat es;
  mdb_env_info(r.env, &ei);
  mdb_env_stat(r.env, &es);
  uint64_t used = (uint64_t)(ei.me_last_pgno + 1) * es.ms_psize;
  MDB_stat ms;
  mdb_stat(r.txn, r.msgs, &ms);
  uint64_t total = ms.ms_entries + r.log_new;
  total -= log_deleted(&r, total);
  sayf(&o, "store %s/store: format %" PRIu64 "%s, %" PRIu64 " KiB used of a %" PRIu64 " KiB map, %" PRIu64 " messages",
       data_dir, r.format,
       r.format == HD_STORE_FORMAT ? ""
       : r.format >= 1 && r.format < HD_STORE_FORMAT ? " (older: hadrond raises it before it logs a commit)"
                                   : " (not a format this build reads)",
       used >> 10, (uint64_t)ei.me_mapsize >> 10, total);
  if (r.log_batches > 0)
    sayf(&o, "log: %ld commits (%" PRIu64 " operations) not yet in LMDB; counted above", r.log_batches, r.log_ops);
  else if (r.log_batches < 0)
    sayf(&o, "log: cannot be read (%s); the counts above are LMDB's alone", log_problem(&r));
  MDB_cursor *c;
  mdb_cursor_open(r.txn, r.nodes, &c);
  MDB_val k, d;
  for (int rc = mdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
    char addr[512];
    node_address(&d, addr, sizeof addr);
    uint64_t id = k.mv_size == 8 ? hd_get64(k.mv_data) : 0, count, max_seq, hwm;
    node_stats(&r, id, &count, &max_seq, &hwm);
    log_adjust(&r, id, &count, &max_seq, &hwm);
    sayf(&o, "queue '%s' (id %" PRIu64 "): %" PRIu64 " messages, highest seq %" PRIu64 ", delivery mark %" PRIu64,
         addr, id, count, max_seq, hwm);
  }
  mdb_cursor_close(c);
  ro_close(&r);
  return 0;
}

static void problem(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(out_t *o, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = snprintf(line, sizeof line, "problem: ");
  vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
  va_end(ap);
  o->say(line, o->arg);
  o->problems++;
}

long hd_store_check(const char *data_dir, void (*say)(const char *line, void *arg), void *arg,
                    char *err, size_t errlen) {
  ro_t r;
  if (ro_open(data_dir, &r, err, errlen)) return -1;
  out_t o = {say, arg, 0};
  if (r.format < 1 || r.format > HD_STORE_FORMAT)
    problem(&o, "format %" PRIu64 ", this build reads formats 1 to %d", r.format, HD_STORE_FORMAT);
  if (r.log_batches < 0) problem(&o, "its log cannot be read: %s", log_problem(&r));
  if (r.log_batches > 0)
    sayf(&o, "log: %ld commits (%" PRIu64 " operations) not yet in LMDB; its messages are checked too",
         r.log_batches, r.log_ops);

  /* Nodes, with their counts as the messages say. */
  size_t cap = 16, n = 0;
  struct node {
    uint64_t id, count, max_seq;
  } *nodes = malloc(cap * sizeof *nodes);
  MDB_cursor *c;
  MDB_val k, d;
  mdb_cursor_open(r.txn, r.nodes, &c);
  for (int rc = mdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
    char addr[512];
    node_address(&d, addr, sizeof addr);
    if (k.mv_size != 8 || d.mv_size < 18 || ((uint8_t *)d.mv_data)[0] != HD_NODE_REC_VERSION || !strcmp(addr, "?")) {
      problem(&o, "a node record is damaged (key of %zu bytes, %zu bytes of data)", k.mv_size, d.mv_size);
      continue;
    }
    if (n == cap) nodes = realloc(nodes, (cap *= 2) * sizeof *nodes);
    nodes[n++] = (struct node){hd_get64(k.mv_data), 0, 0};
  }
  mdb_cursor_close(c);

  mdb_cursor_open(r.txn, r.msgs, &c);
  uint64_t total = 0;
  for (int rc = mdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
    total++;
    if (k.mv_size != 16 || d.mv_size < HD_REC_HDR || ((uint8_t *)d.mv_data)[0] != HD_REC_VERSION) {
      problem(&o, "a message record is damaged (key of %zu bytes, %zu bytes of data)", k.mv_size, d.mv_size);
      continue;
    }
    uint64_t id = hd_get64(k.mv_data), seq = hd_get64((uint8_t *)k.mv_data + 8);
    struct node *nd = NULL;
    for (size_t i = 0; i < n && !nd; i++)
      if (nodes[i].id == id) nd = &nodes[i];
    if (!nd) {
      problem(&o, "message %" PRIu64 " belongs to node %" PRIu64 ", which does not exist", seq, id);
      continue;
    }
    nd->count++;
    if (seq > nd->max_seq) nd->max_seq = seq;
    size_t len = d.mv_size - HD_REC_HDR;
    hd_msg_t *m = hd_msg_alloc(len);
    if (!m) continue;
    memcpy(m->buf, (uint8_t *)d.mv_data + HD_REC_HDR, len);
    const char *why;
    if (hd_msg_parse(m, 0, &why) != 0)
      problem(&o, "message %" PRIu64 " of node %" PRIu64 " is not a valid AMQP message: %s", seq, id, why);
    hd_msg_unref(m);
  }
  mdb_cursor_close(c);
  /* The log's messages are checked the same way (its counts are not in
   * qstat until a checkpoint, so they are compared with nothing). */
  for (size_t j = 0; j < r.npend; j++) {
    const hd_pend_t *p = &r.pend[j];
    total += r.pend_new[j]; /* one already in LMDB was counted there */
    bool known = false;
    for (size_t i = 0; i < n && !known; i++) known = nodes[i].id == p->node;
    if (!known) {
      problem(&o, "logged message %" PRIu64 " belongs to node %" PRIu64 ", which does not exist", p->seq, p->node);
      continue;
    }
    const char *why;
    if (hd_msg_parse(p->msg, 0, &why) != 0)
      problem(&o, "logged message %" PRIu64 " of node %" PRIu64 " is not a valid AMQP message: %s", p->seq,
              p->node, why);
  }
  for (size_t i = 0; i < n; i++) {
    uint64_t count, max_seq, hwm;
    node_stats(&r, nodes[i].id, &count, &max_seq, &hwm);
    if (count != nodes[i].count)
      problem(&o, "node %" PRIu64 " counts %" PRIu64 " messages but holds %" PRIu64, nodes[i].id, count,
              nodes[i].count);
    if (nodes[i].max_seq > max_seq)
      problem(&o, "node %" PRIu64 " holds seq %" PRIu64 " above its recorded highest %" PRIu64, nodes[i].id,
              nodes[i].max_seq, max_seq);
  }
  total -= log_deleted(&r, total); /* gone for the broker: counted as info counts */
  sayf(&o, "checked %zu queues and %" PRIu64 " messages: %ld problems", n, total, o.problems);
  free(nodes);
  ro_close(&r);
  return o.problems;
}
