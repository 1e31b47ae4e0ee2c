#include "config.h"

#include "modload.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hooks.h"
#include "log.h"
#include "util.h"

struct hd_module {
  char *name, *path;
  void *dl;
  const hd_module_desc_t *desc;
  void *state;
  hd_cfg_section_t *cfg; /* borrowed from the config in force */
  bool inited, started;
  struct hd_module *next;
};

#define MAX_HOOKS 32

typedef struct hook {
  hd_module_t *m;
  hd_hook_fn fn;
} hook_t;

static struct {
  hd_module_t *head, **tail;
  size_t count;
  hook_t hooks[HD_PHASE_MAX_][MAX_HOOKS];
  size_t nhooks[HD_PHASE_MAX_];
  bool sealed; /* started: no more hooks */
  pthread_rwlock_t reload_lock; /* hooks read, reload writes */
} M = {.tail = &M.head, .reload_lock = PTHREAD_RWLOCK_INITIALIZER};

/* ---- host services ------------------------------------------------------- */

static bool h_log_enabled(hd_log_level_t level) { return hd_log_on(level); }

static void h_log(const hd_module_t *m, hd_log_level_t level, const char *fmt, ...) {
  if (!hd_log_on(level)) return;
  va_list ap;
  va_start(ap, fmt);
  hd_log_vwrite(level, m ? m->name : "module", fmt, ap);
  va_end(ap);
}

static int h_hook_add(hd_module_t *m, hd_phase_t phase, hd_hook_fn fn) {
  if (M.sealed) return HD_ESTATE;
  if (phase <= 0 || phase >= HD_PHASE_MAX_ || !fn) return -EINVAL;
  if (M.nhooks[phase] == MAX_HOOKS) return HD_EFULL;
  M.hooks[phase][M.nhooks[phase]++] = (hook_t){m, fn};
  return 0;
}

static void *h_alloc(size_t n) { return malloc(n); }
static void h_free(void *p) { free(p); }

const hd_host_t hd_host = {
    .size = sizeof(hd_host_t),
    .abi_major = HD_MODULE_ABI_MAJOR,
    .abi_minor = HD_MODULE_ABI_MINOR,
    .broker_version = PACKAGE_VERSION,
    .log_enabled = h_log_enabled,
    .log = h_log,
    .strerror = hd_strerror,
    .hook_add = h_hook_add,
    .cfg_str = hd_cfg_str,
    .cfg_int = hd_cfg_int,
    .cfg_bool = hd_cfg_bool,
    .cfg_count = hd_cfg_count,
    .cfg_item = hd_cfg_item,
    .cfg_where = hd_cfg_where,
    .alloc = h_alloc,
    .free = h_free,
};

/* ---- hooks ------------------------------------------------------------------ */

bool hd_hooks_any(hd_phase_t phase) { return phase > 0 && phase < HD_PHASE_MAX_ && M.nhooks[phase]; }

hd_verdict_t hd_hooks_run(hd_phase_t phase, void *payload) {
  if (!hd_hooks_any(phase)) return HD_VERDICT_DEFER;
  hd_verdict_t v = HD_VERDICT_DEFER;
  pthread_rwlock_rdlock(&M.reload_lock);
  for (size_t i = 0; i < M.nhooks[phase] && v == HD_VERDICT_DEFER; i++) {
    hook_t *h = &M.hooks[phase][i];
    v = h->fn(h->m->state, phase, payload);
    if (v != HD_VERDICT_OK && v != HD_VERDICT_DENY) v = HD_VERDICT_DEFER;
  }
  pthread_rwlock_unlock(&M.reload_lock);
  return v;
}

void hd_hooks_notify(hd_phase_t phase, void *payload) {
  if (!hd_hooks_any(phase)) return;
  pthread_rwlock_rdlock(&M.reload_lock);
  for (size_t i = 0; i < M.nhooks[phase]; i++) M.hooks[phase][i].fn(M.hooks[phase][i].m->state, phase, payload);
  pthread_rwlock_unlock(&M.reload_lock);
}

/* ---- loading ---------------------------------------------------------------- */

static int refuse(char *err, size_t errlen, const char *name, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int refuse(char *err, size_t errlen, const char *name, const char *path, const char *fmt, ...) {
  int n = snprintf(err, errlen, "module '%s' (%s): ", name, path);
  va_list ap;
  va_start(ap, fmt);
  if (n > 0 && (size_t)n < errlen) vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
  va_end(ap);
  return HD_EABI;
}

static hd_module_t *find(const char *name) {
  for (hd_module_t *m = M.head; m; m = m->next)
    if (strcmp(m->name, name) == 0) return m;
  return NULL;
}

int hd_module_load(const char *name, const char *path, hd_cfg_section_t *section, char *err,
                   size_t errlen) {
  hd_module_t *dup = find(name);
  if (dup) return refuse(err, errlen, name, path, "a module named '%s' is already loaded from %s", name, dup->path);
  struct stat sb;
  if (stat(path, &sb) != 0)
    return refuse(err, errlen, name, path, "no such file; check module-dir in [broker] or install the module");
  dlerror();
  void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!dl) return refuse(err, errlen, name, path, "cannot load: %s", dlerror());
  const hd_module_desc_t *(*get)(void) = NULL;
  *(void **)&get = dlsym(dl, HD_MODULE_SYMBOL);
  const hd_module_desc_t *d = get ? get() : NULL;
  int rc = 0;
  if (!get)
    rc = refuse(err, errlen, name, path, "no %s symbol: not a Hadron module", HD_MODULE_SYMBOL);
  else if (!d)
    rc = refuse(err, errlen, name, path, "%s() returned no descriptor", HD_MODULE_SYMBOL);
  else if (d->abi_major != HD_MODULE_ABI_MAJOR)
    rc = refuse(err, errlen, name, path,
                "built for module ABI %u, this broker has ABI %u; rebuild it against this broker's hadron/module.h",
                d->abi_major, HD_MODULE_ABI_MAJOR);
  else if (d->size < offsetof(hd_module_desc_t, spare))
    rc = refuse(err, errlen, name, path, "descriptor size %zu is smaller than ABI %u requires (%zu)",
                d->size, HD_MODULE_ABI_MAJOR, offsetof(hd_module_desc_t, spare));
  else if (!d->build_signature || strcmp(d->build_signature, HD_BUILD_SIGNATURE) != 0)
    rc = refuse(err, errlen, name, path,
                "build signature '%s' differs from the broker's '%s'; rebuild it with the same proton, OpenSSL and sanitizer settings",
                d->build_signature ? d->build_signature : "(none)", HD_BUILD_SIGNATURE);
  else if (!d->name || strcmp(d->name, name) != 0)
    rc = refuse(err, errlen, name, path, "the file holds module '%s'; name the section [module %s] or load the right file",
                d->name ? d->name : "(unnamed)", d->name ? d->name : "?");
  if (!rc && section) {
    char why[1024];
    if (hd_cfg_check(section, d->directives, why, sizeof why) != 0) {
      snprintf(err, errlen, "%s", why);
      rc = HD_ECONFIG;
    } else if (d->check_config && d->check_config(&hd_host, section, why, sizeof why) != 0) {
      snprintf(err, errlen, "%s: [module %s]: %s", section->where, name, why);
      rc = HD_ECONFIG;
    }
  }
  if (rc) {
    dlclose(dl);
    return rc;
  }
  hd_module_t *m = hd_xcalloc(1, sizeof *m);
  m->name = hd_xstrdup(name);
  m->path = hd_xstrdup(path);
  m->dl = dl;
  m->desc = d;
  m->cfg = section;
  *M.tail = m;
  M.tail = &m->next;
  M.count++;
  HD_LOG(HD_LOG_INFO, "core", "module '%s', loaded %s version %s from %s", name, d->name,
         d->version ? d->version : "?", path);
  return 0;
}

int hd_modules_load(hd_config_t *cfg, const char *dir, char *err, size_t errlen) {
  for (hd_cfg_section_t *s = hd_cfg_next(cfg, NULL, "module"); s; s = hd_cfg_next(cfg, s, "module")) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.so", dir, s->name);
    int rc = hd_module_load(s->name, path, s, err, errlen);
    if (rc) return rc;
  }
  return 0;
}

size_t hd_modules_count(void) { return M.count; }

int hd_modules_init(char *err, size_t errlen) {
  for (hd_module_t *m = M.head; m; m = m->next) {
    if (m->desc->init) {
      char why[512] = "";
      int rc = m->desc->init(&hd_host, m, m->cfg, &m->state, why, sizeof why);
      if (rc) {
        snprintf(err, errlen, "module '%s', init failed: %s", m->name, why[0] ? why : hd_strerror(rc));
        return rc;
      }
    }
    m->inited = true;
  }
  return 0;
}

int hd_modules_start(char *err, size_t errlen) {
  for (hd_module_t *m = M.head; m; m = m->next) {
    if (m->desc->start) {
      char why[512] = "";
      int rc = m->desc->start(m->state, why, sizeof why);
      if (rc) {
        snprintf(err, errlen, "module '%s', start failed: %s", m->name, why[0] ? why : hd_strerror(rc));
        return rc;
      }
    }
    m->started = true;
  }
  M.sealed = true;
  return 0;
}

int hd_modules_reload(hd_config_t *cfg, char *err, size_t errlen) {
  size_t n = 0;
  for (hd_cfg_section_t *s = hd_cfg_next(cfg, NULL, "module"); s; s = hd_cfg_next(cfg, s, "module")) {
    hd_module_t *m = find(s->name);
    if (!m) {
      snprintf(err, errlen, "%s: module '%s' is new; loading modules needs a restart", s->where, s->name);
      return HD_ECONFIG;
    }
    char why[1024];
    if (hd_cfg_check(s, m->desc->directives, why, sizeof why) != 0) {
      snprintf(err, errlen, "%s", why);
      return HD_ECONFIG;
    }
    if (m->desc->check_config && m->desc->check_config(&hd_host, s, why, sizeof why) != 0) {
      snprintf(err, errlen, "%s: [module %s]: %s", s->where, s->name, why);
      return HD_ECONFIG;
    }
    n++;
  }
  if (n != M.count) {
    snprintf(err, errlen, "%s: a loaded module's section is gone; unloading modules needs a restart", cfg->source);
    return HD_ECONFIG;
  }
  /* Every module passed: swap, with no hook running meanwhile. */
  int rc = 0;
  pthread_rwlock_wrlock(&M.reload_lock);
  for (hd_module_t *m = M.head; m; m = m->next) {
    hd_cfg_section_t *s = NULL;
    for (s = hd_cfg_next(cfg, NULL, "module"); s && strcmp(s->name, m->name); s = hd_cfg_next(cfg, s, "module")) {}
    m->cfg = s;
    char why[512] = "";
    if (m->desc->reload && (rc = m->desc->reload(m->state, s, why, sizeof why)) != 0) {
      snprintf(err, errlen, "module '%s', reload failed: %s", m->name, why[0] ? why : hd_strerror(rc));
      break;
    }
  }
  pthread_rwlock_unlock(&M.reload_lock);
  return rc;
}

void hd_modules_stop(void) {
  for (hd_module_t *m = M.head; m; m = m->next)
    if (m->started && m->desc->stop) {
      m->desc->stop(m->state);
      m->started = false;
    }
}

void hd_modules_unload(void) {
  hd_modules_stop();
  /* Reverse load order would be nicer; modules do not depend on each other. */
  for (hd_module_t *m = M.head, *n; m; m = n) {
    n = m->next;
    if (m->inited && m->desc->fini) m->desc->fini(m->state);
    /* Under sanitizers keep the code mapped so leak reports can name it. */
#if !defined(__SANITIZE_ADDRESS__)
    dlclose(m->dl);
#endif
    free(m->name);
    free(m->path);
    free(m);
  }
  M.head = NULL;
  M.tail = &M.head;
  M.count = 0;
  memset(M.nhooks, 0, sizeof M.nhooks);
  M.sealed = false;
}
