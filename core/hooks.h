/* Module hooks as the core calls them (registry lives in modload.c). */
#ifndef HD_HOOKS_H
#define HD_HOOKS_H

#include <stdbool.h>

#include "hadron/module.h"

/* Run the hooks of a phase in load order until one answers OK or DENY.
 * Returns DEFER when none decided (or none are registered). */
hd_verdict_t hd_hooks_run(hd_phase_t phase, void *payload);
/* True if any module registered for the phase (cheap; lets the core skip
 * building a payload). */
bool hd_hooks_any(hd_phase_t phase);
/* Call every hook of a phase (tick, shutdown), whatever they answer. */
void hd_hooks_notify(hd_phase_t phase, void *payload);

#endif
