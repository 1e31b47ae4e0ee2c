/* Logging: one line per event, "object 'id', what happened", syslog levels.
 * Thread-safe; the level is checked before any formatting. */
#ifndef HD_LOG_H
#define HD_LOG_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "hadron/module.h"

extern _Atomic int hd_log_threshold;

#define hd_log_on(level) ((int)(level) <= atomic_load_explicit(&hd_log_threshold, memory_order_relaxed))

/* who: subsystem or module name ("core", "route"). */
#define HD_LOG(level, who, ...)                                                \
  do {                                                                         \
    if (hd_log_on(level)) hd_log_write((level), (who), __VA_ARGS__);           \
  } while (0)

void hd_log_write(int level, const char *who, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void hd_log_vwrite(int level, const char *who, const char *fmt, va_list ap);

/* Parse "err", "warning", "notice", "info", "debug"; -1 if unknown. */
int hd_log_level_parse(const char *name);
void hd_log_set_level(int level);
/* "stderr" (default) or "syslog". */
void hd_log_use_syslog(bool on);

#endif
