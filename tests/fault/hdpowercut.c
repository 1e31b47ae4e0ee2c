/* hdpowercut: make hadrond lose power, as far as its data directory can
 * tell.  Loaded with LD_PRELOAD by tests/system/test_crash.py; never
 * installed.
 *
 * A process killed with SIGKILL leaves the kernel's page cache behind, so
 * everything it wrote reaches the disk sooner or later: a kill -9 test
 * cannot see a missing fdatasync, or a new file whose directory entry was
 * never flushed.  A power cut loses both.  This library keeps, for every
 * file under the data directory, what each write since the file's last
 * fsync/fdatasync overwrote, and which names were created since their
 * directory's last fsync.  At the chosen moment it puts those bytes back,
 * cuts the files to their flushed length, removes the unflushed names and
 * kills the process, leaving the directory as a disk would after losing
 * its cache.  Writes through an O_DSYNC/O_SYNC descriptor (LMDB writes its
 * meta pages so) are on disk when they return.
 *
 * HADRON_POWERCUT, comma-separated:
 *
 *   dir=PATH   the data directory: files under it are modelled, and so is
 *              PATH's own name in its parent (required; an absolute path
 *              without symbolic links)
 *   after=N    cut power at the N+1th write, flush or creation under PATH
 *              (counted once armed; default 0)
 *   arm=PATH   count only once this file exists
 *   now=PATH   cut as soon as this file exists (looked for every 5 ms by a
 *              thread of the library's own), whatever the count: a test's
 *              time limit, so that no round ends in a plain kill, after
 *              which the next process would take the page cache the
 *              killed one left for flushed data
 *   keep=some  each 4 KiB page of an unflushed write survives or not, at
 *              random, as if the disk had written back part of its cache
 *              in any order; default: none survives
 *   seed=S     for keep=some
 *
 * The cut is reported on stderr (hadrond's log): "hdpowercut: power cut
 * at event N: ...".  What the model does not cover aborts the process with
 * "hdpowercut: cannot model ...", so that new code cannot slip past it:
 * rename, unlink, fallocate, dup and O_APPEND on the directory's files. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define PAGE  4096
#define MAXFD 65536

/* What one write overwrote: put back at the cut unless flushed first. */
typedef struct undo {
  dev_t dev;
  ino_t ino;
  char *path;
  off_t off;
  size_t len;
  uint8_t *old; /* the bytes that were there, up to the old end of file */
  size_t old_len;
  off_t size_before;
  struct undo *next; /* newer first */
} undo_t;

/* A name created since its directory was last flushed. */
typedef struct made {
  char *path, *parent;
  struct made *next; /* newer first */
} made_t;

static struct {
  char dir[PATH_MAX], parent[PATH_MAX], arm[PATH_MAX], now[PATH_MAX];
  long after;
  bool keep_some;
  unsigned seed;
} C;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char *fd_path[MAXFD];       /* modelled descriptors: their path (under mu) */
static atomic_bool watched[MAXFD]; /* fd_path[fd] set: read without mu, so
                                    * that sockets and logs pass straight */
static bool fd_sync[MAXFD];        /* opened O_DSYNC or O_SYNC */
static undo_t *undos;
static made_t *mades;
static long events;

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*close_fn)(int);
typedef int (*mkdir_fn)(const char *, mode_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*pwritev_fn)(int, const struct iovec *, int, off_t);
typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef int (*ftruncate_fn)(int, off_t);
typedef int (*sync_fn)(int);
typedef int (*unlink_fn)(const char *);

static open_fn real_open;
static openat_fn real_openat;
static close_fn real_close;
static mkdir_fn real_mkdir;
static pwrite_fn real_pwrite;
static pwritev_fn real_pwritev;
static write_fn real_write;
static writev_fn real_writev;
static ftruncate_fn real_ftruncate;
static sync_fn real_fsync, real_fdatasync;
static unlink_fn real_unlink;

static void *watch_now(void *arg);

static void setup(void) {
  real_open = (open_fn)dlsym(RTLD_NEXT, "open");
  real_openat = (openat_fn)dlsym(RTLD_NEXT, "openat");
  real_close = (close_fn)dlsym(RTLD_NEXT, "close");
  real_mkdir = (mkdir_fn)dlsym(RTLD_NEXT, "mkdir");
  real_pwrite = (pwrite_fn)dlsym(RTLD_NEXT, "pwrite");
  real_pwritev = (pwritev_fn)dlsym(RTLD_NEXT, "pwritev");
  real_write = (write_fn)dlsym(RTLD_NEXT, "write");
  real_writev = (writev_fn)dlsym(RTLD_NEXT, "writev");
  real_ftruncate = (ftruncate_fn)dlsym(RTLD_NEXT, "ftruncate");
  real_fsync = (sync_fn)dlsym(RTLD_NEXT, "fsync");
  real_fdatasync = (sync_fn)dlsym(RTLD_NEXT, "fdatasync");
  real_unlink = (unlink_fn)dlsym(RTLD_NEXT, "unlink");
  const char *spec = getenv("HADRON_POWERCUT");
  if (!spec) return;
  char buf[3 * PATH_MAX];
  snprintf(buf, sizeof buf, "%s", spec);
  for (char *save = NULL, *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
    char *v = strchr(kv, '=');
    if (!v) continue;
    *v++ = '\0';
    if (!strcmp(kv, "dir"))
      snprintf(C.dir, sizeof C.dir, "%s", v);
    else if (!strcmp(kv, "after"))
      C.after = atol(v);
    else if (!strcmp(kv, "arm"))
      snprintf(C.arm, sizeof C.arm, "%s", v);
    else if (!strcmp(kv, "now"))
      snprintf(C.now, sizeof C.now, "%s", v);
    else if (!strcmp(kv, "keep"))
      C.keep_some = !strcmp(v, "some");
    else if (!strcmp(kv, "seed"))
      C.seed = (unsigned)atol(v);
  }
  size_t n = strlen(C.dir);
  while (n > 1 && C.dir[n - 1] == '/')
    C.dir[--n] = '\0';
  snprintf(C.parent, sizeof C.parent, "%s", C.dir);
  char *slash = strrchr(C.parent, '/');
  if (slash) *(slash == C.parent ? slash + 1 : slash) = '\0';
  pthread_t t;
  if (C.now[0] && pthread_create(&t, NULL, watch_now, NULL) == 0) pthread_detach(t);
}

static void init(void) {
  pthread_once(&once, setup);
}

static bool under_dir(const char *path) {
  size_t n = strlen(C.dir);
  return C.dir[0] && !strncmp(path, C.dir, n) && (path[n] == '\0' || path[n] == '/');
}

static char *parent_of(const char *path) {
  char *p = strdup(path);
  char *slash = strrchr(p, '/');
  if (slash) *(slash == p ? slash + 1 : slash) = '\0';
  return p;
}

/* ---- the cut -------------------------------------------------------------- */

static void remove_tree(const char *path) {
  DIR *d = opendir(path);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d))) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      char sub[PATH_MAX];
      snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
      remove_tree(sub);
    }
    closedir(d);
    rmdir(path);
  } else {
    real_unlink(path);
  }
}

static bool made_since_flush(const char *path) {
  for (made_t *m = mades; m; m = m->next) {
    size_t n = strlen(m->path);
    if (!strncmp(path, m->path, n) && (path[n] == '\0' || path[n] == '/')) return true;
  }
  return false;
}

static unsigned rnd(void) {
  return (C.seed = C.seed * 1103515245u + 12345u) >> 16;
}

/* Put one write's page [from, to) back (or leave it, with keep=some). */
static void undo_range(int fd, const undo_t *u, off_t from, off_t to, size_t *bytes) {
  if (C.keep_some && rnd() % 2) return;
  static const uint8_t zeros[PAGE];
  for (off_t at = from; at < to;) {
    size_t n = (size_t)(to - at);
    size_t rel = (size_t)(at - u->off);
    if (rel < u->old_len) { /* was inside the file: the old bytes */
      if (n > u->old_len - rel) n = u->old_len - rel;
      (void)real_pwrite(fd, u->old + rel, n, at);
    } else { /* was past its end: never written, reads as zeros */
      if (n > sizeof zeros) n = sizeof zeros;
      (void)real_pwrite(fd, zeros, n, at);
    }
    at += (off_t)n;
    *bytes += n;
  }
}

/* Called with mu held; never returns. */
static void cut(const char *what) {
  size_t writes = 0, bytes = 0, names = 0;
  for (undo_t *u = undos; u; u = u->next) {  /* newest first */
    if (made_since_flush(u->path)) continue; /* its name goes anyway */
    int fd = real_open(u->path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) continue;
    for (off_t p = u->off; p < u->off + (off_t)u->len;) {
      off_t end = (p / PAGE + 1) * PAGE;
      if (end > u->off + (off_t)u->len) end = u->off + (off_t)u->len;
      undo_range(fd, u, p, end, &bytes);
      p = end;
    }
    /* The oldest write of a file knows its flushed length. */
    bool oldest = true;
    for (undo_t *o = u->next; o; o = o->next)
      if (o->dev == u->dev && o->ino == u->ino) oldest = false;
    if (oldest && (!C.keep_some || rnd() % 2)) (void)real_ftruncate(fd, u->size_before);
    real_close(fd);
    writes++;
  }
  for (made_t *m = mades; m; m = m->next) {
    struct stat st;
    if (lstat(m->path, &st) == 0) remove_tree(m->path), names++;
  }
  char msg[512];
  int n = snprintf(msg, sizeof msg,
                   "hdpowercut: power cut at event %ld (%s): %zu unflushed writes, %zu bytes "
                   "undone%s, %zu names not flushed in their directory removed\n",
                   events, what, writes, bytes, C.keep_some ? " (some pages kept)" : "", names);
  if (n > 0) (void)real_write(2, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
  kill(getpid(), SIGKILL);
  for (;;)
    pause();
}

static void *watch_now(void *arg) {
  (void)arg;
  for (;;) {
    usleep(5000);
    if (access(C.now, F_OK) == 0) {
      pthread_mutex_lock(&mu);
      cut("requested");
    }
  }
  return NULL;
}

static void unmodelled(const char *what, const char *path) {
  fprintf(stderr, "hdpowercut: cannot model %s of %s; extend tests/fault/hdpowercut.c\n", what,
          path);
  abort();
}

/* One more write, flush or creation under the directory: the cut's turn? */
static void event(const char *what) {
  if (C.arm[0] && access(C.arm, F_OK) != 0) return;
  if (events++ >= C.after) cut(what);
}

/* ---- bookkeeping -------------------------------------------------------- */

static void track_fd(int fd, int flags) {
  if (fd < 0) return;
  char link[64], path[PATH_MAX];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0) return;
  path[n] = '\0';
  bool mine = under_dir(path) || !strcmp(path, C.parent);
  if (mine && fd >= MAXFD) unmodelled("a descriptor above MAXFD", path);
  if (mine && under_dir(path) && (flags & O_APPEND)) unmodelled("O_APPEND", path);
  if (fd >= MAXFD) return;
  free(fd_path[fd]);
  fd_path[fd] = NULL;
  atomic_store(&watched[fd], false);
  /* The parent is watched only for the fsync that makes PATH's name
   * durable. */
  if (mine) {
    fd_path[fd] = strdup(path);
    fd_sync[fd] = (flags & (O_DSYNC | O_SYNC)) != 0;
    atomic_store(&watched[fd], true);
  }
}

static void note_made(const char *path) {
  made_t *m = calloc(1, sizeof *m);
  m->path = strdup(path);
  m->parent = parent_of(path);
  m->next = mades;
  mades = m;
}

/* Remember what a write of len bytes at off is about to overwrite. */
static void before_write(int fd, off_t off, size_t len) {
  if (fd < 0 || fd >= MAXFD || !fd_path[fd] || !len) return;
  event("write");
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
  if (fd_sync[fd]) { /* on disk when it returns: earlier writes there are too */
    for (undo_t **pp = &undos, *u; (u = *pp);) {
      if (u->dev == st.st_dev && u->ino == st.st_ino && u->off >= off &&
          u->off + (off_t)u->len <= off + (off_t)len) {
        *pp = u->next;
        free(u->path), free(u->old), free(u);
      } else {
        pp = &u->next;
      }
    }
    return;
  }
  undo_t *u = calloc(1, sizeof *u);
  u->dev = st.st_dev;
  u->ino = st.st_ino;
  u->path = strdup(fd_path[fd]);
  u->off = off;
  u->len = len;
  u->size_before = st.st_size;
  if (off < st.st_size) {
    u->old_len = (size_t)(st.st_size - off) < len ? (size_t)(st.st_size - off) : len;
    u->old = malloc(u->old_len);
    ssize_t r = pread(fd, u->old, u->old_len, off);
    if (r < 0 && errno == EBADF) { /* opened write-only: read through a descriptor of our own */
      int rfd = real_open(fd_path[fd], O_RDONLY | O_CLOEXEC);
      r = rfd < 0 ? -1 : pread(rfd, u->old, u->old_len, off);
      if (rfd >= 0) real_close(rfd);
    }
    if (r != (ssize_t)u->old_len) unmodelled("an unreadable write", fd_path[fd]);
  }
  u->next = undos;
  undos = u;
}

static size_t iov_len(const struct iovec *iov, int n) {
  size_t t = 0;
  for (int i = 0; i < n; i++)
    t += iov[i].iov_len;
  return t;
}

/* A flush of fd: its writes are on disk, and so are the names in it if it
 * is a directory. */
static void flushed(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return;
  for (undo_t **pp = &undos, *u; (u = *pp);) {
    if (u->dev == st.st_dev && u->ino == st.st_ino) {
      *pp = u->next;
      free(u->path), free(u->old), free(u);
    } else {
      pp = &u->next;
    }
  }
  if (!S_ISDIR(st.st_mode)) return;
  for (made_t **pp = &mades, *m; (m = *pp);) {
    if (!strcmp(m->parent, fd_path[fd])) {
      *pp = m->next;
      free(m->path), free(m->parent), free(m);
    } else {
      pp = &m->next;
    }
  }
}

/* ---- the calls ------------------------------------------------------------ */

static bool is_watched(int fd) {
  return fd >= 0 && fd < MAXFD && atomic_load(&watched[fd]);
}

static int do_open(int dirfd, const char *path, int flags, mode_t mode, bool at) {
  init();
  if (!C.dir[0]) return at ? real_openat(dirfd, path, flags, mode) : real_open(path, flags, mode);
  pthread_mutex_lock(&mu);
  bool existed = !(flags & O_CREAT) || faccessat(at ? dirfd : AT_FDCWD, path, F_OK, 0) == 0;
  int fd = at ? real_openat(dirfd, path, flags, mode) : real_open(path, flags, mode);
  if (fd >= 0) {
    track_fd(fd, flags);
    if (!existed && fd < MAXFD && fd_path[fd]) {
      note_made(fd_path[fd]);
      event("create");
    }
  }
  pthread_mutex_unlock(&mu);
  return fd;
}

/* open's third argument is there only when the flags create a file. */
#define MODE_ARG(flags, mode)                                                                      \
  do {                                                                                             \
    if (((flags)&O_CREAT) || ((flags)&O_TMPFILE) == O_TMPFILE) {                                   \
      va_list ap;                                                                                  \
      va_start(ap, flags);                                                                         \
      (mode) = (mode_t)va_arg(ap, int);                                                            \
      va_end(ap);                                                                                  \
    }                                                                                              \
  } while (0)

int open(const char *path, int flags, ...) {
  mode_t mode = 0;
  MODE_ARG(flags, mode);
  return do_open(AT_FDCWD, path, flags, mode, false);
}

/* The same functions under their large-file names (one ABI on 64-bit). */
int open64(const char *path, int flags, ...) __attribute__((alias("open")));

int openat(int dirfd, const char *path, int flags, ...) {
  mode_t mode = 0;
  MODE_ARG(flags, mode);
  return do_open(dirfd, path, flags, mode, true);
}

int openat64(int dirfd, const char *path, int flags, ...) __attribute__((alias("openat")));

int close(int fd) {
  init();
  if (is_watched(fd)) {
    pthread_mutex_lock(&mu);
    free(fd_path[fd]);
    fd_path[fd] = NULL;
    atomic_store(&watched[fd], false);
    pthread_mutex_unlock(&mu);
  }
  return real_close(fd);
}

int mkdir(const char *path, mode_t mode) {
  init();
  if (!C.dir[0]) return real_mkdir(path, mode);
  pthread_mutex_lock(&mu);
  int rc = real_mkdir(path, mode);
  char full[PATH_MAX];
  if (rc == 0 && realpath(path, full) && under_dir(full)) {
    note_made(full);
    event("mkdir");
  }
  pthread_mutex_unlock(&mu);
  return rc;
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off) {
  init();
  if (!is_watched(fd)) return real_pwrite(fd, buf, len, off);
  pthread_mutex_lock(&mu);
  before_write(fd, off, len);
  ssize_t r = real_pwrite(fd, buf, len, off);
  pthread_mutex_unlock(&mu);
  return r;
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off) {
  return pwrite(fd, buf, len, off);
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t off) {
  init();
  if (!is_watched(fd)) return real_pwritev(fd, iov, n, off);
  pthread_mutex_lock(&mu);
  before_write(fd, off, iov_len(iov, n));
  ssize_t r = real_pwritev(fd, iov, n, off);
  pthread_mutex_unlock(&mu);
  return r;
}

ssize_t pwritev64(int fd, const struct iovec *iov, int n, off_t off) {
  return pwritev(fd, iov, n, off);
}

ssize_t write(int fd, const void *buf, size_t len) {
  init();
  if (!is_watched(fd)) return real_write(fd, buf, len); /* sockets, logs */
  pthread_mutex_lock(&mu);
  before_write(fd, lseek(fd, 0, SEEK_CUR), len);
  ssize_t r = real_write(fd, buf, len);
  pthread_mutex_unlock(&mu);
  return r;
}

ssize_t writev(int fd, const struct iovec *iov, int n) {
  init();
  if (!is_watched(fd)) return real_writev(fd, iov, n);
  pthread_mutex_lock(&mu);
  before_write(fd, lseek(fd, 0, SEEK_CUR), iov_len(iov, n));
  ssize_t r = real_writev(fd, iov, n);
  pthread_mutex_unlock(&mu);
  return r;
}

/* A shorter or longer file: recorded as a write of the changed span, so
 * that the cut gives back the flushed length and bytes. */
int ftruncate(int fd, off_t len) {
  init();
  if (!is_watched(fd)) return real_ftruncate(fd, len);
  pthread_mutex_lock(&mu);
  struct stat st;
  if (fstat(fd, &st) == 0 && st.st_size != len) {
    off_t from = len < st.st_size ? len : st.st_size;
    off_t to = len < st.st_size ? st.st_size : len;
    before_write(fd, from, (size_t)(to - from));
  }
  int rc = real_ftruncate(fd, len);
  pthread_mutex_unlock(&mu);
  return rc;
}

int ftruncate64(int fd, off_t len) {
  return ftruncate(fd, len);
}

static int sync_call(int fd, sync_fn real, const char *what) {
  init();
  if (!is_watched(fd)) return real(fd);
  pthread_mutex_lock(&mu);
  event(what);
  int rc = real(fd);
  if (rc == 0) flushed(fd);
  pthread_mutex_unlock(&mu);
  return rc;
}

int fsync(int fd) {
  return sync_call(fd, real_fsync, "fsync");
}

int fdatasync(int fd) {
  return sync_call(fd, real_fdatasync, "fdatasync");
}

/* ---- what the model does not cover: loudly ------------------------------ */

static bool path_mine(const char *path) {
  char full[PATH_MAX];
  init();
  return C.dir[0] && realpath(path, full) && under_dir(full);
}

int unlink(const char *path) {
  if (path_mine(path)) unmodelled("unlink", path);
  return real_unlink(path);
}

int rename(const char *from, const char *to) {
  if (path_mine(from)) unmodelled("rename", from);
  typedef int (*fn)(const char *, const char *);
  return ((fn)dlsym(RTLD_NEXT, "rename"))(from, to);
}

static void no_fd_call(int fd, const char *what) {
  init();
  if (is_watched(fd)) unmodelled(what, fd_path[fd]);
}

int fallocate(int fd, int mode, off_t off, off_t len) {
  no_fd_call(fd, "fallocate");
  typedef int (*fn)(int, int, off_t, off_t);
  return ((fn)dlsym(RTLD_NEXT, "fallocate"))(fd, mode, off, len);
}

int posix_fallocate(int fd, off_t off, off_t len) {
  no_fd_call(fd, "posix_fallocate");
  typedef int (*fn)(int, off_t, off_t);
  return ((fn)dlsym(RTLD_NEXT, "posix_fallocate"))(fd, off, len);
}

int dup(int fd) {
  no_fd_call(fd, "dup");
  typedef int (*fn)(int);
  return ((fn)dlsym(RTLD_NEXT, "dup"))(fd);
}

int dup2(int fd, int to) {
  no_fd_call(fd, "dup2");
  typedef int (*fn)(int, int);
  return ((fn)dlsym(RTLD_NEXT, "dup2"))(fd, to);
}
