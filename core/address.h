/* The address table: address -> node, with aliases, and the rules that
 * create nodes on demand.  Resolution asks modules first (phase
 * HD_PHASE_NODE_RESOLVE), then applies the core defaults:
 *   type: terminus capability, else `topic-prefix` -> topic, else queue;
 *   creation: [broker] auto-create. */
#ifndef HD_ADDRESS_H
#define HD_ADDRESS_H

#include <stddef.h>

#include "hadron/module.h"
#include "node.h"
#include "settings.h"

/* Creates the declared nodes.  Settings are borrowed until hd_addr_fini
 * (or the next hd_addr_set_settings). */
void hd_addr_init(const hd_settings_t *st);
void hd_addr_set_settings(const hd_settings_t *st);
void hd_addr_fini(void);

/* A new reference to the node at `address`, or NULL. */
hd_node_t *hd_addr_find(const char *address, size_t len);

/* Find or create the node for `address`.  On refusal returns HD_ENOTFOUND
 * or HD_EDENIED with the AMQP condition in *ref.  `must_create` ignores
 * auto-create = no (dead-letter and expiry addresses named in the config). */
int hd_addr_resolve(const char *address, size_t len, hd_purpose_t purpose,
                    hd_node_type_t requested, bool must_create, hd_node_t **out,
                    hd_refusal_t *ref);

/* Names of temporary nodes start with this; such names are never created
 * on demand. */
#define HD_DYNAMIC_PREFIX "$tmp."

/* A new temporary queue with a broker-chosen name; one reference. */
hd_node_t *hd_addr_dynamic(hd_node_type_t type);

/* Start-up: the queue at `address` as the store recorded it (created if the
 * config did not declare it).  One reference. */
hd_node_t *hd_addr_adopt(const char *address, const hd_node_opts_t *opts);
/* Start-up, after recovery: durable declared queues the store did not know
 * yet get their store record. */
void hd_addr_durable_declared(void);

/* Take the node (and its aliases) out of the table and mark it deleted. */
void hd_addr_remove(hd_node_t *n);

/* Call fn on every queue, including topic subscriptions, without holding
 * any table or topic lock during the call. */
void hd_addr_each_queue(void (*fn)(hd_queue_t *q, void *arg), void *arg);

#endif
