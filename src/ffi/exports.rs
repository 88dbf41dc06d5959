//! The exported functions. Each is one line or two over the boundary
//! helpers. The conventions and the errors common to every call that talks to
//! the supervisor are stated once, in the header's opening comment
//! (`cbindgen.toml`).

use std::ffi::{c_char, c_int, c_void};

use super::boundary::{
    arg_json_object, arg_service, client, done, flag, opt_str, status, text_out,
};
use super::{bd_device_state, bd_line_cb};
use crate::api::{Service, ServiceAction};
use crate::config::check_timeout_ms;
use crate::error::{Error, Result};
use crate::{client, global, lock};

// ---------------------------------------------------------------- library

/// The library version, e.g. "0.1.0" (static; equals the
/// `BD_VERSION_MAJOR.MINOR.PATCH` macros). Never fails.
#[no_mangle]
pub extern "C" fn bd_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// A static, NUL-terminated description of a status code (`BD_OK` or a
/// `bd_status`); "unknown status" for any other value. Never fails.
#[no_mangle]
pub extern "C" fn bd_strerror(status: c_int) -> *const c_char {
    super::describe_status(status).as_ptr()
}

/// A message about the last failure on the calling thread: what failed and
/// why (e.g. "POST /v1/reboot: update lock held ... (HTTP 423): ..."), never
/// containing the API key. `""` after a success. Valid until the next `bd_`
/// call on this thread (other than `bd_last_error`, `bd_last_http_status`,
/// `bd_strerror` and `bd_version`). Never NULL. At most 1023 bytes (a longer
/// message is cut and ends in "..."); kept in a fixed per-thread buffer, so
/// it works in thread-exit destructors too and needs nothing freed.
#[no_mangle]
pub extern "C" fn bd_last_error() -> *const c_char {
    super::boundary::last_error_ptr()
}

/// HTTP status of the last response received by the last call on this
/// thread; 0 if none arrived (e.g. connection refused, bad input).
#[no_mangle]
pub extern "C" fn bd_last_http_status() -> c_int {
    c_int::from(client::last_http_status())
}

/// Configure the default client. `address` is `http://host[:port][/]`
/// (NULL: from `BALENA_SUPERVISOR_ADDRESS` and its fallbacks); `api_key`
/// NULL: from `BALENA_SUPERVISOR_API_KEY` (or `RESIN_SUPERVISOR_API_KEY`).
/// Sends nothing. Returns `BD_OK`; `BD_ERR_INVALID_ARGUMENT` for a malformed
/// address (scheme other than http, bad host or port, a path, control
/// characters) or key (empty, white space, control characters), or non-UTF-8
/// text; `BD_ERR_NOT_CONFIGURED` when a value taken from the environment is
/// missing. On error the previous configuration stays.
///
/// # Safety
/// `address` and `api_key` must each be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bd_init(address: *const c_char, api_key: *const c_char) -> c_int {
    status(|| {
        // SAFETY: the caller's promise.
        let (address, api_key) =
            unsafe { (opt_str(address, "address")?, opt_str(api_key, "api_key")?) };
        global::init(address, api_key).map(done)
    })
}

/// Re-read the supervisor address and key from the environment now. Sends
/// nothing. Returns `BD_OK` or `BD_ERR_NOT_CONFIGURED` (the previous
/// configuration then stays).
#[no_mangle]
pub extern "C" fn bd_init_from_env() -> c_int {
    status(|| global::init_from_env().map(done))
}

/// Set the deadline of one whole request (connect, send, receive), in
/// milliseconds, counted from the start of the call; default 30000. For log
/// streams it bounds connecting and the answer's head (silence after that is
/// `bd_set_stream_timeout_ms`). Actions (reboot, restart, stop, purge, ...)
/// get the same deadline; the supervisor answers them when the work is done,
/// so a BD_ERR_TIMEOUT from an action says it may still happen, and the
/// library never re-sends one. Returns `BD_OK`, or `BD_ERR_INVALID_ARGUMENT`
/// for 0.
#[no_mangle]
pub extern "C" fn bd_set_timeout_ms(ms: u32) -> c_int {
    status(|| global::set_timeout_ms(ms).map(done))
}

/// Drop the default client and its pooled connections and restore the
/// default timeout and stream timeout; the next call starts from the
/// environment again (with the newest key if `bd_regenerate_api_key`
/// replaced the environment's). Calls
/// in progress on other threads finish normally. Never fails.
#[no_mangle]
pub extern "C" fn bd_cleanup() {
    status(|| {
        global::cleanup();
        Ok(0)
    });
}

// ---------------------------------------------------------------- V1

/// `GET /ping` (no key needed). Returns `BD_OK` when the supervisor answers
/// 200.
#[no_mangle]
pub extern "C" fn bd_ping() -> c_int {
    status(|| client()?.ping().map(done))
}

/// `GET /v1/healthy` (no key needed). Returns 1 when healthy (200), 0 when
/// unhealthy (500), or a negative status.
#[no_mangle]
pub extern "C" fn bd_healthy() -> c_int {
    status(|| Ok(flag(client()?.healthy()?)))
}

/// `POST /v1/blink`: the device's LED blinks for 15 s. Returns `BD_OK`.
#[no_mangle]
pub extern "C" fn bd_blink() -> c_int {
    status(|| client()?.blink().map(done))
}

/// `POST /v1/reboot` with `{"force":force}`. Returns `BD_OK` (202);
/// `BD_ERR_LOCKED` (423) when an app's update lock is held and `force` is
/// false; `BD_ERR_HOST_UPDATE` (423) while a host OS update is finishing (do
/// not force); `BD_ERR_BUSY` (423) when the supervisor's own operation holds
/// the locks, or a 423 came although `force` was sent.
#[no_mangle]
pub extern "C" fn bd_reboot(force: bool) -> c_int {
    status(|| client()?.reboot(force).map(done))
}

/// `POST /v1/shutdown` with `{"force":force}`. Returns `BD_OK` (202);
/// `BD_ERR_LOCKED` (423) when an app's update lock is held and `force` is
/// false; `BD_ERR_HOST_UPDATE` (423) while a host OS update is finishing (do
/// not force); `BD_ERR_BUSY` (423) when the supervisor's own operation holds
/// the locks, or a 423 came although `force` was sent.
#[no_mangle]
pub extern "C" fn bd_shutdown(force: bool) -> c_int {
    status(|| client()?.shutdown(force).map(done))
}

/// `POST /v1/update` with `{"force":force}` (force: apply even though locks
/// are held). Returns `BD_OK` on 202 (accepted) or 204 (applied at once).
#[no_mangle]
pub extern "C" fn bd_update(force: bool) -> c_int {
    status(|| client()?.update(force).map(done))
}

/// `POST /v1/update` with `{"force":force,"cancel":true}`: abandon the apply
/// in progress and apply the newest target state (what works when an apply
/// is stuck behind a lock). Returns `BD_OK` on 202 or 204.
#[no_mangle]
pub extern "C" fn bd_update_cancel(force: bool) -> c_int {
    status(|| client()?.update_cancel(force).map(done))
}

/// `POST /v1/purge` with `{"appId":app_id}`: purge the app's data.
/// `app_id` may be `BD_CURRENT_APP`. Returns `BD_OK`; `BD_ERR_BAD_REQUEST`
/// (400), `BD_ERR_LOCKED` (423; `BD_ERR_BUSY` when forcing cannot help), `BD_ERR_SERVER` (503: app not on the device),
/// `BD_ERR_NOT_CONFIGURED` (`BD_CURRENT_APP` without an app id). The
/// supervisor also reads `force` here; `bd_purge_app` is the form that sends
/// it.
#[no_mangle]
pub extern "C" fn bd_purge(app_id: u32) -> c_int {
    status(|| client()?.purge(app_id).map(done))
}

/// `POST /v1/restart` with `{"appId":app_id}`. `app_id` may be
/// `BD_CURRENT_APP`. Returns `BD_OK`; `BD_ERR_BAD_REQUEST` (400),
/// `BD_ERR_LOCKED` (423; `BD_ERR_BUSY` when forcing cannot help), `BD_ERR_SERVER` (503: app not on the device),
/// `BD_ERR_NOT_CONFIGURED`. The supervisor also reads `force` here;
/// `bd_restart_app` is the form that sends it.
#[no_mangle]
pub extern "C" fn bd_restart(app_id: u32) -> c_int {
    status(|| client()?.restart(app_id).map(done))
}

/// `POST /v1/regenerate-api-key`. Writes the new key into `(buf, len)`
/// snprintf-style and returns its full length; the default client uses the
/// new key at once (the old one is rejected by the supervisor). Every call
/// regenerates the key, a size query `(NULL, 0)` too: pass a buffer of at
/// least 65 bytes, or the caller never sees the whole new key (the library
/// still uses it). A key this process later takes from the environment
/// (first use, `bd_init_from_env`, `bd_init` with a NULL key, after
/// `bd_cleanup`) that was replaced is replaced by the newest key: the
/// container's `BALENA_SUPERVISOR_API_KEY` keeps the old key until the
/// supervisor recreates the container at its next apply. Other processes of
/// the container keep the old key until then (their calls get 401); a key
/// passed to `bd_init` explicitly is used as given. Errors:
/// `BD_ERR_INVALID_ARGUMENT` (`buf` NULL with `len` > 0; nothing sent),
/// `BD_ERR_INVALID_RESPONSE` (the answer is not a key).
///
/// # Safety
/// `buf` must be NULL (with `len` 0) or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bd_regenerate_api_key(buf: *mut c_char, len: usize) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { text_out(buf, len, || client()?.regenerate_api_key()) }
}

/// `GET /v1/apps/:appId`. Writes the JSON object text into `(buf, len)`
/// snprintf-style and returns its full length. `app_id` may be
/// `BD_CURRENT_APP`. Errors: `BD_ERR_BAD_REQUEST` (400: multi-container app,
/// app not found), `BD_ERR_UNAUTHORIZED` (401: app out of the key's scope),
/// `BD_ERR_INVALID_RESPONSE` (not a JSON object), `BD_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `buf` must be NULL (with `len` 0) or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bd_app_state_json(app_id: u32, buf: *mut c_char, len: usize) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { text_out(buf, len, || client()?.app_state_json(app_id)) }
}

/// `POST /v1/apps/:appId/start` (no body). Writes the container id into
/// `(buf, len)` (may be NULL with `len` 0) and returns its length. Never
/// `BD_ERR_LOCKED`. Errors: `BD_ERR_BAD_REQUEST` (400: multi-container app,
/// app not installed), `BD_ERR_SERVER` (503: app not on the device),
/// `BD_ERR_INVALID_RESPONSE` (no `containerId`), `BD_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `buf` must be NULL (with `len` 0) or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bd_start_app(app_id: u32, buf: *mut c_char, len: usize) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { text_out(buf, len, || client()?.start_app(app_id)) }
}

/// `POST /v1/apps/:appId/stop` with `{"force":force}`. Writes the container
/// id into `(buf, len)` (may be NULL with `len` 0) and returns its length.
/// Errors: `BD_ERR_LOCKED` (423; `BD_ERR_BUSY` when forcing cannot help), `BD_ERR_BAD_REQUEST` (400),
/// `BD_ERR_SERVER` (503), `BD_ERR_INVALID_RESPONSE` (no `containerId`),
/// `BD_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `buf` must be NULL (with `len` 0) or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bd_stop_app(
    app_id: u32,
    force: bool,
    buf: *mut c_char,
    len: usize,
) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { text_out(buf, len, || client()?.stop_app(app_id, force)) }
}

/// `GET /v1/device`. Writes the JSON object text into `(buf, len)`
/// snprintf-style and returns its full length. Errors:
/// `BD_ERR_INVALID_RESPONSE` (not a JSON object), `BD_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `buf` must be NULL (with `len` 0) or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bd_state_json(buf: *mut c_char, len: usize) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { text_out(buf, len, || client()?.state_json()) }
}

/// `GET /v1/device/host-config`. Writes the JSON object text into
/// `(buf, len)` snprintf-style and returns its full length. Errors:
/// `BD_ERR_INVALID_RESPONSE`, `BD_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `buf` must be NULL (with `len` 0) or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bd_host_config_json(buf: *mut c_char, len: usize) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { text_out(buf, len, || client()?.host_config_json()) }
}

/// `PATCH /v1/device/host-config` with `json` (a JSON object, e.g.
/// `{"network":{"hostname":"x"}}`) sent as given: its own top-level `force`
/// overrides an update lock. Returns `BD_OK`; `BD_ERR_INVALID_ARGUMENT`
/// (NULL, not UTF-8, not a JSON object; nothing sent), `BD_ERR_BAD_REQUEST`
/// (400: no `network` object), `BD_ERR_LOCKED` (423: changing `hostname` or
/// `proxy` takes the update locks; `BD_ERR_BUSY` when forcing cannot help).
///
/// # Safety
/// `json` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bd_set_host_config_json(json: *const c_char) -> c_int {
    status(|| {
        // SAFETY: the caller's promise.
        let json = unsafe { arg_json_object(json, "json") }?;
        client()?.set_host_config_json(json).map(done)
    })
}

// ---------------------------------------------------------------- V2

/// `GET /v2/applications/state`. Writes the JSON object text (app name →
/// app) into `(buf, len)` snprintf-style and returns its full length.
/// Errors: `BD_ERR_INVALID_RESPONSE`, `BD_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `buf` must be NULL (with `len` 0) or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bd_applications_state_json(buf: *mut c_char, len: usize) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { text_out(buf, len, || client()?.applications_state_json()) }
}

/// `GET /v2/applications/:appId/state`. Writes the JSON object text into
/// `(buf, len)` and returns its full length. `app_id` may be
/// `BD_CURRENT_APP`. Errors: `BD_ERR_HTTP` (409: app unknown or out of the
/// key's scope), `BD_ERR_BAD_REQUEST` (400), `BD_ERR_INVALID_RESPONSE`,
/// `BD_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `buf` must be NULL (with `len` 0) or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bd_application_state_json(
    app_id: u32,
    buf: *mut c_char,
    len: usize,
) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { text_out(buf, len, || client()?.application_state_json(app_id)) }
}

/// `GET /v2/state/status`. Writes the JSON object text into `(buf, len)`
/// and returns its full length. Errors: `BD_ERR_INVALID_RESPONSE`,
/// `BD_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `buf` must be NULL (with `len` 0) or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bd_state_status_json(buf: *mut c_char, len: usize) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { text_out(buf, len, || client()?.state_status_json()) }
}

/// `POST /v2/applications/:appId/restart-service` with
/// `{"serviceName":service,"force":force}`. `app_id` may be `BD_CURRENT_APP`.
/// Returns `BD_OK`; `BD_ERR_INVALID_ARGUMENT` (service NULL, empty, not
/// UTF-8, control characters; nothing sent), `BD_ERR_NOT_FOUND` (404: unknown
/// service), `BD_ERR_BAD_REQUEST` (400), `BD_ERR_LOCKED` (423; `BD_ERR_BUSY` when forcing cannot help),
/// `BD_ERR_SERVER` (503: app not on the device).
///
/// # Safety
/// `service` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bd_restart_service(
    app_id: u32,
    service: *const c_char,
    force: bool,
) -> c_int {
    status(|| {
        // SAFETY: the caller's promise.
        let name = unsafe { arg_service(service) }?;
        client()?
            .service_action(app_id, ServiceAction::Restart, Service::Name(name), force)
            .map(done)
    })
}

/// `POST /v2/applications/:appId/stop-service` with
/// `{"serviceName":service,"force":force}`. As `bd_restart_service`.
///
/// # Safety
/// `service` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bd_stop_service(
    app_id: u32,
    service: *const c_char,
    force: bool,
) -> c_int {
    status(|| {
        // SAFETY: the caller's promise.
        let name = unsafe { arg_service(service) }?;
        client()?
            .service_action(app_id, ServiceAction::Stop, Service::Name(name), force)
            .map(done)
    })
}

/// `POST /v2/applications/:appId/start-service` with
/// `{"serviceName":service,"force":force}`. As `bd_restart_service`, never
/// `BD_ERR_LOCKED`.
///
/// # Safety
/// `service` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bd_start_service(
    app_id: u32,
    service: *const c_char,
    force: bool,
) -> c_int {
    status(|| {
        // SAFETY: the caller's promise.
        let name = unsafe { arg_service(service) }?;
        client()?
            .service_action(app_id, ServiceAction::Start, Service::Name(name), force)
            .map(done)
    })
}

/// `POST /v2/applications/:appId/restart-service` with
/// `{"imageId":image_id,"force":force}`. Returns `BD_OK`; errors as
/// `bd_restart_service`.
#[no_mangle]
pub extern "C" fn bd_restart_service_by_image(app_id: u32, image_id: u32, force: bool) -> c_int {
    status(|| {
        client()?
            .service_action(
                app_id,
                ServiceAction::Restart,
                Service::Image(image_id),
                force,
            )
            .map(done)
    })
}

/// `POST /v2/applications/:appId/stop-service` with
/// `{"imageId":image_id,"force":force}`. Returns `BD_OK`; errors as
/// `bd_restart_service`.
#[no_mangle]
pub extern "C" fn bd_stop_service_by_image(app_id: u32, image_id: u32, force: bool) -> c_int {
    status(|| {
        client()?
            .service_action(app_id, ServiceAction::Stop, Service::Image(image_id), force)
            .map(done)
    })
}

/// `POST /v2/applications/:appId/start-service` with
/// `{"imageId":image_id,"force":force}`. Returns `BD_OK`; errors as
/// `bd_restart_service`, never `BD_ERR_LOCKED`.
#[no_mangle]
pub extern "C" fn bd_start_service_by_image(app_id: u32, image_id: u32, force: bool) -> c_int {
    status(|| {
        client()?
            .service_action(
                app_id,
                ServiceAction::Start,
                Service::Image(image_id),
                force,
            )
            .map(done)
    })
}

/// `POST /v2/applications/:appId/restart` with `{"force":force}`: restart
/// every service of the app. `app_id` may be `BD_CURRENT_APP`. Returns
/// `BD_OK`; `BD_ERR_BAD_REQUEST` (400), `BD_ERR_LOCKED` (423; `BD_ERR_BUSY` when forcing cannot help),
/// `BD_ERR_SERVER`, `BD_ERR_NOT_CONFIGURED`.
#[no_mangle]
pub extern "C" fn bd_restart_app(app_id: u32, force: bool) -> c_int {
    status(|| client()?.restart_app(app_id, force).map(done))
}

/// `POST /v2/applications/:appId/purge` with `{"force":force}`: purge the
/// app's data. As `bd_restart_app`.
#[no_mangle]
pub extern "C" fn bd_purge_app(app_id: u32, force: bool) -> c_int {
    status(|| client()?.purge_app(app_id, force).map(done))
}

/// `GET /v2/version`. Writes the `version` string (e.g. "19.0.5") into
/// `(buf, len)` and returns its full length. Errors:
/// `BD_ERR_INVALID_RESPONSE` (no string `version`), `BD_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `buf` must be NULL (with `len` 0) or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bd_supervisor_version(buf: *mut c_char, len: usize) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { text_out(buf, len, || client()?.supervisor_version()) }
}

/// `GET /v2/containerId?service=<service, percent-encoded>`. Writes the
/// container id into `(buf, len)` and returns its full length. Errors:
/// `BD_ERR_SERVER` (503: no service with that name),
/// `BD_ERR_INVALID_RESPONSE`, `BD_ERR_INVALID_ARGUMENT` (service NULL,
/// empty, not UTF-8, control characters; nothing sent).
///
/// # Safety
/// `service` must be NULL or a NUL-terminated string; `buf` NULL (with `len`
/// 0) or `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bd_container_id(
    service: *const c_char,
    buf: *mut c_char,
    len: usize,
) -> c_int {
    // SAFETY: the caller's promise, for `buf` and for `service`.
    unsafe {
        text_out(buf, len, || {
            let name = arg_service(service)?;
            client()?.container_id(name)
        })
    }
}

/// `GET /v2/containerId`. Writes the `services` JSON object text (service
/// name → container id) into `(buf, len)` and returns its full length.
/// Errors: `BD_ERR_INVALID_RESPONSE`, `BD_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `buf` must be NULL (with `len` 0) or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bd_container_ids_json(buf: *mut c_char, len: usize) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { text_out(buf, len, || client()?.container_ids_json()) }
}

/// `GET /v2/device/name`. Writes the `deviceName` string into `(buf, len)`
/// and returns its full length. Errors: `BD_ERR_INVALID_RESPONSE`,
/// `BD_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `buf` must be NULL (with `len` 0) or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bd_device_name(buf: *mut c_char, len: usize) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { text_out(buf, len, || client()?.device_name()) }
}

/// `GET /v2/device/tags`. Writes the `tags` JSON array text
/// (`[{"id","name","value"}]`) into `(buf, len)` and returns its full
/// length. Errors: `BD_ERR_SERVER` (500: no connection to the balena API),
/// `BD_ERR_INVALID_RESPONSE`, `BD_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `buf` must be NULL (with `len` 0) or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bd_device_tags_json(buf: *mut c_char, len: usize) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { text_out(buf, len, || client()?.device_tags_json()) }
}

/// `PATCH /v2/device/tags` with `json_object` (`{"name":"value",...}`) sent
/// as given. Returns `BD_OK` (202); `BD_ERR_INVALID_ARGUMENT` (NULL, not
/// UTF-8, not a JSON object; nothing sent), `BD_ERR_BAD_REQUEST` (400: a value
/// not a string, a name with white space), `BD_ERR_SERVER` (500).
///
/// # Safety
/// `json_object` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bd_set_device_tags_json(json_object: *const c_char) -> c_int {
    status(|| {
        // SAFETY: the caller's promise.
        let json = unsafe { arg_json_object(json_object, "json_object") }?;
        client()?.set_device_tags_json(json).map(done)
    })
}

/// `GET /v2/device/vpn`. On success writes `vpn.enabled` to `*enabled` and
/// `vpn.connected` to `*connected` and returns `BD_OK` (nothing is written
/// on error). Errors: `BD_ERR_INVALID_ARGUMENT` (a NULL pointer; nothing
/// sent), `BD_ERR_INVALID_RESPONSE`.
///
/// # Safety
/// `enabled` and `connected` must be NULL or valid `bool` pointers.
#[no_mangle]
pub unsafe extern "C" fn bd_vpn_status(enabled: *mut bool, connected: *mut bool) -> c_int {
    status(|| {
        if enabled.is_null() || connected.is_null() {
            return Err(Error::invalid("enabled or connected is NULL"));
        }
        let (e, c) = client()?.vpn_status()?;
        // SAFETY: both non-NULL and valid by the caller's promise.
        unsafe {
            *enabled = e;
            *connected = c;
        }
        Ok(0)
    })
}

/// `GET /v2/cleanup-volumes`: remove volumes no app references. Returns
/// `BD_OK`; `BD_ERR_SERVER` (503).
#[no_mangle]
pub extern "C" fn bd_cleanup_volumes() -> c_int {
    status(|| client()?.cleanup_volumes().map(done))
}

/// `GET /v2/local/target-state`. Writes the `state` JSON object text into
/// `(buf, len)` and returns its full length. Errors:
/// `BD_ERR_INVALID_RESPONSE`, `BD_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `buf` must be NULL (with `len` 0) or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bd_local_target_state_json(buf: *mut c_char, len: usize) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { text_out(buf, len, || client()?.local_target_state_json()) }
}

/// `POST /v2/local/target-state` with `json` (a JSON object) as the body.
/// Returns `BD_OK`; `BD_ERR_INVALID_ARGUMENT` (NULL, not UTF-8, not a JSON
/// object; nothing sent), `BD_ERR_BAD_REQUEST` (400: device not in local
/// mode, or an invalid state). A malformed state (e.g. an `apps` key that is
/// not a number) can make the supervisor process exit: the call then fails
/// with `BD_ERR_IO` (the connection dropped) and later calls with
/// `BD_ERR_CONNECT` until the supervisor is back.
///
/// # Safety
/// `json` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bd_set_local_target_state_json(json: *const c_char) -> c_int {
    status(|| {
        // SAFETY: the caller's promise.
        let json = unsafe { arg_json_object(json, "json") }?;
        client()?.set_local_target_state_json(json).map(done)
    })
}

/// `GET /v2/local/device-info`. Writes the `info` JSON object text
/// (`{"arch","deviceType"}`) into `(buf, len)` and returns its full length.
/// Errors: `BD_ERR_SERVER` (500), `BD_ERR_INVALID_RESPONSE`,
/// `BD_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `buf` must be NULL (with `len` 0) or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bd_device_info_json(buf: *mut c_char, len: usize) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { text_out(buf, len, || client()?.device_info_json()) }
}

/// Deliver each line to `cb`, NUL-terminated, through a reused buffer.
/// The stream callback as a line sink; NULL is `BD_ERR_INVALID_ARGUMENT`.
fn line_sink(cb: bd_line_cb, userdata: *mut c_void) -> Result<impl FnMut(&[u8]) -> bool> {
    let f = cb.ok_or_else(|| Error::invalid("cb is NULL"))?;
    let mut scratch: Vec<u8> = Vec::new();
    Ok(move |line: &[u8]| {
        scratch.clear();
        scratch.extend_from_slice(line);
        scratch.push(0);
        // SAFETY: the caller gave a valid callback; the line outlives the call.
        unsafe { f(scratch.as_ptr().cast(), line.len(), userdata) == 0 }
    })
}

/// `POST /v2/journal-logs` with `options_json` as the body (a JSON object,
/// e.g. `{"count":10,"format":"json"}`, sent as given; `"follow":true`
/// keeps it open). The way to read a managed device's logs. Each line of the
/// answer goes to `cb` as it arrives; `cb` returning non-zero stops the
/// stream and closes the connection. Returns `BD_OK` when the stream ends
/// (also when the supervisor closes it), is stopped by `cb` or by
/// `bd_stop_streams`; `BD_ERR_TIMEOUT` when connecting or the answer's head
/// takes longer than the request timeout, or when a stream timeout is set
/// (`bd_set_stream_timeout_ms`) and no byte arrives for it (a followed
/// journal on a quiet device may stay silent: by default it waits); `BD_ERR_INVALID_ARGUMENT` (NULL options or
/// callback, options not a JSON object; nothing sent); `BD_ERR_TOO_LARGE` (a
/// line over 1 MiB).
///
/// # Safety
/// `options_json` must be NULL or a NUL-terminated string; `cb` NULL or a
/// valid function; `userdata` is passed through untouched.
#[no_mangle]
pub unsafe extern "C" fn bd_journal_logs(
    options_json: *const c_char,
    cb: bd_line_cb,
    userdata: *mut c_void,
) -> c_int {
    status(|| {
        // SAFETY: the caller's promise.
        let options = unsafe { arg_json_object(options_json, "options_json") }?;
        let mut sink = line_sink(cb, userdata)?;
        client()?.journal_logs(options, &mut sink).map(done)
    })
}

/// `GET /v2/local/logs` (NDJSON, open until the caller stops). **Local mode
/// only**: on a managed device the supervisor sends one line (`Streaming
/// logs`) and then nothing for as long as the connection stays open; use
/// `bd_journal_logs` there. Each line goes to `cb` as it arrives; `cb`
/// returning non-zero stops the stream and closes the connection. Returns
/// `BD_OK` when stopped (by `cb` or `bd_stop_streams`) or ended;
/// `BD_ERR_TIMEOUT` as for `bd_journal_logs`; `BD_ERR_INVALID_ARGUMENT` (NULL
/// callback; nothing sent); `BD_ERR_TOO_LARGE` (a line over 1 MiB).
///
/// # Safety
/// `cb` must be NULL or a valid function; `userdata` is passed through.
#[no_mangle]
pub unsafe extern "C" fn bd_local_logs(cb: bd_line_cb, userdata: *mut c_void) -> c_int {
    status(|| {
        let mut sink = line_sink(cb, userdata)?;
        client()?.local_logs(&mut sink).map(done)
    })
}

/// `GET /v1/device` into `*out` (written only on success). Strings are
/// truncated to their field and NUL-terminated, `""` when absent or null;
/// `download_progress` -1 and `api_port` 0 and booleans false when absent or
/// null. Returns `BD_OK`; `BD_ERR_INVALID_ARGUMENT` (`out` NULL; nothing
/// sent), `BD_ERR_INVALID_RESPONSE` (not an object, a field of the wrong type).
///
/// # Safety
/// `out` must be NULL or point to a writable `bd_device_state`.
#[no_mangle]
pub unsafe extern "C" fn bd_state(out: *mut bd_device_state) -> c_int {
    status(|| {
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        let v = bd_device_state::from(&client()?.device_state()?);
        // SAFETY: non-NULL and writable by the caller's promise.
        unsafe { out.write(v) };
        Ok(0)
    })
}

/// Poll `GET /ping` (every 100 ms) until it answers 200 or `timeout_ms` has
/// passed; each ping is bounded by the time left. Returns `BD_OK` as soon as
/// the supervisor answers; `BD_ERR_TIMEOUT` when it never did (the last
/// error says why); `BD_ERR_INVALID_ARGUMENT` for 0; `BD_ERR_NOT_CONFIGURED`.
#[no_mangle]
pub extern "C" fn bd_wait_for_supervisor(timeout_ms: u32) -> c_int {
    status(|| {
        let timeout = check_timeout_ms(timeout_ms)?;
        client()?.wait_for_supervisor(timeout).map(done)
    })
}

// ---------------------------------------------------------------- update locks

/// Take the update lock: create the lock file (default
/// `/tmp/balena/updates.lock`, parent directories as needed) with
/// `O_CREAT|O_EXCL`, hold an exclusive `flock` on it until
/// `bd_unlock_updates`, and write into it that this library made it and the
/// holder's pid. A file with that record whose flock is free was left by a
/// process that is gone: it is taken over (race-free: of several processes,
/// exactly one succeeds). Sends nothing. Returns `BD_OK`; `BD_ERR_LOCKED`
/// when any other file exists there (also when this process holds it; see
/// `bd_update_lock_holder`); `BD_ERR_IO` when it cannot be created (the
/// message says why, e.g. the path is a directory). After `fork()` the child
/// does not hold its parent's lock.
#[no_mangle]
pub extern "C" fn bd_lock_updates() -> c_int {
    status(|| lock::lock_updates().map(done))
}

/// Release the update lock: remove the file only if the path still names the
/// file this process created (same device and inode), then release the
/// `flock`. Returns `BD_OK` (also when not held); `BD_ERR_IO` when the file
/// cannot be removed.
#[no_mangle]
pub extern "C" fn bd_unlock_updates() -> c_int {
    status(|| lock::unlock_updates().map(done))
}

/// Whether the update lock file exists now, whoever created it (with the
/// default path, the legacy `/tmp/resin/resin-updates.lock` counts too): 1
/// yes, 0 no, `BD_ERR_IO` when it cannot be checked.
#[no_mangle]
pub extern "C" fn bd_updates_locked() -> c_int {
    status(|| lock::updates_locked().map(flag))
}

/// Use `path` (absolute) for the update lock file; NULL restores the
/// default `/tmp/balena/updates.lock`. Returns `BD_OK`;
/// `BD_ERR_INVALID_ARGUMENT` (empty, relative, ending in `/`, not UTF-8);
/// `BD_ERR_LOCKED` while this process holds the lock.
///
/// # Safety
/// `path` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bd_set_update_lock_path(path: *const c_char) -> c_int {
    status(|| {
        // SAFETY: the caller's promise.
        let path = unsafe { opt_str(path, "path") }?;
        lock::set_lock_path(path).map(done)
    })
}

// ---------------------------------------------------------------- streams

/// The longest silence a log stream (`bd_journal_logs`, `bd_local_logs`) may
/// have before it ends with `BD_ERR_TIMEOUT`, in milliseconds; **0, the
/// default, is no limit** (a followed journal on a quiet device waits for
/// lines). Connecting and the answer's head stay bounded by the request
/// timeout. Applies to streams started afterwards; `bd_cleanup` restores 0.
/// Sends nothing. Returns `BD_OK`.
#[no_mangle]
pub extern "C" fn bd_set_stream_timeout_ms(ms: u32) -> c_int {
    status(|| {
        client::set_stream_timeout_ms(ms);
        Ok(0)
    })
}

/// Make every log stream in progress in this process return `BD_OK` soon
/// (within about 100 ms), as if its callback had asked to stop; streams
/// started afterwards are not affected. Callable from any thread, and
/// async-signal-safe (one atomic increment): a SIGINT/SIGTERM handler may
/// call it. Sends nothing.
#[no_mangle]
pub extern "C" fn bd_stop_streams() {
    client::stop_streams();
}

// ---------------------------------------------------------------- lock holder

/// Who holds the update lock (`bd_update_lock_holder`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum bd_lock_holder {
    /// No lock file.
    BD_LOCK_NONE = 0,
    /// Taken by `bd_lock_updates` in this process.
    BD_LOCK_THIS_PROCESS = 1,
    /// Anyone else: another process of the container, a shell
    /// `lockfile`/`flock`, a file of unknown origin.
    BD_LOCK_OTHER = 2,
    /// The file is owned by uid 65534: the supervisor itself is stopping or
    /// updating services.
    BD_LOCK_SUPERVISOR = 3,
    /// Left by a `bd_lock_updates` of a process that is gone (its flock is
    /// free); the next `bd_lock_updates` takes it over.
    BD_LOCK_STALE = 4,
}

/// Who holds the update lock at the current path (with the default path,
/// the legacy `/tmp/resin/resin-updates.lock` counts too). Sends nothing.
/// Returns a `bd_lock_holder` (>= 0), or `BD_ERR_IO` when the path cannot be
/// checked.
#[no_mangle]
pub extern "C" fn bd_update_lock_holder() -> c_int {
    status(|| {
        let holder = match lock::update_lock_holder()? {
            lock::Holder::None => bd_lock_holder::BD_LOCK_NONE,
            lock::Holder::ThisProcess => bd_lock_holder::BD_LOCK_THIS_PROCESS,
            lock::Holder::Other => bd_lock_holder::BD_LOCK_OTHER,
            lock::Holder::Supervisor => bd_lock_holder::BD_LOCK_SUPERVISOR,
            lock::Holder::Stale => bd_lock_holder::BD_LOCK_STALE,
        };
        Ok(holder as c_int)
    })
}

/// Like `bd_lock_updates`, retrying (every 10 to 200 ms) until the lock is
/// taken or `timeout_ms` has passed. Sends nothing. Returns `BD_OK`;
/// `BD_ERR_LOCKED` when the time is up (the message says how long it
/// waited) or this process already holds the lock; `BD_ERR_IO` as
/// `bd_lock_updates`.
#[no_mangle]
pub extern "C" fn bd_lock_updates_wait(timeout_ms: u32) -> c_int {
    status(|| {
        lock::lock_updates_wait(std::time::Duration::from_millis(u64::from(timeout_ms))).map(done)
    })
}
