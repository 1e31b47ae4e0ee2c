/* Shared by the unit tests that need messages (include after cmocka.h). */
#ifndef HD_UNIT_MSG_H
#define HD_UNIT_MSG_H

#include <stdio.h>
#include <string.h>

#include "codec.h"
#include "message.h"

/* A minimal valid message: one amqp-value string section "m<i>". */
static inline hd_msg_t *unit_msg(int i) {
  char text[16];
  int n = snprintf(text, sizeof text, "m%d", i);
  hd_msg_t *m = hd_msg_alloc(5 + (size_t)n);
  assert_non_null(m);
  uint8_t head[5] = {HD_AMQP_DESCRIBED, HD_AMQP_SMALLULONG, HD_SEC_VALUE, HD_AMQP_STR8, (uint8_t)n};
  memcpy(m->buf, head, 5);
  memcpy(m->buf + 5, text, (size_t)n);
  const char *why = NULL;
  assert_int_equal(hd_msg_parse(m, 0, &why), 0);
  return m;
}

#endif
