/* On-disk formats of the store (store.h describes the databases).  Shared by
 * the broker's store and the offline hadron-store tool; change
 * HD_STORE_FORMAT when any of this changes. */
#ifndef HD_STORE_FORMAT_H
#define HD_STORE_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Message record: version(1) flags(1) reserved(2) delivery-count(4)
 * expiry-ms(8), then the message bytes as the producer sent them. */
#define HD_REC_HDR 16
#define HD_REC_VERSION 1
/* Node record: version(1) type(1) reserved(2) max-deliveries(4)
 * max-depth(8), then address, dead-letter address, expiry address, each a
 * 2-byte length and bytes. */
#define HD_NODE_REC_VERSION 1

static inline void hd_put64(uint8_t *p, uint64_t v) {
  for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}
static inline uint64_t hd_get64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = v << 8 | p[i];
  return v;
}
static inline void hd_put32(uint8_t *p, uint32_t v) {
  for (int i = 3; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}
static inline uint32_t hd_get32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
/* msgs key: node id then seq, big-endian, so one node's messages are
 * contiguous and in seq order. */
static inline void hd_msg_key(uint8_t k[16], uint64_t node, uint64_t seq) {
  hd_put64(k, node);
  hd_put64(k + 8, seq);
}

#endif
