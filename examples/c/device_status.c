/*
 * device_status: print the device's state and this app's state, and reboot
 * the device on request.
 *
 * Build (from the repository root, after `cargo build`):
 *
 *   cc -std=c99 -Wall -Wextra -Werror -pedantic -Iinclude examples/c/device_status.c \
 *      -Ltarget/debug -lbalena_device -Wl,-rpath,"$PWD/target/debug" -o target/device_status
 *
 * Run (inside a balenaOS container with the io.balena.features.supervisor-api
 * label, the supervisor variables are already set):
 *
 *   ./target/device_status                    # print the state
 *   ./target/device_status --reboot           # reboot, unless an update lock is held
 *   ./target/device_status --reboot --force   # reboot even if an update lock is held
 *
 * Against the supervisor simulator: start it in another terminal with
 * `cargo run --example simulator` (127.0.0.1:48484), then
 *
 *   export BALENA_SUPERVISOR_ADDRESS=http://127.0.0.1:48484
 *   export BALENA_SUPERVISOR_API_KEY=sim-key-0123456789abcdef
 *   export BALENA_APP_ID=1234
 *   ./target/device_status --reboot
 *
 * (`curl -d '{"locked":true}' http://127.0.0.1:48484/_sim/state` makes the
 * simulator hold an update lock, to see the refusal.)
 *
 * Exit status: 0 done, 1 the supervisor could not be asked, 2 usage,
 * 3 reboot refused because an update lock is held (--force overrides it),
 * 4 refused because the supervisor is busy (force cannot help: retry later),
 * 5 refused because a host OS update is finishing (never force it).
 */

#include <stdio.h>
#include <string.h>

#include "balena_device.h"

static int usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [--reboot [--force]]\n", argv0);
    return 2;
}

/* Print `what` failed with the library's explanation. */
static int fail(const char *what, int rc)
{
    fprintf(stderr, "%s failed: %s\n  %s\n", what, bd_strerror(rc), bd_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    int reboot = 0;
    int force = 0;
    int i;
    int rc;
    bd_device_state st;
    char json[8192];

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--reboot") == 0)
            reboot = 1;
        else if (strcmp(argv[i], "--force") == 0)
            force = 1;
        else
            return usage(argv[0]);
    }
    if (force && !reboot)
        return usage(argv[0]);

    /* The typed view of GET /v1/device. */
    rc = bd_state(&st);
    if (rc != BD_OK)
        return fail("reading the device state", rc);
    printf("status:             %s\n", st.status);
    printf("commit:             %s\n", st.commit);
    printf("os_version:         %s\n", st.os_version);
    printf("supervisor_version: %s\n", st.supervisor_version);
    printf("ip_address:         %s\n", st.ip_address);
    printf("mac_address:        %s\n", st.mac_address);
    printf("api_port:           %u\n", (unsigned)st.api_port);
    if (st.download_progress < 0)
        printf("download_progress:  none\n");
    else
        printf("download_progress:  %d%%\n", (int)st.download_progress);
    printf("update_pending:     %s\n", st.update_pending ? "yes" : "no");
    printf("update_downloaded:  %s\n", st.update_downloaded ? "yes" : "no");
    printf("update_failed:      %s\n", st.update_failed ? "yes" : "no");

    /* The same answer as JSON text. rc is the full length: a return value
     * >= sizeof json means the text was cut short. */
    rc = bd_state_json(json, sizeof json);
    if (rc < 0)
        return fail("reading the device state as JSON", rc);
    printf("device JSON:        %s%s\n", json, (size_t)rc >= sizeof json ? " [truncated]" : "");

    /* This app (BALENA_APP_ID). Multi-container apps answer 400 here: the
     * v2 endpoints (bd_application_state_json) cover them. */
    rc = bd_app_state_json(BD_CURRENT_APP, json, sizeof json);
    if (rc == BD_ERR_BAD_REQUEST)
        printf("app JSON:           (not available: %s)\n", bd_last_error());
    else if (rc < 0)
        return fail("reading this app's state", rc);
    else
        printf("app JSON:           %s%s\n", json,
               (size_t)rc >= sizeof json ? " [truncated]" : "");

    if (!reboot)
        return 0;

    rc = bd_reboot(force != 0);
    if (rc == BD_ERR_LOCKED) {
        fprintf(stderr,
                "reboot refused: an update lock is held on the device\n  %s\n"
                "run again with --reboot --force to reboot anyway\n",
                bd_last_error());
        return 3;
    }
    if (rc == BD_ERR_BUSY) {
        /* Force cannot help: the supervisor's own operation holds the locks. */
        fprintf(stderr, "reboot refused: the supervisor is busy\n  %s\ntry again later\n",
                bd_last_error());
        return 4;
    }
    if (rc == BD_ERR_HOST_UPDATE) {
        /* Never force this one: it can leave the device stuck mid-update. */
        fprintf(stderr,
                "reboot refused: a host OS update is finishing\n  %s\n"
                "do not force it; try again once the update is done\n",
                bd_last_error());
        return 5;
    }
    if (rc != BD_OK)
        return fail("requesting a reboot", rc);
    printf("reboot requested%s\n", force ? " (forced)" : "");
    return 0;
}
