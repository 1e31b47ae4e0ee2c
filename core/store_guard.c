/* A damaged store must be refused with a message, not crash the broker.
 *
 * LMDB trusts its own pages: a page whose header or node offsets were
 * damaged on disk can make it read outside the page (SIGSEGV, or SIGBUS
 * beyond the file) or fail one of its assertions (SIGABRT).  It keeps no
 * checksums, so it cannot tell beforehand.  While the store is read at
 * start-up (recovery, or hadron-store), a fault can only come from such a
 * page, so these signals are caught then and turned into a refusal that
 * names the store and what to do.  Nothing has been written by then: the
 * writer thread starts after recovery.  Afterwards the default handlers
 * are back, so that a bug elsewhere is not reported as a damaged store. */
#include "config.h"

#include "store.h"

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const int guarded[] = {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL};
#define NGUARDED (sizeof guarded / sizeof guarded[0])
static struct sigaction saved[NGUARDED];
static char head[1536], tail[1024];
static size_t head_len, tail_len;

/* Async-signal-safe: only write(2) and _exit(2). */
static void on_fault(int sig) {
  char num[12];
  size_t n = sizeof num;
  unsigned v = (unsigned)sig;
  do num[--n] = (char)('0' + v % 10), v /= 10;
  while (v && n);
  ssize_t ignored = write(STDERR_FILENO, head, head_len);
  ignored = write(STDERR_FILENO, num + n, sizeof num - n);
  ignored = write(STDERR_FILENO, tail, tail_len);
  (void)ignored;
  _exit(1);
}

void hd_store_guard_begin(const char *who, const char *data_dir, const char *when, bool suggest_check) {
  snprintf(head, sizeof head, "%s: store %s/store: damaged, LMDB crashed (signal ", who, data_dir);
  char check[1100] = "";
  if (suggest_check) snprintf(check, sizeof check, "Run 'hadron-store -d %s check' to see more, then r", data_dir);
  snprintf(tail, sizeof tail,
           ") while reading it%s%s; nothing was changed.  %sestore the data-dir from a backup, or move it "
           "away to start with an empty store\n",
           *when ? " " : "", when, *check ? check : "R");
  head_len = strlen(head);
  tail_len = strlen(tail);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_fault;
  sigemptyset(&sa.sa_mask);
  for (size_t i = 0; i < NGUARDED; i++) sigaction(guarded[i], &sa, &saved[i]);
}

void hd_store_guard_end(void) {
  for (size_t i = 0; i < NGUARDED; i++) sigaction(guarded[i], &saved[i], NULL);
}
