/* The module loader: dlopen NAME.so for every [module NAME] section, check
 * its descriptor, validate its section against its directive table, and run
 * its lifecycle.  Each refusal is one log line naming the module, the file
 * and what differed. */
#ifndef HD_MODLOAD_H
#define HD_MODLOAD_H

#include <stddef.h>

#include "cfg.h"
#include "hadron/module.h"

/* Load and check every module named in cfg (check_config included). */
int hd_modules_load(hd_config_t *cfg, const char *module_dir, char *err, size_t errlen);
/* Load one module from an explicit path (tests, and the loop above). */
int hd_module_load(const char *name, const char *path, hd_cfg_section_t *section, char *err,
                   size_t errlen);
int hd_modules_init(char *err, size_t errlen);
int hd_modules_start(char *err, size_t errlen);
/* SIGHUP: check every module's section in newcfg; only if all pass, swap. */
int hd_modules_reload(hd_config_t *newcfg, char *err, size_t errlen);
void hd_modules_stop(void);
void hd_modules_unload(void);
size_t hd_modules_count(void);

/* The host table handed to modules. */
extern const hd_host_t hd_host;

#endif
