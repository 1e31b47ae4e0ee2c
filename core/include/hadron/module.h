/*
 * hadron/module.h - the one header a Hadron module includes.
 *
 * A module is a shared object (libtool -module -avoid-version) that exports
 * one function, hd_module_descriptor(), returning a const descriptor.  The
 * broker loads it with dlopen(RTLD_NOW | RTLD_LOCAL), checks the descriptor
 * and hands the module a const table of host services.  Modules never see
 * core structures: everything they touch is an opaque handle or a payload
 * struct defined here.
 *
 * Compatibility rules:
 *   - HD_MODULE_ABI_MAJOR changes when anything here changes incompatibly;
 *     the loader refuses a module built for another major.
 *   - Minor versions only append: new host functions go at the end of
 *     hd_host_t, new fields at the end of payload structs, new phases get
 *     new numbers.  Every such struct starts with its size, so a module can
 *     test whether a field exists with HD_HAS_FIELD().
 *
 * Threads: hooks run on the broker's worker threads, several at once for
 * different connections.  A module's hook must be thread-safe.  The host
 * never runs a module's reload() while one of its hooks runs, so data that
 * reload() replaces may be read by hooks without further locking, and strings
 * a hook stores in a payload stay valid until the next reload().
 *
 * Copyright the Hadron authors.  Licensed under the Apache License 2.0.
 */
#ifndef HADRON_MODULE_H
#define HADRON_MODULE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/opensslv.h>
#include <proton/version.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HD_MODULE_ABI_MAJOR 1
#define HD_MODULE_ABI_MINOR 0

/* The name of the one symbol a module exports. */
#define HD_MODULE_SYMBOL "hd_module_descriptor"

/*
 * Build signature: the things that must match between the broker and a
 * module for their structs and allocators to agree.  Computed from the
 * headers and flags the module itself is compiled with.
 */
#if defined(__SANITIZE_ADDRESS__)
#define HD_SIG_ASAN "+asan"
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HD_SIG_ASAN "+asan"
#endif
#endif
#ifndef HD_SIG_ASAN
#define HD_SIG_ASAN ""
#endif
#define HD_STR2(x) #x
#define HD_STR(x) HD_STR2(x)
#define HD_BUILD_SIGNATURE                                                    \
  "abi" HD_STR(HD_MODULE_ABI_MAJOR) "/proton" HD_STR(PN_VERSION_MAJOR) "." HD_STR( \
      PN_VERSION_MINOR) "/openssl" HD_STR(OPENSSL_VERSION_MAJOR) HD_SIG_ASAN

/* True when struct *p (which starts with a size_t size) has field f. */
#define HD_HAS_FIELD(p, type, f) ((p)->size >= offsetof(type, f) + sizeof((p)->f))

/* ---- result codes ----------------------------------------------------- */

/*
 * Functions return 0 on success, a negative errno for system failures, or
 * one of these (all below HD_ERR_FLOOR).  host->strerror() names any of them.
 */
#define HD_ERR_FLOOR (-10000)
enum {
  HD_ECONFIG = HD_ERR_FLOOR - 1,   /* bad configuration value */
  HD_EABI = HD_ERR_FLOOR - 2,      /* module/broker ABI mismatch */
  HD_ENOTFOUND = HD_ERR_FLOOR - 3, /* no such node, user, file */
  HD_EDENIED = HD_ERR_FLOOR - 4,   /* refused by policy */
  HD_EFULL = HD_ERR_FLOOR - 5,     /* a limit was reached */
  HD_EPROTO = HD_ERR_FLOOR - 6,    /* malformed AMQP data */
  HD_EEXIST = HD_ERR_FLOOR - 7,    /* already exists */
  HD_ESTATE = HD_ERR_FLOOR - 8,    /* wrong state for this call */
};

/* ---- logging ---------------------------------------------------------- */

/* syslog(3) levels. */
typedef enum {
  HD_LOG_ERR = 3,
  HD_LOG_WARNING = 4,
  HD_LOG_NOTICE = 5,
  HD_LOG_INFO = 6,
  HD_LOG_DEBUG = 7,
} hd_log_level_t;

/* ---- configuration ---------------------------------------------------- */

typedef enum {
  HD_CFG_STRING = 1,
  HD_CFG_INT,      /* decimal integer within [min, max] */
  HD_CFG_BOOL,     /* yes/no, true/false, on/off, 1/0 */
  HD_CFG_SIZE,     /* bytes, with optional K, M, G (powers of 1024) */
  HD_CFG_DURATION, /* milliseconds, with optional ms, s, m, h */
  HD_CFG_ENUM,     /* one word of `choices` */
} hd_cfg_type_t;

/* Directive flags. */
#define HD_CFG_REQUIRED 0x1u /* must be present */
#define HD_CFG_MULTI 0x2u    /* may be repeated; read with cfg_count/cfg_item */

/*
 * One key a section accepts.  A section's table ends with an entry whose name
 * is NULL.  The host checks type, range and choices before any module code
 * sees a value, and names the file and line of every error.
 */
typedef struct hd_directive {
  const char *name;
  hd_cfg_type_t type;
  unsigned flags;
  int64_t min, max;           /* INT, SIZE, DURATION; min == max == 0: no range */
  const char *def;            /* default as text, or NULL for none */
  const char *const *choices; /* ENUM: NULL-terminated list */
  const char *help;           /* one line, for --help-config and errors */
} hd_directive_t;

#define HD_DIRECTIVE_END {NULL, 0, 0, 0, 0, NULL, NULL, NULL}

/* A parsed, validated section.  Borrowed: valid until the call it was
 * passed to returns (check_config) or until the next reload()/stop(). */
typedef struct hd_cfg_section hd_cfg_section_t;

/* ---- hooks ------------------------------------------------------------ */

typedef enum {
  HD_VERDICT_OK = 0,    /* decided yes (or handled): stop asking others */
  HD_VERDICT_DENY = 1,  /* decided no: refuse with the payload's refusal */
  HD_VERDICT_DEFER = 2, /* no opinion: ask the next module, then the core */
} hd_verdict_t;

/*
 * A refusal: the AMQP error condition a peer receives.  `condition` must be
 * a static string such as "amqp:unauthorized-access"; the description is
 * copied into the buffer and should tell the user what to do.
 */
typedef struct hd_refusal {
  const char *condition;
  char description[256];
} hd_refusal_t;

typedef enum {
  HD_PHASE_CONN_OPEN = 1,    /* payload hd_conn_info_t: a peer sent open */
  HD_PHASE_CONN_AUTH = 2,    /* payload hd_conn_info_t: SASL done, user known */
  HD_PHASE_LINK_ATTACH = 3,  /* payload hd_link_info_t: authorize a link */
  HD_PHASE_NODE_RESOLVE = 4, /* payload hd_node_spec_t: address -> node */
  HD_PHASE_TICK = 5,         /* payload hd_tick_t: about once a second */
  HD_PHASE_SHUTDOWN = 6,     /* payload NULL: broker is draining */
  HD_PHASE_MAX_ = 7
} hd_phase_t;

/* A hook.  `payload` is the phase's struct, borrowed for the call. */
typedef hd_verdict_t (*hd_hook_fn)(void *state, hd_phase_t phase, void *payload);

typedef struct hd_conn_info {
  size_t size;
  uint64_t id;             /* unique in this broker process */
  const char *listener;    /* listener name from the config */
  const char *remote;      /* peer address "host:port" */
  const char *container;   /* peer's container-id (NULL before open) */
  const char *user;        /* authenticated identity (NULL before auth) */
  const char *mechanism;   /* SASL mechanism used, or NULL */
  bool tls;                /* the connection is encrypted */
  const char *tls_subject; /* verified client certificate subject, or NULL */
  hd_refusal_t refusal;    /* filled by a hook that answers DENY */
} hd_conn_info_t;

typedef enum {
  HD_NODE_UNSPEC = 0,
  HD_NODE_QUEUE = 1, /* anycast: each message to one consumer */
  HD_NODE_TOPIC = 2, /* multicast: each message to every subscriber */
} hd_node_type_t;

typedef enum {
  HD_ROLE_PRODUCER = 1, /* the peer sends to the broker */
  HD_ROLE_CONSUMER = 2, /* the peer receives from the broker */
} hd_role_t;

typedef struct hd_link_info {
  size_t size;
  const hd_conn_info_t *conn;
  const char *name;    /* link name */
  hd_role_t role;
  const char *address; /* NULL for an anonymous-relay producer */
  bool dynamic;        /* a temporary node the broker names */
  bool browse;         /* consumer with distribution-mode copy */
  hd_refusal_t refusal;
} hd_link_info_t;

/*
 * Node resolution: the core asks when an address has no node yet (at attach,
 * or for an anonymous-relay message).  A module that owns the address fills
 * the outputs and answers OK; DEFER lets the next module or the core's
 * default rules decide; DENY refuses (condition amqp:not-found unless set).
 * Output strings are borrowed until the module's next reload(); the core
 * copies what it keeps.  Integer outputs left at -1 keep the broker default.
 */
typedef enum {
  HD_PURPOSE_PRODUCER = 1, /* a sender link attaches */
  HD_PURPOSE_CONSUMER = 2, /* a receiver link attaches */
  HD_PURPOSE_RELAY = 3,    /* an anonymous-relay message names it */
} hd_purpose_t;

typedef struct hd_node_spec {
  size_t size;
  /* inputs */
  const char *address;
  hd_purpose_t purpose;
  hd_node_type_t requested; /* from terminus capabilities, or UNSPEC */
  /* outputs */
  hd_node_type_t type;
  const char *canonical;           /* alias target, or NULL */
  int auto_create;                 /* 0, 1, or -1 */
  const char *dead_letter_address; /* NULL: broker default; "" none */
  const char *expiry_address;      /* NULL: broker default; "" none */
  int max_deliveries;              /* -1: default; 0: unlimited */
  int64_t max_depth;               /* -1: default; 0: unlimited */
  hd_refusal_t refusal;
  int durable;                     /* queues: 1, 0, or -1 for the default */
} hd_node_spec_t;

typedef struct hd_tick {
  size_t size;
  uint64_t now_ms; /* CLOCK_MONOTONIC in milliseconds */
} hd_tick_t;

/* ---- the host service table ------------------------------------------- */

/* Opaque handle the host gives each loaded module. */
typedef struct hd_module hd_module_t;

typedef struct hd_host {
  size_t size; /* sizeof(hd_host_t) of the broker; check before new fields */
  uint32_t abi_major, abi_minor;
  const char *broker_version;

  /* Logging: the host adds time, level and the module's name. */
  bool (*log_enabled)(hd_log_level_t level);
  void (*log)(const hd_module_t *m, hd_log_level_t level, const char *fmt, ...)
      __attribute__((format(printf, 3, 4)));
  const char *(*strerror)(int err);

  /* Hooks: registered from init(), owned by the host, called in load order.
   * Returns 0 or HD_ESTATE when called after start. */
  int (*hook_add)(hd_module_t *m, hd_phase_t phase, hd_hook_fn fn);

  /* Configuration access on a validated section.  Missing keys answer the
   * directive's default.  cfg_str's result is borrowed like the section. */
  const char *(*cfg_str)(const hd_cfg_section_t *s, const char *key);
  int64_t (*cfg_int)(const hd_cfg_section_t *s, const char *key);
  bool (*cfg_bool)(const hd_cfg_section_t *s, const char *key);
  size_t (*cfg_count)(const hd_cfg_section_t *s, const char *key);
  const char *(*cfg_item)(const hd_cfg_section_t *s, const char *key, size_t i);
  /* "file:line" of a value, for error messages; borrowed like the section. */
  const char *(*cfg_where)(const hd_cfg_section_t *s, const char *key, size_t i);

  /* Memory that the host accounts for; returns NULL on failure. */
  void *(*alloc)(size_t n);
  void (*free)(void *p);
} hd_host_t;

/* ---- the descriptor --------------------------------------------------- */

typedef struct hd_module_desc {
  uint32_t abi_major; /* HD_MODULE_ABI_MAJOR */
  uint32_t abi_minor; /* HD_MODULE_ABI_MINOR */
  size_t size;        /* sizeof(hd_module_desc_t) */
  const char *build_signature; /* HD_BUILD_SIGNATURE */
  const char *name;            /* must equal the name in `module NAME` */
  const char *version;
  const char *description;
  const hd_directive_t *directives; /* keys of the [module NAME] section */

  /* Lifecycle, each optional.  Return 0 or an error code; on error, write a
   * one-line reason into err (errlen bytes).  Order at start-up:
   * check_config, init, start; at SIGHUP: check_config on the new section,
   * then reload if every module passed; at shutdown: stop, fini.
   * init's *state is passed to every later callback and hook. */
  int (*check_config)(const hd_host_t *host, const hd_cfg_section_t *cfg, char *err,
                      size_t errlen);
  int (*init)(const hd_host_t *host, hd_module_t *self, const hd_cfg_section_t *cfg,
              void **state, char *err, size_t errlen);
  int (*start)(void *state, char *err, size_t errlen);
  int (*reload)(void *state, const hd_cfg_section_t *cfg, char *err, size_t errlen);
  void (*stop)(void *state);
  void (*fini)(void *state);

  void *spare[8]; /* reserved; must be NULL */
} hd_module_desc_t;

/* Put this once in a module, after its descriptor. */
#define HD_MODULE_EXPORT(desc)                                                 \
  const hd_module_desc_t *hd_module_descriptor(void);                           \
  __attribute__((visibility("default"))) const hd_module_desc_t *hd_module_descriptor(void) { \
    return &(desc);                                                             \
  }

#ifdef __cplusplus
}
#endif
#endif /* HADRON_MODULE_H */
