#include "config.h"

#include "address.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "hooks.h"
#include "log.h"
#include "util.h"

typedef struct slot {
  char *key;
  size_t len;
  hd_node_t *node; /* one reference per slot */
  struct slot *next;
} slot_t;

static struct {
  pthread_rwlock_t lock;
  slot_t **buckets;
  size_t nbuckets, count;
  const hd_settings_t *st;
  uint64_t dyn_seed;
  _Atomic uint64_t dyn_count;
} T = {.lock = PTHREAD_RWLOCK_INITIALIZER};

static uint64_t hash(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ULL; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ULL;
  return h;
}

static slot_t **find_slot(const char *a, size_t n) {
  slot_t **p = &T.buckets[hash(a, n) & (T.nbuckets - 1)];
  for (; *p; p = &(*p)->next)
    if ((*p)->len == n && memcmp((*p)->key, a, n) == 0) return p;
  return p;
}

static void grow_locked(void) {
  size_t nb = T.nbuckets * 2;
  slot_t **b = hd_xcalloc(nb, sizeof *b);
  for (size_t i = 0; i < T.nbuckets; i++)
    for (slot_t *s = T.buckets[i], *n; s; s = n) {
      n = s->next;
      slot_t **head = &b[hash(s->key, s->len) & (nb - 1)];
      s->next = *head;
      *head = s;
    }
  free(T.buckets);
  T.buckets = b;
  T.nbuckets = nb;
}

/* Takes a new reference for the table. */
static void insert_locked(const char *a, size_t n, hd_node_t *node) {
  if (T.count + 1 > T.nbuckets) grow_locked();
  slot_t **p = find_slot(a, n);
  if (*p) return;
  slot_t *s = hd_xcalloc(1, sizeof *s);
  s->key = hd_xstrndup(a, n);
  s->len = n;
  s->node = hd_node_ref(node);
  *p = s;
  T.count++;
}

void hd_addr_set_settings(const hd_settings_t *st) { T.st = st; }

void hd_addr_init(const hd_settings_t *st) {
  T.st = st;
  T.nbuckets = 64;
  T.buckets = hd_xcalloc(T.nbuckets, sizeof *T.buckets);
  if (getrandom(&T.dyn_seed, sizeof T.dyn_seed, 0) != sizeof T.dyn_seed)
    T.dyn_seed = hd_now_wall_ms();
  for (const hd_node_conf_t *c = st->nodes; c; c = c->next) {
    hd_node_t *n = hd_node_new(c->type, c->address, HD_NODE_DECLARED, &c->opts, &st->defaults);
    pthread_rwlock_wrlock(&T.lock);
    insert_locked(c->address, strlen(c->address), n);
    pthread_rwlock_unlock(&T.lock);
    HD_LOG(HD_LOG_DEBUG, "core", "%s '%s', declared", c->type == HD_NODE_TOPIC ? "topic" : "queue",
           c->address);
    hd_node_unref(n);
  }
}

void hd_addr_fini(void) {
  pthread_rwlock_wrlock(&T.lock);
  for (size_t i = 0; i < T.nbuckets; i++)
    for (slot_t *s = T.buckets[i], *n; s; s = n) {
      n = s->next;
      hd_node_unref(s->node);
      free(s->key);
      free(s);
    }
  free(T.buckets);
  T.buckets = NULL;
  T.nbuckets = T.count = 0;
  pthread_rwlock_unlock(&T.lock);
}

hd_node_t *hd_addr_find(const char *a, size_t n) {
  pthread_rwlock_rdlock(&T.lock);
  slot_t *s = T.buckets ? *find_slot(a, n) : NULL;
  hd_node_t *node = s ? hd_node_ref(s->node) : NULL;
  pthread_rwlock_unlock(&T.lock);
  return node;
}

static const char *type_name(hd_node_type_t t) { return t == HD_NODE_TOPIC ? "topic" : "queue"; }

static int refuse(hd_refusal_t *ref, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int refuse(hd_refusal_t *ref, const char *cond, const char *fmt, ...) {
  ref->condition = cond;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ref->description, sizeof ref->description, fmt, ap);
  va_end(ap);
  return HD_ENOTFOUND;
}

static int check_type(hd_node_t *n, hd_node_type_t requested, hd_refusal_t *ref) {
  if (requested == HD_NODE_UNSPEC || requested == n->type) return 0;
  refuse(ref, "amqp:precondition-failed",
         "address '%s' is a %s, but the link asked for a %s; use another address or drop the "
         "capability",
         n->address, type_name(n->type), type_name(requested));
  return HD_EDENIED;
}

int hd_addr_resolve(const char *a, size_t len, hd_purpose_t purpose, hd_node_type_t requested,
                    bool must_create, hd_node_t **out, hd_refusal_t *ref) {
  *out = NULL;
  hd_node_t *n = hd_addr_find(a, len);
  if (n) {
    int rc = check_type(n, requested, ref);
    if (rc) hd_node_unref(n); else *out = n;
    return rc;
  }
  char *addr = hd_xstrndup(a, len);
  hd_node_spec_t spec = {.size = sizeof spec, .address = addr, .purpose = purpose,
                         .requested = requested, .type = HD_NODE_UNSPEC, .auto_create = -1,
                         .max_deliveries = -1, .max_depth = -1, .durable = -1};
  hd_verdict_t v = hd_hooks_run(HD_PHASE_NODE_RESOLVE, &spec);
  int rc = 0;
  if (v == HD_VERDICT_DENY) {
    *ref = spec.refusal;
    if (!ref->condition) ref->condition = "amqp:not-found";
    if (!ref->description[0]) snprintf(ref->description, sizeof ref->description, "address '%s' is not allowed", addr);
    free(addr);
    return HD_EDENIED;
  }
  const char *name = addr;
  if (v == HD_VERDICT_OK && spec.canonical && strcmp(spec.canonical, addr) != 0) {
    name = spec.canonical;
    n = hd_addr_find(name, strlen(name));
    if (n) {
      if ((rc = check_type(n, requested, ref)) == 0) {
        pthread_rwlock_wrlock(&T.lock);
        insert_locked(addr, len, n); /* remember the alias */
        pthread_rwlock_unlock(&T.lock);
        *out = n;
      } else {
        hd_node_unref(n);
      }
      free(addr);
      return rc;
    }
  }
  const hd_settings_t *st = T.st;
  hd_node_type_t type = spec.type != HD_NODE_UNSPEC ? spec.type : requested;
  if (type == HD_NODE_UNSPEC) {
    size_t pl = strlen(st->topic_prefix);
    type = pl && strncmp(name, st->topic_prefix, pl) == 0 ? HD_NODE_TOPIC : HD_NODE_QUEUE;
  }
  if (requested != HD_NODE_UNSPEC && type != requested) {
    rc = refuse(ref, "amqp:precondition-failed",
                "address '%s' is configured as a %s, but the link asked for a %s", name,
                type_name(type), type_name(requested));
    free(addr);
    return HD_EDENIED;
  }
  bool create = spec.auto_create >= 0 ? spec.auto_create != 0 : st->auto_create;
  /* A temporary node that has gone must not come back as a durable one. */
  if (strncmp(name, HD_DYNAMIC_PREFIX, strlen(HD_DYNAMIC_PREFIX)) == 0) create = false;
  if (!create && !must_create) {
    refuse(ref, "amqp:not-found",
           "address '%s' does not exist and is not created on demand; declare it ([queue %s] or "
           "[topic %s]) or add a rule that creates it",
           name, name, name);
    free(addr);
    return HD_ENOTFOUND;
  }
  hd_node_opts_t opts = {spec.dead_letter_address, spec.expiry_address, spec.max_deliveries,
                         spec.max_depth, HD_HAS_FIELD(&spec, hd_node_spec_t, durable) ? spec.durable : -1};
  hd_node_t *fresh = hd_node_new(type, name, HD_NODE_AUTO, &opts, &st->defaults);
  pthread_rwlock_wrlock(&T.lock);
  slot_t *s = *find_slot(name, strlen(name));
  if (s) { /* another thread won the race; use its node */
    n = hd_node_ref(s->node);
  } else {
    /* Durable before anyone can reach it, so no message misses the store. */
    if (fresh->type == HD_NODE_QUEUE && fresh->durable) hd_queue_make_durable((hd_queue_t *)fresh);
    insert_locked(name, strlen(name), fresh);
    n = hd_node_ref(fresh);
  }
  if (name != addr) insert_locked(addr, len, n);
  pthread_rwlock_unlock(&T.lock);
  if (n == fresh)
    HD_LOG(HD_LOG_INFO, "core", "%s '%s', created on demand", type_name(type), name);
  hd_node_unref(fresh);
  rc = check_type(n, requested, ref);
  if (rc) {
    hd_node_unref(n);
    n = NULL;
  }
  *out = n;
  free(addr);
  return rc;
}

hd_node_t *hd_addr_adopt(const char *address, const hd_node_opts_t *opts) {
  hd_node_t *n = hd_node_new(HD_NODE_QUEUE, address, HD_NODE_AUTO, opts, &T.st->defaults);
  pthread_rwlock_wrlock(&T.lock);
  insert_locked(address, strlen(address), n);
  pthread_rwlock_unlock(&T.lock);
  return n;
}

void hd_addr_durable_declared(void) {
  pthread_rwlock_wrlock(&T.lock);
  for (size_t i = 0; i < T.nbuckets; i++)
    for (slot_t *s = T.buckets[i]; s; s = s->next)
      if (s->node->type == HD_NODE_QUEUE && s->node->durable)
        hd_queue_make_durable((hd_queue_t *)s->node); /* no-op for recovered ones */
  pthread_rwlock_unlock(&T.lock);
}

hd_node_t *hd_addr_dynamic(hd_node_type_t type) {
  char name[64];
  uint64_t k = atomic_fetch_add(&T.dyn_count, 1);
  snprintf(name, sizeof name, HD_DYNAMIC_PREFIX "%016" PRIx64 ".%" PRIu64, T.dyn_seed, k);
  hd_node_opts_t none = {"", "", -1, -1, 0};
  hd_node_t *n = hd_node_new(type, name, HD_NODE_DYNAMIC, &none, &T.st->defaults);
  pthread_rwlock_wrlock(&T.lock);
  insert_locked(name, strlen(name), n);
  pthread_rwlock_unlock(&T.lock);
  return n;
}

void hd_addr_remove(hd_node_t *n) {
  atomic_store(&n->deleted, true);
  slot_t *gone = NULL;
  pthread_rwlock_wrlock(&T.lock);
  for (size_t i = 0; i < T.nbuckets; i++)
    for (slot_t **p = &T.buckets[i]; *p;) {
      if ((*p)->node == n) {
        slot_t *s = *p;
        *p = s->next;
        s->next = gone;
        gone = s;
        T.count--;
      } else {
        p = &(*p)->next;
      }
    }
  pthread_rwlock_unlock(&T.lock);
  while (gone) {
    slot_t *next = gone->next;
    hd_node_unref(gone->node);
    free(gone->key);
    free(gone);
    gone = next;
  }
}

static int cmp_ptr(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
  return x < y ? -1 : x > y;
}

void hd_addr_each_queue(void (*fn)(hd_queue_t *q, void *arg), void *arg) {
  /* Snapshot references under the lock, then call without it. */
  size_t n = 0, cap = 64;
  hd_node_t **all = hd_xmalloc(cap * sizeof *all);
  pthread_rwlock_rdlock(&T.lock);
  for (size_t i = 0; i < T.nbuckets; i++)
    for (slot_t *s = T.buckets[i]; s; s = s->next) {
      if (n == cap) all = hd_xrealloc(all, (cap *= 2) * sizeof *all);
      all[n++] = hd_node_ref(s->node);
    }
  pthread_rwlock_unlock(&T.lock);
  /* Aliases list a node more than once: sort so that repeats sit together. */
  qsort(all, n, sizeof *all, cmp_ptr);
  for (size_t i = 0; i < n; i++) {
    hd_node_t *node = all[i];
    if (i > 0 && all[i - 1] == node) continue;
    if (node->type == HD_NODE_QUEUE) {
      fn((hd_queue_t *)node, arg);
      continue;
    }
    hd_topic_t *t = (hd_topic_t *)node;
    pthread_rwlock_rdlock(&t->lock);
    size_t k = t->n_subs;
    hd_queue_t **subs = hd_xmalloc((k ? k : 1) * sizeof *subs);
    for (size_t j = 0; j < k; j++) subs[j] = (hd_queue_t *)hd_node_ref(&t->subs[j]->node);
    pthread_rwlock_unlock(&t->lock);
    for (size_t j = 0; j < k; j++) {
      fn(subs[j], arg);
      hd_node_unref(&subs[j]->node);
    }
    free(subs);
  }
  for (size_t i = 0; i < n; i++) hd_node_unref(all[i]);
  free(all);
}
