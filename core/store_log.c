/* The store's log file: batches of operations, checksummed, appended and
 * flushed by the store writer (store_log.h says why and how). */
#include "config.h"

#include "store_log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "store_format.h"
#include "util.h"

#define GROW_CHUNK (1u << 20)
#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

/* ---- crc32c (Castagnoli): the SSE4.2 instruction where there is one ---- */

static uint32_t crc_table[256];

static void crc_table_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    crc_table[i] = c;
  }
}

static uint32_t crc_sw(uint32_t c, const uint8_t *p, size_t n) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, crc_table_init);
  while (n--) c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("sse4.2"))) static uint32_t crc_hw_serial(uint32_t c, const uint8_t *p, size_t n) {
  uint64_t c64 = c;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c64 = __builtin_ia32_crc32di(c64, v);
  }
  c = (uint32_t)c64;
  while (n--) c = __builtin_ia32_crc32qi(c, *p++);
  return c;
}

/* The crc32 instruction takes 3 cycles to give its result but can start
 * one every cycle: one chain over a message waits on itself.  Three
 * chains over three neighbouring stretches of STRETCH bytes run together,
 * and are joined by "moving" a crc past STRETCH zero bytes, a linear map
 * kept as 4 tables of 256 (per byte of the crc).  About twice as fast on
 * the 1 KiB bodies every durable message's record carries (its worker
 * computes it, hd_store_submit). */
#define STRETCH 128
static uint32_t shift_table[4][256];

__attribute__((target("sse4.2"))) static void shift_table_init(void) {
  static const uint8_t zeros[STRETCH];
  for (int k = 0; k < 4; k++)
    for (uint32_t b = 0; b < 256; b++) shift_table[k][b] = crc_hw_serial(b << (8 * k), zeros, STRETCH);
}

static uint32_t shift_stretch(uint32_t c) {
  return shift_table[0][c & 0xff] ^ shift_table[1][(c >> 8) & 0xff] ^ shift_table[2][(c >> 16) & 0xff] ^
         shift_table[3][c >> 24];
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t c, const uint8_t *p, size_t n) {
  if (n < 3 * STRETCH) return crc_hw_serial(c, p, n);
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, shift_table_init);
  for (; n >= 3 * STRETCH; n -= 3 * STRETCH, p += 3 * STRETCH) {
    uint64_t a = c, b = 0, d = 0;
    for (size_t i = 0; i < STRETCH; i += 8) {
      uint64_t va, vb, vd;
      memcpy(&va, p + i, 8);
      memcpy(&vb, p + STRETCH + i, 8);
      memcpy(&vd, p + 2 * STRETCH + i, 8);
      a = __builtin_ia32_crc32di(a, va);
      b = __builtin_ia32_crc32di(b, vb);
      d = __builtin_ia32_crc32di(d, vd);
    }
    c = shift_stretch(shift_stretch((uint32_t)a) ^ (uint32_t)b) ^ (uint32_t)d;
  }
  return crc_hw_serial(c, p, n);
}
static bool have_hw(void) {
  static int have = -1;
  if (have < 0) have = __builtin_cpu_supports("sse4.2") ? 1 : 0;
  return have;
}
#else
static uint32_t crc_hw(uint32_t c, const uint8_t *p, size_t n) { return crc_sw(c, p, n); }
static bool have_hw(void) { return false; }
#endif

uint32_t hd_crc32c(uint32_t crc, const void *p, size_t n) {
  crc = ~crc;
  crc = have_hw() ? crc_hw(crc, p, n) : crc_sw(crc, p, n);
  return ~crc;
}

/* ---- writing ------------------------------------------------------------ */

static const char *const file_names[HD_SLOG_FILES] = {"log", "log.1"};

int hd_slog_open(hd_slog_t *l, const char *dir, uint64_t max_bytes) {
  memset(l, 0, sizeof *l);
  for (int i = 0; i < HD_SLOG_FILES; i++) l->fd[i] = -1;
  for (int i = 0; i < HD_SLOG_FILES; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file_names[i]);
    l->path[i] = hd_xstrdup(path);
    /* Created at the first write, not here: a store refused at start-up
     * is left exactly as it was. */
    l->fd[i] = open(path, O_RDWR | O_CLOEXEC);
    if (l->fd[i] < 0 && errno != ENOENT) {
      int rc = -errno;
      hd_slog_close(l);
      return rc;
    }
    if (l->fd[i] >= 0) {
      off_t end = lseek(l->fd[i], 0, SEEK_END);
      l->size[i] = end > 0 ? (uint64_t)end : 0;
    }
  }
  l->max = max_bytes;
  l->next_lsn = l->first_lsn = 1;
  return 0;
}

void hd_slog_close(hd_slog_t *l) {
  for (int i = 0; i < HD_SLOG_FILES; i++) {
    if (l->fd[i] >= 0) close(l->fd[i]);
    l->fd[i] = -1;
    free(l->path[i]);
    l->path[i] = NULL;
  }
  free(l->buf);
  free(l->iov);
  l->buf = NULL;
  l->iov = NULL;
}

void hd_slog_begin(hd_slog_t *l) {
  l->len = 0;
  l->nops = 0;
  l->niov = 1; /* iov[0]: header and records, filled in at the write */
  l->body_bytes = 0;
}

static void add_body(hd_slog_t *l, const uint8_t *p, size_t n) {
  if (!n) return; /* pwritev would write nothing for a run of these and look stuck */
  if (l->niov >= l->iov_cap) {
    l->iov_cap = l->iov_cap ? l->iov_cap * 2 : 256;
    l->iov = hd_xrealloc(l->iov, l->iov_cap * sizeof *l->iov);
  }
  l->iov[l->niov++] = (struct iovec){(void *)p, n};
  l->body_bytes += n;
}

static uint8_t *room(hd_slog_t *l, size_t n) {
  if (HD_SLOG_HDR + l->len + n > l->cap) {
    size_t cap = l->cap ? l->cap : 1u << 16;
    while (cap < HD_SLOG_HDR + l->len + n) cap *= 2;
    l->buf = hd_xrealloc(l->buf, cap);
    l->cap = cap;
  }
  uint8_t *p = l->buf + HD_SLOG_HDR + l->len;
  l->len += n;
  return p;
}

void hd_slog_add(hd_slog_t *l, const hd_slog_op_t *op) {
  uint8_t *p;
  switch (op->kind) {
  case HD_SLOG_PUT:
    p = room(l, 40);
    p[0] = HD_SLOG_PUT;
    p[1] = (uint8_t)op->flags;
    p[2] = p[3] = 0;
    hd_put32(p + 4, op->delivery_count);
    hd_put64(p + 8, op->node);
    hd_put64(p + 16, op->seq);
    hd_put64(p + 24, op->expiry_ms);
    hd_put32(p + 32, (uint32_t)op->len);
    hd_put32(p + 36, op->crc);
    add_body(l, op->bytes, op->len);
    break;
  case HD_SLOG_UPDATE:
    p = room(l, 24);
    memset(p, 0, 4);
    p[0] = HD_SLOG_UPDATE;
    hd_put32(p + 4, op->delivery_count);
    hd_put64(p + 8, op->node);
    hd_put64(p + 16, op->seq);
    break;
  default: /* DEL, HWM */
    p = room(l, 20);
    memset(p, 0, 4);
    p[0] = (uint8_t)op->kind;
    hd_put64(p + 4, op->node);
    hd_put64(p + 12, op->seq);
    break;
  }
  l->nops++;
}

/* All of iov[0..n) at off, however many calls it takes (iov is consumed). */
static int writev_all(int fd, struct iovec *iov, size_t n, uint64_t off) {
  while (n) {
    ssize_t w = pwritev(fd, iov, n > IOV_MAX ? IOV_MAX : (int)n, (off_t)off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -errno;
    if (w == 0) return -EIO;
    off += (uint64_t)w;
    size_t done = (size_t)w;
    for (; n && done >= iov->iov_len; iov++, n--) done -= iov->iov_len;
    if (n) { /* part of *iov was written: the rest of it next */
      iov->iov_base = (uint8_t *)iov->iov_base + done;
      iov->iov_len -= done;
    }
  }
  return 0;
}

static int write_all(int fd, const uint8_t *p, size_t n, uint64_t off) {
  struct iovec one = {(void *)p, n};
  return writev_all(fd, &one, 1, off);
}

bool hd_slog_fits(hd_slog_t *l, uint64_t spare) {
  uint64_t need = hd_slog_batch_bytes(l);
  int f = l->cur;
  if (l->off + need <= l->size[f]) return true;
  if (l->off + need > l->max) return false;
  if (l->fd[f] < 0) {
    if ((l->fd[f] = open(l->path[f], O_RDWR | O_CREAT | O_CLOEXEC, 0640)) < 0)
      return (l->grow_err = errno), false;
    /* A file just created: its name must be on disk before its batches
     * are relied on. */
    int rc = hd_sync_parent_dir(l->path[f]);
    if (rc != 0) {
      close(l->fd[f]);
      l->fd[f] = -1;
      return (l->grow_err = -rc), false;
    }
  }
  uint64_t to = (l->off + need + GROW_CHUNK - 1) / GROW_CHUNK * GROW_CHUNK;
  if (to > l->max) to = l->max;
  struct statvfs fs;
  if (fstatvfs(l->fd[f], &fs) == 0 && (uint64_t)fs.f_bavail * fs.f_frsize < to - l->size[f] + spare)
    return false;
  static const uint8_t zeros[65536];
  for (uint64_t at = l->size[f]; at < to;) {
    size_t n = to - at < sizeof zeros ? (size_t)(to - at) : sizeof zeros;
    int rc = write_all(l->fd[f], zeros, n, at);
    if (rc != 0) {
      l->grow_err = -rc;
      /* Give the blocks back; the file stays as long as it was. */
      if (ftruncate(l->fd[f], (off_t)l->size[f]) != 0) { /* nothing more to do */
      }
      return false;
    }
    at += n;
  }
  /* The new length must be on disk before batches there are relied on. */
  if (fdatasync(l->fd[f]) != 0) return (l->grow_err = errno), false;
  l->size[f] = to;
  l->grow_err = 0;
  return true;
}

int hd_slog_write(hd_slog_t *l, bool nosync) {
  room(l, 0); /* a buffer even for an empty batch */
  uint8_t *h = l->buf;
  hd_put32(h, HD_SLOG_MAGIC);
  hd_put64(h + 8, l->next_lsn);
  hd_put32(h + 16, (uint32_t)l->len);
  hd_put32(h + 20, l->nops);
  hd_put32(h + 24, (uint32_t)l->body_bytes);
  hd_put32(h + 28, 0);
  hd_put32(h + 4, hd_crc32c(0, h + 8, HD_SLOG_HDR - 8 + l->len));
  int fd = l->fd[l->cur];
  size_t total = HD_SLOG_HDR + l->len + l->body_bytes;
  int rc;
  if (l->niov <= 1) { /* no bodies (and maybe no iov array yet) */
    rc = write_all(fd, h, HD_SLOG_HDR + l->len, l->off);
  } else {
    l->iov[0] = (struct iovec){h, HD_SLOG_HDR + l->len};
    rc = writev_all(fd, l->iov, l->niov, l->off);
  }
  if (!rc && !nosync && fdatasync(fd) != 0) rc = -errno;
  if (rc) return rc;
  l->off += total;
  l->next_lsn++;
  return 0;
}

int hd_slog_sync(hd_slog_t *l) { return l->fd[l->cur] < 0 || fdatasync(l->fd[l->cur]) == 0 ? 0 : -errno; }

void hd_slog_restart(hd_slog_t *l, int file, uint64_t lsn) {
  l->cur = file;
  l->off = 0;
  l->next_lsn = l->first_lsn = lsn;
}

int hd_slog_switch(hd_slog_t *l) {
  int rc = hd_slog_sync(l);
  if (rc) return rc;
  l->cur = 1 - l->cur;
  l->off = 0;
  l->first_lsn = l->next_lsn;
  return 0;
}

/* ---- reading back ------------------------------------------------------- */

/* What both formats' records share: a put's first 36 bytes (format 2's
 * whole record head; format 3 adds the body's crc), an update, a delete or
 * a mark.  Moves *pp past them; HD_EPROTO if they do not fit or the kind
 * is unknown. */
static int parse_common(const uint8_t **pp, const uint8_t *end, hd_slog_op_t *op) {
  const uint8_t *p = *pp;
  if (end - p < 20) return HD_EPROTO;
  op->kind = p[0];
  switch (op->kind) {
  case HD_SLOG_PUT:
    if (end - p < 36) return HD_EPROTO;
    op->flags = p[1];
    op->delivery_count = hd_get32(p + 4);
    op->node = hd_get64(p + 8);
    op->seq = hd_get64(p + 16);
    op->expiry_ms = hd_get64(p + 24);
    op->len = hd_get32(p + 32);
    p += 36;
    break;
  case HD_SLOG_UPDATE:
    if (end - p < 24) return HD_EPROTO;
    op->delivery_count = hd_get32(p + 4);
    op->node = hd_get64(p + 8);
    op->seq = hd_get64(p + 16);
    p += 24;
    break;
  case HD_SLOG_DEL:
  case HD_SLOG_HWM:
    op->node = hd_get64(p + 4);
    op->seq = hd_get64(p + 12);
    p += 20;
    break;
  default: return HD_EPROTO;
  }
  *pp = p;
  return 0;
}

/* Format 2's payload: records with each put's body inline after it. */
static int parse_v2(const uint8_t *p, size_t len, uint32_t nops, int (*fn)(const hd_slog_op_t *op, void *arg),
                    void *arg) {
  const uint8_t *end = p + len;
  for (uint32_t i = 0; i < nops; i++) {
    hd_slog_op_t op = {0};
    if (parse_common(&p, end, &op)) return HD_EPROTO;
    if (op.kind == HD_SLOG_PUT) {
      if ((size_t)(end - p) < op.len) return HD_EPROTO;
      op.bytes = p;
      p += op.len;
    }
    int rc = fn(&op, arg);
    if (rc) return rc < 0 ? rc : -rc;
  }
  return p == end ? 0 : HD_EPROTO;
}

/* Format 3's records and bodies (store_log.h).  With fn NULL, only check:
 * HD_EPROTO for records that do not parse (their crc checked out, so the
 * writer wrote them so), 1 for a body whose crc does not match (torn: the
 * crash came before the whole batch was on disk). */
static int parse_v3(const uint8_t *p, size_t len, uint32_t nops, const uint8_t *bodies, size_t blen,
                    int (*fn)(const hd_slog_op_t *op, void *arg), void *arg) {
  const uint8_t *end = p + len;
  size_t boff = 0;
  for (uint32_t i = 0; i < nops; i++) {
    hd_slog_op_t op = {0};
    if (parse_common(&p, end, &op)) return HD_EPROTO;
    if (op.kind == HD_SLOG_PUT) {
      if (end - p < 4 || blen - boff < op.len) return HD_EPROTO;
      op.crc = hd_get32(p);
      p += 4;
      op.bytes = bodies + boff;
      boff += op.len;
      if (!fn && hd_crc32c(0, op.bytes, op.len) != op.crc) return 1;
    }
    if (fn) {
      int rc = fn(&op, arg);
      if (rc) return rc < 0 ? rc : -rc;
    }
  }
  return p == end && boff == blen ? 0 : HD_EPROTO;
}

/* n bytes at off, or -errno (-EIO if the file ends first). */
static int pread_all(int fd, uint8_t *p, size_t n, uint64_t off) {
  while (n) {
    ssize_t r = pread(fd, p, n, (off_t)off);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -errno;
    if (r == 0) return -EIO;
    p += r;
    n -= (size_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

/* One file's batches from offset 0 while they check out and carry the
 * expected LSNs (*next, moved on past each). */
static long replay_file(const char *path, int (*fn)(const hd_slog_op_t *op, void *arg), void *arg, uint64_t *next,
                        uint64_t *ops) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? 0 : -errno;
  off_t end = lseek(fd, 0, SEEK_END);
  uint64_t size = end > 0 ? (uint64_t)end : 0, off = 0;
  long batches = 0;
  uint8_t *buf = NULL;
  size_t cap = 0;
  int rc = 0;
  while (off + HD_SLOG_HDR_V2 <= size) {
    uint8_t h[HD_SLOG_HDR];
    size_t hl = off + HD_SLOG_HDR <= size ? HD_SLOG_HDR : HD_SLOG_HDR_V2;
    if (pread(fd, h, hl, (off_t)off) != (ssize_t)hl) {
      rc = -EIO;
      break;
    }
    uint32_t magic = hd_get32(h);
    bool v3 = magic == HD_SLOG_MAGIC;
    if (!(v3 ? hl == HD_SLOG_HDR : magic == HD_SLOG_MAGIC_V2) || hd_get64(h + 8) != *next) break;
    size_t hdr = v3 ? HD_SLOG_HDR : HD_SLOG_HDR_V2;
    uint64_t len = hd_get32(h + 16), blen = v3 ? hd_get32(h + 24) : 0;
    if (len + blen > size - off - hdr) break;
    if (len + blen > cap) {
      cap = len + blen;
      buf = hd_xrealloc(buf, cap ? cap : 1);
    }
    if (len + blen && (rc = pread_all(fd, buf, len + blen, off + hdr))) break;
    uint32_t crc = hd_crc32c(hd_crc32c(0, h + 8, hdr - 8), buf, len);
    if (crc != hd_get32(h + 4)) break; /* torn: never flushed whole, never promised */
    uint32_t nops = hd_get32(h + 20);
    if (v3) {
      /* Every body checks out before any operation is applied. */
      if ((rc = parse_v3(buf, len, nops, buf + len, blen, NULL, NULL)) == 1) {
        rc = 0;
        break;
      }
      if (rc || (rc = parse_v3(buf, len, nops, buf + len, blen, fn, arg))) break;
    } else if ((rc = parse_v2(buf, len, nops, fn, arg))) {
      break;
    }
    if (ops) *ops += nops;
    batches++;
    (*next)++;
    off += hdr + len + blen;
  }
  free(buf);
  close(fd);
  return rc ? rc : batches;
}

long hd_slog_replay(const char *dir, int file, uint64_t lsn, int (*fn)(const hd_slog_op_t *op, void *arg),
                   void *arg, uint64_t *next, uint64_t *ops) {
  *next = lsn;
  if (ops) *ops = 0;
  long total = 0;
  for (int i = 0; i < HD_SLOG_FILES; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file_names[(file + i) % HD_SLOG_FILES]);
    long n = replay_file(path, fn, arg, next, ops);
    if (n < 0) return n;
    total += n;
  }
  return total;
}
