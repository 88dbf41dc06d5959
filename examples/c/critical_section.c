/*
 * critical_section: hold the balenaOS update lock around work that must not
 * be interrupted by an update or a reboot, and show what a reboot request
 * without force gets while the lock is held.
 *
 * The lock is the file /tmp/balena/updates.lock inside the container,
 * created with O_CREAT|O_EXCL and flock()ed: the supervisor sees it (through
 * its bind mount of the container's /tmp/balena) and answers 423 to actions
 * without force. Note: on a device where the supervisor does not see the
 * file, the reboot request below is accepted and the device reboots.
 *
 * Build (from the repository root, after `cargo build`):
 *
 *   cc -std=c99 -Wall -Wextra -Werror -pedantic -Iinclude examples/c/critical_section.c \
 *      -Ltarget/debug -lbalena_device -Wl,-rpath,"$PWD/target/debug" -o target/critical_section
 *
 * Run (inside a balenaOS container with the io.balena.features.supervisor-api
 * label):
 *
 *   ./target/critical_section
 *
 * Against the supervisor simulator: start it in another terminal with
 * `cargo run --example simulator` (127.0.0.1:48484), then
 *
 *   export BALENA_SUPERVISOR_ADDRESS=http://127.0.0.1:48484
 *   export BALENA_SUPERVISOR_API_KEY=sim-key-0123456789abcdef
 *   export BALENA_APP_ID=1234
 *   curl -d '{"locked":true}' http://127.0.0.1:48484/_sim/state
 *   ./target/critical_section --lock-path /tmp/bd-example/updates.lock
 *
 * (The simulator does not look at lock files: its own "locked" flag, set by
 * the curl line, stands for "the supervisor sees a lock".)
 *
 * Exit status: 0 done, 1 an error, 2 usage, 3 someone else holds the lock.
 */

#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "balena_device.h"

static void do_some_work(void)
{
    struct timespec step = {0, 100 * 1000 * 1000};
    int i;
    for (i = 1; i <= 3; i++) {
        printf("working: step %d/3\n", i);
        fflush(stdout);
        nanosleep(&step, NULL);
    }
}

int main(int argc, char **argv)
{
    int rc;
    int status = 0;

    if (argc == 3 && strcmp(argv[1], "--lock-path") == 0) {
        rc = bd_set_update_lock_path(argv[2]);
        if (rc != BD_OK) {
            fprintf(stderr, "bad lock path: %s\n", bd_last_error());
            return 2;
        }
    } else if (argc != 1) {
        fprintf(stderr, "usage: %s [--lock-path /absolute/path/updates.lock]\n", argv[0]);
        return 2;
    }

    rc = bd_lock_updates();
    if (rc == BD_ERR_LOCKED) {
        fprintf(stderr, "the update lock is already held: %s\n", bd_last_error());
        return 3;
    }
    if (rc != BD_OK) {
        fprintf(stderr, "taking the update lock failed: %s\n  %s\n", bd_strerror(rc),
                bd_last_error());
        return 1;
    }
    printf("update lock taken\n");
    printf("bd_updates_locked() = %d\n", bd_updates_locked());

    do_some_work();

    /* What the supervisor says to a reboot without force while we hold the
     * lock: 423 when it sees the lock file. */
    rc = bd_reboot(false);
    if (rc == BD_ERR_LOCKED) {
        printf("reboot without force refused while the lock is held (HTTP %d):\n  %s\n",
               bd_last_http_status(), bd_last_error());
    } else if (rc == BD_OK) {
        printf("reboot without force accepted (HTTP %d): the supervisor does not see this "
               "lock file\n",
               bd_last_http_status());
    } else {
        fprintf(stderr, "reboot request failed: %s\n  %s\n", bd_strerror(rc), bd_last_error());
        status = 1;
    }

    rc = bd_unlock_updates();
    if (rc != BD_OK) {
        fprintf(stderr, "releasing the update lock failed: %s\n", bd_last_error());
        return 1;
    }
    printf("update lock released\n");
    printf("bd_updates_locked() = %d\n", bd_updates_locked());
    return status;
}
