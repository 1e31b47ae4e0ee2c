/* The store's log: <data-dir>/store/log, written in front of LMDB.
 *
 * Why: an LMDB commit writes every B-tree page it touched and flushes
 * twice (pages, then the meta page).  Most durable messages are consumed
 * within milliseconds, so the writer appends each commit's operations to
 * this log instead (one sequential write, one fdatasync) and keeps what
 * they mean in memory (store_table.c); a message put and deleted within
 * one stretch of log never touches LMDB at all.  When the log is full,
 * what is left is written to LMDB in one transaction (a checkpoint) and the
 * log starts again from the beginning.
 *
 * Layout: batches one after another from offset 0, each
 *     magic u32 | crc32c u32 | lsn u64 | payload length u32 | op count u32
 * then the payload (operations, store_log.c).  The crc covers everything
 * after itself.  LSNs follow one another without gaps; LMDB's meta record
 * "log-lsn" holds the LSN the log starts with since the last checkpoint.
 * Reading stops at the first batch that does not check out (a write torn
 * by a crash, or an older pass of the log further on): the writer flushes
 * a batch before anyone hears of it, so whatever follows was never
 * promised.
 *
 * The file is grown in zero-filled chunks and then overwritten in place,
 * so that fdatasync has only data to flush, not the file's size. */
#ifndef HD_STORE_LOG_H
#define HD_STORE_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HD_SLOG_MAGIC 0x48444c47u /* "HDLG" */
#define HD_SLOG_HDR 24

/* Operation records inside a batch's payload. */
enum { HD_SLOG_PUT = 1, HD_SLOG_DEL = 2, HD_SLOG_UPDATE = 3, HD_SLOG_HWM = 6 };

typedef struct hd_slog_op {
  int kind;                /* HD_LOG_* */
  uint32_t flags;          /* PUT */
  uint32_t delivery_count; /* PUT, UPDATE */
  uint64_t node, seq;      /* HWM: seq is the mark */
  uint64_t expiry_ms;      /* PUT */
  const uint8_t *bytes;    /* PUT: the message, borrowed */
  size_t len;
} hd_slog_op_t;

typedef struct hd_slog {
  int fd;
  char *path;
  uint64_t size;    /* bytes of the file (zero-filled up to here) */
  uint64_t max;     /* grow no further than this */
  uint64_t off;     /* where the next batch goes */
  uint64_t next_lsn;
  /* the batch being built */
  uint8_t *buf;
  size_t len, cap;
  uint32_t nops;
} hd_slog_t;

uint32_t hd_crc32c(uint32_t crc, const void *p, size_t n);

/* Open (creating) dir/log; nothing is read or written yet. */
int hd_slog_open(hd_slog_t *l, const char *dir, uint64_t max_bytes);
void hd_slog_close(hd_slog_t *l);

/* Build one batch. */
void hd_slog_begin(hd_slog_t *l);
void hd_slog_add(hd_slog_t *l, const hd_slog_op_t *op);
/* Bytes the batch being built will take in the file. */
static inline size_t hd_slog_batch_bytes(const hd_slog_t *l) { return HD_SLOG_HDR + l->len; }
/* Room for the batch at the current offset, growing the file if allowed
 * (and the filesystem has `spare` bytes beyond the growth)?  false: the
 * log must start again (after a checkpoint) or the batch go elsewhere. */
bool hd_slog_fits(hd_slog_t *l, uint64_t spare);
/* Write the batch at the current offset; flush it unless `nosync`.
 * Returns 0 or -errno; the offset and LSN move on only on success. */
int hd_slog_write(hd_slog_t *l, bool nosync);
int hd_slog_sync(hd_slog_t *l);
/* After a checkpoint: the next batch goes to offset 0 with LSN `lsn`. */
void hd_slog_restart(hd_slog_t *l, uint64_t lsn);

/* Read the batches from offset 0 while they check out, starting with LSN
 * `lsn`; fn sees each operation.  Returns the number of batches read (and
 * the next LSN in *next), or -errno when the file cannot be read or fn
 * fails (its return value). */
long hd_slog_replay(const char *dir, uint64_t lsn, int (*fn)(const hd_slog_op_t *op, void *arg), void *arg,
                   uint64_t *next, uint64_t *ops);

#endif
