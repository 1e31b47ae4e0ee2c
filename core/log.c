#include "config.h"

#include "log.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

_Atomic int hd_log_threshold = HD_LOG_INFO;
static _Atomic bool use_syslog;

static const char *const level_names[] = {
    [HD_LOG_ERR] = "err",   [HD_LOG_WARNING] = "warning", [HD_LOG_NOTICE] = "notice",
    [HD_LOG_INFO] = "info", [HD_LOG_DEBUG] = "debug",
};

int hd_log_level_parse(const char *name) {
  for (int i = HD_LOG_ERR; i <= HD_LOG_DEBUG; i++)
    if (strcmp(name, level_names[i]) == 0) return i;
  return -1;
}

void hd_log_set_level(int level) { atomic_store(&hd_log_threshold, level); }

void hd_log_use_syslog(bool on) {
  if (on && !atomic_load(&use_syslog)) openlog("hadrond", LOG_PID, LOG_DAEMON);
  atomic_store(&use_syslog, on);
}

void hd_log_vwrite(int level, const char *who, const char *fmt, va_list ap) {
  char line[2048];
  if (level < HD_LOG_ERR) level = HD_LOG_ERR;
  if (level > HD_LOG_DEBUG) level = HD_LOG_DEBUG;
  if (atomic_load_explicit(&use_syslog, memory_order_relaxed)) {
    int n = snprintf(line, sizeof line, "%s: ", who ? who : "core");
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    syslog(level, "%s", line);
    return;
  }
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %-7s %s: ",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                   tm.tm_sec, (int)(tv.tv_usec / 1000), level_names[level], who ? who : "core");
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
  if (len > sizeof line - 2) len = sizeof line - 2;
  line[len++] = '\n';
  /* One write per line keeps lines from different threads whole. */
  ssize_t w = write(STDERR_FILENO, line, len);
  (void)w;
}

void hd_log_write(int level, const char *who, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  hd_log_vwrite(level, who, fmt, ap);
  va_end(ap);
}
