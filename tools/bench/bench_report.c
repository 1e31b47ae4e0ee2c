#include "config.h"

#include "bench_report.h"

#include <inttypes.h>
#include <stdarg.h>
#include <string.h>

static const double PCTS[] = {50, 90, 99, 99.9};
static const char *const PCT_NAMES[] = {"p50", "p90", "p99", "p99.9"};
#define NPCTS (sizeof PCTS / sizeof PCTS[0])

void hb_result_error(hb_result_t *res, const char *fmt, ...) {
  char buf[HB_ERROR_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  for (unsigned i = 0; i < res->nerrors; i++)
    if (!strcmp(res->errors[i], buf)) return;
  if (res->nerrors == HB_MAX_ERRORS) {
    res->dropped_errors++;
    return;
  }
  memcpy(res->errors[res->nerrors++], buf, sizeof buf);
}

static double us(uint64_t ns) {
  return (double)ns / 1000.0;
}

static bool sends(const hb_opts_t *o) {
  return o->mode != HB_MODE_RECEIVE;
}
static bool receives(const hb_opts_t *o) {
  return o->mode != HB_MODE_SEND;
}

void hb_report_text(FILE *f, const hb_opts_t *o, const hb_result_t *res) {
  char url[600];
  hb_url_redacted(&o->url, url, sizeof url);
  char body[64] = "";
  if (sends(o)) snprintf(body, sizeof body, ", %zu-byte bodies", o->body_size);
  fprintf(f, "hadron-bench: %s '%s' at %s, %u connection%s x %u link%s%s%s, %s%s\n",
          o->mode == HB_MODE_BOTH   ? "send and receive"
          : o->mode == HB_MODE_SEND ? "send"
                                    : "receive",
          o->address, url, o->connections, o->connections == 1 ? "" : "s", o->links,
          o->links == 1 ? "" : "s", o->mode == HB_MODE_BOTH ? " per side" : "", body,
          o->presettled ? "presettled" : "unsettled", o->durable ? ", durable" : "");
  if (o->rate > 0) fprintf(f, "  target rate   %.0f msgs/s\n", o->rate);
  fprintf(f, "  duration      %.3f s\n", res->duration_s);
  if (sends(o)) {
    fprintf(f, "  sent          %" PRIu64 " msgs  (%.0f msgs/s)\n", res->sent, res->send_rate);
    if (!o->presettled)
      fprintf(f,
              "  outcomes      %" PRIu64 " accepted, %" PRIu64 " rejected, %" PRIu64
              " released/modified, %" PRIu64 " unsettled\n",
              res->accepted, res->rejected, res->released, res->unsettled);
  }
  if (receives(o)) {
    fprintf(f, "  received      %" PRIu64 " msgs  (%.0f msgs/s)", res->received, res->recv_rate);
    if (res->foreign) fprintf(f, ", and %" PRIu64 " left over from other runs", res->foreign);
    fputc('\n', f);
    if (res->hist.count) {
      fprintf(f, "  latency (us) ");
      for (unsigned i = 0; i < NPCTS; i++)
        fprintf(f, " %s %.1f ", PCT_NAMES[i], us(hb_hist_percentile(&res->hist, PCTS[i])));
      fprintf(f, " max %.1f  (mean %.1f)\n", us(res->hist.max),
              res->hist.sum / (double)res->hist.count / 1000.0);
    }
  }
  if (!res->nerrors) {
    fprintf(f, "  result        ok");
    if (o->mode == HB_MODE_BOTH) fprintf(f, ": every message sent was received");
    if (sends(o) && !o->presettled)
      fprintf(f, "%s all accepted", o->mode == HB_MODE_BOTH ? "," : ":");
    fputc('\n', f);
    return;
  }
  fprintf(f, "  result        FAILED\n");
  for (unsigned i = 0; i < res->nerrors; i++)
    fprintf(f, "  error         %s\n", res->errors[i]);
  if (res->dropped_errors) fprintf(f, "  error         (%u more)\n", res->dropped_errors);
}

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      fprintf(f, "\\%c", ch);
    else if (ch < 0x20)
      fprintf(f, "\\u%04x", ch);
    else
      fputc(ch, f);
  }
  fputc('"', f);
}

void hb_report_json(FILE *f, const hb_opts_t *o, const hb_result_t *res) {
  char url[600];
  hb_url_redacted(&o->url, url, sizeof url);
  fprintf(f, "{\"parameters\": {\"url\": ");
  json_str(f, url);
  fprintf(f, ", \"address\": ");
  json_str(f, o->address);
  fprintf(f, ", \"mode\": \"%s\", ", hb_mode_name(o->mode));
  if (o->count)
    fprintf(f, "\"count\": %" PRIu64 ", ", o->count);
  else
    fprintf(f, "\"count\": null, ");
  if (o->duration_s > 0)
    fprintf(f, "\"duration_s\": %g, ", o->duration_s);
  else
    fprintf(f, "\"duration_s\": null, ");
  fprintf(
      f,
      "\"body_size\": %zu, \"connections\": %u, \"links\": %u, \"credit\": %u, \"presettled\": %s, "
      "\"durable\": %s, ",
      o->body_size, o->connections, o->links, o->credit, o->presettled ? "true" : "false",
      o->durable ? "true" : "false");
  if (o->rate > 0)
    fprintf(f, "\"rate\": %.0f, ", o->rate);
  else
    fprintf(f, "\"rate\": null, ");
  fprintf(f, "\"threads\": %u, \"timeout_s\": %g},\n", o->threads, o->timeout_s);

  fprintf(f, " \"duration_s\": %.6f,\n", res->duration_s);
  fprintf(f,
          " \"counts\": {\"sent\": %" PRIu64 ", \"accepted\": %" PRIu64 ", \"rejected\": %" PRIu64
          ", \"released\": %" PRIu64 ", \"unsettled\": %" PRIu64 ", \"received\": %" PRIu64
          ", \"foreign\": %" PRIu64 "},\n",
          res->sent, res->accepted, res->rejected, res->released, res->unsettled, res->received,
          res->foreign);
  fprintf(f, " \"rates\": {\"sent_per_s\": %.1f, \"received_per_s\": %.1f},\n", res->send_rate,
          res->recv_rate);
  if (res->hist.count) {
    fprintf(f, " \"latency_us\": {\"count\": %" PRIu64 ", \"min\": %.1f, \"mean\": %.1f",
            res->hist.count, us(res->hist.min), res->hist.sum / (double)res->hist.count / 1000.0);
    for (unsigned i = 0; i < NPCTS; i++)
      fprintf(f, ", \"%s\": %.1f", PCT_NAMES[i], us(hb_hist_percentile(&res->hist, PCTS[i])));
    fprintf(f, ", \"max\": %.1f},\n", us(res->hist.max));
  } else {
    fprintf(f, " \"latency_us\": null,\n");
  }
  fprintf(f, " \"errors\": [");
  for (unsigned i = 0; i < res->nerrors; i++) {
    if (i) fprintf(f, ", ");
    json_str(f, res->errors[i]);
  }
  fprintf(f, "],\n \"ok\": %s}\n", res->nerrors ? "false" : "true");
}
