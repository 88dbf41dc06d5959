"""libbalena_device through ctypes, against the supervisor simulator.

Standard library only. Environment:

- ``BD_LIB``: path of libbalena_device.so
- ``BALENA_SUPERVISOR_ADDRESS``, ``BALENA_SUPERVISOR_API_KEY``,
  ``BALENA_APP_ID``: a running simulator (``cargo test --test python_ctypes``
  starts one and sets these)
- ``BD_HEADER`` (optional): include/balena_device.h, default found from this file

The simulator is driven through its control routes (``/_sim/reset``,
``/_sim/state``, ``/_sim/last``, ``/_sim/requests``), which are never
recorded, so ``/_sim/requests`` shows exactly what the library sent.
"""

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import balena_device as bd  # noqa: E402

HEADER = os.environ.get("BD_HEADER") or os.path.join(
    HERE, os.pardir, os.pardir, "include", "balena_device.h"
)

LIB = None
ADDRESS = None
KEY = None
APP_ID = None

# Control calls must reach 127.0.0.1 directly, whatever proxy is configured.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _require_env(name):
    value = os.environ.get(name)
    if not value:
        raise unittest.SkipTest(
            "%s is not set: run these tests with `cargo test --test python_ctypes`" % name
        )
    return value


def setUpModule():
    global LIB, ADDRESS, KEY, APP_ID
    ADDRESS = _require_env("BALENA_SUPERVISOR_ADDRESS").rstrip("/")
    KEY = _require_env("BALENA_SUPERVISOR_API_KEY")
    APP_ID = int(_require_env("BALENA_APP_ID"))
    LIB = bd.load(_require_env("BD_LIB"))


def tearDownModule():
    if LIB is not None:
        LIB.bd_set_update_lock_path(None)
        LIB.bd_cleanup()


def sim(method, route, body=None):
    """Call a simulator control route; return its JSON answer."""
    data = None
    if method == "POST":
        data = json.dumps(body if body is not None else {}).encode()
    req = urllib.request.Request(
        ADDRESS + "/_sim/" + route,
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with _OPENER.open(req, timeout=10) as resp:
        return json.loads(resp.read().decode("utf-8"))


def requests():
    return sim("GET", "requests")


def last():
    return sim("GET", "last")


def read_header():
    with open(HEADER, encoding="utf-8") as f:
        return f.read()


class SimTestCase(unittest.TestCase):
    def setUp(self):
        sim("POST", "reset")
        self.assertEqual(LIB.bd_init(ADDRESS.encode(), KEY.encode()), bd.BD_OK, bd.last_error(LIB))
        self.assertEqual(LIB.bd_set_timeout_ms(10000), bd.BD_OK)

    def assertWire(self, rec, method, path, body=None):
        """rec is the request as the simulator recorded it."""
        self.assertIsNotNone(rec, "the simulator recorded no request")
        self.assertEqual(rec["method"], method)
        self.assertEqual(rec["path"], path)
        if body is None:
            self.assertEqual(rec["body"], "", "no body expected")
        else:
            self.assertEqual(rec["headers"].get("content-type"), "application/json")
            self.assertEqual(json.loads(rec["body"]), body)

    def assertKeyed(self, rec, key=None):
        self.assertEqual(rec["query"].get("apikey"), key or KEY)


class TestBinding(unittest.TestCase):
    """The module matches the header: functions, struct, statuses."""

    C_TYPES = {
        "const char *": ctypes.c_char_p,
        "char *": ctypes.POINTER(ctypes.c_char),
        "int": ctypes.c_int,
        "uint32_t": ctypes.c_uint32,
        "size_t": ctypes.c_size_t,
        "bool": ctypes.c_bool,
        "bool *": ctypes.POINTER(ctypes.c_bool),
        "void *": ctypes.c_void_p,
        "bd_line_cb": bd.bd_line_cb,
        "struct bd_device_state *": ctypes.POINTER(bd.bd_device_state),
    }

    def c_type(self, decl):
        """ctypes type of a C declaration such as "const char *address"."""
        m = re.match(r"^\s*(.*?)\s*\b(\w+)\s*$", decl)
        self.assertIsNotNone(m, "cannot parse %r" % decl)
        text = " ".join(re.sub(r"\s*\*\s*", " *", m.group(1)).split())
        self.assertIn(text, self.C_TYPES, "C type %r has no ctypes mapping" % decl)
        return self.C_TYPES[text]

    def test_every_header_function_is_declared_exactly(self):
        header = read_header()
        protos = re.findall(r"^([a-z][\w ]*?\s*\*?)\s*(bd_\w+)\((.*?)\);", header, re.M | re.S)
        self.assertGreaterEqual(len(protos), 50, "could not parse the header's prototypes")
        names = set()
        for ret, name, params in protos:
            names.add(name)
            self.assertIn(name, bd.FUNCTIONS, "%s is in the header but not in the binding" % name)
            restype, argtypes = bd.FUNCTIONS[name]
            ret = " ".join(ret.split())
            if ret == "void":
                self.assertIsNone(restype, name)
            else:
                self.assertIs(restype, self.c_type(ret + " x"), name)
            params = " ".join(params.split())
            want = [] if params == "void" else [self.c_type(p) for p in params.split(",")]
            self.assertEqual(len(argtypes), len(want), "%s: argument count" % name)
            for i, (have, expect) in enumerate(zip(argtypes, want)):
                self.assertIs(have, expect, "%s: argument %d" % (name, i + 1))
        self.assertEqual(set(bd.FUNCTIONS) - names, set(), "declared but not in the header")

    def test_loaded_functions_carry_the_declarations(self):
        lib = bd.load(os.environ.get("BD_LIB"))
        for name, (restype, argtypes) in bd.FUNCTIONS.items():
            fn = getattr(lib, name)
            self.assertIs(fn.restype, restype, name)
            self.assertEqual(list(fn.argtypes), list(argtypes), name)

    def test_struct_fields_match_the_header(self):
        body = re.search(
            r"typedef struct bd_device_state \{(.*?)\} bd_device_state;", read_header(), re.S
        )
        self.assertIsNotNone(body, "bd_device_state not found in the header")
        text = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)
        fields = re.findall(r"(\w+)\s+(\w+)(?:\[(\d+)\])?;", text)
        sizes = {
            "int32_t": (ctypes.c_int32, 4),
            "uint16_t": (ctypes.c_uint16, 2),
            "bool": (ctypes.c_bool, 1),
        }
        self.assertEqual([f[1] for f in fields], [f[0] for f in bd.bd_device_state._fields_])
        for (ctype, name, count), (pname, ptype) in zip(fields, bd.bd_device_state._fields_):
            if count:
                self.assertEqual(ctype, "char", name)
                self.assertIs(ptype._type_, ctypes.c_char, name)
                self.assertEqual(ptype._length_, int(count), name)
            else:
                self.assertIs(ptype, sizes[ctype][0], name)
                self.assertEqual(ctypes.sizeof(ptype), sizes[ctype][1], name)

    def test_struct_layout_matches_the_c_compiler(self):
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not cc:
            self.skipTest("no C compiler to compare the layout with")
        names = [f[0] for f in bd.bd_device_state._fields_]
        prog = [
            "#include <stdio.h>",
            "#include <stddef.h>",
            '#include "balena_device.h"',
            "int main(void) {",
        ]
        prog.append('  printf("sizeof %zu\\n", sizeof(bd_device_state));')
        for n in names:
            prog.append(
                '  printf("%s %%zu %%zu\\n", offsetof(bd_device_state, %s),'
                " sizeof(((bd_device_state *)0)->%s));" % (n, n, n)
            )
        prog.append("  return 0;\n}\n")
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "layout.c")
            exe = os.path.join(tmp, "layout")
            with open(src, "w") as f:
                f.write("\n".join(prog))
            inc = os.path.dirname(os.path.abspath(HEADER))
            cmd = [cc, "-std=c99", "-Wall", "-Werror", "-I", inc, src, "-o", exe]
            subprocess.run(cmd, check=True)
            out = subprocess.run(
                [exe], check=True, stdout=subprocess.PIPE, universal_newlines=True
            ).stdout
        got = {}
        for line in out.splitlines():
            parts = line.split()
            got[parts[0]] = tuple(int(x) for x in parts[1:])
        self.assertEqual(got["sizeof"], (ctypes.sizeof(bd.bd_device_state),))
        for n in names:
            field = getattr(bd.bd_device_state, n)
            self.assertEqual(got[n], (field.offset, field.size), n)

    def test_status_constants_match_the_header(self):
        enum = re.search(r"typedef enum bd_status \{(.*?)\} bd_status;", read_header(), re.S)
        self.assertIsNotNone(enum)
        values = dict((k, int(v)) for k, v in re.findall(r"(BD_\w+) = (-?\d+)", enum.group(1)))
        self.assertEqual(len(values), 17)
        self.assertEqual(values, {name: value for value, name in bd.STATUS_NAMES.items()})
        for name, value in values.items():
            self.assertEqual(getattr(bd, name), value)
        self.assertIn("#define BD_CURRENT_APP %d" % bd.BD_CURRENT_APP, read_header())


class TestLibrary(SimTestCase):
    def test_version(self):
        header = read_header()
        version = LIB.bd_version()
        self.assertIsInstance(version, bytes)
        major, minor, patch = (
            re.search(r"#define BD_VERSION_%s (\d+)" % part, header).group(1)
            for part in ("MAJOR", "MINOR", "PATCH")
        )
        self.assertEqual(version.decode(), "%s.%s.%s" % (major, minor, patch))
        self.assertIn('#define BD_VERSION_STRING "%s"' % version.decode(), header)
        self.assertEqual(requests(), [], "bd_version sends nothing")

    def test_strerror(self):
        self.assertTrue(LIB.bd_strerror(bd.BD_ERR_LOCKED))
        self.assertNotEqual(LIB.bd_strerror(bd.BD_ERR_LOCKED), LIB.bd_strerror(bd.BD_ERR_TIMEOUT))
        self.assertEqual(LIB.bd_strerror(12345), b"unknown status")

    def test_init_from_environment_and_current_app(self):
        self.assertEqual(LIB.bd_init(None, None), bd.BD_OK, bd.last_error(LIB))
        app = json.loads(bd.text(LIB, LIB.bd_app_state_json, bd.BD_CURRENT_APP))
        self.assertEqual(app["appId"], APP_ID)
        state = sim("GET", "state")
        self.assertEqual(app["commit"], state["apps"][0]["commit"])
        self.assertEqual(app["containerId"], state["apps"][0]["services"][0]["containerId"])
        rec = last()
        self.assertWire(rec, "GET", "/v1/apps/%d" % APP_ID)
        self.assertKeyed(rec)


class TestDeviceState(SimTestCase):
    def test_state_json(self):
        text = bd.text(LIB, LIB.bd_state_json)
        self.assertEqual(json.loads(text), sim("GET", "state")["device"])
        reqs = requests()
        self.assertEqual(len(reqs), 2, "a size query and a read")
        for rec in reqs:
            self.assertWire(rec, "GET", "/v1/device")
            self.assertKeyed(rec)

    def test_state_json_snprintf_rules(self):
        full = bd.text(LIB, LIB.bd_state_json)
        buf = ctypes.create_string_buffer(b"\xaa" * 16, 16)
        n = LIB.bd_state_json(buf, 8)
        self.assertEqual(n, len(full.encode()), "returns the full length")
        self.assertEqual(buf.raw[:8], full.encode()[:7] + b"\0", "7 bytes and a NUL")
        self.assertEqual(buf.raw[8:], b"\xaa" * 8, "nothing written past len")
        self.assertEqual(LIB.bd_last_error(), b"")

    def test_state_struct_defaults(self):
        s = bd.device_state(LIB)
        dev = sim("GET", "state")["device"]
        self.assertIsNone(dev["download_progress"])
        self.assertEqual(s.status, b"Idle")
        self.assertEqual(s.commit.decode(), dev["commit"])
        self.assertEqual(s.os_version, b"balenaOS 6.0.13")
        self.assertEqual(s.supervisor_version, b"19.0.5")
        self.assertEqual(s.ip_address, b"10.0.0.2")
        self.assertEqual(s.mac_address, b"02:42:AC:11:00:02")
        self.assertEqual(s.download_progress, -1, "null download_progress is -1")
        self.assertEqual(s.api_port, 48484)
        self.assertIs(s.update_pending, False)
        self.assertIs(s.update_downloaded, False)
        self.assertIs(s.update_failed, False)
        rec = last()
        self.assertWire(rec, "GET", "/v1/device")
        self.assertKeyed(rec)

    def test_state_struct_values_and_truncation(self):
        device = {
            "api_port": 1234,
            "ip_address": "10.1.2.3 " * 40,  # 360 bytes > 255
            "os_version": "balenaOS " + "x" * 100,  # > 63
            "status": "\u00e9" * 20,  # 40 bytes of 2-byte characters > 31
            "commit": "c" * 71,  # exactly fits
            "supervisor_version": "19.1.0",
            "download_progress": 42,
            "update_pending": True,
            "update_downloaded": True,
            "update_failed": False,
            # mac_address absent
        }
        sim("POST", "state", {"device": device})
        s = bd.device_state(LIB)
        self.assertEqual(s.ip_address, device["ip_address"].encode()[:255])
        self.assertEqual(s.os_version, device["os_version"].encode()[:63])
        # 31 bytes would split a character: 30 bytes, 15 characters.
        self.assertEqual(s.status.decode("utf-8"), "\u00e9" * 15)
        self.assertEqual(s.commit, b"c" * 71)
        self.assertEqual(s.supervisor_version, b"19.1.0", "a truncated neighbour did not overflow")
        self.assertEqual(s.mac_address, b"", "absent string is empty")
        self.assertEqual(s.download_progress, 42)
        self.assertEqual(s.api_port, 1234)
        self.assertIs(s.update_pending, True)
        self.assertIs(s.update_downloaded, True)
        self.assertIs(s.update_failed, False)
        raw = ctypes.string_at(ctypes.addressof(s), ctypes.sizeof(s))
        for name, ctype in bd.bd_device_state._fields_:
            field = getattr(bd.bd_device_state, name)
            if getattr(ctype, "_type_", None) is ctypes.c_char:
                self.assertEqual(raw[field.offset + field.size - 1], 0, "%s ends in NUL" % name)

        # absent and null numbers and booleans
        nulls = {"status": "Idle", "download_progress": None, "api_port": None,
                 "update_pending": None}
        sim("POST", "state", {"device": nulls})
        s = bd.device_state(LIB)
        self.assertEqual(s.download_progress, -1)
        self.assertEqual(s.api_port, 0)
        self.assertIs(s.update_pending, False)
        self.assertEqual(s.commit, b"")
        sim("POST", "state", {"device": {}})
        s = bd.device_state(LIB)
        self.assertEqual(s.download_progress, -1, "absent download_progress is -1")
        self.assertEqual(s.status, b"")

    def test_state_struct_untouched_on_error(self):
        sim("POST", "state", {"device": {"download_progress": "lots"}})
        s = bd.bd_device_state()
        s.download_progress = 77
        s.status = b"before"
        self.assertEqual(LIB.bd_state(ctypes.byref(s)), bd.BD_ERR_INVALID_RESPONSE)
        self.assertTrue(LIB.bd_last_error())
        self.assertEqual(s.download_progress, 77)
        self.assertEqual(s.status, b"before")


class TestActions(SimTestCase):
    def test_reboot_without_lock(self):
        self.assertEqual(LIB.bd_reboot(False), bd.BD_OK, bd.last_error(LIB))
        self.assertEqual(LIB.bd_last_http_status(), 202)
        self.assertEqual(LIB.bd_last_error(), b"")
        rec = last()
        self.assertWire(rec, "POST", "/v1/reboot", {"force": False})
        self.assertKeyed(rec)
        self.assertEqual(sim("GET", "state")["actions"], ["reboot"])

    def test_reboot_with_lock(self):
        sim("POST", "state", {"locked": True})
        self.assertEqual(LIB.bd_reboot(False), bd.BD_ERR_LOCKED)
        self.assertEqual(LIB.bd_last_http_status(), 423)
        err = bd.last_error(LIB)
        self.assertIn("/v1/reboot", err)
        self.assertIn("423", err)
        rec = last()
        self.assertWire(rec, "POST", "/v1/reboot", {"force": False})
        self.assertEqual(rec["body"], '{"force":false}', "force is sent explicitly")
        self.assertKeyed(rec)
        state = sim("GET", "state")
        self.assertEqual(state["actions"], [], "the device did not reboot")
        self.assertTrue(state["locked"])

    def test_reboot_with_force(self):
        sim("POST", "state", {"locked": True})
        self.assertEqual(LIB.bd_reboot(True), bd.BD_OK, bd.last_error(LIB))
        rec = last()
        self.assertWire(rec, "POST", "/v1/reboot", {"force": True})
        self.assertEqual(rec["body"], '{"force":true}')
        self.assertKeyed(rec)
        state = sim("GET", "state")
        self.assertEqual(state["actions"], ["reboot(force)"])
        self.assertFalse(state["locked"], "a forced action deletes the lock")
        self.assertEqual(len(requests()), 1, "a reboot is sent once")

    def test_healthy(self):
        self.assertEqual(LIB.bd_healthy(), 1)
        self.assertWire(last(), "GET", "/v1/healthy")
        sim("POST", "state", {"healthy": False})
        self.assertEqual(LIB.bd_healthy(), 0)
        self.assertEqual(LIB.bd_last_http_status(), 500)
        sim("POST", "state", {"healthy": True})
        self.assertEqual(LIB.bd_healthy(), 1)
        self.assertEqual(len(requests()), 3)

    def test_service_action_body(self):
        rc = LIB.bd_restart_service(APP_ID, b"main", True)
        self.assertEqual(rc, bd.BD_OK, bd.last_error(LIB))
        rec = last()
        self.assertWire(rec, "POST", "/v2/applications/%d/restart-service" % APP_ID,
                        {"serviceName": "main", "force": True})
        self.assertKeyed(rec)


class TestErrors(SimTestCase):
    WRONG_KEY = "wrongkey0f1e2d3c4b5a69788796a5b4"

    def test_wrong_key_is_unauthorized_and_not_in_the_error(self):
        self.assertEqual(LIB.bd_init(ADDRESS.encode(), self.WRONG_KEY.encode()), bd.BD_OK)
        for call, method, path in (
            (lambda: LIB.bd_state_json(ctypes.create_string_buffer(64), 64), "GET", "/v1/device"),
            (lambda: LIB.bd_reboot(False), "POST", "/v1/reboot"),
        ):
            self.assertEqual(call(), bd.BD_ERR_UNAUTHORIZED)
            self.assertEqual(LIB.bd_last_http_status(), 401)
            err = LIB.bd_last_error()
            self.assertIn(path.encode(), err)
            self.assertIn(b"401", err)
            self.assertNotIn(self.WRONG_KEY.encode(), err)
            self.assertNotIn(KEY.encode(), err)
            rec = last()
            self.assertEqual((rec["method"], rec["path"]), (method, path))
            self.assertKeyed(rec, self.WRONG_KEY)
        with self.assertRaises(bd.BdError) as ctx:
            bd.text(LIB, LIB.bd_state_json)
        self.assertEqual(ctx.exception.status, bd.BD_ERR_UNAUTHORIZED)
        self.assertNotIn(self.WRONG_KEY, str(ctx.exception))
        self.assertEqual(sim("GET", "state")["actions"], [], "nothing was done")

    def test_null_arguments_send_nothing(self):
        buf = ctypes.create_string_buffer(64)
        flag = ctypes.c_bool(False)
        keep = bd.line_callback(lambda line: True)
        null_cb = bd.bd_line_cb()
        calls = {
            "bd_state(NULL)": lambda: LIB.bd_state(None),
            "bd_state_json(NULL, 16)": lambda: LIB.bd_state_json(None, 16),
            "bd_app_state_json(NULL, 16)": lambda: LIB.bd_app_state_json(APP_ID, None, 16),
            "bd_regenerate_api_key(NULL, 16)": lambda: LIB.bd_regenerate_api_key(None, 16),
            "bd_host_config_json(NULL, 1)": lambda: LIB.bd_host_config_json(None, 1),
            "bd_set_host_config_json(NULL)": lambda: LIB.bd_set_host_config_json(None),
            "bd_restart_service(NULL)": lambda: LIB.bd_restart_service(APP_ID, None, False),
            "bd_stop_service(NULL)": lambda: LIB.bd_stop_service(APP_ID, None, True),
            "bd_start_service(NULL)": lambda: LIB.bd_start_service(APP_ID, None, False),
            "bd_container_id(NULL)": lambda: LIB.bd_container_id(None, buf, len(buf)),
            "bd_set_device_tags_json(NULL)": lambda: LIB.bd_set_device_tags_json(None),
            "bd_set_local_target_state_json(NULL)": (
                lambda: LIB.bd_set_local_target_state_json(None)
            ),
            "bd_vpn_status(NULL, &b)": lambda: LIB.bd_vpn_status(None, ctypes.byref(flag)),
            "bd_vpn_status(&b, NULL)": lambda: LIB.bd_vpn_status(ctypes.byref(flag), None),
            "bd_journal_logs(NULL options)": lambda: LIB.bd_journal_logs(None, keep, None),
            "bd_journal_logs(NULL cb)": lambda: LIB.bd_journal_logs(b"{}", null_cb, None),
            "bd_local_logs(NULL cb)": lambda: LIB.bd_local_logs(null_cb, None),
        }
        for what, call in calls.items():
            with self.subTest(call=what):
                self.assertEqual(call(), bd.BD_ERR_INVALID_ARGUMENT, what)
                self.assertTrue(LIB.bd_last_error(), "%s: a message" % what)
                self.assertEqual(LIB.bd_last_http_status(), 0)
        self.assertEqual(requests(), [], "nothing may be sent for bad input")
        self.assertEqual(sim("GET", "state")["api_key"], KEY, "the key was not regenerated")

    def test_non_utf8_and_control_characters_send_nothing(self):
        buf = ctypes.create_string_buffer(128)
        bad = {
            "non-UTF-8 service": lambda: LIB.bd_restart_service(APP_ID, b"ma\xffin", False),
            "lone continuation byte": lambda: LIB.bd_stop_service(APP_ID, b"\x80", False),
            "CR LF in service": lambda: LIB.bd_start_service(APP_ID, b"main\r\nX-Evil: 1", False),
            "non-UTF-8 container service": lambda: LIB.bd_container_id(b"\xc3\x28", buf, len(buf)),
            "non-UTF-8 JSON": (
                lambda: LIB.bd_set_host_config_json(b'{"network":{"hostname":"\xff"}}')
            ),
            "malformed JSON": lambda: LIB.bd_set_device_tags_json(b'{"a":'),
            "JSON not an object": lambda: LIB.bd_set_local_target_state_json(b"[1]"),
            "empty service": lambda: LIB.bd_restart_service(APP_ID, b"", False),
        }
        for what, call in bad.items():
            with self.subTest(case=what):
                self.assertEqual(call(), bd.BD_ERR_INVALID_ARGUMENT, what)
                self.assertTrue(LIB.bd_last_error())
        self.assertEqual(requests(), [])
        # The same call with a good name goes out.
        rc = LIB.bd_restart_service(APP_ID, b"main", False)
        self.assertEqual(rc, bd.BD_OK, bd.last_error(LIB))
        self.assertWire(last(), "POST", "/v2/applications/%d/restart-service" % APP_ID,
                        {"serviceName": "main", "force": False})

    def test_last_error_is_per_thread(self):
        self.assertEqual(LIB.bd_state(None), bd.BD_ERR_INVALID_ARGUMENT)
        mine = LIB.bd_last_error()
        self.assertTrue(mine)
        seen = []

        def other():
            seen.append(LIB.bd_last_error())
            seen.append(LIB.bd_ping())
            seen.append(LIB.bd_last_error())

        t = threading.Thread(target=other)
        t.start()
        t.join()
        self.assertEqual(seen, [b"", bd.BD_OK, b""])
        self.assertEqual(LIB.bd_last_error(), mine, "another thread's success did not clear it")


class TestUpdateLock(SimTestCase):
    def flock_free(self, path):
        """Whether another process can take the flock on path now."""
        if shutil.which("flock"):
            cmd = ["flock", "-n", path, "true"]
        else:
            code = (
                "import fcntl, sys\n"
                "fcntl.flock(open(sys.argv[1], 'a'), fcntl.LOCK_EX | fcntl.LOCK_NB)"
            )
            cmd = [sys.executable, "-c", code, path]
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return done.returncode == 0

    def test_lock_cycle(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "balena", "updates.lock")
            try:
                rc = LIB.bd_set_update_lock_path(b"relative/updates.lock")
                self.assertEqual(rc, bd.BD_ERR_INVALID_ARGUMENT)
                self.assertEqual(LIB.bd_set_update_lock_path(path.encode()), bd.BD_OK)
                self.assertEqual(LIB.bd_updates_locked(), 0)
                self.assertEqual(LIB.bd_lock_updates(), bd.BD_OK, bd.last_error(LIB))
                self.assertTrue(os.path.isfile(path), "the lock file exists")
                self.assertEqual(LIB.bd_updates_locked(), 1)
                self.assertEqual(LIB.bd_lock_updates(), bd.BD_ERR_LOCKED, "a second lock fails")
                self.assertIn(path, bd.last_error(LIB))
                rc = LIB.bd_set_update_lock_path(None)
                self.assertEqual(rc, bd.BD_ERR_LOCKED, "no path change while held")
                self.assertFalse(self.flock_free(path), "no other process can flock it now")
                self.assertEqual(LIB.bd_unlock_updates(), bd.BD_OK, bd.last_error(LIB))
                self.assertFalse(os.path.exists(path), "unlock removes the file")
                self.assertEqual(LIB.bd_updates_locked(), 0)
                self.assertTrue(self.flock_free(path), "the flock is free after unlock")
                if os.path.exists(path):  # flock(1) creates the file it locks
                    os.remove(path)
                self.assertEqual(LIB.bd_unlock_updates(), bd.BD_OK, "unlock when not held is fine")
                self.assertEqual(LIB.bd_lock_updates(), bd.BD_OK, "can lock again")
                self.assertEqual(LIB.bd_unlock_updates(), bd.BD_OK)
                self.assertFalse(os.path.exists(path))
            finally:
                LIB.bd_unlock_updates()
                LIB.bd_set_update_lock_path(None)
        self.assertEqual(requests(), [], "update locks send nothing")

    def test_existing_file_is_locked(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "updates.lock")
            open(path, "w").close()
            try:
                self.assertEqual(LIB.bd_set_update_lock_path(path.encode()), bd.BD_OK)
                self.assertEqual(LIB.bd_updates_locked(), 1)
                self.assertEqual(LIB.bd_lock_updates(), bd.BD_ERR_LOCKED)
                self.assertEqual(LIB.bd_unlock_updates(), bd.BD_OK)
                self.assertTrue(os.path.exists(path), "someone else's lock file is left alone")
            finally:
                LIB.bd_set_update_lock_path(None)


class TestPart3(SimTestCase):
    """0.2.0: the three kinds of 423, update cancel, stream stop, lock holders."""

    def test_three_kinds_of_423(self):
        sim("POST", "state", {"locked": True})
        self.assertEqual(LIB.bd_reboot(False), bd.BD_ERR_LOCKED, bd.last_error(LIB))
        self.assertIn("retry with force", bd.last_error(LIB))
        sim("POST", "state", {"locked": False, "locks_busy": True, "busy_wait_ms": 50})
        self.assertEqual(LIB.bd_reboot(True), bd.BD_ERR_BUSY, bd.last_error(LIB))
        self.assertEqual(LIB.bd_last_http_status(), 423)
        self.assertNotIn("retry with force", bd.last_error(LIB))
        sim("POST", "state", {"locks_busy": False, "host_update": True})
        self.assertEqual(LIB.bd_shutdown(False), bd.BD_ERR_HOST_UPDATE, bd.last_error(LIB))
        self.assertIn("Waiting for Host OS update to finish", bd.last_error(LIB))
        self.assertEqual(sim("GET", "state")["actions"], [])

    def test_update_cancel(self):
        self.assertEqual(LIB.bd_update_cancel(True), bd.BD_OK, bd.last_error(LIB))
        rec = last()
        self.assertWire(rec, "POST", "/v1/update", {"force": True, "cancel": True})
        self.assertKeyed(rec)

    def test_stop_streams_from_another_thread(self):
        lines = []

        def on_line(line, length, _userdata):
            lines.append(line[:length])
            return 0

        cb = bd.bd_line_cb(on_line)
        self.assertEqual(LIB.bd_set_timeout_ms(300), bd.BD_OK)
        sim("POST", "state", {"journal_quiet": True})
        stopper = threading.Timer(0.8, LIB.bd_stop_streams)
        started = time.monotonic()
        stopper.start()
        rc = LIB.bd_journal_logs(b'{"follow":true,"count":1}', cb, None)
        took = time.monotonic() - started
        stopper.join()
        self.assertEqual(rc, bd.BD_OK, bd.last_error(LIB))
        self.assertEqual(len(lines), 1)
        self.assertGreaterEqual(took, 0.75, "the quiet stream outlived the request timeout")
        self.assertEqual(LIB.bd_set_stream_timeout_ms(300), bd.BD_OK)
        try:
            rc = LIB.bd_journal_logs(b'{"follow":true,"count":1}', cb, None)
            self.assertEqual(rc, bd.BD_ERR_TIMEOUT, bd.last_error(LIB))
        finally:
            LIB.bd_set_stream_timeout_ms(0)

    def test_lock_holder_and_wait(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "updates.lock")
            try:
                self.assertEqual(LIB.bd_set_update_lock_path(path.encode()), bd.BD_OK)
                self.assertEqual(LIB.bd_update_lock_holder(), bd.BD_LOCK_NONE)
                self.assertEqual(LIB.bd_lock_updates_wait(1000), bd.BD_OK, bd.last_error(LIB))
                self.assertEqual(LIB.bd_update_lock_holder(), bd.BD_LOCK_THIS_PROCESS)
                with open(path) as f:
                    self.assertIn("pid %d" % os.getpid(), f.read())
                self.assertEqual(LIB.bd_unlock_updates(), bd.BD_OK)
                open(path, "w").close()
                self.assertEqual(LIB.bd_update_lock_holder(), bd.BD_LOCK_OTHER)
                started = time.monotonic()
                self.assertEqual(LIB.bd_lock_updates_wait(200), bd.BD_ERR_LOCKED)
                self.assertGreaterEqual(time.monotonic() - started, 0.19)
                self.assertIn("waited", bd.last_error(LIB))
            finally:
                LIB.bd_unlock_updates()
                LIB.bd_set_update_lock_path(None)


class TestLogs(SimTestCase):
    def test_journal_lines_reach_the_callback(self):
        lines = []
        seen = []

        def on_line(line, length, userdata):
            seen.append((length, userdata))
            lines.append(line[:length])
            return 0

        cb = bd.bd_line_cb(on_line)
        options = b'{"count":5,"format":"json"}'
        rc = LIB.bd_journal_logs(options, cb, ctypes.c_void_p(0x5EED))
        self.assertEqual(rc, bd.BD_OK, bd.last_error(LIB))
        self.assertEqual(len(lines), 5)
        for i, line in enumerate(lines, 1):
            self.assertFalse(line.endswith(b"\n"))
            entry = json.loads(line.decode())
            self.assertEqual(entry["MESSAGE"], "line %d" % i)
        self.assertEqual([s[0] for s in seen], [len(x) for x in lines])
        self.assertEqual({s[1] for s in seen}, {0x5EED}, "userdata passed through")
        rec = last()
        self.assertWire(rec, "POST", "/v2/journal-logs", {"count": 5, "format": "json"})
        self.assertEqual(rec["body"], options.decode(), "options sent as given")
        self.assertKeyed(rec)

    def test_callback_stops_the_stream(self):
        got = []
        cb = bd.line_callback(lambda line: got.append(line) or len(got) == 3)
        rc = LIB.bd_journal_logs(b'{"count":50}', cb, None)
        self.assertEqual(rc, bd.BD_OK, bd.last_error(LIB))
        self.assertIsNone(cb.error)
        self.assertEqual(len(got), 3)
        self.assertTrue(got[0].endswith(b"line 1"), got[0])

    def test_follow_stream_stopped_by_callback(self):
        sim("POST", "state", {"local_mode": True})  # the app's lines come only in local mode
        got = []
        cb = bd.line_callback(lambda line: got.append(json.loads(line.decode())) or len(got) == 3)
        self.assertEqual(LIB.bd_local_logs(cb, None), bd.BD_OK, bd.last_error(LIB))
        self.assertIsNone(cb.error)
        self.assertEqual(got[0], {"message": "Streaming logs", "isSystem": True})
        self.assertEqual(got[1]["serviceName"], "main")
        self.assertWire(last(), "GET", "/v2/local/logs")


class TestThreads(SimTestCase):
    def test_concurrent_state_json(self):
        expected = sim("GET", "state")["device"]
        results = []
        errors = []
        barrier = threading.Barrier(4)

        def worker():
            try:
                barrier.wait(10)
                for _ in range(5):
                    results.append(json.loads(bd.text(LIB, LIB.bd_state_json)))
                    if LIB.bd_last_error() != b"":
                        errors.append("last error not empty after a success")
            except Exception as e:  # collected for the assertion below
                errors.append(repr(e))

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
            self.assertFalse(t.is_alive(), "a thread hung")
        self.assertEqual(errors, [])
        self.assertEqual(len(results), 20)
        for r in results:
            self.assertEqual(r, expected)
        reqs = requests()
        self.assertEqual(len(reqs), 40, "20 size queries and 20 reads")
        for rec in reqs:
            self.assertWire(rec, "GET", "/v1/device")
            self.assertKeyed(rec)


if __name__ == "__main__":
    unittest.main()
