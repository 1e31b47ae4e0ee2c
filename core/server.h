/* The broker process: proactor, worker threads, listeners, signals,
 * periodic tick, drain on SIGTERM and reload on SIGHUP. */
#ifndef HD_SERVER_H
#define HD_SERVER_H

#include <proton/condition.h>
#include <proton/listener.h>
#include <proton/proactor.h>
#include <proton/ssl.h>
#include <stdatomic.h>

#include "settings.h"

typedef struct hd_listener {
  const hd_listener_conf_t *conf;
  pn_listener_t *pn;
  pn_ssl_domain_t *ssl; /* NULL: plain TCP */
  atomic_uint conns;
  struct hd_listener *next;
} hd_listener_t;

/* Runs until SIGTERM/SIGINT has drained the broker.  Settings ownership
 * passes to the server.  Returns the process exit status. */
int hd_server_run(hd_settings_t *st, const char *config_path);

/* Current settings (swapped by reload; old ones live until exit). */
const hd_settings_t *hd_server_settings(void);
pn_proactor_t *hd_server_proactor(void);
bool hd_server_draining(void);
/* Ask the worker threads (from any thread) to give producers credit again. */
void hd_server_request_resume(void);

#endif
