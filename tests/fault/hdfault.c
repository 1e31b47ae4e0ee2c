/* hdfault: make chosen writes or flushes of chosen files fail, to test what
 * hadrond does when the disk reports an error.  Loaded with LD_PRELOAD by
 * tests/system/test_store_fault.py; never installed.
 *
 * A real disk error cannot be had on demand on a test machine, and the
 * store's answers to one (reject the commit's messages, retry its deletes,
 * never replay what failed, stop logging until a full checkpoint) are the
 * paths that keep acknowledged messages from being lost or duplicated.
 * So this library sits in front of libc's pwrite, pwritev, fdatasync and
 * fsync, and fails the calls that HADRON_FAULT describes, comma-separated:
 *
 *   call=NAME     pwrite, pwritev, fdatasync or fsync (required)
 *   file=PREFIX   only files whose name (last path component) starts so
 *                 (required; "log" matches the store's log and log.1)
 *   errno=NAME    EIO (default), ENOSPC or EDQUOT
 *   after=N       let N matching calls through first (default 0)
 *   count=K       fail K calls, then let the rest through (default 1)
 *   partial=1     pwrite/pwritev: write the first half for real, then fail
 *                 (a torn write)
 *   below=N       pwrite/pwritev: only writes that start below offset N
 *                 (LMDB's meta pages are the file's first two pages)
 *   arm=PATH      count and fail only once PATH exists, so that a test
 *                 chooses the moment
 *   delay=US      fdatasync/fsync: do not fail, take US microseconds longer
 *                 (a slow disk; with count=N for the first N calls only)
 *
 * Each failure is reported on stderr ("hdfault: injected ..."), which goes
 * to hadrond's log, so a test can tell that its fault really happened. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum call { C_NONE, C_PWRITE, C_PWRITEV, C_FDATASYNC, C_FSYNC };

static struct {
  enum call call;
  char file[128];
  char arm[PATH_MAX];
  int err;
  long after, count;
  long long below; /* 0: any offset */
  long delay_us;   /* > 0: slow the flush down instead of failing it */
  bool partial;
} F;

static atomic_long seen, failed;
static atomic_bool parsed;

static void parse(void) {
  if (atomic_load(&parsed)) return;
  const char *spec = getenv("HADRON_FAULT");
  F.err = EIO;
  F.count = 1;
  if (spec) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", spec);
    for (char *save = NULL, *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
      char *v = strchr(kv, '=');
      if (!v) continue;
      *v++ = '\0';
      if (!strcmp(kv, "call"))
        F.call = !strcmp(v, "pwrite")      ? C_PWRITE
                 : !strcmp(v, "pwritev")   ? C_PWRITEV
                 : !strcmp(v, "fdatasync") ? C_FDATASYNC
                 : !strcmp(v, "fsync")     ? C_FSYNC
                                           : C_NONE;
      else if (!strcmp(kv, "file"))
        snprintf(F.file, sizeof F.file, "%s", v);
      else if (!strcmp(kv, "errno"))
        F.err = !strcmp(v, "ENOSPC") ? ENOSPC : !strcmp(v, "EDQUOT") ? EDQUOT : EIO;
      else if (!strcmp(kv, "after"))
        F.after = atol(v);
      else if (!strcmp(kv, "count"))
        F.count = atol(v);
      else if (!strcmp(kv, "partial"))
        F.partial = atoi(v) != 0;
      else if (!strcmp(kv, "below"))
        F.below = atoll(v);
      else if (!strcmp(kv, "delay"))
        F.delay_us = atol(v);
      else if (!strcmp(kv, "arm"))
        snprintf(F.arm, sizeof F.arm, "%s", v);
    }
  }
  atomic_store(&parsed, true);
}

/* Should this call on fd fail?  Counts matching calls once armed. */
static bool hit(enum call c, int fd, off_t off, char *path, size_t pathlen) {
  parse();
  if (F.call != c || !F.file[0] || (F.below && off >= F.below)) return false;
  if (F.arm[0]) {
    struct stat st;
    if (stat(F.arm, &st) != 0) return false;
  }
  char link[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, pathlen - 1);
  if (n <= 0) return false;
  path[n] = '\0';
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  if (strncmp(base, F.file, strlen(F.file)) != 0) return false;
  long k = atomic_fetch_add(&seen, 1);
  if (k < F.after || atomic_load(&failed) >= F.count) return false;
  if (atomic_fetch_add(&failed, 1) >= F.count) return false;
  return true;
}

static void report(const char *call, const char *path, const char *how) {
  fprintf(stderr, "hdfault: injected %s on %s: %s%s\n", strerror(F.err), path, call, how);
}

typedef ssize_t (*pwritev_fn)(int, const struct iovec *, int, off_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef int (*sync_fn)(int);

/* libc's own function (or whatever comes after us, e.g. ASan's). */
#define NEXT(name, type)                                                                           \
  static type next_##name;                                                                         \
  if (!next_##name) next_##name = (type)dlsym(RTLD_NEXT, #name)

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off) {
  NEXT(pwritev, pwritev_fn);
  char path[PATH_MAX];
  if (!hit(C_PWRITEV, fd, off, path, sizeof path)) return next_pwritev(fd, iov, iovcnt, off);
  if (F.partial) { /* the first half of the bytes reach the file */
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
      total += iov[i].iov_len;
    size_t half = total / 2, done = 0;
    for (int i = 0; i < iovcnt && done < half; i++) {
      size_t n = iov[i].iov_len < half - done ? iov[i].iov_len : half - done;
      struct iovec one = {iov[i].iov_base, n};
      if (next_pwritev(fd, &one, 1, off + (off_t)done) != (ssize_t)n) break;
      done += n;
    }
  }
  report("pwritev", path, F.partial ? " (half of it written)" : "");
  errno = F.err;
  return -1;
}

ssize_t pwritev64(int fd, const struct iovec *iov, int iovcnt, off_t off) {
  return pwritev(fd, iov, iovcnt, off);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off) {
  NEXT(pwrite, pwrite_fn);
  char path[PATH_MAX];
  if (!hit(C_PWRITE, fd, off, path, sizeof path)) return next_pwrite(fd, buf, len, off);
  if (F.partial) (void)next_pwrite(fd, buf, len / 2, off);
  report("pwrite", path, F.partial ? " (half of it written)" : "");
  errno = F.err;
  return -1;
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off) {
  return pwrite(fd, buf, len, off);
}

/* A flush that hit: fails, or with delay= waits and then flushes. */
static int hit_sync(const char *call, const char *path, sync_fn real, int fd) {
  if (F.delay_us > 0) {
    static atomic_bool told;
    if (!atomic_exchange(&told, true))
      fprintf(stderr, "hdfault: every matching %s on %s made %ld us slower\n", call, path,
              F.delay_us);
    struct timespec d = {F.delay_us / 1000000, (F.delay_us % 1000000) * 1000};
    nanosleep(&d, NULL);
    return real(fd);
  }
  report(call, path, "");
  errno = F.err;
  return -1;
}

int fdatasync(int fd) {
  NEXT(fdatasync, sync_fn);
  char path[PATH_MAX];
  return hit(C_FDATASYNC, fd, 0, path, sizeof path)
             ? hit_sync("fdatasync", path, next_fdatasync, fd)
             : next_fdatasync(fd);
}

int fsync(int fd) {
  NEXT(fsync, sync_fn);
  char path[PATH_MAX];
  return hit(C_FSYNC, fd, 0, path, sizeof path) ? hit_sync("fsync", path, next_fsync, fd)
                                                : next_fsync(fd);
}
