/* A damaged store must give a message, not a bare crash.
 *
 * LMDB trusts its own pages: a page whose header or node offsets were
 * damaged on disk can make it read or write outside the page (SIGSEGV, or
 * SIGBUS beyond the file) or fail one of its assertions (SIGABRT).  It
 * keeps no checksums, so it cannot tell beforehand.  The handlers below are
 * installed once; a thread marks the stretches where it is inside LMDB
 * (hd_store_guard_enter/leave), and a fault there is reported as a damaged
 * store, naming it, what was being done and what to do, before the
 * process exits 1.  A fault anywhere else goes to the handler that was
 * there before (the default one, or a sanitizer's), so that a bug is still
 * a crash with its core dump.
 *
 * Nothing is half-written by such an exit: LMDB builds a transaction in
 * memory and writes it at commit, and a message's producer hears
 * `accepted` only after its commit. */
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
static bool installed;
static char head[1536], advice[1536];
static size_t head_len, advice_len;
static _Thread_local const char *doing; /* NULL: this thread is not inside LMDB */

static void say(const char *s, size_t n) {
  ssize_t ignored = write(STDERR_FILENO, s, n);
  (void)ignored;
}

/* Async-signal-safe: write(2), _exit(2), sigaction(2) only. */
static void on_fault(int sig) {
  const char *what = doing;
  if (!what) { /* not ours: put the previous handler back and let it act */
    for (size_t i = 0; i < NGUARDED; i++)
      if (guarded[i] == sig) sigaction(sig, &saved[i], NULL);
    return; /* the faulting instruction runs again (abort() raises again) */
  }
  char num[12];
  size_t n = sizeof num;
  unsigned v = (unsigned)sig;
  do num[--n] = (char)('0' + v % 10), v /= 10;
  while (v && n);
  say(head, head_len);
  say(num + n, sizeof num - n);
  say(") while ", 8);
  say(what, strlen(what));
  say(advice, advice_len);
  _exit(1);
}

void hd_store_guard_install(const char *who, const char *data_dir, bool suggest_check) {
  snprintf(head, sizeof head, "%s: store %s/store: damaged, LMDB crashed (signal ", who, data_dir);
  if (suggest_check)
    snprintf(advice, sizeof advice,
             ".  Run 'hadron-store -d %s check' to see more; then copy what is still readable into a new "
             "store (hadron-store(1), DAMAGED STORES), or restore the data-dir from a backup\n",
             data_dir);
  else
    snprintf(advice, sizeof advice,
             ".  Copy what is still readable into a new store (hadron-store(1), DAMAGED STORES), or "
             "restore the data-dir from a backup\n");
  head_len = strlen(head);
  advice_len = strlen(advice);
  if (installed) return;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_fault;
  sigemptyset(&sa.sa_mask);
  for (size_t i = 0; i < NGUARDED; i++) sigaction(guarded[i], &sa, &saved[i]);
  installed = true;
}

void hd_store_guard_uninstall(void) {
  if (!installed) return;
  for (size_t i = 0; i < NGUARDED; i++) sigaction(guarded[i], &saved[i], NULL);
  installed = false;
}

const char *hd_store_guard_enter(const char *what) {
  const char *prev = doing;
  doing = what;
  return prev;
}

void hd_store_guard_leave(const char *prev) { doing = prev; }
