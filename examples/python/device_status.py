#!/usr/bin/env python3
# Run (after `cargo build`; on a device balenaOS sets the BALENA_* variables):
#   BD_LIB=target/debug/libbalena_device.so python3 examples/python/device_status.py [--reboot [--force]]
"""Print the device and app state from the balena Supervisor; reboot on request.

Uses libbalena_device through ctypes, standard library only; the few
declarations it needs are below, so this file can be copied as it is.

The library reads the supervisor's address and key from the environment that
balenaOS provides to a service labelled `io.balena.features.supervisor-api`:
BALENA_SUPERVISOR_ADDRESS, BALENA_SUPERVISOR_API_KEY and BALENA_APP_ID.

Exit status: 0 done, 1 an error, 2 bad usage, 3 reboot refused because an
update lock is held (use --force to override it).
"""

import argparse
import ctypes
import json
import os
import sys
from ctypes import POINTER, Structure, c_bool, c_char, c_char_p, c_int, c_int32, c_size_t
from ctypes import c_uint16, c_uint32

BD_OK = 0
BD_ERR_LOCKED = -7
BD_CURRENT_APP = 0


class bd_device_state(Structure):
    _fields_ = [
        ("status", c_char * 32),
        ("commit", c_char * 72),
        ("os_version", c_char * 64),
        ("supervisor_version", c_char * 32),
        ("ip_address", c_char * 256),
        ("mac_address", c_char * 256),
        ("download_progress", c_int32),  # -1 when unknown
        ("api_port", c_uint16),
        ("update_pending", c_bool),
        ("update_downloaded", c_bool),
        ("update_failed", c_bool),
    ]


def load(path):
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        sys.exit("cannot load %s (%s): set BD_LIB to the library's path" % (path, e))
    for name, restype, argtypes in (
        ("bd_version", c_char_p, []),
        ("bd_strerror", c_char_p, [c_int]),
        ("bd_last_error", c_char_p, []),
        ("bd_state", c_int, [POINTER(bd_device_state)]),
        ("bd_app_state_json", c_int, [c_uint32, POINTER(c_char), c_size_t]),
        ("bd_reboot", c_int, [c_bool]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


class Failed(Exception):
    def __init__(self, lib, what, rc):
        self.rc = rc
        # Read the message at once, on the thread that made the call.
        message = lib.bd_last_error().decode("utf-8", "replace")
        name = lib.bd_strerror(rc).decode()
        super().__init__("%s failed: %s (%d): %s" % (what, name, rc, message))


def app_state(lib, app_id):
    """bd_app_state_json: ask for the size, then read into a buffer that fits."""
    n = lib.bd_app_state_json(app_id, None, 0)
    while n >= 0:
        buf = ctypes.create_string_buffer(n + 1)
        m = lib.bd_app_state_json(app_id, buf, len(buf))
        if 0 <= m <= n:
            return json.loads(buf.raw[:m].decode("utf-8"))
        n = m  # the text grew between the calls: ask again
    raise Failed(lib, "bd_app_state_json", n)


def text(field):
    """A char[] field of bd_device_state (bytes up to its NUL) as text."""
    return field.decode("utf-8", "replace") or "-"


def yes_no(flag):
    return "yes" if flag else "no"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reboot", action="store_true", help="reboot the device")
    parser.add_argument("--force", action="store_true",
                        help="reboot even if an update lock is held")
    parser.add_argument("--lib", default=os.environ.get("BD_LIB", "libbalena_device.so"),
                        help="path of libbalena_device.so (default: $BD_LIB)")
    args = parser.parse_args()
    if args.force and not args.reboot:
        parser.error("--force goes with --reboot")

    lib = load(args.lib)
    print("library:            balena_device %s" % lib.bd_version().decode())

    state = bd_device_state()
    rc = lib.bd_state(ctypes.byref(state))
    if rc != BD_OK:
        raise Failed(lib, "bd_state", rc)
    print("status:             %s" % text(state.status))
    print("commit:             %s" % text(state.commit))
    print("os version:         %s" % text(state.os_version))
    print("supervisor version: %s" % text(state.supervisor_version))
    print("ip address:         %s" % text(state.ip_address))
    print("mac address:        %s" % text(state.mac_address))
    print("api port:           %d" % state.api_port)
    progress = state.download_progress  # -1: not downloading
    print("download progress:  %s" % ("-" if progress < 0 else "%d%%" % progress))
    print("update pending:     %s" % yes_no(state.update_pending))
    print("update downloaded:  %s" % yes_no(state.update_downloaded))
    print("update failed:      %s" % yes_no(state.update_failed))

    app = app_state(lib, BD_CURRENT_APP)
    print("app id:             %s" % app.get("appId"))
    print("app commit:         %s" % app.get("commit"))
    print("app release id:     %s" % app.get("releaseId"))
    print("app image id:       %s" % app.get("imageId"))
    print("app container id:   %s" % app.get("containerId"))

    if args.reboot:
        rc = lib.bd_reboot(args.force)
        if rc == BD_ERR_LOCKED:
            why = lib.bd_last_error().decode("utf-8", "replace")
            print("not rebooting: an update lock is held (%s);" % why,
                  "run again with --force to override it", file=sys.stderr)
            return 3
        if rc != BD_OK:
            raise Failed(lib, "bd_reboot", rc)
        print("reboot:             requested%s" % (" (forced)" if args.force else ""))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as e:
        print(e, file=sys.stderr)
        sys.exit(1)
