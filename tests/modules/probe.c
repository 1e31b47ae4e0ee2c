/* probe: a valid module for the loader tests.  It counts every lifecycle
 * call and hook call in globals that the test reads through probe_count(),
 * and answers hooks by address so that verdict handling can be checked:
 *
 *   NODE_RESOLVE  "probe.*"  OK (type queue, max-depth = level)
 *                 "deny.*"   DENY (amqp:not-allowed, "probe denies ADDRESS")
 *                 "bogus.*"  an out-of-range verdict (the host must DEFER)
 *                 otherwise  DEFER
 *   LINK_ATTACH   an address listed in `allow`  OK
 *                 "deny.*"   DENY (amqp:unauthorized-access)
 *                 otherwise  DEFER
 *   TICK          counts, answers DENY (notify must ignore verdicts)
 *
 * check_config refuses "allow = forbidden"; init fails for level = 10. */
#include "config.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hadron/module.h"

typedef struct probe {
  const hd_host_t *host;
  hd_module_t *self;
  const hd_cfg_section_t *cfg; /* borrowed until the next reload */
  long level;
} probe_t;

/* Counters are atomic: a broker may run the hooks on several threads. */
enum { C_CHECK, C_INIT, C_START, C_RELOAD, C_STOP, C_FINI, C_RESOLVE, C_ATTACH, C_TICK, C_N };
static const char *const count_names[C_N] = {"check_config", "init",    "start",
                                             "reload",       "stop",    "fini",
                                             "resolve",      "attach",  "tick"};
static atomic_long counts[C_N];
static probe_t *current; /* for probe_try_hook */

static const hd_directive_t directives[] = {
    {"level", HD_CFG_INT, 0, 1, 10, "5", NULL, "max-depth given to probe.* nodes"},
    {"allow", HD_CFG_STRING, HD_CFG_MULTI, 0, 0, NULL, NULL, "addresses whose links are allowed"},
    HD_DIRECTIVE_END};

/* ---- what the test reads (found with dlsym) ----------------------------- */

long probe_count(const char *what);
void probe_reset(void);
int probe_try_hook(void);

__attribute__((visibility("default"))) long probe_count(const char *what) {
  if (strcmp(what, "level") == 0) return current ? current->level : -1;
  for (int i = 0; i < C_N; i++)
    if (strcmp(count_names[i], what) == 0) return atomic_load(&counts[i]);
  return -1000;
}

__attribute__((visibility("default"))) void probe_reset(void) {
  for (int i = 0; i < C_N; i++) atomic_store(&counts[i], 0);
}

static hd_verdict_t on_tick(void *state, hd_phase_t phase, void *payload);

/* Registering a hook once started must be refused by the host. */
__attribute__((visibility("default"))) int probe_try_hook(void) {
  if (!current) return -1;
  return current->host->hook_add(current->self, HD_PHASE_TICK, on_tick);
}

/* ---- hooks ---------------------------------------------------------------- */

static bool starts(const char *s, const char *prefix) {
  return s && strncmp(s, prefix, strlen(prefix)) == 0;
}

static hd_verdict_t on_resolve(void *state, hd_phase_t phase, void *payload) {
  probe_t *p = state;
  hd_node_spec_t *spec = payload;
  atomic_fetch_add(&counts[C_RESOLVE], 1);
  if (phase != HD_PHASE_NODE_RESOLVE) return HD_VERDICT_DENY;
  if (starts(spec->address, "probe.")) {
    spec->type = HD_NODE_QUEUE;
    spec->max_depth = p->level;
    return HD_VERDICT_OK;
  }
  if (starts(spec->address, "deny.")) {
    spec->refusal.condition = "amqp:not-allowed";
    snprintf(spec->refusal.description, sizeof spec->refusal.description, "probe denies %s",
             spec->address);
    return HD_VERDICT_DENY;
  }
  if (starts(spec->address, "bogus.")) return (hd_verdict_t)7;
  return HD_VERDICT_DEFER;
}

static hd_verdict_t on_attach(void *state, hd_phase_t phase, void *payload) {
  probe_t *p = state;
  hd_link_info_t *link = payload;
  atomic_fetch_add(&counts[C_ATTACH], 1);
  size_t n = p->host->cfg_count(p->cfg, "allow");
  for (size_t i = 0; i < n; i++)
    if (link->address && strcmp(link->address, p->host->cfg_item(p->cfg, "allow", i)) == 0)
      return HD_VERDICT_OK;
  if (starts(link->address, "deny.")) {
    link->refusal.condition = "amqp:unauthorized-access";
    snprintf(link->refusal.description, sizeof link->refusal.description,
             "probe: link '%s' to '%s' denied", link->name ? link->name : "?", link->address);
    return HD_VERDICT_DENY;
  }
  return HD_VERDICT_DEFER;
}

static hd_verdict_t on_tick(void *state, hd_phase_t phase, void *payload) {
  atomic_fetch_add(&counts[C_TICK], 1);
  return HD_VERDICT_DENY;
}

/* ---- lifecycle --------------------------------------------------------------- */

static int check_config(const hd_host_t *h, const hd_cfg_section_t *cfg, char *err, size_t errlen) {
  atomic_fetch_add(&counts[C_CHECK], 1);
  size_t n = h->cfg_count(cfg, "allow");
  for (size_t i = 0; i < n; i++)
    if (strcmp(h->cfg_item(cfg, "allow", i), "forbidden") == 0) {
      snprintf(err, errlen, "allow = forbidden at %s: that address may never be allowed",
               h->cfg_where(cfg, "allow", i));
      return HD_ECONFIG;
    }
  return 0;
}

static int init(const hd_host_t *h, hd_module_t *self, const hd_cfg_section_t *cfg, void **state,
                char *err, size_t errlen) {
  atomic_fetch_add(&counts[C_INIT], 1);
  long level = (long)h->cfg_int(cfg, "level");
  if (level == 10) {
    snprintf(err, errlen, "level 10 makes init fail (test)");
    return HD_ECONFIG;
  }
  probe_t *p = calloc(1, sizeof *p);
  if (!p) return -12;
  p->host = h;
  p->self = self;
  p->cfg = cfg;
  p->level = level;
  int rc = h->hook_add(self, HD_PHASE_NODE_RESOLVE, on_resolve);
  if (!rc) rc = h->hook_add(self, HD_PHASE_LINK_ATTACH, on_attach);
  if (!rc) rc = h->hook_add(self, HD_PHASE_TICK, on_tick);
  if (rc) {
    snprintf(err, errlen, "hook_add: %s", h->strerror(rc));
    free(p);
    return rc;
  }
  *state = p;
  current = p;
  return 0;
}

static int start(void *state, char *err, size_t errlen) {
  atomic_fetch_add(&counts[C_START], 1);
  return 0;
}

static int reload(void *state, const hd_cfg_section_t *cfg, char *err, size_t errlen) {
  probe_t *p = state;
  atomic_fetch_add(&counts[C_RELOAD], 1);
  p->cfg = cfg;
  p->level = (long)p->host->cfg_int(cfg, "level");
  return 0;
}

static void stop(void *state) { atomic_fetch_add(&counts[C_STOP], 1); }

static void fini(void *state) {
  atomic_fetch_add(&counts[C_FINI], 1);
  if (current == state) current = NULL;
  free(state);
}

static const hd_module_desc_t probe_desc = {
    .abi_major = HD_MODULE_ABI_MAJOR,
    .abi_minor = HD_MODULE_ABI_MINOR,
    .size = sizeof(hd_module_desc_t),
    .build_signature = HD_BUILD_SIGNATURE,
    .name = "probe",
    .version = "1.0-test",
    .description = "loader test module that counts its calls",
    .directives = directives,
    .check_config = check_config,
    .init = init,
    .start = start,
    .reload = reload,
    .stop = stop,
    .fini = fini,
};

HD_MODULE_EXPORT(probe_desc)
