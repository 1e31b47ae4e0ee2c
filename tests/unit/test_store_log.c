/* The store's log (core/store_log.c) and its table (core/store_table.c)
 * without a broker: what is read back after a clean write, a torn write, a
 * damaged batch and a wrap-around, and how deletes cancel puts. */
#include "config.h"

#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "hadron/module.h"
#include "message.h"
#include "store_format.h"
#include "store_log.h"
#include "store_table.h"

static char dir[64];

static int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/hadron-slog-XXXXXX");
  assert_non_null(mkdtemp(dir));
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char path[128];
  snprintf(path, sizeof path, "%s/log", dir);
  unlink(path);
  snprintf(path, sizeof path, "%s/log.1", dir);
  unlink(path);
  rmdir(dir);
  return 0;
}

/* What replay saw: kinds and seqs in order, and the bytes of puts. */
typedef struct seen {
  int kinds[256];
  uint64_t seqs[256];
  char bytes[256][16];
  size_t n;
} seen_t;

static int record(const hd_slog_op_t *op, void *arg) {
  seen_t *s = arg;
  assert_true(s->n < 256);
  s->kinds[s->n] = op->kind;
  s->seqs[s->n] = op->seq;
  if (op->kind == HD_SLOG_PUT) {
    assert_true(op->len < 16);
    memcpy(s->bytes[s->n], op->bytes, op->len);
    s->bytes[s->n][op->len] = 0;
  }
  s->n++;
  return 0;
}

/* One batch per call: a put of "m<seq>" and a delete of seq - 1. */
static void write_batch(hd_slog_t *l, uint64_t seq) {
  char body[16];
  int n = snprintf(body, sizeof body, "m%llu", (unsigned long long)seq);
  hd_slog_begin(l);
  hd_slog_op_t put = {.kind = HD_SLOG_PUT, .node = 7, .seq = seq, .bytes = (const uint8_t *)body,
                      .len = (size_t)n, .expiry_ms = 99, .delivery_count = 2, .crc = hd_crc32c(0, body, (size_t)n)};
  hd_slog_add(l, &put);
  hd_slog_op_t del = {.kind = HD_SLOG_DEL, .node = 7, .seq = seq - 1};
  hd_slog_add(l, &del);
  assert_true(hd_slog_fits(l, 0));
  assert_int_equal(hd_slog_write(l, true), 0);
}

/* A log in `dir` that starts at `lsn`, with batches for seqs 1..n. */
static void log_with(hd_slog_t *l, uint64_t lsn, uint64_t n) {
  assert_int_equal(hd_slog_open(l, dir, 1u << 20), 0);
  hd_slog_restart(l, 0, lsn);
  for (uint64_t seq = 1; seq <= n; seq++) write_batch(l, seq);
}

static void t_crc32c(void **state) {
  (void)state;
  /* The check value of CRC-32C (Castagnoli). */
  assert_int_equal(hd_crc32c(0, "123456789", 9), 0xe3069283u);
  /* Continuing a crc over a second part equals one crc over the whole. */
  assert_int_equal(hd_crc32c(hd_crc32c(0, "12345", 5), "6789", 4), 0xe3069283u);
  static uint8_t big[4099];
  for (size_t i = 0; i < sizeof big; i++) big[i] = (uint8_t)(i * 7);
  uint32_t whole = hd_crc32c(0, big, sizeof big);
  assert_int_equal(hd_crc32c(hd_crc32c(0, big, 1000), big + 1000, sizeof big - 1000), whole);
  /* Against the definition, bit by bit, at every length and alignment
   * around the three-way stretches of the SSE4.2 path (store_log.c). */
  for (size_t off = 0; off < 8; off += 3)
    for (size_t n = 0; n + off <= 1200; n++) {
      uint32_t c = 0xffffffffu;
      for (size_t i = 0; i < n; i++) {
        c ^= big[off + i];
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
      }
      assert_int_equal(hd_crc32c(0, big + off, n), ~c);
    }
}

static void t_write_and_replay(void **state) {
  (void)state;
  hd_slog_t l;
  log_with(&l, 5, 3);
  seen_t s = {0};
  uint64_t next, ops;
  assert_int_equal(hd_slog_replay(dir, 0, 5, record, &s, &next, &ops), 3);
  assert_int_equal(next, 8);
  assert_int_equal(ops, 6);
  assert_int_equal(s.n, 6);
  assert_int_equal(s.kinds[0], HD_SLOG_PUT);
  assert_string_equal(s.bytes[0], "m1");
  assert_int_equal(s.kinds[1], HD_SLOG_DEL);
  assert_int_equal(s.seqs[1], 0);
  assert_string_equal(s.bytes[4], "m3");
  /* Another starting LSN: none of these batches belongs to it. */
  memset(&s, 0, sizeof s);
  assert_int_equal(hd_slog_replay(dir, 0, 6, record, &s, &next, &ops), 0);
  assert_int_equal(s.n, 0);
  hd_slog_close(&l);
}

static void damage(uint64_t off, uint8_t xor) {
  char path[128];
  snprintf(path, sizeof path, "%s/log", dir);
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  uint8_t b;
  assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
  b ^= xor;
  assert_int_equal(pwrite(fd, &b, 1, (off_t)off), 1);
  close(fd);
}

static void t_torn_and_damaged(void **state) {
  (void)state;
  hd_slog_t l;
  assert_int_equal(hd_slog_open(&l, dir, 1u << 20), 0);
  hd_slog_restart(&l, 0, 1);
  uint64_t ends[4];
  for (uint64_t seq = 1; seq <= 4; seq++) {
    write_batch(&l, seq);
    ends[seq - 1] = l.off;
  }
  hd_slog_close(&l);
  /* One bit of the third batch's payload: reading stops before it. */
  damage(ends[1] + HD_SLOG_HDR + 10, 0x04);
  seen_t s = {0};
  uint64_t next, ops;
  assert_int_equal(hd_slog_replay(dir, 0, 1, record, &s, &next, &ops), 2);
  assert_int_equal(next, 3);
  assert_int_equal(s.n, 4);
  damage(ends[1] + HD_SLOG_HDR + 10, 0x04); /* mended */
  /* A torn last batch: its header made it, part of its payload did not. */
  char path[128];
  snprintf(path, sizeof path, "%s/log", dir);
  assert_int_equal(truncate(path, (off_t)(ends[3] - 5)), 0);
  memset(&s, 0, sizeof s);
  assert_int_equal(hd_slog_replay(dir, 0, 1, record, &s, &next, &ops), 3);
  assert_int_equal(next, 4);
  /* No log at all: nothing to replay, not an error. */
  assert_int_equal(unlink(path), 0);
  assert_int_equal(hd_slog_replay(dir, 0, 1, record, &s, &next, &ops), 0);
}

static void t_wrap_leaves_old_batches_unread(void **state) {
  (void)state;
  hd_slog_t l;
  log_with(&l, 1, 6);
  /* A checkpoint took LSNs 1-6 into LMDB; the log starts again at 7 and
   * its first batch overwrites the first old one only. */
  hd_slog_restart(&l, 0, 7);
  write_batch(&l, 100);
  seen_t s = {0};
  uint64_t next, ops;
  assert_int_equal(hd_slog_replay(dir, 0, 7, record, &s, &next, &ops), 1);
  assert_int_equal(next, 8);
  assert_string_equal(s.bytes[0], "m100");
  hd_slog_close(&l);
}

static void t_full_log_does_not_fit(void **state) {
  (void)state;
  hd_slog_t l;
  assert_int_equal(hd_slog_open(&l, dir, 4096), 0);
  hd_slog_restart(&l, 0, 1);
  uint8_t body[3000] = {0};
  hd_slog_begin(&l);
  hd_slog_op_t put = {.kind = HD_SLOG_PUT, .node = 1, .seq = 1, .bytes = body, .len = sizeof body,
                      .crc = hd_crc32c(0, body, sizeof body)};
  hd_slog_add(&l, &put);
  assert_true(hd_slog_fits(&l, 0));
  assert_int_equal(hd_slog_write(&l, true), 0);
  hd_slog_begin(&l);
  hd_slog_add(&l, &put);
  assert_false(hd_slog_fits(&l, 0)); /* the writer checkpoints and starts again */
  hd_slog_restart(&l, 0, 2);
  assert_true(hd_slog_fits(&l, 0));
  hd_slog_close(&l);
}

static hd_msg_t *msg(const char *text) {
  hd_msg_t *m = hd_msg_alloc(strlen(text));
  memcpy(m->buf, text, strlen(text));
  return m;
}

static void t_table(void **state) {
  (void)state;
  hd_table_t t = {0};
  int64_t base = hd_msg_mem_used();
  for (uint64_t seq = 1; seq <= 3000; seq++) {
    hd_msg_t *m = msg("x");
    hd_table_put(&t, seq % 3, seq, 0, 0, m);
    hd_msg_unref(m);
  }
  assert_int_equal(t.count, 3000);
  /* Deleting what was put cancels both; deleting what was not goes to
   * LMDB later. */
  for (uint64_t seq = 1; seq <= 3000; seq += 2) hd_table_del(&t, NULL, seq % 3, seq);
  hd_table_del(&t, NULL, 1, 5001);
  assert_int_equal(t.count, 1500);
  assert_int_equal(t.dels.n, 1);
  assert_int_equal(t.dels.v[0].seq, 5001);
  hd_table_update(&t, NULL, 2, 2, 7);    /* in the table: changed there */
  hd_table_update(&t, NULL, 2, 9002, 3); /* not: for LMDB */
  assert_int_equal(t.updates.n, 1);
  hd_table_hwm(&t, 1, 10);
  hd_table_hwm(&t, 1, 20);
  assert_int_equal(t.hwms.n, 1);
  assert_int_equal(t.hwms.v[0].seq, 20);
  /* Highest seq per node, even of deleted puts. */
  assert_int_equal(t.maxseq.n, 3);
  size_t n;
  hd_pend_t *v = hd_table_sorted(&t, &n);
  assert_int_equal(n, 1500);
  for (size_t i = 1; i < n; i++)
    assert_true(v[i - 1].node < v[i].node || (v[i - 1].node == v[i].node && v[i - 1].seq < v[i].seq));
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(v[i].seq % 2, 0);
    if (v[i].seq == 2) assert_int_equal(v[i].delivery_count, 7);
  }
  free(v);
  assert_false(hd_table_empty(&t));
  hd_table_clear(&t);
  assert_true(hd_table_empty(&t));
  assert_int_equal(hd_msg_mem_used(), base); /* every message reference went back */
  hd_msg_thread_done();
}

/* The table against a plain list of what should be alive, through the
 * cases its per-node rings treat specially: deletes out of order, a ring
 * emptied and started again elsewhere, puts older than a ring's front or
 * far beyond its end (they go to the hash), a put repeated, updates. */
typedef struct model_ent {
  uint64_t node, seq;
  uint32_t dc;
  hd_msg_t *msg;
} model_ent_t;

static model_ent_t model[20000];
static size_t nmodel;

static model_ent_t *model_find(uint64_t node, uint64_t seq) {
  for (size_t i = 0; i < nmodel; i++)
    if (model[i].node == node && model[i].seq == seq) return &model[i];
  return NULL;
}

static int model_cmp(const void *a, const void *b) {
  const model_ent_t *x = a, *y = b;
  if (x->node != y->node) return x->node < y->node ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void model_check(hd_table_t *t) {
  qsort(model, nmodel, sizeof *model, model_cmp);
  size_t n;
  hd_pend_t *v = hd_table_sorted(t, &n);
  assert_int_equal(n, nmodel);
  assert_int_equal(t->count, nmodel);
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(v[i].node, model[i].node);
    assert_int_equal(v[i].seq, model[i].seq);
    assert_int_equal(v[i].delivery_count, model[i].dc);
    assert_ptr_equal(v[i].msg, model[i].msg);
  }
  free(v);
}

static void t_table_rings(void **state) {
  (void)state;
  hd_table_t t = {0};
  int64_t base = hd_msg_mem_used();
  hd_msg_t *m = msg("y");
  uint64_t next[4] = {1, 1000, 5, 1};
  size_t dels = 0, updates = 0, max_hashed = 0;
  unsigned r = 12345;
  nmodel = 0;
  for (int step = 0; step < 60000; step++) {
    r = r * 1103515245u + 12345u;
    uint64_t node = (r >> 8) % 4;
    unsigned what = (r >> 16) % 100;
    uint64_t seq;
    if (what < 45 || nmodel == 0) { /* in order, sometimes after a gap */
      if (nmodel >= sizeof model / sizeof *model) continue;
      seq = next[node];
      next[node] += step % 9973 == 0 ? 100000 : what < 10 ? 7 : 1; /* now and then far ahead */
    } else if (what < 48) { /* older than anything: behind the ring's front */
      if (nmodel >= sizeof model / sizeof *model) continue;
      seq = 1 + (r >> 20) % 50;
      if (model_find(node, seq)) continue;
    } else if (what < 50) { /* the same seq again: the later put wins */
      model_ent_t *e = &model[(r >> 12) % nmodel];
      hd_table_put(&t, e->node, e->seq, 0, 9, m);
      e->dc = 9;
      continue;
    } else if (what < 55) { /* an update, of a live put or of one in LMDB */
      model_ent_t *e = &model[(r >> 12) % nmodel];
      if (what == 54) {
        hd_table_update(&t, NULL, node, 900000000 + step, 4);
        assert_int_equal(t.updates.n, ++updates);
      } else {
        hd_table_update(&t, NULL, e->node, e->seq, 3);
        e->dc = 3;
      }
      continue;
    } else { /* a delete: mostly the oldest of a node, else any */
      size_t k = (r >> 12) % nmodel;
      if (what < 85) {
        for (size_t i = 0; i < nmodel; i++)
          if (model[i].node == model[k].node && model[i].seq < model[k].seq) k = i;
      }
      hd_table_del(&t, NULL, model[k].node, model[k].seq);
      model[k] = model[--nmodel];
      if (what == 99) { /* and one of a message only LMDB has */
        hd_table_del(&t, NULL, node, 800000000 + step);
        assert_int_equal(t.dels.n, ++dels);
      }
      continue;
    }
    hd_table_put(&t, node, seq, 0, 0, m);
    model[nmodel++] = (model_ent_t){node, seq, 0, m};
    if (t.xputs.count > max_hashed) max_hashed = t.xputs.count;
    if (step % 5000 == 0) model_check(&t);
  }
  model_check(&t);
  assert_true(max_hashed > 0 && max_hashed < t.count / 2); /* both ways were taken; rings the most */
  /* Emptied, a ring starts again wherever the next put is. */
  while (nmodel) {
    hd_table_del(&t, NULL, model[nmodel - 1].node, model[nmodel - 1].seq);
    nmodel--;
  }
  model_check(&t);
  assert_int_equal(t.dels.n, dels);
  hd_table_put(&t, 2, 5000000000ull, 0, 0, m);
  hd_table_put(&t, 2, 5000000001ull, 0, 0, m);
  model[nmodel++] = (model_ent_t){2, 5000000000ull, 0, m};
  model[nmodel++] = (model_ent_t){2, 5000000001ull, 0, m};
  model_check(&t);
  hd_table_clear(&t);
  assert_true(hd_table_empty(&t));
  hd_msg_unref(m);
  assert_int_equal(hd_msg_mem_used(), base);
  hd_msg_thread_done();
}


/* Replay callback for t_batch_of_many_bodies: counts operations and puts
 * whose body is not "b<seq - 1>". */
typedef struct count {
  int n, bad;
} count_t;

static int replay_count(const hd_slog_op_t *op, void *arg) {
  count_t *c = arg;
  c->n++;
  if (op->kind == HD_SLOG_PUT && op->seq <= 3000) {
    char want[16];
    int n = snprintf(want, sizeof want, "b%d", (int)op->seq - 1);
    if (op->len != (size_t)n || memcmp(op->bytes, want, op->len) != 0) c->bad++;
  }
  return 0;
}

/* Format 2's batches (a 24-byte header, bodies inline, one crc over all),
 * as a format-2 hadrond left them: read back, and followed by format 3's. */
static void t_format2_batches_are_read(void **state) {
  (void)state;
  char path[128];
  snprintf(path, sizeof path, "%s/log", dir);
  int fd = open(path, O_RDWR | O_CREAT, 0640);
  assert_true(fd >= 0);
  uint64_t off = 0;
  for (uint64_t seq = 1; seq <= 2; seq++) {
    uint8_t b[HD_SLOG_HDR_V2 + 36 + 2 + 20] = {0}, *p = b + HD_SLOG_HDR_V2;
    p[0] = HD_SLOG_PUT;
    hd_put32(p + 4, 5);
    hd_put64(p + 8, 7);
    hd_put64(p + 16, seq);
    hd_put32(p + 32, 2);
    p[36] = 'v';
    p[37] = (uint8_t)('0' + seq);
    p += 38;
    p[0] = HD_SLOG_DEL;
    hd_put64(p + 4, 7);
    hd_put64(p + 12, seq + 100);
    hd_put32(b, HD_SLOG_MAGIC_V2);
    hd_put64(b + 8, 40 + seq);
    hd_put32(b + 16, sizeof b - HD_SLOG_HDR_V2);
    hd_put32(b + 20, 2);
    hd_put32(b + 4, hd_crc32c(0, b + 8, sizeof b - 8));
    assert_int_equal(pwrite(fd, b, sizeof b, (off_t)off), (ssize_t)sizeof b);
    off += sizeof b;
  }
  close(fd);
  seen_t s = {0};
  uint64_t next, ops;
  assert_int_equal(hd_slog_replay(dir, 0, 41, record, &s, &next, &ops), 2);
  assert_int_equal(next, 43);
  assert_int_equal(s.n, 4);
  assert_string_equal(s.bytes[0], "v1");
  assert_int_equal(s.kinds[3], HD_SLOG_DEL);
  assert_int_equal(s.seqs[3], 102);
  /* The broker goes on after them in format 3, in the same file. */
  hd_slog_t l;
  assert_int_equal(hd_slog_open(&l, dir, 1u << 20), 0);
  hd_slog_restart(&l, 0, 43);
  l.off = off;
  write_batch(&l, 3);
  hd_slog_close(&l);
  memset(&s, 0, sizeof s);
  assert_int_equal(hd_slog_replay(dir, 0, 41, record, &s, &next, &ops), 3);
  assert_string_equal(s.bytes[4], "m3");
}

/* A batch of more bodies than one pwritev takes (IOV_MAX). */
static void t_batch_of_many_bodies(void **state) {
  (void)state;
  hd_slog_t l;
  assert_int_equal(hd_slog_open(&l, dir, 1u << 20), 0);
  hd_slog_restart(&l, 0, 1);
  static char bodies[3000][8];
  hd_slog_begin(&l);
  for (int i = 0; i < 3000; i++) {
    int n = snprintf(bodies[i], sizeof bodies[i], "b%d", i);
    hd_slog_op_t put = {.kind = HD_SLOG_PUT, .node = 1, .seq = (uint64_t)i + 1, .bytes = (uint8_t *)bodies[i],
                        .len = (size_t)n, .crc = hd_crc32c(0, bodies[i], (size_t)n)};
    hd_slog_add(&l, &put);
  }
  assert_true(hd_slog_fits(&l, 0));
  assert_int_equal(hd_slog_write(&l, true), 0);
  write_batch(&l, 5000);
  hd_slog_close(&l);
  count_t c = {0, 0};
  uint64_t next, ops;
  assert_int_equal(hd_slog_replay(dir, 0, 1, replay_count, &c, &next, &ops), 2);
  assert_int_equal(c.n, 3002);
  assert_int_equal(c.bad, 0);
}

/* ---- the two files, as the store's writer uses them (store.c) -------------- */

static void t_two_files_replay_in_turn(void **state) {
  (void)state;
  hd_slog_t l;
  log_with(&l, 10, 3); /* LSNs 10-12 in file 0 */
  assert_int_equal(hd_slog_switch(&l), 0);
  assert_int_equal(l.cur, 1);
  assert_int_equal(l.first_lsn, 13);
  write_batch(&l, 4);
  write_batch(&l, 5); /* LSNs 13-14 in file 1 */
  uint64_t end1 = l.off;
  seen_t s = {0};
  uint64_t next, ops;
  /* From file 0: all five, in LSN order. */
  assert_int_equal(hd_slog_replay(dir, 0, 10, record, &s, &next, &ops), 5);
  assert_int_equal(next, 15);
  assert_string_equal(s.bytes[8], "m5");
  /* After a checkpoint of file 0, LMDB's log starts in file 1: file 0's
   * batches are older and are not read after it. */
  memset(&s, 0, sizeof s);
  assert_int_equal(hd_slog_replay(dir, 1, 13, record, &s, &next, &ops), 2);
  assert_string_equal(s.bytes[0], "m4");
  /* File 1 full: file 0 is started again and read after file 1. */
  assert_int_equal(hd_slog_switch(&l), 0);
  write_batch(&l, 6);
  memset(&s, 0, sizeof s);
  assert_int_equal(hd_slog_replay(dir, 1, 13, record, &s, &next, &ops), 3);
  assert_int_equal(next, 16);
  assert_string_equal(s.bytes[4], "m6");
  /* A torn batch at the end of file 1: file 0 is not reached (its batch
   * follows one that was never promised). */
  hd_slog_close(&l);
  char path[128];
  snprintf(path, sizeof path, "%s/log.1", dir);
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  uint8_t b;
  assert_int_equal(pread(fd, &b, 1, (off_t)(end1 - 3)), 1);
  b ^= 0x10;
  assert_int_equal(pwrite(fd, &b, 1, (off_t)(end1 - 3)), 1);
  close(fd);
  memset(&s, 0, sizeof s);
  assert_int_equal(hd_slog_replay(dir, 1, 13, record, &s, &next, &ops), 1);
  assert_int_equal(next, 14);
}

/* The writer's protocol against a model, through thousands of random
 * operations with files of 4 KiB (a switch every 20 batches or so) and a
 * "crash" now and then: what LMDB holds plus what a replay from LMDB's
 * log-lsn and log-file adds must be exactly what was committed: the live
 * messages with their delivery counts and bytes, and each queue's highest
 * seq ever put (seqs must never be handed out twice). */
#define P_NODES 2
#define P_SEQS 4096

typedef struct pstate {
  int32_t dc[P_NODES][P_SEQS]; /* -1: no record */
  uint64_t maxseq[P_NODES];
} pstate_t;

static pstate_t lmdb, want;
static uint64_t meta_lsn;
static int meta_file;

static void pstate_clear(pstate_t *p) {
  memset(p, 0, sizeof *p);
  for (int n = 0; n < P_NODES; n++)
    for (int q = 0; q < P_SEQS; q++) p->dc[n][q] = -1;
}

/* A checkpoint of one table into the model LMDB (store.c's move_table). */
static void move_into(pstate_t *db, const hd_table_t *t) {
  size_t n;
  hd_pend_t *v = hd_table_sorted(t, &n);
  for (size_t i = 0; i < n; i++) {
    char want_body[16];
    snprintf(want_body, sizeof want_body, "m%llu", (unsigned long long)v[i].seq);
    assert_int_equal(v[i].msg->len, strlen(want_body));
    assert_memory_equal(v[i].msg->buf, want_body, v[i].msg->len);
    db->dc[v[i].node][v[i].seq] = (int32_t)v[i].delivery_count;
  }
  free(v);
  for (size_t i = 0; i < t->updates.n; i++)
    if (db->dc[t->updates.v[i].node][t->updates.v[i].seq] >= 0)
      db->dc[t->updates.v[i].node][t->updates.v[i].seq] = (int32_t)t->updates.v[i].delivery_count;
  for (size_t i = 0; i < t->dels.n; i++) db->dc[t->dels.v[i].node][t->dels.v[i].seq] = -1;
  for (size_t i = 0; i < t->maxseq.n; i++)
    if (t->maxseq.v[i].seq > db->maxseq[t->maxseq.v[i].node]) db->maxseq[t->maxseq.v[i].node] = t->maxseq.v[i].seq;
}

static int replay_into(const hd_slog_op_t *op, void *arg) { return hd_table_apply(arg, NULL, op, NULL); }

static void crash_and_check(void) {
  pstate_t got = lmdb;
  hd_table_t r = {0};
  uint64_t next, ops;
  assert_true(hd_slog_replay(dir, meta_file, meta_lsn, replay_into, &r, &next, &ops) >= 0);
  move_into(&got, &r);
  hd_table_clear(&r);
  for (int n = 0; n < P_NODES; n++) {
    for (int q = 0; q < P_SEQS; q++)
      if (got.dc[n][q] != want.dc[n][q]) fail_msg("node %d seq %d: %d after the crash, %d committed", n, q, got.dc[n][q], want.dc[n][q]);
    uint64_t top = got.maxseq[n];
    for (int q = 0; q < P_SEQS; q++)
      if (got.dc[n][q] >= 0 && (uint64_t)q > top) top = (uint64_t)q;
    assert_int_equal(top, want.maxseq[n]);
  }
}

static void t_two_files_protocol(void **state) {
  (void)state;
  hd_slog_t l;
  assert_int_equal(hd_slog_open(&l, dir, 4096), 0);
  hd_slog_restart(&l, 0, 1);
  hd_table_t tables[2] = {{0}, {0}};
  int64_t base = hd_msg_mem_used();
  pstate_clear(&lmdb);
  pstate_clear(&want);
  meta_lsn = 1;
  meta_file = 0;
  uint64_t next_seq[P_NODES] = {1, 1};
  unsigned r = 777;
  size_t switches = 0, crashes = 0, cross = 0;
  for (int batch = 0; batch < 3000; batch++) {
    hd_slog_op_t ops[8];
    hd_msg_t *msgs[8] = {0};
    int nops = 1 + (int)((r >> 4) % 8);
    hd_slog_begin(&l);
    for (int i = 0; i < nops; i++) {
      r = r * 1103515245u + 12345u;
      uint64_t node = (r >> 8) % P_NODES;
      unsigned what = (r >> 16) % 100;
      /* Node 1 gets few puts: its highest seq is often put and deleted in
       * a file long overwritten, with nothing put since. */
      if (node == 1 && what < 45 && (r >> 24) % 16) node = 0;
      uint64_t seq = 1 + (r >> 12) % (next_seq[node] > 1 ? next_seq[node] - 1 : 1);
      if (what < 45 && next_seq[node] < P_SEQS) {
        seq = next_seq[node]++;
        char body[16];
        int len = snprintf(body, sizeof body, "m%llu", (unsigned long long)seq);
        msgs[i] = msg(body);
        ops[i] = (hd_slog_op_t){.kind = HD_SLOG_PUT, .node = node, .seq = seq, .delivery_count = 0,
                                .bytes = msgs[i]->buf, .len = (size_t)len, .crc = hd_crc32c(0, msgs[i]->buf, (size_t)len)};
        want.dc[node][seq] = 0;
        want.maxseq[node] = seq;
      } else if (what < 85 && want.dc[node][seq] >= 0) { /* deletes of live messages, old or new */
        ops[i] = (hd_slog_op_t){.kind = HD_SLOG_DEL, .node = node, .seq = seq};
        want.dc[node][seq] = -1;
      } else if (want.dc[node][seq] >= 0) {
        uint32_t dc = (uint32_t)want.dc[node][seq] + 1;
        ops[i] = (hd_slog_op_t){.kind = HD_SLOG_UPDATE, .node = node, .seq = seq, .delivery_count = dc};
        want.dc[node][seq] = (int32_t)dc;
      } else { /* a delete of a message already gone: nothing changes */
        ops[i] = (hd_slog_op_t){.kind = HD_SLOG_DEL, .node = node, .seq = seq};
      }
      hd_slog_add(&l, &ops[i]);
    }
    if (!hd_slog_fits(&l, 0)) {
      assert_true(l.off > 0);
      /* The full file's table stays; the other one's goes to LMDB, and
       * LMDB's log starts with the full file. */
      move_into(&lmdb, &tables[1 - l.cur]);
      meta_lsn = l.first_lsn;
      meta_file = l.cur;
      hd_table_clear(&tables[1 - l.cur]);
      assert_int_equal(hd_slog_switch(&l), 0);
      switches++;
      assert_true(hd_slog_fits(&l, 0));
    }
    assert_int_equal(hd_slog_write(&l, true), 0);
    for (int i = 0; i < nops; i++) {
      hd_table_t *older = &tables[1 - l.cur];
      size_t before = older->count;
      assert_int_equal(hd_table_apply(&tables[l.cur], older, &ops[i], msgs[i]), 0);
      cross += older->count < before;
      if (msgs[i]) hd_msg_unref(msgs[i]);
    }
    if (batch % 97 == 0) {
      crash_and_check();
      crashes++;
    }
    if (batch % 500 == 499) { /* now and then a checkpoint of both, as before a commit to LMDB */
      move_into(&lmdb, &tables[1 - l.cur]);
      move_into(&lmdb, &tables[l.cur]);
      meta_lsn = l.next_lsn;
      meta_file = l.cur;
      hd_table_clear(&tables[0]);
      hd_table_clear(&tables[1]);
      hd_slog_restart(&l, l.cur, l.next_lsn);
      crash_and_check();
    }
  }
  crash_and_check();
  print_message("%zu switches, %zu crashes checked, %zu deletes cancelled a put of the other file\n", switches, crashes,
                cross);
  assert_true(switches > 100);
  assert_true(cross > 50); /* deletes in one file of puts in the other */
  hd_table_clear(&tables[0]);
  hd_table_clear(&tables[1]);
  hd_slog_close(&l);
  assert_int_equal(hd_msg_mem_used(), base);
  hd_msg_thread_done();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(t_crc32c),
      cmocka_unit_test_setup_teardown(t_write_and_replay, setup, teardown),
      cmocka_unit_test_setup_teardown(t_torn_and_damaged, setup, teardown),
      cmocka_unit_test_setup_teardown(t_wrap_leaves_old_batches_unread, setup, teardown),
      cmocka_unit_test_setup_teardown(t_full_log_does_not_fit, setup, teardown),
      cmocka_unit_test(t_table),
      cmocka_unit_test(t_table_rings),
      cmocka_unit_test_setup_teardown(t_format2_batches_are_read, setup, teardown),
      cmocka_unit_test_setup_teardown(t_batch_of_many_bodies, setup, teardown),
      cmocka_unit_test_setup_teardown(t_two_files_replay_in_turn, setup, teardown),
      cmocka_unit_test_setup_teardown(t_two_files_protocol, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
