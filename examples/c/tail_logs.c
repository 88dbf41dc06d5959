/*
 * tail_logs: print the device's logs as they come. On a managed device the
 * logs come from the journal (POST /v2/journal-logs with follow); in local
 * mode (--local) from the local log stream (GET /v2/local/logs, which on a
 * managed device sends one line and then nothing). Stops after N lines, or
 * cleanly on SIGINT/SIGTERM through bd_stop_streams().
 *
 * Build (from the repository root, after `cargo build`):
 *
 *   cc -std=c99 -Wall -Wextra -Werror -pedantic -Iinclude examples/c/tail_logs.c \
 *      -Ltarget/debug -lbalena_device -Wl,-rpath,"$PWD/target/debug" -o target/tail_logs
 *
 * Run (inside a balenaOS container with the io.balena.features.supervisor-api
 * label):
 *
 *   ./target/tail_logs            # follow the journal until Ctrl-C
 *   ./target/tail_logs 3          # the first 3 journal lines
 *   ./target/tail_logs --local 3  # local mode: the first 3 local log lines
 *
 * Against the supervisor simulator: start it with
 * `cargo run --example simulator` (it prints the export lines to paste), then
 * run as above.
 *
 * A followed journal on a quiet device may stay silent for a long time: by
 * default a stream has no stall limit (bd_set_stream_timeout_ms sets one).
 *
 * Exit status: 0 done or stopped by a signal, 1 the stream failed, 2 usage.
 */

#define _POSIX_C_SOURCE 200809L

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "balena_device.h"

struct tail {
    long wanted; /* 0: no limit */
    long seen;
};

static volatile sig_atomic_t g_signalled = 0;

/* bd_stop_streams is async-signal-safe: every stream in progress returns
 * BD_OK within about 100 ms. */
static void on_signal(int sig)
{
    g_signalled = sig;
    bd_stop_streams();
}

/* Called once per line as it arrives; returning non-zero stops the stream. */
static int print_line(const char *line, size_t len, void *userdata)
{
    struct tail *t = (struct tail *)userdata;
    t->seen++;
    printf("%ld: %.*s\n", t->seen, (int)len, line);
    fflush(stdout);
    return t->wanted > 0 && t->seen >= t->wanted;
}

int main(int argc, char **argv)
{
    struct tail t;
    struct sigaction sa;
    int local = 0;
    int i;
    int rc;

    t.wanted = 0;
    t.seen = 0;
    for (i = 1; i < argc; i++) {
        char *end = NULL;
        if (strcmp(argv[i], "--local") == 0) {
            local = 1;
            continue;
        }
        t.wanted = strtol(argv[i], &end, 10);
        if (*argv[i] == '\0' || *end != '\0' || t.wanted < 1 || i != argc - 1)
            goto usage;
    }

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    if (local)
        rc = bd_local_logs(print_line, &t);
    else
        rc = bd_journal_logs("{\"follow\":true,\"format\":\"short\"}", print_line, &t);
    if (rc != BD_OK) {
        fprintf(stderr, "reading the logs failed: %s\n  %s\n", bd_strerror(rc), bd_last_error());
        return 1;
    }
    if (g_signalled)
        printf("stopped by signal %d after %ld lines\n", (int)g_signalled, t.seen);
    else
        printf("stopped after %ld lines\n", t.seen);
    return 0;

usage:
    fprintf(stderr, "usage: %s [--local] [LINES]\n", argv[0]);
    return 2;
}
