"""ctypes binding for libbalena_device, a C client of the balena Supervisor API.

Standard library only. Every function of ``include/balena_device.h`` is
declared with its exact ``argtypes`` and ``restype``; the ``bd_device_state``
structure, the ``bd_line_cb`` callback type and the status codes are here too.

    import balena_device as bd

    lib = bd.load()                      # $BD_LIB, else the system search path
    print(bd.text(lib, lib.bd_state_json))            # JSON text of GET /v1/device
    state = bd.device_state(lib)                      # typed bd_device_state
    print(state.status.decode(), state.download_progress)
    bd.check(lib, lib.bd_reboot(False))               # raises bd.BdError on < 0

C types as Python sees them:

- ``const char *`` arguments take ``bytes`` (or ``None`` for NULL);
  ``const char *`` results come back as ``bytes``.
- ``char *buf`` (text out) takes a ``ctypes.create_string_buffer`` (or
  ``None`` with ``len`` 0 for a size query); ``text()`` does both calls.
- ``bool`` takes ``True``/``False``; ``bool *`` takes ``ctypes.byref(c_bool())``.
- ``bd_line_cb`` wraps a Python function ``f(line, length, userdata) -> int``
  where ``line[:length]`` is the line's bytes; ``bd_line_cb()`` is NULL. Keep
  the wrapped object alive while the library may call it. ``line_callback()``
  builds one from ``f(bytes) -> bool`` (True stops the stream).

The library never hands out memory to free. ``bd_last_error()`` is
per-thread: read it right after the failing call, on the same thread.
"""

import ctypes
import ctypes.util
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char,
    c_char_p,
    c_int,
    c_int32,
    c_size_t,
    c_uint16,
    c_uint32,
    c_void_p,
)

__all__ = [
    "BD_CURRENT_APP",
    "BdError",
    "FUNCTIONS",
    "STATUS_NAMES",
    "bd_device_state",
    "bd_line_cb",
    "check",
    "device_state",
    "last_error",
    "line_callback",
    "load",
    "text",
]

# ---------------------------------------------------------------- constants

BD_OK = 0
BD_ERR_INVALID_ARGUMENT = -1
BD_ERR_NOT_CONFIGURED = -2
BD_ERR_CONNECT = -3
BD_ERR_TIMEOUT = -4
BD_ERR_IO = -5
BD_ERR_UNAUTHORIZED = -6
BD_ERR_LOCKED = -7
BD_ERR_BAD_REQUEST = -8
BD_ERR_NOT_FOUND = -9
BD_ERR_SERVER = -10
BD_ERR_HTTP = -11
BD_ERR_INVALID_RESPONSE = -12
BD_ERR_TOO_LARGE = -13
BD_ERR_INTERNAL = -14
BD_ERR_BUSY = -15
BD_ERR_HOST_UPDATE = -16

#: status value -> name, e.g. STATUS_NAMES[-7] == "BD_ERR_LOCKED"
STATUS_NAMES = {
    value: name
    for name, value in sorted(globals().items())
    if name == "BD_OK" or name.startswith("BD_ERR_")
}

#: App id meaning "this app" (BALENA_APP_ID, else RESIN_APP_ID).
BD_CURRENT_APP = 0

#: bd_update_lock_holder() values.
BD_LOCK_NONE = 0
BD_LOCK_THIS_PROCESS = 1
BD_LOCK_OTHER = 2
BD_LOCK_SUPERVISOR = 3
BD_LOCK_STALE = 4

# ---------------------------------------------------------------- types


class bd_device_state(Structure):
    """``GET /v1/device`` as the library's fixed-size struct.

    Strings are NUL-terminated bytes, truncated to their field, ``b""`` when
    absent; ``download_progress`` is -1 when null or absent, ``api_port`` 0
    and the booleans False when absent or null.
    """

    _fields_ = [
        ("status", c_char * 32),
        ("commit", c_char * 72),
        ("os_version", c_char * 64),
        ("supervisor_version", c_char * 32),
        ("ip_address", c_char * 256),
        ("mac_address", c_char * 256),
        ("download_progress", c_int32),
        ("api_port", c_uint16),
        ("update_pending", c_bool),
        ("update_downloaded", c_bool),
        ("update_failed", c_bool),
    ]

    def as_dict(self):
        """The fields as a dict of Python values (strings decoded)."""
        out = {}
        for name, _ in self._fields_:
            value = getattr(self, name)
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            out[name] = value
        return out


#: typedef int (*bd_line_cb)(const char *line, size_t len, void *userdata);
#: ``line`` arrives as POINTER(c_char): ``line[:length]`` is the line's bytes.
bd_line_cb = CFUNCTYPE(c_int, POINTER(c_char), c_size_t, c_void_p)

_TEXT_OUT = POINTER(c_char)  # char *buf
_STR = c_char_p  # const char *

#: Every exported function: name -> (restype, argtypes), as in the header.
FUNCTIONS = {
    "bd_version": (c_char_p, []),
    "bd_strerror": (c_char_p, [c_int]),
    "bd_last_error": (c_char_p, []),
    "bd_last_http_status": (c_int, []),
    "bd_init": (c_int, [_STR, _STR]),
    "bd_init_from_env": (c_int, []),
    "bd_set_timeout_ms": (c_int, [c_uint32]),
    "bd_cleanup": (None, []),
    "bd_ping": (c_int, []),
    "bd_healthy": (c_int, []),
    "bd_blink": (c_int, []),
    "bd_reboot": (c_int, [c_bool]),
    "bd_shutdown": (c_int, [c_bool]),
    "bd_update": (c_int, [c_bool]),
    "bd_purge": (c_int, [c_uint32]),
    "bd_restart": (c_int, [c_uint32]),
    "bd_regenerate_api_key": (c_int, [_TEXT_OUT, c_size_t]),
    "bd_app_state_json": (c_int, [c_uint32, _TEXT_OUT, c_size_t]),
    "bd_start_app": (c_int, [c_uint32, _TEXT_OUT, c_size_t]),
    "bd_stop_app": (c_int, [c_uint32, c_bool, _TEXT_OUT, c_size_t]),
    "bd_state_json": (c_int, [_TEXT_OUT, c_size_t]),
    "bd_host_config_json": (c_int, [_TEXT_OUT, c_size_t]),
    "bd_set_host_config_json": (c_int, [_STR]),
    "bd_applications_state_json": (c_int, [_TEXT_OUT, c_size_t]),
    "bd_application_state_json": (c_int, [c_uint32, _TEXT_OUT, c_size_t]),
    "bd_state_status_json": (c_int, [_TEXT_OUT, c_size_t]),
    "bd_restart_service": (c_int, [c_uint32, _STR, c_bool]),
    "bd_stop_service": (c_int, [c_uint32, _STR, c_bool]),
    "bd_start_service": (c_int, [c_uint32, _STR, c_bool]),
    "bd_restart_service_by_image": (c_int, [c_uint32, c_uint32, c_bool]),
    "bd_stop_service_by_image": (c_int, [c_uint32, c_uint32, c_bool]),
    "bd_start_service_by_image": (c_int, [c_uint32, c_uint32, c_bool]),
    "bd_restart_app": (c_int, [c_uint32, c_bool]),
    "bd_purge_app": (c_int, [c_uint32, c_bool]),
    "bd_supervisor_version": (c_int, [_TEXT_OUT, c_size_t]),
    "bd_container_id": (c_int, [_STR, _TEXT_OUT, c_size_t]),
    "bd_container_ids_json": (c_int, [_TEXT_OUT, c_size_t]),
    "bd_device_name": (c_int, [_TEXT_OUT, c_size_t]),
    "bd_device_tags_json": (c_int, [_TEXT_OUT, c_size_t]),
    "bd_set_device_tags_json": (c_int, [_STR]),
    "bd_vpn_status": (c_int, [POINTER(c_bool), POINTER(c_bool)]),
    "bd_cleanup_volumes": (c_int, []),
    "bd_local_target_state_json": (c_int, [_TEXT_OUT, c_size_t]),
    "bd_set_local_target_state_json": (c_int, [_STR]),
    "bd_device_info_json": (c_int, [_TEXT_OUT, c_size_t]),
    "bd_journal_logs": (c_int, [_STR, bd_line_cb, c_void_p]),
    "bd_local_logs": (c_int, [bd_line_cb, c_void_p]),
    "bd_state": (c_int, [POINTER(bd_device_state)]),
    "bd_wait_for_supervisor": (c_int, [c_uint32]),
    "bd_lock_updates": (c_int, []),
    "bd_unlock_updates": (c_int, []),
    "bd_updates_locked": (c_int, []),
    "bd_set_update_lock_path": (c_int, [_STR]),
    "bd_update_cancel": (c_int, [c_bool]),
    "bd_set_stream_timeout_ms": (c_int, [c_uint32]),
    "bd_stop_streams": (None, []),
    "bd_update_lock_holder": (c_int, []),
    "bd_lock_updates_wait": (c_int, [c_uint32]),
}

# ---------------------------------------------------------------- loading


def _default_path():
    env = os.environ.get("BD_LIB")
    if env:
        return env
    found = ctypes.util.find_library("balena_device")
    return found or "libbalena_device.so"


def load(path=None):
    """Load the shared library and declare every function on it.

    ``path``: the .so to load; default ``$BD_LIB``, else whatever the
    dynamic linker finds as ``libbalena_device``.
    """
    lib = ctypes.CDLL(path or _default_path())
    for name, (restype, argtypes) in FUNCTIONS.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


# ---------------------------------------------------------------- helpers


class BdError(Exception):
    """A call returned a negative ``bd_status``."""

    def __init__(self, status, message, http_status=0):
        self.status = status
        self.name = STATUS_NAMES.get(status, "status %d" % status)
        self.message = message
        self.http_status = http_status
        super().__init__("%s (%d): %s" % (self.name, status, message))


def last_error(lib):
    """This thread's last error message, as str."""
    return lib.bd_last_error().decode("utf-8", "replace")


def check(lib, rc):
    """Return ``rc`` when >= 0, else raise ``BdError`` with the last error.

    Call it right after the call, on the same thread.
    """
    if rc < 0:
        raise BdError(rc, last_error(lib), lib.bd_last_http_status())
    return rc


def text(lib, fn, *args):
    """Call a text function: a size query ``fn(*args, None, 0)``, then
    ``fn(*args, buf, n + 1)``; return the text as str.

    The two calls are two requests: if the text grew in between, ask again
    with the new size.
    """
    n = check(lib, fn(*args, None, 0))
    while True:
        buf = ctypes.create_string_buffer(n + 1)
        m = check(lib, fn(*args, buf, n + 1))
        if m <= n:
            return buf.raw[:m].decode("utf-8")
        n = m


def device_state(lib):
    """``bd_state`` into a new ``bd_device_state`` (raises ``BdError``)."""
    state = bd_device_state()
    check(lib, lib.bd_state(ctypes.byref(state)))
    return state


def line_callback(func):
    """A ``bd_line_cb`` calling ``func(line_bytes)``; a true result stops
    the stream. An exception stops it too, and is kept in ``.error``."""

    def trampoline(line, length, _userdata):
        try:
            return 1 if func(line[:length]) else 0
        except BaseException as e:  # never let it unwind into C
            trampoline_cb.error = e
            return 1

    trampoline_cb = bd_line_cb(trampoline)
    trampoline_cb.error = None
    return trampoline_cb
