/* The broker's own configuration, read from [broker], [listener NAME],
 * [queue NAME] and [topic NAME] sections.  [module NAME] sections are left
 * to the module loader. */
#ifndef HD_SETTINGS_H
#define HD_SETTINGS_H

#include <stdbool.h>
#include <stdint.h>

#include "cfg.h"
#include "hadron/module.h"

/* SASL mechanisms a listener offers. */
#define HD_MECH_ANONYMOUS 0x1u
#define HD_MECH_PLAIN 0x2u
#define HD_MECH_EXTERNAL 0x4u

typedef struct hd_listener_conf {
  const char *name, *where;
  const char *host;
  int port;
  unsigned mechs;
  bool plain_over_cleartext;
  const char *tls_cert, *tls_key, *tls_ca;
  bool tls_client_auth;
  uint32_t max_frame_size;
  uint16_t channel_max;
  uint32_t max_sessions, max_links;
  uint32_t idle_timeout_ms;
  uint32_t handshake_timeout_ms;
  uint32_t max_connections; /* 0: only the broker-wide limit */
  struct hd_listener_conf *next;
} hd_listener_conf_t;

/* Per-node settings; -1 / NULL mean "inherit the broker default". */
typedef struct hd_node_opts {
  const char *dead_letter_address; /* "" means none */
  const char *expiry_address;      /* "" means none: expired messages are dropped */
  int max_deliveries;              /* 0: unlimited */
  int64_t max_depth;               /* 0: unlimited */
  int durable;                     /* queues: 1 durable, 0 memory only, -1 default */
} hd_node_opts_t;

typedef struct hd_node_conf {
  const char *address, *where;
  hd_node_type_t type;
  hd_node_opts_t opts;
  struct hd_node_conf *next;
} hd_node_conf_t;

typedef struct hd_settings {
  hd_config_t *cfg; /* owns every string below */
  hd_cfg_section_t *broker;
  int workers;
  const char *data_dir, *module_dir, *users_file;
  int log_level;
  bool log_syslog;
  uint32_t max_connections;
  int64_t memory_limit, max_message_size;
  uint32_t credit_window;
  int64_t drain_timeout_ms;
  bool auto_create;
  const char *topic_prefix;
  hd_node_opts_t defaults; /* every field set */
  bool store_flush_interval;
  uint32_t store_flush_interval_ms;
  int64_t store_map_size, store_reserve, store_log_size, queue_memory;
  hd_listener_conf_t *listeners;
  hd_node_conf_t *nodes;
} hd_settings_t;

/* Build settings from a parsed file; ownership of cfg passes to the result
 * (or is freed on failure). */
int hd_settings_build(hd_config_t *cfg, hd_settings_t **out, char *err, size_t errlen);
void hd_settings_free(hd_settings_t *s);

/* The configuration hadrond runs when started without -c. */
extern const char hd_default_config[];

/* Directive tables, for documentation output (--help-config). */
extern const hd_directive_t hd_broker_directives[];
extern const hd_directive_t hd_listener_directives[];
extern const hd_directive_t hd_node_directives[];

#endif
