/*
 * critical_section: hold the balenaOS update lock around work that must not
 * be interrupted by an update or a reboot. While the lock is held this
 * program refuses to ask for a reboot itself; with --reboot it asks for one
 * (without force) once the work is done and the lock released.
 *
 * The lock is the file /tmp/balena/updates.lock inside the container,
 * created with O_CREAT|O_EXCL and flock()ed: the supervisor sees it (through
 * its bind mount of the container's /tmp/balena) and answers 423 to actions
 * without force.
 *
 * Build (from the repository root, after `cargo build`):
 *
 *   cc -std=c99 -Wall -Wextra -Werror -pedantic -Iinclude examples/c/critical_section.c \
 *      -Ltarget/debug -lbalena_device -Wl,-rpath,"$PWD/target/debug" -o target/critical_section
 *
 * Run (inside a balenaOS container with the io.balena.features.supervisor-api
 * label):
 *
 *   ./target/critical_section              # lock, work, unlock
 *   ./target/critical_section --reboot     # ... then ask for a reboot
 *
 * Against the supervisor simulator: start it in another terminal with
 * `cargo run --example simulator` (127.0.0.1:48484), then
 *
 *   export BALENA_SUPERVISOR_ADDRESS=http://127.0.0.1:48484
 *   export BALENA_SUPERVISOR_API_KEY=sim-key-0123456789abcdef
 *   export BALENA_APP_ID=1234
 *   ./target/critical_section --lock-path /tmp/bd-example/updates.lock --reboot
 *
 * (The simulator does not look at lock files: its own "locked" flag, set with
 * `curl -d '{"locked":true}' http://127.0.0.1:48484/_sim/state`, stands for
 * "the supervisor sees another lock", and the reboot is then refused with 423;
 * `{"locks_busy":true}` and `{"host_update":true}` give the other two kinds.)
 *
 * Exit status: 0 done, 1 an error, 2 usage, 3 someone else holds the lock.
 */

#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "balena_device.h"

/* Ask the supervisor for a reboot, unless an update lock file exists: a
 * reboot in the middle of a critical section is what the lock is for. Each
 * of the three kinds of 423 gets its own reaction. */
static int request_reboot(void)
{
    int rc = bd_updates_locked();
    if (rc == 1) {
        printf("refusing to reboot: the update lock is held (critical section in progress)\n");
        return BD_ERR_LOCKED;
    }
    if (rc < 0) {
        fprintf(stderr, "cannot check the update lock: %s\n", bd_last_error());
        return rc;
    }
    rc = bd_reboot(false);
    switch (rc) {
    case BD_OK:
        printf("reboot requested (HTTP %d)\n", bd_last_http_status());
        break;
    case BD_ERR_LOCKED:
        /* An app (maybe another service of this app) holds its lock: its
         * critical section wins; force would override it. */
        printf("reboot refused by the supervisor: another update lock is held (HTTP %d): "
               "not forcing\n  %s\n",
               bd_last_http_status(), bd_last_error());
        break;
    case BD_ERR_BUSY:
        /* The supervisor itself holds the locks (it is updating services):
         * force cannot help; try again later. */
        printf("reboot refused: the supervisor is busy (HTTP %d): retry later\n  %s\n",
               bd_last_http_status(), bd_last_error());
        break;
    case BD_ERR_HOST_UPDATE:
        /* A host OS update is finishing: never force, it can leave the
         * device stuck mid-update. The update reboots the device itself. */
        printf("reboot refused: a host OS update is finishing (HTTP %d): never forcing\n  %s\n",
               bd_last_http_status(), bd_last_error());
        break;
    default:
        fprintf(stderr, "reboot request failed: %s\n  %s\n", bd_strerror(rc), bd_last_error());
    }
    return rc;
}

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
    int i;
    int reboot = 0;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--lock-path") == 0 && i + 1 < argc) {
            rc = bd_set_update_lock_path(argv[++i]);
            if (rc != BD_OK) {
                fprintf(stderr, "bad lock path: %s\n", bd_last_error());
                return 2;
            }
        } else if (strcmp(argv[i], "--reboot") == 0) {
            reboot = 1;
        } else {
            fprintf(stderr, "usage: %s [--lock-path /absolute/path/updates.lock] [--reboot]\n",
                    argv[0]);
            return 2;
        }
    }

    /* Wait up to 5 s for another holder to finish (a stale lock left by a
     * process that is gone is taken over at once). */
    rc = bd_lock_updates_wait(5000);
    if (rc == BD_ERR_LOCKED) {
        int holder = bd_update_lock_holder();
        fprintf(stderr, "the update lock is already held (%s): %s\n",
                holder == BD_LOCK_SUPERVISOR ? "by the supervisor" : "by another process",
                bd_last_error());
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
    /* Something asks for a reboot mid-way: refused while the lock is held. */
    request_reboot();
    do_some_work();

    rc = bd_unlock_updates();
    if (rc != BD_OK) {
        fprintf(stderr, "releasing the update lock failed: %s\n", bd_last_error());
        return 1;
    }
    printf("update lock released\n");
    printf("bd_updates_locked() = %d\n", bd_updates_locked());

    if (reboot) {
        rc = request_reboot();
        if (rc != BD_OK && rc != BD_ERR_LOCKED && rc != BD_ERR_BUSY && rc != BD_ERR_HOST_UPDATE)
            return 1;
    }
    return 0;
}
