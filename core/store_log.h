/* The store's log: <data-dir>/store/log, written in front of LMDB.
 *
 * Why: an LMDB commit writes every B-tree page it touched and flushes
 * twice (pages, then the meta page).  Most durable messages are consumed
 * within milliseconds, so the writer appends each commit's operations to
 * this log instead (one sequential write, one fdatasync) and keeps what
 * they mean in memory (store_table.c); a message put and deleted within
 * one stretch of log never touches LMDB at all.
 *
 * Two files, <data-dir>/store/log and log.1, each up to the configured
 * size, written one at a time.  When the one being written is full, what
 * is still alive of the *other* (older) file's operations is written to
 * LMDB (a checkpoint of that file: usually little, since it was written a
 * whole file ago), and the writer starts again at the beginning of the
 * other file.  A message consumed within a file's length of log is never
 * written to LMDB, however full the log.
 *
 * Layout of a file: batches one after another from offset 0, each
 *     magic u32 | crc32c u32 | lsn u64 | records length u32 | op count u32 |
 *     bodies length u32 | 0 u32
 * then the records (one per operation, store_log.c), then the bodies of
 * the puts in record order.  The crc covers the header after itself and
 * the records; each put's record holds the crc32c of its body, computed by
 * the thread that submitted the put while the message was still in its
 * cache.  So the writer never reads a message: the bodies go from the
 * messages to the file in one pwritev.  (Format 2's batches, magic "HDLG",
 * had a 24-byte header, payload length and op count, and one crc over
 * records with their bodies inline; they are still read, so that a
 * format-2 store's log is replayed.)  LSNs follow one another without gaps, across the two
 * files; LMDB's meta records "log-lsn" and "log-file" hold the LSN the log
 * starts with since the last checkpoint and the file it starts in (at
 * offset 0).  Reading goes through that file while its batches check out,
 * then through the other file from offset 0 while they carry the next
 * LSNs.  It stops at the first batch that does not check out (a write torn
 * by a crash, or an older pass further on, whose LSNs are lower): the
 * writer flushes a batch before anyone hears of it, so whatever follows
 * was never promised.
 *
 * The file is grown in zero-filled chunks and then overwritten in place,
 * so that fdatasync has only data to flush, not the file's size. */
#ifndef HD_STORE_LOG_H
#define HD_STORE_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define HD_SLOG_MAGIC 0x48444c33u    /* "HDL3" */
#define HD_SLOG_MAGIC_V2 0x48444c47u /* "HDLG", format 2: read only */
#define HD_SLOG_HDR 32
#define HD_SLOG_HDR_V2 24
/* Larger batches go to LMDB: a replay reads a batch in one buffer. */
#define HD_SLOG_MAX_BATCH (1u << 30)

/* Operation records inside a batch's payload. */
enum { HD_SLOG_PUT = 1, HD_SLOG_DEL = 2, HD_SLOG_UPDATE = 3, HD_SLOG_HWM = 6 };

typedef struct hd_slog_op {
  int kind;                /* HD_LOG_* */
  uint32_t flags;          /* PUT */
  uint32_t delivery_count; /* PUT, UPDATE */
  uint64_t node, seq;      /* HWM: seq is the mark */
  uint64_t expiry_ms;      /* PUT */
  const uint8_t *bytes;    /* PUT: the message, borrowed (until the batch is written) */
  size_t len;
  uint32_t crc; /* PUT: hd_crc32c(0, bytes, len) */
} hd_slog_op_t;

#define HD_SLOG_FILES 2

typedef struct hd_slog {
  int fd[HD_SLOG_FILES];
  char *path[HD_SLOG_FILES];
  uint64_t size[HD_SLOG_FILES]; /* bytes of each file (zero-filled up to here) */
  uint64_t max;                 /* grow no file further than this */
  int cur;                      /* the file being written */
  uint64_t off;                 /* where the next batch goes in it */
  uint64_t first_lsn;           /* LSN of its first batch since it was started */
  uint64_t next_lsn;
  /* the batch being built: header and records in buf, bodies by reference */
  uint8_t *buf;
  size_t len, cap; /* records' bytes (after the header), buf's size */
  uint32_t nops;
  struct iovec *iov; /* iov[0] is buf, then one per put body */
  size_t niov, iov_cap;
  size_t body_bytes;
  int grow_err; /* errno of the last failed attempt to make or grow a file; 0 if none */
} hd_slog_t;

uint32_t hd_crc32c(uint32_t crc, const void *p, size_t n);

/* Open dir/log and dir/log.1 (created at the first write); nothing is
 * read or written yet. */
int hd_slog_open(hd_slog_t *l, const char *dir, uint64_t max_bytes);
void hd_slog_close(hd_slog_t *l);

/* Build one batch.  A put's bytes are referenced, not copied: they must stay
 * as they are until hd_slog_write has returned. */
void hd_slog_begin(hd_slog_t *l);
void hd_slog_add(hd_slog_t *l, const hd_slog_op_t *op);
/* Bytes the batch being built will take in the file. */
static inline size_t hd_slog_batch_bytes(const hd_slog_t *l) { return HD_SLOG_HDR + l->len + l->body_bytes; }
/* Room for the batch at the current offset, growing the file if allowed
 * (and the filesystem has `spare` bytes beyond the growth)?  false: the
 * writer must go on in the other file (hd_slog_switch, after a checkpoint
 * of that file) or start again (hd_slog_restart, after a checkpoint of
 * both), or the batch go elsewhere. */
bool hd_slog_fits(hd_slog_t *l, uint64_t spare);
/* Write the batch at the current offset; flush it unless `nosync`.
 * Returns 0 or -errno; the offset and LSN move on only on success. */
int hd_slog_write(hd_slog_t *l, bool nosync);
/* Flush the file being written. */
int hd_slog_sync(hd_slog_t *l);
/* After a checkpoint of both files: the next batch goes to offset 0 of
 * file `file` with LSN `lsn`. */
void hd_slog_restart(hd_slog_t *l, int file, uint64_t lsn);
/* The file being written is full and the other one's operations are in
 * LMDB: the next batch goes to offset 0 of the other file.  Flushes the
 * full one first (with nosync writes, its tail may not be on disk yet, and
 * a replay that stops short in it never reaches the other). */
int hd_slog_switch(hd_slog_t *l);

/* Read the batches of file `file` from offset 0 while they check out,
 * starting with LSN `lsn`, then those of the other file from offset 0;
 * fn sees each operation.  Returns the number of batches read (and the
 * next LSN in *next), or -errno when a file cannot be read or fn fails
 * (its return value). */
long hd_slog_replay(const char *dir, int file, uint64_t lsn, int (*fn)(const hd_slog_op_t *op, void *arg),
                   void *arg, uint64_t *next, uint64_t *ops);

#endif
