#include "config.h"

#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static void oom(size_t n) {
  hd_log_write(HD_LOG_ERR, "core", "memory, allocation of %zu bytes failed; aborting", n);
  abort();
}

void *hd_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) oom(n);
  return p;
}

void *hd_xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) oom(n * size);
  return p;
}

void *hd_xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) oom(n);
  return q;
}

char *hd_xstrdup(const char *s) { return hd_xstrndup(s, strlen(s)); }

char *hd_xstrndup(const char *s, size_t n) {
  char *p = hd_xmalloc(n + 1);
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

const char *hd_strerror(int err) {
  switch (err) {
  case 0: return "success";
  case HD_ECONFIG: return "invalid configuration";
  case HD_EABI: return "module ABI mismatch";
  case HD_ENOTFOUND: return "not found";
  case HD_EDENIED: return "refused by policy";
  case HD_EFULL: return "limit reached";
  case HD_EPROTO: return "malformed AMQP data";
  case HD_EEXIST: return "already exists";
  case HD_ESTATE: return "wrong state for this call";
  default: break;
  }
  if (err < 0 && err > HD_ERR_FLOOR) return strerror(-err);
  return "unknown error";
}

uint64_t hd_now_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t hd_now_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int hd_sync_parent_dir(const char *path) {
  char dir[4096];
  hd_fmt(dir, "%s", path);
  size_t n = strlen(dir);
  while (n > 1 && dir[n - 1] == '/')
    dir[--n] = '\0'; /* "data/" is data's name too */
  char *slash = strrchr(dir, '/');
  if (slash == dir)
    slash[1] = '\0'; /* in the root directory */
  else if (slash)
    *slash = '\0';
  int fd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -errno;
  int rc = fsync(fd) == 0 ? 0 : -errno;
  close(fd);
  return rc;
}
