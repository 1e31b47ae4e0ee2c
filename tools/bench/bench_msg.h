/* The benchmark message.  A sender encodes it once with proton and then
 * only patches the 8-byte send stamp in place; a receiver finds the stamp
 * by walking the encoded sections, so a broker that rewrites the header or
 * adds annotations does not confuse it.
 *
 * Layout: [header durable=true when asked] application-properties
 * {"hb-ts": long (wall-clock ns when the message was due), "hb-run": long
 * (random per process, to tell this run's messages from leftovers)}
 * and one data section of exactly the requested body size. */
#ifndef HB_MSG_H
#define HB_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct hb_msg {
  uint8_t *bytes; /* owned; freed by hb_msg_free */
  size_t size;
  size_t stamp_at; /* offset of the 8 stamp bytes */
} hb_msg_t;

/* Returns 0, or -1 when proton could not encode the message. */
int hb_msg_build(hb_msg_t *m, size_t body_size, bool durable, uint64_t run_id);
void hb_msg_free(hb_msg_t *m);

static inline void hb_msg_stamp(hb_msg_t *m, uint64_t stamp_ns) {
  uint8_t *p = m->bytes + m->stamp_at;
  for (int i = 7; i >= 0; i--, stamp_ns >>= 8)
    p[i] = (uint8_t)stamp_ns;
}

/* Looks for the stamp and run id in an encoded message.  Returns true when
 * "hb-ts" was found (then *run is the "hb-run" value, or 0 if absent). */
bool hb_msg_scan(const uint8_t *p, size_t n, uint64_t *stamp_ns, uint64_t *run);

#endif
