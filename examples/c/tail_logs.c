/*
 * tail_logs: print the first N lines of the device's local log stream
 * (GET /v2/local/logs, one JSON object per line), then stop it from the
 * callback.
 *
 * Build (from the repository root, after `cargo build`):
 *
 *   cc -std=c99 -Wall -Wextra -Werror -pedantic -Iinclude examples/c/tail_logs.c \
 *      -Ltarget/debug -lbalena_device -Wl,-rpath,"$PWD/target/debug" -o target/tail_logs
 *
 * Run (inside a balenaOS container with the io.balena.features.supervisor-api
 * label; the supervisor serves local logs in local mode):
 *
 *   ./target/tail_logs        # 10 lines
 *   ./target/tail_logs 3      # 3 lines
 *
 * Against the supervisor simulator: start it in another terminal with
 * `cargo run --example simulator` (127.0.0.1:48484), then
 *
 *   export BALENA_SUPERVISOR_ADDRESS=http://127.0.0.1:48484
 *   export BALENA_SUPERVISOR_API_KEY=sim-key-0123456789abcdef
 *   export BALENA_APP_ID=1234
 *   ./target/tail_logs 3
 *
 * Exit status: 0 done, 1 the stream failed, 2 usage.
 */

#include <stdio.h>
#include <stdlib.h>

#include "balena_device.h"

struct tail {
    long wanted;
    long seen;
};

/* Called once per line as it arrives; returning non-zero stops the stream. */
static int print_line(const char *line, size_t len, void *userdata)
{
    struct tail *t = (struct tail *)userdata;
    t->seen++;
    printf("%ld: %.*s\n", t->seen, (int)len, line);
    fflush(stdout);
    return t->seen >= t->wanted;
}

int main(int argc, char **argv)
{
    struct tail t;
    char *end = NULL;
    int rc;

    t.wanted = 10;
    t.seen = 0;
    if (argc > 2)
        goto usage;
    if (argc == 2) {
        t.wanted = strtol(argv[1], &end, 10);
        if (*argv[1] == '\0' || *end != '\0' || t.wanted < 1)
            goto usage;
    }

    /* A stream has no overall deadline; the timeout is the longest silence
     * allowed between two bytes. */
    bd_set_timeout_ms(60000);
    rc = bd_local_logs(print_line, &t);
    if (rc != BD_OK) {
        fprintf(stderr, "reading the local logs failed: %s\n  %s\n", bd_strerror(rc),
                bd_last_error());
        return 1;
    }
    printf("stopped after %ld lines\n", t.seen);
    return 0;

usage:
    fprintf(stderr, "usage: %s [LINES]\n", argv[0]);
    return 2;
}
