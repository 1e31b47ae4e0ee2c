/* The durable store: LMDB environment, record formats, the writer thread
 * with group commit, map growth and disk-full handling.  See store.h. */
#include "config.h"

#include "store.h"

#include <errno.h>
#include <inttypes.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "store_format.h"
#include "store_log.h"
#include "store_table.h"
#include "util.h"

/* Operations per transaction: enough to amortise the fsync, few enough that
 * the first submitter does not wait behind a huge batch. */
#define MAX_BATCH 8192
/* Producers get credit as messages arrive, not as they are committed; when
 * the disk is slower than they are, messages would pile up in the queue of
 * operations.  Above BACKLOG_HIGH bytes producers stop getting credit, and
 * get it again below BACKLOG_LOW. */
#define BACKLOG_HIGH (64 << 20)
#define BACKLOG_LOW (16 << 20)

/* Deletions and count updates wait this long for something urgent (a new
 * message, a delivery mark, a consumer's barrier) to share its commit: a
 * commit of their own would make the next message wait behind it. */
#define DEFER_US 2000
/* At most one line about failed commits per this many ms. */
#define FAIL_LOG_MS 10000

struct hd_store {
  MDB_env *env;
  MDB_dbi meta, nodes, msgs, qstat, hwm;
  char *dir;
  hd_store_opts_t opts;
  uint64_t map_size;
  pthread_rwlock_t map_lock; /* readers vs. map growth */
  pthread_t writer;
  bool started;
  pthread_mutex_t lock; /* guards the op queue and `stop` */
  pthread_cond_t cond;
  hd_store_op_t *head, *tail;
  size_t queued, urgent; /* [lock] ops waiting; of them, ones someone waits for */
  _Atomic int64_t backlog;   /* bytes of messages in queued puts */
  atomic_bool backlogged;    /* over BACKLOG_HIGH: producers wait */
  bool stop;
  _Atomic uint64_t next_node;
  atomic_bool full;      /* free space below the reserve */
  uint64_t space_budget; /* bytes writable before measuring again (writer) */
  _Atomic uint64_t commits, ops, syncs, failed, grows, log_batches, checkpoints, log_switches, ckpt_puts;
  /* The log in front of LMDB (store_log.h) and what it holds that LMDB
   * does not yet (store_table.h): one table per log file, what the
   * operations in that file left; the writer's, after start-up. */
  hd_slog_t log;
  bool log_open; /* for a failed open's clean-up: a store that opened has its log */
  bool log_usable; /* the disk has room for it (log_room) */
  bool log_broken; /* a write, flush or checkpoint failed: a full checkpoint before any commit */
  bool grow_warned; /* log_fits has said that the log could not be grown */
  bool log_moved;  /* LMDB's log-lsn (and format) must be written before this run's first batch */
  uint32_t room_looks;
  hd_table_t tables[HD_SLOG_FILES];
  uint64_t log_lsn; /* LMDB's "log-lsn": where the log starts since the last checkpoint */
  int log_file;     /* LMDB's "log-file": the file it starts in */
  uint64_t format;  /* on disk; raised to HD_STORE_FORMAT before the first batch is logged */
};

static const char *lmdb_err(int rc) { return rc == ENOSPC ? "no space left on the device" : mdb_strerror(rc); }

/* ---- operations ---------------------------------------------------------------- */

hd_store_op_t *hd_store_op_new(hd_store_op_kind_t kind) {
  hd_store_op_t *op = hd_obj_alloc(HD_STORE_OP_SIZE); /* freed on the writer's thread */
  *op = (hd_store_op_t){.kind = kind};
  return op;
}

void hd_store_op_free(hd_store_op_t *op) {
  if (!op) return;
  hd_msg_unref(op->msg);
  free(op->blob);
  hd_obj_free(op, HD_STORE_OP_SIZE);
}

/* HD_OP_DELS: the i-th seq, and how many records an op stands for (the
 * "operations" the store counts). */
static uint64_t dels_seq(const hd_store_op_t *op, size_t i) { return ((const uint64_t *)op->blob)[i]; }
static size_t op_records(const hd_store_op_t *op) { return op->kind == HD_OP_DELS ? op->blob_len / 8 : 1; }

static bool urgent(hd_store_op_kind_t k) {
  return k == HD_OP_PUT || k == HD_OP_NOP || k == HD_OP_BARRIER || k == HD_OP_HWM;
}

void hd_store_submit(hd_store_t *s, hd_store_op_t *op) {
  op->next = NULL;
  hd_store_submit_list(s, op);
}

void hd_store_submit_list(hd_store_t *s, hd_store_op_t *head) {
  if (!head) return;
  size_t n = 0, n_urgent = 0;
  int64_t bytes = 0;
  hd_store_op_t *tail = head;
  for (hd_store_op_t *op = head; op; op = op->next) {
    tail = op;
    n++;
    n_urgent += urgent(op->kind);
    if (op->kind != HD_OP_PUT) continue;
    bytes += (int64_t)op->msg->len;
    /* Here, on the thread that has just received the message, its bytes
     * are in this CPU's cache; the writer thread then never reads them
     * (store_log.h). */
    if (s->opts.log_size) op->body_crc = hd_crc32c(0, op->msg->buf, op->msg->len);
  }
  pthread_mutex_lock(&s->lock);
  bool was_empty = !s->head, wake_urgent = n_urgent && s->urgent == 0;
  if (s->tail) s->tail->next = head; else s->head = head;
  s->tail = tail;
  s->queued += n;
  s->urgent += n_urgent;
  if (bytes && atomic_fetch_add_explicit(&s->backlog, bytes, memory_order_relaxed) + bytes > BACKLOG_HIGH)
    atomic_store_explicit(&s->backlogged, true, memory_order_relaxed);
  if (was_empty || wake_urgent) pthread_cond_signal(&s->cond);
  pthread_mutex_unlock(&s->lock);
}

/* ---- open ---------------------------------------------------------------------- */

static int refuse(char *err, size_t errlen, const char *dir, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int refuse(char *err, size_t errlen, const char *dir, const char *fmt, ...) {
  int n = snprintf(err, errlen, "store %s: ", dir);
  va_list ap;
  va_start(ap, fmt);
  if (n > 0 && (size_t)n < errlen) vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
  va_end(ap);
  return HD_ECONFIG;
}

static int open_log(hd_store_t *s, char *err, size_t errlen);

static int open_dbis(hd_store_t *s, MDB_txn *txn, unsigned flags) {
  int rc;
  if ((rc = mdb_dbi_open(txn, "meta", flags, &s->meta))) return rc;
  if ((rc = mdb_dbi_open(txn, "nodes", flags, &s->nodes))) return rc;
  if ((rc = mdb_dbi_open(txn, "msgs", flags, &s->msgs))) return rc;
  if ((rc = mdb_dbi_open(txn, "qstat", flags, &s->qstat))) return rc;
  return mdb_dbi_open(txn, "hwm", flags, &s->hwm);
}

static int meta_get64(MDB_txn *txn, MDB_dbi dbi, const char *key, uint64_t *v) {
  MDB_val k = {strlen(key), (void *)key}, d;
  int rc = mdb_get(txn, dbi, &k, &d);
  if (rc) return rc;
  if (d.mv_size != 8) return MDB_CORRUPTED;
  *v = hd_get64(d.mv_data);
  return 0;
}

static int meta_put64(MDB_txn *txn, MDB_dbi dbi, const char *key, uint64_t v) {
  uint8_t b[8];
  hd_put64(b, v);
  MDB_val k = {strlen(key), (void *)key}, d = {8, b};
  return mdb_put(txn, dbi, &k, &d, 0);
}

/* Create the databases and write the format of a brand-new store. */
static int create_new(hd_store_t *s, char *err, size_t errlen) {
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (!rc) rc = open_dbis(s, txn, MDB_CREATE);
  if (!rc) rc = meta_put64(txn, s->meta, "format", HD_STORE_FORMAT);
  if (!rc) rc = meta_put64(txn, s->meta, "next-node", 1);
  if (!rc) rc = meta_put64(txn, s->meta, "log-lsn", 1);
  if (!rc) rc = meta_put64(txn, s->meta, "log-file", 0);
  if (rc) {
    mdb_txn_abort(txn);
    return refuse(err, errlen, s->dir, "cannot initialise: %s", lmdb_err(rc));
  }
  if ((rc = mdb_txn_commit(txn))) return refuse(err, errlen, s->dir, "cannot initialise: %s", lmdb_err(rc));
  atomic_store(&s->next_node, 1);
  s->log_lsn = 1;
  s->format = HD_STORE_FORMAT;
  HD_LOG(HD_LOG_NOTICE, "core", "store '%s', created (format %d)", s->dir, HD_STORE_FORMAT);
  return 0;
}

static int check_existing(hd_store_t *s, char *err, size_t errlen) {
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc) return refuse(err, errlen, s->dir, "cannot read: %s", lmdb_err(rc));
  MDB_dbi main_dbi;
  MDB_stat st;
  rc = mdb_dbi_open(txn, NULL, 0, &main_dbi);
  if (!rc) rc = mdb_stat(txn, main_dbi, &st);
  if (rc) {
    mdb_txn_abort(txn);
    return refuse(err, errlen, s->dir, "unreadable (%s); move it away to start empty, or restore a backup", lmdb_err(rc));
  }
  if (st.ms_entries == 0) { /* a new environment */
    mdb_txn_abort(txn);
    return create_new(s, err, errlen);
  }
  rc = open_dbis(s, txn, 0);
  if (rc == MDB_NOTFOUND) {
    mdb_txn_abort(txn);
    return refuse(err, errlen, s->dir,
                  "holds an LMDB database without Hadron's tables: not a Hadron store, or a damaged one; "
                  "move it away (or restore a backup) and start with an empty data-dir");
  }
  if (rc) {
    mdb_txn_abort(txn);
    return refuse(err, errlen, s->dir, "is corrupt (%s); move it away to start empty, or restore a backup",
                  lmdb_err(rc));
  }
  uint64_t format = 0, next = 0, lsn = 1, file = 0;
  if (!rc) rc = meta_get64(txn, s->meta, "format", &format);
  if (!rc) rc = meta_get64(txn, s->meta, "next-node", &next);
  /* Format 2 is format 1 plus the log (store_log.h), format 3 the log in
   * two files; the records are the same.  A format-1 store has never had a
   * log: it starts at LSN 1.  A format-2 store is a format-3 one whose log
   * starts in file 0 and never reached the second file.  Format 3 is
   * written before the first batch is logged (log_batch), after which older
   * builds refuse the store rather than miss what its log holds. */
  if (!rc && format >= 2 && format <= HD_STORE_FORMAT) {
    rc = meta_get64(txn, s->meta, "log-lsn", &lsn);
    if (rc == MDB_NOTFOUND) rc = 0, lsn = 1;
    if (!rc && (rc = meta_get64(txn, s->meta, "log-file", &file)) == MDB_NOTFOUND) rc = 0, file = 0;
  }
  /* Commit, not abort: database handles opened in an aborted transaction
   * are closed with it. */
  if (rc)
    mdb_txn_abort(txn);
  else
    rc = mdb_txn_commit(txn);
  if (rc)
    return refuse(err, errlen, s->dir, "its format record is missing or damaged (%s); it was not written by hadrond, or is corrupt",
                  lmdb_err(rc));
  if (format < 1 || format > HD_STORE_FORMAT)
    return refuse(err, errlen, s->dir,
                  "has format %" PRIu64 ", this hadrond reads formats 1 to %d only; run the hadrond that "
                  "wrote it, or start with another data-dir (nothing was changed)",
                  format, HD_STORE_FORMAT);
  if (file >= HD_SLOG_FILES)
    return refuse(err, errlen, s->dir, "its meta record log-file is %" PRIu64 " (0 or 1 expected): corrupt, "
                  "or not written by hadrond; restore the data-dir from a backup", file);
  atomic_store(&s->next_node, next);
  s->log_lsn = lsn;
  s->log_file = (int)file;
  s->format = format;
  return 0;
}

int hd_store_open(const char *data_dir, const hd_store_opts_t *opts, hd_store_t **out, char *err,
                  size_t errlen) {
  hd_store_t *s = hd_xcalloc(1, sizeof *s);
  char path[4096];
  snprintf(path, sizeof path, "%s/store", data_dir);
  s->dir = hd_xstrdup(path);
  s->opts = *opts;
  s->map_size = opts->map_size;
  pthread_rwlock_init(&s->map_lock, NULL);
  pthread_mutex_init(&s->lock, NULL);
  pthread_cond_init(&s->cond, NULL);
  int rc;
  if (mkdir(path, 0750) != 0 && errno != EEXIST) {
    rc = refuse(err, errlen, path, "cannot create: %s", strerror(errno));
    goto fail;
  }
  /* Its name must survive a power cut; flushed at every start, since a
   * run that died between mkdir and the flush leaves it unflushed. */
  if ((rc = hd_sync_parent_dir(path))) {
    rc = refuse(err, errlen, path, "cannot flush the data directory: %s", strerror(-rc));
    goto fail;
  }
  if ((rc = mdb_env_create(&s->env))) {
    rc = refuse(err, errlen, path, "%s", lmdb_err(rc));
    goto fail;
  }
  mdb_env_set_maxdbs(s->env, 8);
  mdb_env_set_maxreaders(s->env, 512);
  mdb_env_set_mapsize(s->env, (size_t)s->map_size);
  /* store-flush = interval still flushes each LMDB commit's pages, only
   * not its meta page: with MDB_NOSYNC the meta page could reach the disk
   * before the pages it points to, and a power cut then leaves a store
   * LMDB cannot open (every message lost, not only the last interval's).
   * LMDB commits are rare with the log on (checkpoints, which are flushed
   * anyway, queue changes, paging). */
  unsigned flags = MDB_NOTLS | MDB_NORDAHEAD | (opts->flush_interval ? MDB_NOMETASYNC : 0);
  rc = mdb_env_open(s->env, path, flags, 0640);
  if (rc == MDB_INVALID || rc == MDB_CORRUPTED || rc == MDB_PANIC) {
    rc = refuse(err, errlen, path,
                "is corrupt (%s); hadrond does not repair or empty a store: move it away to start "
                "empty, or restore a backup",
                lmdb_err(rc));
    goto fail;
  }
  if (rc == MDB_VERSION_MISMATCH) {
    rc = refuse(err, errlen, path, "was written by another LMDB version (%s)", lmdb_err(rc));
    goto fail;
  }
  if (rc) {
    rc = refuse(err, errlen, path, "cannot open: %s", lmdb_err(rc));
    goto fail;
  }
  /* LMDB may just have created data.mdb, and flushes neither its first
   * meta pages nor the directory.  Pages first: a name that survives a
   * power cut must not lead to a file whose meta pages did not (LMDB would
   * call it corrupt); then the name, without which a power cut would lose
   * every commit in the file. */
  char file[4200];
  hd_fmt(file, "%s/data.mdb", path);
  if ((rc = mdb_env_sync(s->env, 1))) {
    rc = refuse(err, errlen, path, "cannot flush: %s", lmdb_err(rc));
    goto fail;
  }
  if ((rc = hd_sync_parent_dir(file))) {
    rc = refuse(err, errlen, path, "cannot flush the directory: %s", strerror(-rc));
    goto fail;
  }
  MDB_envinfo info;
  mdb_env_info(s->env, &info);
  s->map_size = info.me_mapsize; /* an existing store may be larger */
  if ((rc = check_existing(s, err, errlen))) goto fail;
  if ((rc = open_log(s, err, errlen))) goto fail;
  *out = s;
  return 0;
fail:
  if (s->log_open) hd_slog_close(&s->log);
  if (s->env) mdb_env_close(s->env);
  pthread_rwlock_destroy(&s->map_lock);
  pthread_mutex_destroy(&s->lock);
  pthread_cond_destroy(&s->cond);
  free(s->dir);
  free(s);
  return rc;
}

uint64_t hd_store_new_node_id(hd_store_t *s) { return atomic_fetch_add(&s->next_node, 1); }

void hd_store_get_stats(hd_store_t *s, hd_store_stats_t *o) {
  o->commits = atomic_load(&s->commits);
  o->ops = atomic_load(&s->ops);
  o->syncs = atomic_load(&s->syncs);
  o->failed_commits = atomic_load(&s->failed);
  o->map_grows = atomic_load(&s->grows);
  o->log_batches = atomic_load(&s->log_batches);
  o->checkpoints = atomic_load(&s->checkpoints);
  o->log_switches = atomic_load(&s->log_switches);
  o->ckpt_puts = atomic_load(&s->ckpt_puts);
  o->map_size = s->map_size;
}

/* ---- node records ----------------------------------------------------------- */

static size_t put_str(uint8_t *p, const char *s) {
  size_t n = s ? strlen(s) : 0;
  if (n > 65535) n = 65535;
  p[0] = (uint8_t)(n >> 8);
  p[1] = (uint8_t)n;
  memcpy(p + 2, s ? s : "", n);
  return 2 + n;
}

void *hd_store_node_blob(hd_node_type_t type, const char *address, const hd_node_opts_t *o,
                         size_t *len) {
  size_t cap = 24 + 6 + strlen(address) + (o->dead_letter_address ? strlen(o->dead_letter_address) : 0) +
               (o->expiry_address ? strlen(o->expiry_address) : 0);
  uint8_t *b = hd_xcalloc(1, cap), *p = b;
  p[0] = 1; /* record version */
  p[1] = (uint8_t)type;
  hd_put32(p + 4, (uint32_t)o->max_deliveries);
  hd_put64(p + 8, (uint64_t)o->max_depth);
  p += 16;
  p += put_str(p, address);
  p += put_str(p, o->dead_letter_address);
  p += put_str(p, o->expiry_address);
  *len = (size_t)(p - b);
  return b;
}

static const uint8_t *get_str(const uint8_t *p, const uint8_t *end, char **out) {
  if (!p || end - p < 2) return NULL;
  size_t n = (size_t)p[0] << 8 | p[1];
  if ((size_t)(end - p - 2) < n) return NULL;
  *out = hd_xstrndup((const char *)p + 2, n);
  return p + 2 + n;
}

/* ---- reading ------------------------------------------------------------------ */

static int read_begin(hd_store_t *s, MDB_txn **txn) {
  pthread_rwlock_rdlock(&s->map_lock);
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, txn);
  if (rc) pthread_rwlock_unlock(&s->map_lock);
  return rc;
}

static void read_end(hd_store_t *s, MDB_txn *txn) {
  mdb_txn_abort(txn);
  pthread_rwlock_unlock(&s->map_lock);
}

static void read_qstat(hd_store_t *s, MDB_txn *txn, uint64_t node, uint64_t *count, uint64_t *max_seq, uint64_t *hwm) {
  uint8_t k[8];
  hd_put64(k, node);
  MDB_val key = {8, k}, d;
  *count = *max_seq = *hwm = 0;
  if (mdb_get(txn, s->qstat, &key, &d) == 0 && d.mv_size == 16) {
    *count = hd_get64(d.mv_data);
    *max_seq = hd_get64((uint8_t *)d.mv_data + 8);
  }
  if (mdb_get(txn, s->hwm, &key, &d) == 0 && d.mv_size == 8) *hwm = hd_get64(d.mv_data);
}

int hd_store_each_node(hd_store_t *s, int (*fn)(const hd_store_node_t *n, void *arg), void *arg,
                       char *err, size_t errlen) {
  MDB_txn *txn;
  int rc = read_begin(s, &txn);
  if (rc) return refuse(err, errlen, s->dir, "cannot read: %s", lmdb_err(rc));
  MDB_cursor *c;
  if ((rc = mdb_cursor_open(txn, s->nodes, &c))) {
    read_end(s, txn);
    return refuse(err, errlen, s->dir, "cannot read its nodes: %s", lmdb_err(rc));
  }
  MDB_val k, d;
  int result = 0;
  for (rc = mdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0 && !result; rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
    const uint8_t *p = d.mv_data, *end = p + d.mv_size;
    hd_store_node_t n = {0};
    char *addr = NULL, *dla = NULL, *exp = NULL;
    if (k.mv_size != 8 || d.mv_size < 16 || p[0] != 1 ||
        !get_str(get_str(get_str(p + 16, end, &addr), end, &dla), end, &exp)) {
      result = refuse(err, errlen, s->dir, "node record is damaged; run hadron-store check");
    } else {
      n.id = hd_get64(k.mv_data);
      n.type = (hd_node_type_t)p[1];
      n.address = addr;
      n.opts = (hd_node_opts_t){dla, exp, (int)hd_get32(p + 4), (int64_t)hd_get64(p + 8), 1};
      read_qstat(s, txn, n.id, &n.count, &n.max_seq, &n.hwm);
      result = fn(&n, arg);
    }
    free(addr);
    free(dla);
    free(exp);
  }
  mdb_cursor_close(c);
  read_end(s, txn);
  return result;
}

static int parse_rec(const MDB_val *k, const MDB_val *d, hd_store_rec_t *r) {
  const uint8_t *p = d->mv_data;
  if (k->mv_size != 16 || d->mv_size < HD_REC_HDR || p[0] != 1) return -1;
  r->seq = hd_get64((uint8_t *)k->mv_data + 8);
  r->flags = p[1];
  r->delivery_count = hd_get32(p + 4);
  r->expiry_ms = hd_get64(p + 8);
  r->bytes = p + HD_REC_HDR;
  r->len = d->mv_size - HD_REC_HDR;
  return 0;
}

static long scan(hd_store_t *s, uint64_t node, uint64_t from, size_t max,
                 int (*fn)(const hd_store_rec_t *r, void *arg), void *arg) {
  MDB_txn *txn;
  int rc = read_begin(s, &txn);
  if (rc) return -EIO;
  MDB_cursor *c;
  if (mdb_cursor_open(txn, s->msgs, &c)) {
    read_end(s, txn);
    return -EIO;
  }
  uint8_t kb[16];
  hd_msg_key(kb, node, from);
  MDB_val k = {16, kb}, d;
  long n = 0;
  for (rc = mdb_cursor_get(c, &k, &d, MDB_SET_RANGE); rc == 0 && (size_t)n < max;
       rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
    if (k.mv_size != 16 || hd_get64(k.mv_data) != node) break;
    hd_store_rec_t r;
    if (parse_rec(&k, &d, &r)) {
      n = HD_EPROTO; /* negative, like every error */
      break;
    }
    n++;
    if (fn(&r, arg)) break;
  }
  mdb_cursor_close(c);
  read_end(s, txn);
  return n;
}

/* The records handed to fn point into the map, so fn's reads are guarded
 * too: a damaged length would send them outside it. */
long hd_store_scan(hd_store_t *s, uint64_t node, uint64_t from, size_t max,
                   int (*fn)(const hd_store_rec_t *r, void *arg), void *arg) {
  const char *g = hd_store_guard_enter("reading messages from it; nothing was changed, but hadrond stops");
  long n = scan(s, node, from, max, fn, arg);
  hd_store_guard_leave(g);
  return n;
}

/* ---- free space ----------------------------------------------------------------- */

bool hd_store_full(const hd_store_t *s) {
  return atomic_load_explicit(&s->full, memory_order_relaxed) ||
         atomic_load_explicit(&s->backlogged, memory_order_relaxed);
}

/* Pages LMDB can reuse inside its file (freed by earlier transactions): the
 * file never shrinks, so the filesystem's free space alone would say "full"
 * long after consumers have drained the queues. */
static uint64_t reusable_bytes(hd_store_t *s, MDB_txn *txn) {
  MDB_cursor *c;
  MDB_val k, d;
  uint64_t pages = 0;
  if (mdb_cursor_open(txn, 0 /* the free list */, &c)) return 0;
  while (mdb_cursor_get(c, &k, &d, MDB_NEXT) == 0)
    if (d.mv_size >= sizeof(size_t)) pages += *(size_t *)d.mv_data;
  mdb_cursor_close(c);
  MDB_stat st;
  mdb_env_stat(s->env, &st);
  return pages * st.ms_psize;
}

/* Is there room for `need` more bytes above the reserve?  Measuring costs
 * a statvfs and a walk of LMDB's free list, so the store measures once and
 * then spends a budget (what was free above the reserve) batch by batch,
 * measuring again when the budget runs out, and always while marked full
 * (deletions make room). */
static void check_space(hd_store_t *s, MDB_txn *txn, uint64_t need, bool force) {
  if (!s->opts.reserve) return;
  if (!force && !atomic_load(&s->full) && need <= s->space_budget) {
    s->space_budget -= need;
    return;
  }
  struct statvfs fs;
  if (statvfs(s->dir, &fs) != 0) return;
  uint64_t fs_free = (uint64_t)fs.f_bavail * fs.f_frsize, reuse = reusable_bytes(s, txn);
  uint64_t avail = fs_free + reuse;
  /* Large messages need runs of pages; a scattered free list cannot give
   * them, and LMDB then grows the file instead. */
  bool was = atomic_load(&s->full);
  /* Once full, stay so until there is clearly room again, not just a few
   * pages, so that producers are not switched on and off batch by batch. */
  uint64_t margin = was ? (s->opts.reserve / 4 > (256u << 10) ? s->opts.reserve / 4 : (256u << 10)) : 0;
  bool low = avail < s->opts.reserve + need + margin || (fs_free < need && reuse < 8 * need);
  s->space_budget = low ? 0 : avail - s->opts.reserve - need;
  atomic_store(&s->full, low);
  if (low && !was)
    HD_LOG(HD_LOG_WARNING, "core",
           "store '%s', free space %" PRIu64 " KiB is below the reserve (%" PRIu64 " KiB): refusing new "
           "messages until consumers make room or the disk grows",
           s->dir, avail >> 10, s->opts.reserve >> 10);
  if (!low && was) {
    HD_LOG(HD_LOG_NOTICE, "core", "store '%s', free space is back (%" PRIu64 " KiB): accepting messages",
           s->dir, avail >> 10);
    if (s->opts.on_space) s->opts.on_space();
  }
}

static bool disk_nearly_full(hd_store_t *s) {
  struct statvfs fs;
  if (statvfs(s->dir, &fs) != 0) return false;
  uint64_t free_bytes = (uint64_t)fs.f_bavail * fs.f_frsize;
  return free_bytes < (s->opts.reserve > (1u << 20) ? s->opts.reserve : (1u << 20));
}

/* ---- the writer ---------------------------------------------------------------- */

typedef struct stat_delta {
  uint64_t node;
  int64_t count;
  uint64_t max_seq;
} stat_delta_t;

typedef struct batch {
  hd_store_op_t *head;
  size_t n;
  uint64_t need; /* room its puts may take: see apply_batch */
  stat_delta_t deltas[64];
  size_t n_deltas;
  bool overflow;  /* more nodes than deltas: recount those below */
  bool tree_only; /* node records: straight to LMDB, not through the log */
} batch_t;

static stat_delta_t *delta(batch_t *b, uint64_t node) {
  for (size_t i = 0; i < b->n_deltas; i++)
    if (b->deltas[i].node == node) return &b->deltas[i];
  if (b->n_deltas == sizeof b->deltas / sizeof b->deltas[0]) return NULL;
  b->deltas[b->n_deltas] = (stat_delta_t){node, 0, 0};
  return &b->deltas[b->n_deltas++];
}

/* Sticky-error transaction: the first failure is kept and checked once. */
typedef struct wtxn {
  MDB_txn *txn;
  int rc;
  MDB_cursor *del; /* stays where the last delete left it */
} wtxn_t;

static void w_put(wtxn_t *t, MDB_dbi dbi, MDB_val *k, MDB_val *d, unsigned flags) {
  if (!t->rc) t->rc = mdb_put(t->txn, dbi, k, d, flags);
}

static void put_hwm(hd_store_t *s, wtxn_t *t, uint64_t node, uint64_t seq) {
  uint8_t kb[8], vb[8];
  hd_put64(kb, node);
  hd_put64(vb, seq);
  MDB_val k = {8, kb}, d = {8, vb};
  w_put(t, s->hwm, &k, &d, 0);
}

static void apply_put(hd_store_t *s, wtxn_t *t, batch_t *b, hd_store_op_t *op) {
  uint8_t kb[16];
  hd_msg_key(kb, op->node, op->seq);
  MDB_val k = {16, kb}, d = {HD_REC_HDR + op->msg->len, NULL};
  if (t->rc) return;
  /* A queue's seqs only grow, so a put is usually the largest key of all:
   * appending fills pages completely instead of splitting them in half. */
  int rc = mdb_put(t->txn, s->msgs, &k, &d, MDB_RESERVE | MDB_APPEND);
  if (rc == MDB_KEYEXIST) rc = mdb_put(t->txn, s->msgs, &k, &d, MDB_RESERVE | MDB_NOOVERWRITE);
  bool fresh = rc == 0;
  if (rc == MDB_KEYEXIST) {
    d.mv_size = HD_REC_HDR + op->msg->len;
    rc = mdb_put(t->txn, s->msgs, &k, &d, MDB_RESERVE);
  }
  if (rc) {
    t->rc = rc;
    return;
  }
  op->in_tree = true;
  uint8_t *p = d.mv_data;
  memset(p, 0, HD_REC_HDR);
  p[0] = 1;
  p[1] = (uint8_t)op->flags;
  hd_put32(p + 4, op->delivery_count);
  hd_put64(p + 8, op->msg->expiry_ms);
  memcpy(p + HD_REC_HDR, op->msg->buf, op->msg->len);
  stat_delta_t *sd = delta(b, op->node);
  if (sd) {
    sd->count += fresh;
    if (op->seq > sd->max_seq) sd->max_seq = op->seq;
  } else {
    b->overflow = true;
  }
}

static void apply_del(hd_store_t *s, wtxn_t *t, batch_t *b, uint64_t node, uint64_t seq) {
  uint8_t kb[16];
  hd_msg_key(kb, node, seq);
  MDB_val k = {16, kb}, ck, cd;
  if (t->rc) return;
  if (!t->del && (t->rc = mdb_cursor_open(t->txn, s->msgs, &t->del))) return;
  /* Consumers mostly settle in order: after deleting seq n the cursor sits
   * on n+1, so the next delete needs no search from the root. */
  int rc = mdb_cursor_get(t->del, &ck, &cd, MDB_GET_CURRENT);
  if (rc != 0 || ck.mv_size != 16 || memcmp(ck.mv_data, kb, 16) != 0) {
    ck = k;
    rc = mdb_cursor_get(t->del, &ck, &cd, MDB_SET);
  }
  if (rc == 0) rc = mdb_cursor_del(t->del, 0);
  if (rc == MDB_NOTFOUND) return;
  if (rc) {
    t->rc = rc;
    return;
  }
  stat_delta_t *sd = delta(b, node);
  if (sd) sd->count--; else b->overflow = true;
}

static void apply_update(hd_store_t *s, wtxn_t *t, hd_store_op_t *op) {
  uint8_t kb[16];
  hd_msg_key(kb, op->node, op->seq);
  MDB_val k = {16, kb}, d;
  if (t->rc) return;
  int rc = mdb_get(t->txn, s->msgs, &k, &d);
  if (rc == MDB_NOTFOUND || d.mv_size < HD_REC_HDR) return;
  if (rc) {
    t->rc = rc;
    return;
  }
  /* Values are read-only map memory: change a copy. */
  uint8_t *copy = malloc(d.mv_size);
  if (!copy) {
    t->rc = ENOMEM;
    return;
  }
  memcpy(copy, d.mv_data, d.mv_size);
  hd_put32(copy + 4, op->delivery_count);
  MDB_val nd = {d.mv_size, copy};
  w_put(t, s->msgs, &k, &nd, 0);
  free(copy);
}

static void apply_node_del(hd_store_t *s, wtxn_t *t, hd_store_op_t *op) {
  uint8_t nk[8];
  hd_put64(nk, op->node);
  MDB_val k = {8, nk};
  if (t->rc) return;
  mdb_del(t->txn, s->nodes, &k, NULL);
  mdb_del(t->txn, s->qstat, &k, NULL);
  mdb_del(t->txn, s->hwm, &k, NULL);
  MDB_cursor *c;
  if ((t->rc = mdb_cursor_open(t->txn, s->msgs, &c))) return;
  uint8_t kb[16];
  hd_msg_key(kb, op->node, 0);
  MDB_val mk = {16, kb}, d;
  int rc;
  for (rc = mdb_cursor_get(c, &mk, &d, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(c, &mk, &d, MDB_NEXT)) {
    if (mk.mv_size != 16 || hd_get64(mk.mv_data) != op->node) break;
    if ((rc = mdb_cursor_del(c, 0))) break;
  }
  if (rc && rc != MDB_NOTFOUND) t->rc = rc;
  mdb_cursor_close(c);
}

/* Recount a node's messages (rare: a batch touched too many nodes). */
static void recount(hd_store_t *s, wtxn_t *t, uint64_t node, uint64_t *count, uint64_t *max_seq) {
  MDB_cursor *c;
  *count = *max_seq = 0;
  if (t->rc || (t->rc = mdb_cursor_open(t->txn, s->msgs, &c))) return;
  uint8_t kb[16];
  hd_msg_key(kb, node, 0);
  MDB_val k = {16, kb}, d;
  for (int rc = mdb_cursor_get(c, &k, &d, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
    if (k.mv_size != 16 || hd_get64(k.mv_data) != node) break;
    (*count)++;
    *max_seq = hd_get64((uint8_t *)k.mv_data + 8);
  }
  mdb_cursor_close(c);
}

static void apply_stats(hd_store_t *s, wtxn_t *t, batch_t *b) {
  for (size_t i = 0; i < b->n_deltas && !t->rc; i++) {
    stat_delta_t *sd = &b->deltas[i];
    uint8_t kb[8], vb[16];
    hd_put64(kb, sd->node);
    MDB_val k = {8, kb}, d;
    uint64_t count = 0, max_seq = 0;
    int rc = mdb_get(t->txn, s->qstat, &k, &d);
    if (rc == 0 && d.mv_size == 16) {
      count = hd_get64(d.mv_data);
      max_seq = hd_get64((uint8_t *)d.mv_data + 8);
    }
    if (b->overflow) {
      recount(s, t, sd->node, &count, &max_seq);
    } else {
      count = (uint64_t)((int64_t)count + sd->count);
      if (sd->max_seq > max_seq) max_seq = sd->max_seq;
    }
    hd_put64(vb, count);
    hd_put64(vb + 8, max_seq);
    MDB_val v = {16, vb};
    w_put(t, s->qstat, &k, &v, 0);
  }
}

/* Room for this batch's messages: their bytes, twice over for pages copied
 * on write and the tree around them.  Measured in a read transaction: LMDB
 * lets no cursor walk its free list in a write one. */
static void check_batch_space(hd_store_t *s, const batch_t *b) {
  if (b->need || atomic_load(&s->full)) {
    MDB_txn *rt;
    if (read_begin(s, &rt) == 0) {
      check_space(s, rt, b->need, false);
      read_end(s, rt);
    }
  }
}

static int apply_batch(hd_store_t *s, batch_t *b) {
  bool full = atomic_load(&s->full);
  wtxn_t t = {NULL, mdb_txn_begin(s->env, NULL, 0, &t.txn), NULL};
  if (t.rc) return t.rc;
  b->n_deltas = 0;
  b->overflow = false;
  uint64_t next_node = 0;
  for (hd_store_op_t *op = b->head; op && !t.rc; op = op->next) {
    op->rc = 0;
    switch (op->kind) {
    case HD_OP_PUT:
      if (full)
        op->rc = HD_EFULL; /* refused, not written: the submitter decides */
      else
        apply_put(s, &t, b, op);
      break;
    case HD_OP_DEL: apply_del(s, &t, b, op->node, op->seq); break;
    case HD_OP_DELS:
      for (size_t i = 0; i < op_records(op) && !t.rc; i++) apply_del(s, &t, b, op->node, dels_seq(op, i));
      break;
    case HD_OP_UPDATE: apply_update(s, &t, op); break;
    case HD_OP_NODE_PUT: {
      uint8_t kb[8];
      hd_put64(kb, op->node);
      MDB_val k = {8, kb}, d = {op->blob_len, op->blob};
      w_put(&t, s->nodes, &k, &d, 0);
      if (op->node + 1 > next_node) next_node = op->node + 1;
      break;
    }
    case HD_OP_NODE_DEL: apply_node_del(s, &t, op); break;
    case HD_OP_HWM: put_hwm(s, &t, op->node, op->seq); break;
    case HD_OP_NOP:
    case HD_OP_BARRIER: break;
    }
  }
  if (t.del) {
    mdb_cursor_close(t.del);
    t.del = NULL;
  }
  apply_stats(s, &t, b);
  if (next_node && !t.rc) {
    uint64_t cur = 0;
    int rc = meta_get64(t.txn, s->meta, "next-node", &cur);
    if (rc == 0 && next_node > cur) t.rc = meta_put64(t.txn, s->meta, "next-node", next_node);
  }
  if (t.rc) {
    mdb_txn_abort(t.txn);
    return t.rc;
  }
  return mdb_txn_commit(t.txn);
}

static void grow_map(hd_store_t *s) {
  uint64_t size = s->map_size * 2;
  /* No transaction may be open in the process while the map changes. */
  pthread_rwlock_wrlock(&s->map_lock);
  int rc = mdb_env_set_mapsize(s->env, (size_t)size);
  pthread_rwlock_unlock(&s->map_lock);
  if (rc) {
    HD_LOG(HD_LOG_ERR, "core", "store '%s', cannot grow the map to %" PRIu64 " bytes: %s", s->dir, size, lmdb_err(rc));
    return;
  }
  s->map_size = size;
  atomic_fetch_add(&s->grows, 1);
  HD_LOG(HD_LOG_INFO, "core", "store '%s', map grown to %" PRIu64 " MiB", s->dir, size >> 20);
}

/* ---- the log (store_log.h) ------------------------------------------------------ */

/* A checkpoint writes what a table holds to LMDB in transactions of at
 * most CHECKPOINT_BYTES of records: LMDB keeps a transaction's dirty pages
 * in heap memory until it commits, and a log's worth at once would double
 * the broker's memory.  Only the last transaction moves "log-lsn" past
 * what was moved.  A crash in between is harmless: the next start replays
 * the same log and writes the same records again (a put over an existing
 * record is an overwrite and counted once; a delete of a missing one does
 * nothing). */
#define CHECKPOINT_BYTES (8u << 20)

typedef struct ckpt_pos {
  size_t put, upd, del;
} ckpt_pos_t;

/* Where the log starts once a checkpoint is complete (lsn 0: the
 * checkpoint of the older file that comes before one of the newer). */
typedef struct log_start {
  uint64_t lsn;
  int file;
} log_start_t;

static int checkpoint_step(hd_store_t *s, const hd_table_t *tb, const hd_pend_t *v, size_t n, ckpt_pos_t *pos,
                           log_start_t start, bool *finished) {
  batch_t b = {0};
  ckpt_pos_t p = *pos;
  size_t used = 0;
  wtxn_t t = {NULL, mdb_txn_begin(s->env, NULL, 0, &t.txn), NULL};
  if (t.rc) return t.rc;
  for (; p.put < n && used < CHECKPOINT_BYTES && !t.rc; p.put++) {
    hd_store_op_t op = {.kind = HD_OP_PUT, .flags = v[p.put].flags, .delivery_count = v[p.put].delivery_count,
                        .node = v[p.put].node, .seq = v[p.put].seq, .msg = v[p.put].msg};
    apply_put(s, &t, &b, &op);
    used += HD_REC_HDR + 16 + op.msg->len;
  }
  for (; p.upd < tb->updates.n && used < CHECKPOINT_BYTES && !t.rc; p.upd++) {
    hd_store_op_t op = {.kind = HD_OP_UPDATE, .node = tb->updates.v[p.upd].node, .seq = tb->updates.v[p.upd].seq,
                        .delivery_count = tb->updates.v[p.upd].delivery_count};
    apply_update(s, &t, &op);
    used += 512; /* a page or so rewritten */
  }
  for (; p.del < tb->dels.n && used < CHECKPOINT_BYTES && !t.rc; p.del++) {
    apply_del(s, &t, &b, tb->dels.v[p.del].node, tb->dels.v[p.del].seq);
    used += 512;
  }
  bool last = p.put == n && p.upd == tb->updates.n && p.del == tb->dels.n;
  if (last) {
    for (size_t i = 0; i < tb->hwms.n && !t.rc; i++) put_hwm(s, &t, tb->hwms.v[i].node, tb->hwms.v[i].seq);
    /* The highest seq of every node that had puts, even ones deleted
     * since: a restart must not hand out their seqs again (once this
     * file is overwritten, nothing else remembers them). */
    for (size_t i = 0; i < tb->maxseq.n; i++) {
      stat_delta_t *sd = delta(&b, tb->maxseq.v[i].node);
      if (!sd)
        b.overflow = true;
      else if (tb->maxseq.v[i].seq > sd->max_seq)
        sd->max_seq = tb->maxseq.v[i].seq;
    }
  }
  if (t.del) mdb_cursor_close(t.del);
  apply_stats(s, &t, &b);
  bool meta = last && start.lsn;
  if (meta && !t.rc) t.rc = meta_put64(t.txn, s->meta, "log-lsn", start.lsn);
  if (meta && !t.rc) t.rc = meta_put64(t.txn, s->meta, "log-file", (uint64_t)start.file);
  if (meta && !t.rc && s->format != HD_STORE_FORMAT) t.rc = meta_put64(t.txn, s->meta, "format", HD_STORE_FORMAT);
  if (t.rc) {
    mdb_txn_abort(t.txn);
    return t.rc;
  }
  if ((t.rc = mdb_txn_commit(t.txn))) return t.rc;
  atomic_fetch_add(&s->ckpt_puts, p.put - pos->put);
  *pos = p;
  *finished = last;
  if (meta && s->format != HD_STORE_FORMAT) {
    HD_LOG(HD_LOG_NOTICE, "core", "store '%s', upgraded from format %" PRIu64 " to %d (the log in two files)",
           s->dir, s->format, HD_STORE_FORMAT);
    s->format = HD_STORE_FORMAT;
  }
  return 0;
}

/* Write one table to LMDB (its messages stay the table's until it is
 * cleared). */
static int move_table(hd_store_t *s, const hd_table_t *tb, log_start_t start) {
  size_t n;
  hd_pend_t *v = hd_table_sorted(tb, &n);
  ckpt_pos_t pos = {0, 0, 0};
  bool finished = false;
  int rc = 0;
  while (!finished && (!rc || rc == MDB_MAP_FULL)) {
    if (rc == MDB_MAP_FULL) grow_map(s);
    rc = checkpoint_step(s, tb, v, n, &pos, start, &finished);
  }
  free(v);
  /* With store-flush = interval those commits were not flushed, and the
   * log that holds the same is about to be overwritten. */
  if (!rc && start.lsn && s->opts.flush_interval) rc = mdb_env_sync(s->env, 1);
  /* Some of the table may be in LMDB now, and the table stays as it is: a
   * delete logged next would cancel a put there and never reach LMDB.
   * Nothing is logged until a full checkpoint has succeeded. */
  if (rc) s->log_broken = true;
  return rc;
}

/* Is there room on the filesystem to keep using the log?  A checkpoint
 * needs up to two files' worth of space in LMDB, so the log is used only
 * while the disk has several files' worth above the reserve; otherwise
 * every commit goes to LMDB as it would without a log. */
static bool log_room(hd_store_t *s) {
  struct statvfs fs;
  uint64_t want;
  if (!s->opts.log_size || statvfs(s->dir, &fs) != 0) return false;
  if (s->opts.log_size > UINT64_MAX / 8 || __builtin_add_overflow(s->opts.reserve, 6 * s->opts.log_size, &want))
    return false;
  return (uint64_t)fs.f_bavail * fs.f_frsize >= want;
}

/* Move what both files hold into LMDB and start the log again, in the
 * file being written: everything is in LMDB after this (needed before a
 * commit goes to LMDB directly, which must not overtake the log). */
static int checkpoint(hd_store_t *s, bool force) {
  hd_table_t *cur = &s->tables[s->log.cur], *older = &s->tables[1 - s->log.cur];
  /* Nothing logged since the log last started, and nothing pending:
   * LMDB already has it all (a replay from its log-lsn finds nothing that
   * changes it).  Not even log-lsn moves: a store that takes no commits
   * is not written to. */
  if (!force && !s->log_broken && s->log.next_lsn == s->log.first_lsn && hd_table_empty(cur) &&
      hd_table_empty(older))
    return 0;
  int rc = move_table(s, older, (log_start_t){0, 0});
  if (!rc) rc = move_table(s, cur, (log_start_t){s->log.next_lsn, s->log.cur});
  if (rc) return rc;
  s->log_lsn = s->log.next_lsn;
  s->log_file = s->log.cur;
  s->log_broken = s->log_moved = false;
  hd_table_clear(older);
  hd_table_clear(cur);
  hd_slog_restart(&s->log, s->log.cur, s->log_lsn);
  s->log_usable = log_room(s);
  atomic_fetch_add(&s->checkpoints, 1);
  return 0;
}

/* The file being written is full: move what the other file's operations
 * left into LMDB (LMDB's log then starts with the full file), and go on
 * in the other file from its start. */
static int switch_files(hd_store_t *s) {
  int full = s->log.cur, rc;
  if ((rc = move_table(s, &s->tables[1 - full], (log_start_t){s->log.first_lsn, full}))) return rc;
  s->log_lsn = s->log.first_lsn;
  s->log_file = full;
  hd_table_clear(&s->tables[1 - full]);
  if ((rc = hd_slog_switch(&s->log))) {
    s->log_broken = true; /* the full file may have a hole: start again from memory */
    return -rc;
  }
  s->log_usable = log_room(s);
  atomic_fetch_add(&s->checkpoints, 1);
  atomic_fetch_add(&s->log_switches, 1);
  return 0;
}

/* The log's i-th record of an operation (HD_OP_DELS has one per seq, the
 * others one); false: no such record (no-ops and barriers have none; node
 * records never come here). */
static bool to_log_op(const hd_store_op_t *op, size_t i, hd_slog_op_t *lo) {
  *lo = (hd_slog_op_t){.node = op->node, .seq = op->seq, .delivery_count = op->delivery_count};
  if (op->kind == HD_OP_DELS) {
    if (i >= op_records(op)) return false;
    lo->kind = HD_SLOG_DEL;
    lo->seq = dels_seq(op, i);
    return true;
  }
  if (i) return false;
  switch (op->kind) {
  case HD_OP_PUT:
    lo->kind = HD_SLOG_PUT;
    lo->flags = op->flags;
    lo->expiry_ms = op->msg->expiry_ms;
    lo->bytes = op->msg->buf;
    lo->len = op->msg->len;
    lo->crc = op->body_crc;
    return true;
  case HD_OP_DEL: lo->kind = HD_SLOG_DEL; return true;
  case HD_OP_UPDATE: lo->kind = HD_SLOG_UPDATE; return true;
  case HD_OP_HWM: lo->kind = HD_SLOG_HWM; return true;
  default: return false;
  }
}

/* hd_slog_fits, saying once (until a file grows again) when a file could
 * not be made or grown for an I/O error, not for want of room: commits
 * then go to LMDB, which works, but the disk may be failing. */
static bool log_fits(hd_store_t *s, uint64_t spare) {
  bool ok = hd_slog_fits(&s->log, spare);
  if (!s->log.grow_err) {
    s->grow_warned = false;
  } else if (!ok && !s->grow_warned) {
    s->grow_warned = true;
    HD_LOG(HD_LOG_WARNING, "core",
           "store '%s', its log could not be grown (%s); commits go to LMDB meanwhile", s->dir,
           strerror(s->log.grow_err));
  }
  return ok;
}

/* Append the batch to the log and record it in the tables.  *done false:
 * it did not fit even in an empty file; it must go to LMDB. */
static int log_batch(hd_store_t *s, batch_t *b, bool *done) {
  *done = false;
  /* LMDB's log-lsn moves to where this run's LSNs start (open_log), and an
   * older format is raised (a build of that format would stop at this
   * build's first batch instead of refusing the store), before anything is
   * logged; not at start-up: a store refused later in start-up stays as it
   * was. */
  int rc;
  if (s->log_moved && (rc = checkpoint(s, true))) return rc;
  hd_slog_begin(&s->log);
  hd_slog_op_t lo;
  for (hd_store_op_t *op = b->head; op; op = op->next)
    for (size_t i = 0; to_log_op(op, i, &lo); i++) hd_slog_add(&s->log, &lo);
  if (!s->log.nops) { /* barriers and no-ops only: what came before is already flushed */
    for (hd_store_op_t *op = b->head; op; op = op->next) op->rc = 0;
    *done = true;
    return 0;
  }
  /* Too large for a file, or for one replay read: to LMDB. */
  uint64_t bytes = hd_slog_batch_bytes(&s->log);
  if (bytes > s->opts.log_size || bytes > HD_SLOG_MAX_BATCH) return 0;
  uint64_t spare = s->opts.reserve + s->opts.log_size;
  if (!log_fits(s, spare)) {
    /* A file that holds nothing yet cannot take it either: to LMDB. */
    if (s->log.off == 0) return 0;
    rc = switch_files(s);
    if (rc) return rc;
    if (!s->log_usable || !log_fits(s, spare)) return 0;
  }
  rc = hd_slog_write(&s->log, s->opts.flush_interval);
  if (rc) {
    /* The batch may be on disk in part or whole with this LSN, and a
     * replay would read it if it checks out: its producers are about to
     * hear that it failed.  The LSN is never used again, and LMDB's log
     * starts past it before they hear (or, if that fails too, before
     * anything else is logged). */
    s->log.next_lsn++;
    s->log_broken = true;
    (void)checkpoint(s, true);
    return -rc;
  }
  atomic_fetch_add(&s->log_batches, 1);
  hd_table_t *cur = &s->tables[s->log.cur], *older = &s->tables[1 - s->log.cur];
  for (hd_store_op_t *op = b->head; op; op = op->next) {
    op->rc = 0;
    op->in_tree = false;
    for (size_t i = 0; to_log_op(op, i, &lo); i++)
      hd_table_apply(cur, older, &lo, op->msg); /* a reference, not a copy (NULL for deletes) */
  }
  *done = true;
  return 0;
}

/* One batch: to the log when it can take it, else to LMDB (after moving
 * what the log holds there first, so that LMDB sees everything in order). */
static int commit_batch(hd_store_t *s, batch_t *b) {
  check_batch_space(s, b);
  int rc;
  if (s->log_broken && (rc = checkpoint(s, true))) return rc;
  if (s->log_usable && !b->tree_only && !atomic_load(&s->full) && !(s->opts.may_page && s->opts.may_page())) {
    bool done;
    if ((rc = log_batch(s, b, &done)) || done) return rc;
  } else if (!s->log_usable && s->opts.log_size && ++s->room_looks % 256 == 0) {
    s->log_usable = log_room(s); /* space may have come back */
  }
  if ((rc = checkpoint(s, false))) return rc;
  while ((rc = apply_batch(s, b)) == MDB_MAP_FULL) grow_map(s);
  return rc;
}

/* ---- start-up: what the log holds goes to LMDB -------------------------------- */

/* Both files replay into one table: the checkpoint after the replay moves
 * it all. */
static int replay_one(const hd_slog_op_t *op, void *arg) {
  return hd_table_apply(&((hd_store_t *)arg)->tables[0], NULL, op, NULL);
}

static int open_log(hd_store_t *s, char *err, size_t errlen) {
  int rc = hd_slog_open(&s->log, s->dir, s->opts.log_size);
  if (rc) return refuse(err, errlen, s->dir, "cannot open its log: %s", strerror(-rc));
  s->log_open = true;
  uint64_t next, ops;
  long n = hd_slog_replay(s->dir, s->log_file, s->log_lsn, replay_one, s, &next, &ops);
  if (n < 0) {
    hd_table_clear(&s->tables[0]);
    return refuse(err, errlen, s->dir,
                  "its log (%s/log and log.1) cannot be read: %s; nothing was changed; restore the data-dir "
                  "from a backup, or move the log away to start without what it holds",
                  s->dir, n == HD_EPROTO ? "a batch that checks out holds malformed operations" : hd_strerror((int)n));
  }
  /* This run's LSNs start above any batch the files can hold since
   * log-lsn: a crashed run (store-flush = interval) may have left batches
   * on disk past the first one it lost, and a later replay must never
   * take one of those for a batch of this run that happens to end where
   * it starts.  (At most one batch per HD_SLOG_HDR_V2 bytes.) */
  uint64_t fresh = s->log_lsn + (s->log.size[0] + s->log.size[1]) / HD_SLOG_HDR_V2 + 1;
  if (next < fresh) next = fresh;
  s->log_moved = true; /* cleared by the checkpoint below, or before the first batch */
  /* LMDB's log starts in s->log_file: batches go there until it is full. */
  hd_slog_restart(&s->log, s->log_file, next);
  if (n > 0) {
    if ((rc = checkpoint(s, true))) {
      hd_table_clear(&s->tables[0]);
      return refuse(err, errlen, s->dir, "cannot move its log into LMDB: %s", lmdb_err(rc));
    }
    HD_LOG(HD_LOG_NOTICE, "core", "store '%s', replayed %ld batches (%" PRIu64 " operations) from its log",
           s->dir, n, ops);
  }
  s->log_usable = log_room(s);
  if (s->opts.log_size && !s->log_usable)
    HD_LOG(HD_LOG_NOTICE, "core", "store '%s', less than 6 x store-log-size free above store-reserve: "
           "commits go to LMDB directly until there is", s->dir);
  return 0;
}

/* Completions run in submission order; each op carries its own result. */
static void complete(hd_store_op_t *list) {
  while (list) {
    hd_store_op_t *next = list->next;
    if (list->done_run) {
      size_t n = 1;
      hd_store_op_t *last = list;
      while (next && next->done_run == list->done_run && next->node == list->node) {
        last = next;
        next = next->next;
        n++;
      }
      last->next = NULL;
      list->done_run(list, n);
      list = next;
      continue;
    }
    list->next = NULL;
    if (list->done)
      list->done(list, list->rc);
    else
      hd_store_op_free(list);
    list = next;
  }
}

/* After a failed commit: puts fail (their producers hear about it), no-ops
 * complete as usual, and the rest (deletes, counts, marks) must not be lost:
 * they go back to the front of the queue to be tried again. */
static void fail_batch(hd_store_t *s, batch_t *b, int rc) {
  hd_store_op_t *retry = NULL, **rt = &retry, *done = NULL, **dt = &done;
  for (hd_store_op_t *op = b->head, *next; op; op = next) {
    next = op->next;
    op->next = NULL;
    if (op->kind == HD_OP_PUT || op->kind == HD_OP_NOP) { /* barriers wait for the retries */
      if (op->kind == HD_OP_PUT) op->rc = rc == ENOSPC || rc == MDB_MAP_FULL ? HD_EFULL : -EIO;
      *dt = op;
      dt = &op->next;
    } else {
      *rt = op;
      rt = &op->next;
    }
  }
  if (retry) {
    pthread_mutex_lock(&s->lock);
    hd_store_op_t *last = retry;
    while (last->next) last = last->next;
    last->next = s->head;
    if (!s->head) s->tail = last;
    s->head = retry;
    for (hd_store_op_t *op = retry; op != last->next; op = op->next) {
      s->queued++;
      if (urgent(op->kind)) s->urgent++;
    }
    pthread_mutex_unlock(&s->lock);
  }
  complete(done);
}

static void *writer_main(void *arg) {
  hd_store_t *s = arg;
  pthread_setname_np(pthread_self(), "hd-store");
  uint64_t next_sync = hd_now_mono_ms() + s->opts.interval_ms;
  bool dirty = false;
  /* A failing disk fails commit after commit (deletes are retried every
   * 100 ms): one line per FAIL_LOG_MS, with a count of the rest. */
  uint64_t fail_logged_ms = 0; /* 0: the last commit succeeded */
  unsigned fail_unlogged = 0;
  for (;;) {
    pthread_mutex_lock(&s->lock);
    while (!s->head && !s->stop) {
      if (atomic_load(&s->full)) { /* look again for space now and then */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        if (pthread_cond_timedwait(&s->cond, &s->lock, &ts) == ETIMEDOUT) break;
      } else if (s->opts.flush_interval && dirty) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t now = hd_now_mono_ms();
        uint64_t wait = next_sync > now ? next_sync - now : 0;
        ts.tv_sec += (time_t)(wait / 1000);
        ts.tv_nsec += (long)(wait % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        if (pthread_cond_timedwait(&s->cond, &s->lock, &ts) == ETIMEDOUT) break;
      } else {
        pthread_cond_wait(&s->cond, &s->lock);
      }
    }
    if (!s->head && s->stop) {
      pthread_mutex_unlock(&s->lock);
      break;
    }
    if (s->head && !s->urgent && !s->stop && s->queued < MAX_BATCH / 2) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += DEFER_US * 1000L;
      if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
      while (!s->urgent && !s->stop && s->queued < MAX_BATCH / 2)
        if (pthread_cond_timedwait(&s->cond, &s->lock, &ts) == ETIMEDOUT) break;
    }

    batch_t b = {0};
    b.head = s->head;
    bool all = s->queued <= MAX_BATCH;
    if (all) { /* the usual case: take everything without walking it under the lock */
      b.n = s->queued;
      s->head = s->tail = NULL;
      s->queued = s->urgent = 0;
    } else {
      hd_store_op_t *last = s->head;
      for (b.n = 1; last->next && b.n < MAX_BATCH; b.n++) last = last->next;
      s->head = last->next;
      if (!s->head) s->tail = NULL;
      last->next = NULL;
      s->queued -= b.n;
      for (hd_store_op_t *op = b.head; op; op = op->next)
        if (urgent(op->kind)) s->urgent--;
    }
    pthread_mutex_unlock(&s->lock);
    int64_t taken = 0; /* one walk of the batch for the sums */
    size_t records = 0;
    for (hd_store_op_t *op = b.head; op; op = op->next) {
      records += op_records(op);
      if (op->kind == HD_OP_PUT) {
        taken += op->msg->len;
        b.need += 2 * (HD_REC_HDR + op->msg->len);
      } else if (op->kind == HD_OP_NODE_PUT || op->kind == HD_OP_NODE_DEL) {
        b.tree_only = true;
      }
    }
    bool resume = atomic_fetch_sub(&s->backlog, taken) - taken < BACKLOG_LOW &&
                  atomic_exchange(&s->backlogged, false);
    if (resume && !atomic_load(&s->full) && s->opts.on_space) s->opts.on_space();

    if (!b.head && atomic_load(&s->full)) { /* idle and full: has space come back? */
      MDB_txn *rt;
      if (read_begin(s, &rt) == 0) {
        check_space(s, rt, 0, true);
        read_end(s, rt);
      }
    }
    if (b.head) {
      int rc;
      const char *g = hd_store_guard_enter(
          "writing to it; the commit in progress was not written, and its producers had not heard "
          "'accepted': nothing acknowledged is lost, but hadrond stops");
      rc = commit_batch(s, &b);
      hd_store_guard_leave(g);
      if (rc) {
        atomic_fetch_add(&s->failed, 1);
        /* LMDB reports a short write on a full disk as an I/O error: look
         * at the disk itself to tell producers what happened. */
        if (rc != ENOSPC && rc != MDB_MAP_FULL && disk_nearly_full(s)) rc = ENOSPC;
        uint64_t now = hd_now_mono_ms();
        if (rc == MDB_PANIC || !fail_logged_ms || now - fail_logged_ms >= FAIL_LOG_MS) {
          char more[96] = "";
          if (fail_unlogged) hd_fmt(more, " (and %u more since the last such line)", fail_unlogged);
          HD_LOG(HD_LOG_ERR, "core", "store '%s', commit of %zu operations failed: %s%s", s->dir,
                 b.n, lmdb_err(rc), more);
          fail_logged_ms = now ? now : 1;
          fail_unlogged = 0;
        } else {
          fail_unlogged++;
        }
        if (rc == MDB_PANIC) {
          /* A write of LMDB's meta page failed: LMDB takes no transaction
           * from this process again, so retries would fail forever.  What
           * LMDB and the log hold is intact (the failed transaction never
           * became visible), and the next start reads it as after a crash;
           * nobody heard `accepted` for anything not in it. */
          HD_LOG(HD_LOG_ERR, "core",
                 "store '%s', LMDB refuses all further writes after a failed write; hadrond stops (exit "
                 "status 1): nothing acknowledged is lost; check the disk (dmesg), then start hadrond again",
                 s->dir);
          _exit(1);
        }
        if (rc == ENOSPC) atomic_store(&s->full, true);
        fail_batch(s, &b, rc);
        /* Give the disk a moment before retrying what must not be lost. */
        struct timespec pause = {0, 100 * 1000 * 1000};
        nanosleep(&pause, NULL);
        continue;
      }
      atomic_fetch_add(&s->commits, 1);
      atomic_fetch_add(&s->ops, records);
      if (!s->opts.flush_interval) atomic_fetch_add(&s->syncs, 1);
      dirty = true;
      complete(b.head);
      if (fail_logged_ms) {
        char more[96] = "";
        if (fail_unlogged) hd_fmt(more, " (%u failed commits since the last line)", fail_unlogged);
        HD_LOG(HD_LOG_NOTICE, "core", "store '%s', commits succeed again%s", s->dir, more);
        fail_logged_ms = 0;
        fail_unlogged = 0;
      }
    }
    if (s->opts.flush_interval && dirty && hd_now_mono_ms() >= next_sync) {
      mdb_env_sync(s->env, 1);
      /* After a failed flush the file may have a hole that would stop a
       * replay short: start the log again from memory. */
      if (hd_slog_sync(&s->log) != 0) s->log_broken = true;
      atomic_fetch_add(&s->syncs, 1);
      dirty = false;
      next_sync = hd_now_mono_ms() + s->opts.interval_ms;
    }
  }
  /* A clean stop leaves the log empty: everything is in LMDB. */
  const char *g = hd_store_guard_enter("moving its log into LMDB at shutdown; the log still holds it all, and the next start "
                                       "moves it again");
  int rc = checkpoint(s, false);
  hd_store_guard_leave(g);
  if (rc)
    HD_LOG(HD_LOG_ERR, "core", "store '%s', cannot move its log into LMDB at shutdown (%s); the next start "
           "does it", s->dir, lmdb_err(rc));
  if (s->opts.flush_interval) {
    mdb_env_sync(s->env, 1);
    hd_slog_sync(&s->log);
    atomic_fetch_add(&s->syncs, 1);
  }
  for (int i = 0; i < HD_SLOG_FILES; i++) hd_table_clear(&s->tables[i]); /* what a failed checkpoint left: the log has it */
  hd_msg_thread_done();
  return NULL;
}

int hd_store_start(hd_store_t *s) {
  if (pthread_create(&s->writer, NULL, writer_main, s) != 0) return -errno;
  s->started = true;
  return 0;
}

void hd_store_close(hd_store_t *s) {
  if (!s) return;
  if (s->started) {
    pthread_mutex_lock(&s->lock);
    s->stop = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->writer, NULL);
  }
  /* Anything submitted after the writer stopped completes as failed. */
  for (hd_store_op_t *op = s->head; op; op = op->next) op->rc = op->kind == HD_OP_NOP ? 0 : -ECANCELED;
  complete(s->head);
  hd_store_stats_t st;
  hd_store_get_stats(s, &st);
  HD_LOG(HD_LOG_INFO, "core", "store '%s', closed: %" PRIu64 " commits, %" PRIu64 " operations, %" PRIu64
         " syncs, %" PRIu64 " commits to the log, %" PRIu64 " checkpoints (%" PRIu64 " of a full log file; %" PRIu64
         " messages moved to LMDB)",
         s->dir, st.commits, st.ops, st.syncs, st.log_batches, st.checkpoints, st.log_switches, st.ckpt_puts);
  for (int i = 0; i < HD_SLOG_FILES; i++) hd_table_clear(&s->tables[i]);
  hd_slog_close(&s->log);
  mdb_env_close(s->env);
  pthread_rwlock_destroy(&s->map_lock);
  pthread_mutex_destroy(&s->lock);
  pthread_cond_destroy(&s->cond);
  free(s->dir);
  free(s);
}
