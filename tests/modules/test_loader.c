/* core/modload.h with the real loader: the probe module's lifecycle and
 * hooks, reload, and the precise refusal of each deliberately broken
 * module.  Module directory: $HADRON_TEST_MODULES (set by the Makefile),
 * else ./modules/.libs from the build's tests/ directory; route.so from
 * $HADRON_MODULE_DIR, else ../modules/route/.libs. */
#include "config.h"

#include <dlfcn.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cfg.h"
#include "hadron/module.h"
#include "hooks.h"
#include "log.h"
#include "modload.h"

static char mod_dir[2048], route_dir[2048], probe_path[2100];
static char err[2048];

/* The probe's counters, read through the copy of probe.so this test keeps
 * open (the loader's dlopen then shares it, and its globals survive the
 * loader's dlclose between tests). */
static void *probe_dl;
static long (*probe_count)(const char *what);
static void (*probe_reset)(void);
static int (*probe_try_hook)(void);

/* Configurations handed to the loader stay alive until after unload: loaded
 * modules borrow their sections. */
static hd_config_t *cfgs[8];
static size_t n_cfgs;

static void dir_from_env(char *out, size_t len, const char *var, const char *fallback) {
  const char *d = getenv(var);
  snprintf(out, len, "%s", d && *d ? d : fallback);
}

static int group_setup(void **state) {
  (void)state;
  dir_from_env(mod_dir, sizeof mod_dir, "HADRON_TEST_MODULES", "./modules/.libs");
  dir_from_env(route_dir, sizeof route_dir, "HADRON_MODULE_DIR", "../modules/route/.libs");
  snprintf(probe_path, sizeof probe_path, "%s/probe.so", mod_dir);
  hd_log_set_level(HD_LOG_WARNING); /* keep "module loaded" lines out of the output */
  probe_dl = dlopen(probe_path, RTLD_NOW | RTLD_LOCAL);
  if (!probe_dl) {
    fprintf(stderr, "cannot open %s: %s\n", probe_path, dlerror());
    return -1;
  }
  *(void **)&probe_count = dlsym(probe_dl, "probe_count");
  *(void **)&probe_reset = dlsym(probe_dl, "probe_reset");
  *(void **)&probe_try_hook = dlsym(probe_dl, "probe_try_hook");
  if (!probe_count || !probe_reset || !probe_try_hook) {
    fprintf(stderr, "%s lacks the probe_* functions\n", probe_path);
    return -1;
  }
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  if (probe_dl) dlclose(probe_dl);
  return 0;
}

static int setup(void **state) {
  (void)state;
  probe_reset();
  err[0] = '\0';
  return 0;
}

/* Unload whatever a test left loaded (also after a failed assertion), then
 * free its configurations. */
static int teardown(void **state) {
  (void)state;
  hd_modules_unload();
  for (size_t i = 0; i < n_cfgs; i++) hd_cfg_free(cfgs[i]);
  n_cfgs = 0;
  return 0;
}

static hd_config_t *cfg_of(const char *text, const char *source) {
  hd_config_t *cfg = NULL;
  char perr[512];
  if (hd_cfg_parse_string(text, source, &cfg, perr, sizeof perr) != 0) fail_msg("config: %s", perr);
  assert_true(n_cfgs < sizeof cfgs / sizeof cfgs[0]);
  cfgs[n_cfgs++] = cfg;
  return cfg;
}

static void assert_contains(const char *text, const char *word) {
  if (!strstr(text, word)) fail_msg("'%s' lacks '%s'", text, word);
}

static void assert_starts(const char *text, const char *prefix) {
  if (strncmp(text, prefix, strlen(prefix)) != 0) fail_msg("'%s' does not start with '%s'", text, prefix);
}

/* Load probe from the test module directory with `text` as its section
 * (one [module probe] section), then init and start it. */
static void load_probe(const char *text) {
  hd_config_t *cfg = cfg_of(text, "t.conf");
  int rc = hd_modules_load(cfg, mod_dir, err, sizeof err);
  if (rc) fail_msg("load: %s", err);
  if ((rc = hd_modules_init(err, sizeof err))) fail_msg("init: %s", err);
  if ((rc = hd_modules_start(err, sizeof err))) fail_msg("start: %s", err);
}

static hd_node_spec_t spec_for(const char *address) {
  hd_node_spec_t s;
  memset(&s, 0, sizeof s);
  s.size = sizeof s;
  s.address = address;
  s.purpose = HD_PURPOSE_CONSUMER;
  s.requested = HD_NODE_UNSPEC;
  s.type = HD_NODE_UNSPEC;
  s.auto_create = -1;
  s.max_deliveries = -1;
  s.max_depth = -1;
  return s;
}

static hd_verdict_t resolve(hd_node_spec_t *s) { return hd_hooks_run(HD_PHASE_NODE_RESOLVE, s); }

static hd_verdict_t attach(const char *address, hd_link_info_t *info) {
  memset(info, 0, sizeof *info);
  info->size = sizeof *info;
  info->name = "l1";
  info->role = HD_ROLE_PRODUCER;
  info->address = address;
  return hd_hooks_run(HD_PHASE_LINK_ATTACH, info);
}

/* ---- the probe module -------------------------------------------------------- */

/* Load checks the section and calls check_config; init and start run in
 * order; hooks can no longer be added once started; unload stops and
 * finalizes, and the hook table is empty again. */
static void t_lifecycle(void **state) {
  (void)state;
  hd_config_t *cfg = cfg_of("[module probe]\nlevel = 3\nallow = ok.a\n", "t.conf");
  assert_int_equal(hd_modules_load(cfg, mod_dir, err, sizeof err), 0);
  assert_int_equal(hd_modules_count(), 1);
  assert_int_equal(probe_count("check_config"), 1);
  assert_int_equal(probe_count("init"), 0);
  assert_false(hd_hooks_any(HD_PHASE_NODE_RESOLVE));

  assert_int_equal(hd_modules_init(err, sizeof err), 0);
  assert_int_equal(probe_count("init"), 1);
  assert_int_equal(probe_count("level"), 3);
  assert_true(hd_hooks_any(HD_PHASE_NODE_RESOLVE));
  assert_true(hd_hooks_any(HD_PHASE_LINK_ATTACH));
  assert_false(hd_hooks_any(HD_PHASE_CONN_OPEN));
  assert_int_equal(probe_count("start"), 0);

  assert_int_equal(hd_modules_start(err, sizeof err), 0);
  assert_int_equal(probe_count("start"), 1);
  assert_int_equal(probe_try_hook(), HD_ESTATE);

  hd_modules_unload();
  assert_int_equal(probe_count("stop"), 1);
  assert_int_equal(probe_count("fini"), 1);
  assert_int_equal(hd_modules_count(), 0);
  assert_false(hd_hooks_any(HD_PHASE_NODE_RESOLVE));
  assert_int_equal(hd_hooks_run(HD_PHASE_NODE_RESOLVE, NULL), HD_VERDICT_DEFER);
}

/* Verdicts reach the caller: OK with outputs, DENY with the refusal text,
 * DEFER with outputs untouched; an out-of-range verdict counts as DEFER;
 * notify calls hooks whatever they answer. */
static void t_hook_verdicts(void **state) {
  (void)state;
  load_probe("[module probe]\nlevel = 3\nallow = ok.a\nallow = ok.b\n");

  hd_node_spec_t s = spec_for("probe.q1");
  assert_int_equal(resolve(&s), HD_VERDICT_OK);
  assert_int_equal(s.type, HD_NODE_QUEUE);
  assert_int_equal(s.max_depth, 3);

  s = spec_for("deny.secret");
  assert_int_equal(resolve(&s), HD_VERDICT_DENY);
  assert_string_equal(s.refusal.condition, "amqp:not-allowed");
  assert_string_equal(s.refusal.description, "probe denies deny.secret");

  s = spec_for("elsewhere");
  assert_int_equal(resolve(&s), HD_VERDICT_DEFER);
  assert_int_equal(s.type, HD_NODE_UNSPEC);
  assert_int_equal(s.max_depth, -1);
  assert_null(s.refusal.condition);

  s = spec_for("bogus.x");
  assert_int_equal(resolve(&s), HD_VERDICT_DEFER);
  assert_int_equal(probe_count("resolve"), 4);

  hd_link_info_t li;
  assert_int_equal(attach("ok.b", &li), HD_VERDICT_OK);
  assert_int_equal(attach("ok.c", &li), HD_VERDICT_DEFER);
  assert_int_equal(attach("deny.topic", &li), HD_VERDICT_DENY);
  assert_string_equal(li.refusal.condition, "amqp:unauthorized-access");
  assert_string_equal(li.refusal.description, "probe: link 'l1' to 'deny.topic' denied");
  assert_int_equal(probe_count("attach"), 3);

  hd_tick_t tick = {sizeof tick, 1};
  hd_hooks_notify(HD_PHASE_TICK, &tick);
  hd_hooks_notify(HD_PHASE_TICK, &tick);
  assert_int_equal(probe_count("tick"), 2);
  /* No module registered for these phases. */
  assert_int_equal(hd_hooks_run(HD_PHASE_CONN_AUTH, NULL), HD_VERDICT_DEFER);
  hd_hooks_notify(HD_PHASE_SHUTDOWN, NULL);
}

/* Hooks run in load order and the first OK or DENY ends the walk: with
 * probe loaded before route, probe's answers win and route decides what
 * probe defers; loaded the other way round, route's catch-all rule answers
 * and probe is never asked. */
static void t_hook_load_order(void **state) {
  (void)state;
  char route_path[2100];
  snprintf(route_path, sizeof route_path, "%s/route.so", route_dir);
  hd_config_t *cfg = cfg_of("[module probe]\nlevel = 4\n"
                            "[module route]\nrule = # topic max-depth=77\n",
                            "t.conf");
  hd_cfg_section_t *probe_sec = hd_cfg_next(cfg, NULL, "module");
  hd_cfg_section_t *route_sec = hd_cfg_next(cfg, probe_sec, "module");

  assert_int_equal(hd_module_load("probe", probe_path, probe_sec, err, sizeof err), 0);
  if (hd_module_load("route", route_path, route_sec, err, sizeof err)) fail_msg("route: %s", err);
  assert_int_equal(hd_modules_init(err, sizeof err), 0);
  assert_int_equal(hd_modules_start(err, sizeof err), 0);

  hd_node_spec_t s = spec_for("probe.x");
  assert_int_equal(resolve(&s), HD_VERDICT_OK);
  assert_int_equal(s.type, HD_NODE_QUEUE);
  assert_int_equal(s.max_depth, 4);
  s = spec_for("orders");
  assert_int_equal(resolve(&s), HD_VERDICT_OK);
  assert_int_equal(s.type, HD_NODE_TOPIC);
  assert_int_equal(s.max_depth, 77);
  s = spec_for("bogus.y");
  assert_int_equal(resolve(&s), HD_VERDICT_OK);
  assert_int_equal(s.type, HD_NODE_TOPIC);
  s = spec_for("deny.z");
  assert_int_equal(resolve(&s), HD_VERDICT_DENY);
  assert_int_equal(s.type, HD_NODE_UNSPEC);
  assert_int_equal(probe_count("resolve"), 4);
  hd_modules_unload();
  probe_reset();

  assert_int_equal(hd_module_load("route", route_path, route_sec, err, sizeof err), 0);
  assert_int_equal(hd_module_load("probe", probe_path, probe_sec, err, sizeof err), 0);
  assert_int_equal(hd_modules_init(err, sizeof err), 0);
  assert_int_equal(hd_modules_start(err, sizeof err), 0);
  s = spec_for("probe.x");
  assert_int_equal(resolve(&s), HD_VERDICT_OK);
  assert_int_equal(s.type, HD_NODE_TOPIC);
  assert_int_equal(s.max_depth, 77);
  assert_int_equal(probe_count("resolve"), 0);
}

/* A good section is swapped in (reload called, hooks see the new values);
 * a section that fails the key table or check_config swaps nothing. */
static void t_reload(void **state) {
  (void)state;
  load_probe("[module probe]\nlevel = 3\nallow = old.addr\n");
  hd_link_info_t li;
  assert_int_equal(attach("old.addr", &li), HD_VERDICT_OK);

  hd_config_t *good = cfg_of("[module probe]\nlevel = 7\nallow = new.addr\n", "good.conf");
  if (hd_modules_reload(good, err, sizeof err)) fail_msg("reload: %s", err);
  assert_int_equal(probe_count("reload"), 1);
  assert_int_equal(probe_count("level"), 7);
  assert_int_equal(attach("new.addr", &li), HD_VERDICT_OK);
  assert_int_equal(attach("old.addr", &li), HD_VERDICT_DEFER);
  long checks = probe_count("check_config");

  /* Out of range: refused by the key table before the module sees it. */
  hd_config_t *bad = cfg_of("[module probe]\nlevel = 99\nallow = x\n", "bad.conf");
  assert_int_equal(hd_modules_reload(bad, err, sizeof err), HD_ECONFIG);
  assert_starts(err, "bad.conf:2: ");
  assert_contains(err, "'level = 99'");
  assert_contains(err, "between 1 and 10");
  assert_int_equal(probe_count("check_config"), checks);

  /* Refused by the module's check_config. */
  bad = cfg_of("[module probe]\nlevel = 2\nallow = forbidden\n", "bad2.conf");
  assert_int_equal(hd_modules_reload(bad, err, sizeof err), HD_ECONFIG);
  assert_starts(err, "bad2.conf:1: [module probe]: ");
  assert_contains(err, "allow = forbidden at bad2.conf:3: that address may never be allowed");
  assert_int_equal(probe_count("check_config"), checks + 1);

  /* A module that was not loaded, and a loaded module's section missing. */
  bad = cfg_of("[module probe]\n[module other]\n", "bad3.conf");
  assert_int_equal(hd_modules_reload(bad, err, sizeof err), HD_ECONFIG);
  assert_starts(err, "bad3.conf:2: ");
  assert_contains(err, "module 'other' is new");
  bad = cfg_of("[broker]\n", "bad4.conf");
  assert_int_equal(hd_modules_reload(bad, err, sizeof err), HD_ECONFIG);
  assert_contains(err, "section is gone");

  /* Nothing of the refused files was swapped in. */
  assert_int_equal(probe_count("reload"), 1);
  assert_int_equal(probe_count("level"), 7);
  assert_int_equal(attach("new.addr", &li), HD_VERDICT_OK);
  assert_int_equal(attach("x", &li), HD_VERDICT_DEFER);

  hd_modules_unload();
  assert_int_equal(probe_count("stop"), 1);
  assert_int_equal(probe_count("fini"), 1);
}

/* An unknown key in the module's section names file:line and lists the
 * module's keys; nothing is loaded. */
static void t_unknown_key(void **state) {
  (void)state;
  hd_config_t *cfg = cfg_of("# modules\n[module probe]\nlevel = 3\n\nbogus = 1\n", "t.conf");
  assert_int_equal(hd_modules_load(cfg, mod_dir, err, sizeof err), HD_ECONFIG);
  assert_starts(err, "t.conf:5: unknown key 'bogus' in [module probe]");
  assert_contains(err, "known keys: level allow");
  assert_int_equal(hd_modules_count(), 0);
  assert_int_equal(probe_count("check_config"), 0);

  cfg = cfg_of("[module probe]\nlevel = high\n", "t.conf");
  assert_int_equal(hd_modules_load(cfg, mod_dir, err, sizeof err), HD_ECONFIG);
  assert_starts(err, "t.conf:2: ");
  assert_contains(err, "must be an integer");
  assert_int_equal(hd_modules_count(), 0);
}

/* check_config's refusal is reported with the section's place. */
static void t_check_config_refusal(void **state) {
  (void)state;
  hd_config_t *cfg = cfg_of("\n[module probe]\nallow = fine\nallow = forbidden\n", "t.conf");
  assert_int_equal(hd_modules_load(cfg, mod_dir, err, sizeof err), HD_ECONFIG);
  assert_string_equal(err, "t.conf:2: [module probe]: allow = forbidden at t.conf:4: "
                           "that address may never be allowed");
  assert_int_equal(probe_count("check_config"), 1);
  assert_int_equal(probe_count("init"), 0);
  assert_int_equal(hd_modules_count(), 0);
}

/* A failing init is reported with the module's reason, and fini is not
 * called for a module that never initialized. */
static void t_init_failure(void **state) {
  (void)state;
  hd_config_t *cfg = cfg_of("[module probe]\nlevel = 10\n", "t.conf");
  assert_int_equal(hd_modules_load(cfg, mod_dir, err, sizeof err), 0);
  assert_int_equal(hd_modules_init(err, sizeof err), HD_ECONFIG);
  assert_string_equal(err, "module 'probe', init failed: level 10 makes init fail (test)");
  hd_modules_unload();
  assert_int_equal(probe_count("init"), 1);
  assert_int_equal(probe_count("fini"), 0);
}

static void t_load_twice(void **state) {
  (void)state;
  assert_int_equal(hd_module_load("probe", probe_path, NULL, err, sizeof err), 0);
  assert_int_equal(hd_module_load("probe", probe_path, NULL, err, sizeof err), HD_EABI);
  assert_contains(err, "module 'probe'");
  assert_contains(err, "already loaded");
  assert_contains(err, probe_path);
  assert_int_equal(hd_modules_count(), 1);
}

/* ---- broken modules ------------------------------------------------------------ */

/* Loading mod_dir/NAME.so must fail with HD_EABI, naming the module and
 * the file, and with each of the given phrases; nothing stays loaded. */
static void refused(const char *name, const char *const *phrases) {
  char path[2100];
  snprintf(path, sizeof path, "%s/%s.so", mod_dir, name);
  err[0] = '\0';
  int rc = hd_module_load(name, path, NULL, err, sizeof err);
  if (rc == 0) fail_msg("%s was loaded", path);
  assert_int_equal(rc, HD_EABI);
  char want[2200];
  snprintf(want, sizeof want, "module '%s' (%s): ", name, path);
  assert_starts(err, want);
  for (size_t i = 0; phrases[i]; i++) assert_contains(err, phrases[i]);
  assert_int_equal(hd_modules_count(), 0);
}

static void t_bad_abi(void **state) {
  (void)state;
  char mod[32], host[32];
  snprintf(mod, sizeof mod, "ABI %d", HD_MODULE_ABI_MAJOR + 1);
  snprintf(host, sizeof host, "ABI %d", HD_MODULE_ABI_MAJOR);
  refused("bad_abi", (const char *const[]){"built for module", mod, host, "rebuild", NULL});
  assert_contains(err, "ABI 2");
  assert_contains(err, "ABI 1");
}

static void t_no_symbol(void **state) {
  (void)state;
  refused("no_symbol", (const char *const[]){"no hd_module_descriptor symbol", NULL});
}

static void t_wrong_name(void **state) {
  (void)state;
  refused("wrong_name", (const char *const[]){"holds module 'someone_else'", "[module someone_else]", NULL});
}

static void t_bad_signature(void **state) {
  (void)state;
  refused("bad_signature",
          (const char *const[]){"build signature 'abi1/proton0.1/openssl0'", "'" HD_BUILD_SIGNATURE "'", NULL});
}

static void t_small_desc(void **state) {
  (void)state;
  char have[64], need[64];
  snprintf(have, sizeof have, "descriptor size %zu ", offsetof(hd_module_desc_t, check_config));
  snprintf(need, sizeof need, "(%zu)", offsetof(hd_module_desc_t, spare));
  refused("small_desc", (const char *const[]){have, need, NULL});
}

static void t_missing_file(void **state) {
  (void)state;
  refused("ghost", (const char *const[]){"no such file", NULL});
}

/* The same refusals reached through hd_modules_load and a config file. */
static void t_refused_from_config(void **state) {
  (void)state;
  hd_config_t *cfg = cfg_of("[module probe]\n[module bad_abi]\n", "t.conf");
  assert_int_equal(hd_modules_load(cfg, mod_dir, err, sizeof err), HD_EABI);
  assert_contains(err, "module 'bad_abi'");
  assert_contains(err, "bad_abi.so");
  /* Modules loaded before the refused one stay; unload takes them away. */
  assert_int_equal(hd_modules_count(), 1);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(t_lifecycle),      T(t_hook_verdicts),        T(t_hook_load_order), T(t_reload),
      T(t_unknown_key),    T(t_check_config_refusal), T(t_init_failure),    T(t_load_twice),
      T(t_bad_abi),        T(t_no_symbol),            T(t_wrong_name),      T(t_bad_signature),
      T(t_small_desc),     T(t_missing_file),         T(t_refused_from_config),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
