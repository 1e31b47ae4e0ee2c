/* Command line of hadron-bench. */
#ifndef HB_OPTS_H
#define HB_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bench_url.h"

typedef enum { HB_MODE_BOTH, HB_MODE_SEND, HB_MODE_RECEIVE } hb_mode_t;

typedef struct hb_opts {
  const char *url_text;
  hb_url_t url;
  const char *address;
  hb_mode_t mode;
  uint64_t count;    /* messages in all; 0: no limit (--duration alone) */
  double duration_s; /* 0: none */
  size_t body_size;
  unsigned connections; /* per side */
  unsigned links;       /* per connection */
  unsigned credit;
  bool presettled, durable;
  double rate; /* messages/s in all; 0: as fast as credit allows */
  unsigned threads;
  double timeout_s; /* 0: wait forever */
  const char *ca, *cert, *key;
  bool json;
} hb_opts_t;

/* Parses argv.  Returns 0 to run, HB_OPTS_DONE after --help or --version
 * (exit 0), or 2 after a usage error, already printed on stderr (exit 2). */
#define HB_OPTS_DONE (-1)
int hb_opts_parse(int argc, char **argv, hb_opts_t *o);

const char *hb_mode_name(hb_mode_t m);

#endif
