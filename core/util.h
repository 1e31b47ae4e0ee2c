/* Small helpers every core file uses: allocation that cannot fail silently,
 * error strings, monotonic and wall clocks, flushing a directory. */
#ifndef HD_UTIL_H
#define HD_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "hadron/module.h"

/* Allocation for control structures.  Running out of memory for these is
 * not recoverable in a useful way, so these log and abort.  Message buffers
 * use plain malloc and turn failure into amqp:resource-limit-exceeded. */
void *hd_xmalloc(size_t n);
void *hd_xcalloc(size_t n, size_t size);
void *hd_xrealloc(void *p, size_t n);
char *hd_xstrdup(const char *s);
char *hd_xstrndup(const char *s, size_t n);

/* Name of a result code: negative errno or HD_E*.  Static string. */
const char *hd_strerror(int err);

uint64_t hd_now_mono_ms(void);  /* CLOCK_MONOTONIC */
uint64_t hd_now_wall_ms(void);  /* CLOCK_REALTIME, ms since the epoch */

/* fsync the directory that holds path (a file or a directory), so that
 * path's name survives a power cut: a new file or directory's name is only
 * on disk once its directory is flushed.  0 or -errno. */
int hd_sync_parent_dir(const char *path);

/* snprintf into a fixed buffer, never overflowing, always terminated. */
#define hd_fmt(buf, ...) snprintf((buf), sizeof(buf), __VA_ARGS__)

#endif
