/* Options: every one is documented in usage() and in hadron-bench(1); a
 * bad value names the option and exits 2. */
#include "config.h"

#include "bench_opts.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROG          "hadron-bench"
#define DEFAULT_URL   "amqp://127.0.0.1:5672"
#define DEFAULT_COUNT 100000

static void usage(FILE *f) {
  fprintf(f,
          "Usage: " PROG " [OPTION]... [URL]\n"
          "Load generator for AMQP 1.0 brokers: sends and/or receives messages, checks that\n"
          "every message arrived, and reports throughput and end-to-end latency.\n"
          "\n"
          "  URL                    amqp[s]://[USER[:PASSWORD]@]HOST[:PORT]\n"
          "                         (default " DEFAULT_URL "); a user selects SASL PLAIN\n"
          "  -a, --address ADDR     node to send to and receive from (default hadron-bench;\n"
          "                         RabbitMQ 3: /queue/NAME)\n"
          "  -m, --mode MODE        both (default), send or receive\n"
          "  -n, --count N          messages in all, over every sender (default %d unless\n"
          "                         --duration); in receive mode, messages to receive\n"
          "  -d, --duration SECS    send for SECS seconds (decimals allowed) instead of a\n"
          "                         count; with --rate, send RATE*SECS messages\n"
          "  -s, --body-size BYTES  size of each message body, a data section (default 1024)\n"
          "  -c, --connections N    connections per side (default 1)\n"
          "  -l, --links N          links per connection (default 1)\n"
          "      --credit N         credit window of each receiving link (default 1000)\n"
          "      --presettled       at-most-once: send presettled, and ask the broker to\n"
          "                         deliver presettled (default: unsettled, then accepted)\n"
          "      --durable          durable messages (header.durable) and durable termini\n"
          "                         (durability configuration), as RabbitMQ's durable\n"
          "                         queues require\n"
          "      --tx-size N        messages per transaction; only 0 (no transactions)\n"
          "                         is supported yet\n"
          "  -r, --rate N           target messages/s in all, spread evenly over the\n"
          "                         senders; latency counts from each message's intended\n"
          "                         send time, so a stalled broker cannot hide its queue\n"
          "                         (default: as fast as the broker gives credit)\n"
          "  -t, --threads N        proactor worker threads (default 2)\n"
          "      --timeout SECS     fail when nothing is sent, settled or received for\n"
          "                         SECS seconds (default 10; 0: wait forever)\n"
          "      --ca FILE          trust the CA certificates in FILE (amqps; default:\n"
          "                         the system's CAs); the host name is verified\n"
          "      --cert FILE        client certificate (PEM) for TLS, e.g. for SASL EXTERNAL\n"
          "      --key FILE         private key (PEM) of --cert\n"
          "      --json             print the result as one JSON object\n"
          "  -h, --help             show this help and exit\n"
          "  -V, --version          show the version and exit\n"
          "\n"
          "While it runs and stderr is a terminal, a progress line is updated each second.\n"
          "Exit status: 0 when every message sent was accepted and (mode both) received;\n"
          "1 when messages were lost, rejected or released, or a connection or link\n"
          "failed; 2 for a usage error.\n",
          DEFAULT_COUNT);
}

static int bad(const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, PROG ": ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\nTry '" PROG " --help' for the list of options.\n");
  return 2;
}

static int parse_uint(const char *opt, const char *s, uint64_t lo, uint64_t hi, uint64_t *out) {
  char *end;
  errno = 0;
  if (*s == '-' || *s == '+' || *s == ' ') return bad("%s: '%s' is not a whole number", opt, s);
  unsigned long long v = strtoull(s, &end, 10);
  if (end == s || *end) return bad("%s: '%s' is not a whole number", opt, s);
  if (errno == ERANGE || v < lo || v > hi)
    return bad("%s: %s is out of range (%llu to %llu)", opt, s, (unsigned long long)lo,
               (unsigned long long)hi);
  *out = v;
  return 0;
}

static int parse_secs(const char *opt, const char *s, bool zero_ok, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end || errno == ERANGE || !isfinite(v))
    return bad("%s: '%s' is not a number of seconds", opt, s);
  if (v < 0 || (!zero_ok && v == 0) || v > 30 * 86400.0)
    return bad("%s: %s is out of range (%s to 2592000 seconds)", opt, s,
               zero_ok ? "0" : "more than 0");
  *out = v;
  return 0;
}

const char *hb_mode_name(hb_mode_t m) {
  return m == HB_MODE_SEND ? "send" : m == HB_MODE_RECEIVE ? "receive" : "both";
}

enum {
  OPT_CREDIT = 256,
  OPT_PRESETTLED,
  OPT_DURABLE,
  OPT_TX,
  OPT_TIMEOUT,
  OPT_CA,
  OPT_CERT,
  OPT_KEY,
  OPT_JSON
};

static const struct option longopts[] = {
    {"address", required_argument, NULL, 'a'},
    {"mode", required_argument, NULL, 'm'},
    {"count", required_argument, NULL, 'n'},
    {"duration", required_argument, NULL, 'd'},
    {"body-size", required_argument, NULL, 's'},
    {"connections", required_argument, NULL, 'c'},
    {"links", required_argument, NULL, 'l'},
    {"credit", required_argument, NULL, OPT_CREDIT},
    {"presettled", no_argument, NULL, OPT_PRESETTLED},
    {"durable", no_argument, NULL, OPT_DURABLE},
    {"tx-size", required_argument, NULL, OPT_TX},
    {"rate", required_argument, NULL, 'r'},
    {"threads", required_argument, NULL, 't'},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"ca", required_argument, NULL, OPT_CA},
    {"cert", required_argument, NULL, OPT_CERT},
    {"key", required_argument, NULL, OPT_KEY},
    {"json", no_argument, NULL, OPT_JSON},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

int hb_opts_parse(int argc, char **argv, hb_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->url_text = DEFAULT_URL;
  o->address = "hadron-bench";
  o->body_size = 1024;
  o->connections = 1;
  o->links = 1;
  o->credit = 1000;
  o->threads = 2;
  o->timeout_s = 10;
  bool count_given = false;
  uint64_t v, tx = 0;
  int rc = 0, c;

  opterr = 0; /* our own messages, which also give the exit status */
  while ((c = getopt_long(argc, argv, ":a:m:n:d:s:c:l:r:t:hV", longopts, NULL)) != -1) {
    const char *opt = argv[optind - 1];
    switch (c) {
    case 'a':
      if (!*optarg) return bad("--address: the address must not be empty");
      o->address = optarg;
      break;
    case 'm':
      if (!strcmp(optarg, "both"))
        o->mode = HB_MODE_BOTH;
      else if (!strcmp(optarg, "send"))
        o->mode = HB_MODE_SEND;
      else if (!strcmp(optarg, "receive"))
        o->mode = HB_MODE_RECEIVE;
      else
        return bad("--mode: '%s' is not one of both, send, receive", optarg);
      break;
    case 'n':
      rc = parse_uint("--count", optarg, 1, UINT64_MAX / 2, &o->count);
      count_given = true;
      break;
    case 'd': rc = parse_secs("--duration", optarg, false, &o->duration_s); break;
    case 's':
      rc = parse_uint("--body-size", optarg, 0, 64u << 20, &v);
      o->body_size = (size_t)v;
      break;
    case 'c':
      rc = parse_uint("--connections", optarg, 1, 1000, &v);
      o->connections = (unsigned)v;
      break;
    case 'l':
      rc = parse_uint("--links", optarg, 1, 1000, &v);
      o->links = (unsigned)v;
      break;
    case OPT_CREDIT:
      rc = parse_uint("--credit", optarg, 1, 1000000, &v);
      o->credit = (unsigned)v;
      break;
    case OPT_PRESETTLED: o->presettled = true; break;
    case OPT_DURABLE: o->durable = true; break;
    case OPT_TX: rc = parse_uint("--tx-size", optarg, 0, UINT32_MAX, &tx); break;
    case 'r':
      rc = parse_uint("--rate", optarg, 1, 100000000, &v);
      o->rate = (double)v;
      break;
    case 't':
      rc = parse_uint("--threads", optarg, 1, 256, &v);
      o->threads = (unsigned)v;
      break;
    case OPT_TIMEOUT: rc = parse_secs("--timeout", optarg, true, &o->timeout_s); break;
    case OPT_CA: o->ca = optarg; break;
    case OPT_CERT: o->cert = optarg; break;
    case OPT_KEY: o->key = optarg; break;
    case OPT_JSON: o->json = true; break;
    case 'h': usage(stdout); return HB_OPTS_DONE;
    case 'V': printf(PROG " (hadron) %s\n", PACKAGE_VERSION); return HB_OPTS_DONE;
    case ':': return bad("option '%s' needs a value", opt);
    default:
      if (optopt) return bad("unknown option '-%c'", optopt);
      return bad("unknown option '%s'", opt);
    }
    if (rc) return rc;
  }
  if (optind < argc) o->url_text = argv[optind++];
  if (optind < argc) return bad("unexpected argument '%s' (only one URL)", argv[optind]);

  char err[512];
  if (hb_url_parse(o->url_text, &o->url, err, sizeof err)) return bad("%s", err);
  if (tx > 0)
    return bad(
        "--tx-size %llu: transactions are not supported by this build yet (the broker has no "
        "transaction coordinator); use --tx-size 0",
        (unsigned long long)tx);
  if (!o->url.tls && (o->ca || o->cert || o->key))
    return bad("--ca, --cert and --key need an amqps:// URL");
  if (!o->cert != !o->key) return bad("--cert and --key go together");
  if (o->rate > 0 && o->mode == HB_MODE_RECEIVE)
    return bad("--rate paces senders; it has no meaning with --mode receive");
  if (o->duration_s > 0 && o->rate > 0) {
    /* A paced run has a fixed schedule: every message due within the
     * duration is sent, however late, so that a stall shows as latency. */
    uint64_t due = (uint64_t)ceil(o->rate * o->duration_s);
    if (due < 1) due = 1;
    if (!count_given || due < o->count) o->count = due;
  } else if (!count_given && o->duration_s == 0) {
    o->count = DEFAULT_COUNT;
  }
  return 0;
}
