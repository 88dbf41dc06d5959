//! One function per supervisor endpoint, on [`Client`]. Each sends the request
//! of `c-api.md`, checks the answer against what the endpoint documents and
//! returns it typed, or an [`Error`] whose kind is the contract's status.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::Value;

use crate::client::{percent_encode, Client, Request, Response};
use crate::config::app_id_from_env;
use crate::error::{Error, ErrorKind, Result};

/// App id meaning "this app" (`BALENA_APP_ID`, else `RESIN_APP_ID`).
pub const CURRENT_APP: u32 = 0;

/// Which service a v2 service action addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service<'a> {
    /// By service name.
    Name(&'a str),
    /// By image id.
    Image(u32),
}

/// The v2 service actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceAction {
    /// `restart-service`
    Restart,
    /// `stop-service`
    Stop,
    /// `start-service`
    Start,
}

impl ServiceAction {
    fn path_segment(self) -> &'static str {
        match self {
            ServiceAction::Restart => "restart-service",
            ServiceAction::Stop => "stop-service",
            ServiceAction::Start => "start-service",
        }
    }
}

/// `GET /v1/device`, typed. Absent or null fields are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// `status`
    pub status: Option<String>,
    /// `commit`
    pub commit: Option<String>,
    /// `os_version`
    pub os_version: Option<String>,
    /// `supervisor_version`
    pub supervisor_version: Option<String>,
    /// `ip_address`
    pub ip_address: Option<String>,
    /// `mac_address`
    pub mac_address: Option<String>,
    /// `download_progress`
    pub download_progress: Option<i32>,
    /// `api_port`
    pub api_port: Option<u16>,
    /// `update_pending`
    pub update_pending: Option<bool>,
    /// `update_downloaded`
    pub update_downloaded: Option<bool>,
    /// `update_failed`
    pub update_failed: Option<bool>,
}

/// Resolve [`CURRENT_APP`] to this app's id.
pub fn resolve_app_id(app_id: u32) -> Result<u32> {
    if app_id == CURRENT_APP {
        app_id_from_env()
    } else {
        Ok(app_id)
    }
}

/// JSON text from the caller, checked once to be a JSON object (what the
/// supervisor's `JSON.parse` accepts, see [`crate::json`]) and then sent
/// exactly as given (the library never adds or overwrites a key in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonObject<'a>(&'a str);

impl<'a> JsonObject<'a> {
    /// `text` if it is a JSON object; else [`ErrorKind::InvalidArgument`]
    /// naming `what`.
    pub fn new(text: &'a str, what: &str) -> Result<JsonObject<'a>> {
        match crate::json::is_object(text) {
            Ok(true) => Ok(JsonObject(text)),
            Ok(false) => Err(Error::invalid(format!("{what} must be a JSON object"))),
            Err(e) => Err(Error::invalid(format!("{what} is not valid JSON: {e}"))),
        }
    }

    /// The text, as given.
    pub fn as_str(self) -> &'a str {
        self.0
    }
}

/// Check a service name: not empty, no control characters (`what` names it
/// in the message).
pub fn check_service_name(name: &str, what: &str) -> Result<()> {
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{what} is empty or contains control characters"
        )));
    }
    Ok(())
}

fn force_body(force: bool) -> &'static str {
    if force {
        r#"{"force":true}"#
    } else {
        r#"{"force":false}"#
    }
}

fn invalid_response(req: &Request<'_>, resp: &Response, why: &str) -> Error {
    Error::new(
        ErrorKind::InvalidResponse,
        format!("{}: {} (HTTP {})", req.label(), why, resp.status),
    )
    .with_http_status(resp.status)
}

fn body_text<'r>(req: &Request<'_>, resp: &'r Response) -> Result<&'r str> {
    std::str::from_utf8(&resp.body)
        .map_err(|_| invalid_response(req, resp, "the answer is not UTF-8 text"))
}

impl Client {
    /// Send `req`; any status outside `ok` is an error.
    fn call(&self, req: &Request<'_>, ok: &[u16]) -> Result<Response> {
        let resp = self.send(req)?;
        self.expect(req, resp, ok)
    }

    /// `resp` to `req` if its status is in `ok`, else the error for it.
    fn expect(&self, req: &Request<'_>, resp: Response, ok: &[u16]) -> Result<Response> {
        if ok.contains(&resp.status) {
            Ok(resp)
        } else {
            Err(self.status_error(req, &resp))
        }
    }

    /// Send `req`, expect 200 and a JSON object; return the object's text as sent.
    fn object_text(&self, req: &Request<'_>) -> Result<String> {
        let resp = self.call(req, &[200])?;
        let text = body_text(req, &resp)?.trim();
        match serde_json::from_str::<&RawValue>(text) {
            Ok(_) if text.starts_with('{') => Ok(text.to_string()),
            _ => Err(invalid_response(
                req,
                &resp,
                "the answer is not a JSON object",
            )),
        }
    }

    /// Send `req`, expect 200 and a JSON object; return its `field` as sent.
    fn field(&self, req: &Request<'_>, field: &str) -> Result<(Box<RawValue>, Response)> {
        let resp = self.call(req, &[200])?;
        let mut map = serde_json::from_slice::<HashMap<String, Box<RawValue>>>(&resp.body)
            .map_err(|_| invalid_response(req, &resp, "the answer is not a JSON object"))?;
        match map.remove(field) {
            Some(v) => Ok((v, resp)),
            None => Err(invalid_response(
                req,
                &resp,
                &format!("the answer has no {field:?} field"),
            )),
        }
    }

    /// `field` of the answer, which must be a JSON object; its text as sent.
    fn field_object(&self, req: &Request<'_>, field: &str) -> Result<String> {
        self.field_of_kind(req, field, '{', "an object")
    }

    fn field_of_kind(
        &self,
        req: &Request<'_>,
        field: &str,
        open: char,
        kind: &str,
    ) -> Result<String> {
        let (raw, resp) = self.field(req, field)?;
        if raw.get().starts_with(open) {
            Ok(raw.get().to_string())
        } else {
            Err(invalid_response(
                req,
                &resp,
                &format!("the {field:?} field is not {kind}"),
            ))
        }
    }

    /// `field` of the answer, which must be a JSON string; its value.
    fn field_string(&self, req: &Request<'_>, field: &str) -> Result<String> {
        let (raw, resp) = self.field(req, field)?;
        match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::String(s)) => Ok(s),
            _ => Err(invalid_response(
                req,
                &resp,
                &format!("the {field:?} field is not a string"),
            )),
        }
    }

    // ---- V1 ----

    /// `GET /ping` (no key). Ok when the supervisor answers 200.
    pub fn ping(&self) -> Result<()> {
        let req = Request::get("/ping").without_key();
        let resp = self.send(&req)?;
        self.expect(&req, resp, &[200]).map(drop)
    }

    /// `GET /ping` bounded by `timeout_ms` instead of the client's timeout.
    pub fn ping_within(&self, timeout_ms: u32) -> Result<()> {
        let req = Request::get("/ping").without_key();
        let resp = self.send_within(&req, Duration::from_millis(u64::from(timeout_ms)))?;
        self.expect(&req, resp, &[200]).map(drop)
    }

    /// `GET /v1/healthy` (no key): `true` on 200, `false` on 500 (unhealthy).
    pub fn healthy(&self) -> Result<bool> {
        let req = Request::get("/v1/healthy").without_key();
        let resp = self.send(&req)?;
        match resp.status {
            200 => Ok(true),
            500 => Ok(false),
            _ => Err(self.status_error(&req, &resp)),
        }
    }

    /// `POST /v1/blink`: the device's LED blinks for 15 s.
    pub fn blink(&self) -> Result<()> {
        self.call(&Request::post("/v1/blink"), &[200]).map(drop)
    }

    /// `POST /v1/reboot {"force":b}`. 423 (lock held) is [`ErrorKind::Locked`].
    pub fn reboot(&self, force: bool) -> Result<()> {
        let req = Request::post("/v1/reboot").json(force_body(force)).action();
        self.call(&req, &[200, 202]).map(drop)
    }

    /// `POST /v1/shutdown {"force":b}`. 423 (lock held) is [`ErrorKind::Locked`].
    pub fn shutdown(&self, force: bool) -> Result<()> {
        let req = Request::post("/v1/shutdown")
            .json(force_body(force))
            .action();
        self.call(&req, &[200, 202]).map(drop)
    }

    /// `POST /v1/update {"force":b}`: ok on 202 (accepted) or 204 (applied now).
    pub fn update(&self, force: bool) -> Result<()> {
        let req = Request::post("/v1/update").json(force_body(force)).action();
        self.call(&req, &[200, 202, 204]).map(drop)
    }

    /// `POST /v1/update {"force":b,"cancel":true}`: abandon the apply in
    /// progress and apply the newest target state. Ok on 202 or 204.
    pub fn update_cancel(&self, force: bool) -> Result<()> {
        let body = if force {
            r#"{"force":true,"cancel":true}"#
        } else {
            r#"{"force":false,"cancel":true}"#
        };
        let req = Request::post("/v1/update").json(body).action();
        self.call(&req, &[200, 202, 204]).map(drop)
    }

    /// `POST /v1/purge {"appId":N}`.
    pub fn purge(&self, app_id: u32) -> Result<()> {
        let app_id = resolve_app_id(app_id)?;
        let body = format!(r#"{{"appId":{app_id}}}"#);
        self.call(&Request::post("/v1/purge").json(&body).action(), &[200])
            .map(drop)
    }

    /// `POST /v1/restart {"appId":N}`.
    pub fn restart(&self, app_id: u32) -> Result<()> {
        let app_id = resolve_app_id(app_id)?;
        let body = format!(r#"{{"appId":{app_id}}}"#);
        self.call(&Request::post("/v1/restart").json(&body).action(), &[200])
            .map(drop)
    }

    /// `POST /v1/regenerate-api-key`: the new key. From now on this client
    /// sends the new key (the supervisor rejects the old one at once).
    pub fn regenerate_api_key(&self) -> Result<String> {
        let req = Request::post("/v1/regenerate-api-key");
        let resp = self.call(&req, &[200])?;
        let key = body_text(&req, &resp)?.trim();
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid_response(
                &req,
                &resp,
                "the answer is not an API key (a run of word characters)",
            ));
        }
        let key = key.to_string();
        let old = self.api_key();
        self.set_api_key(&key);
        crate::config::note_replaced_key(&old, &key);
        Ok(key)
    }

    /// `GET /v1/apps/:appId`: the app's JSON object text.
    pub fn app_state_json(&self, app_id: u32) -> Result<String> {
        let path = format!("/v1/apps/{}", resolve_app_id(app_id)?);
        self.object_text(&Request::get(&path))
    }

    fn container_id_of(&self, req: &Request<'_>) -> Result<String> {
        self.field_string(req, "containerId")
    }

    /// `POST /v1/apps/:appId/start`: the container id. Never locked.
    pub fn start_app(&self, app_id: u32) -> Result<String> {
        let path = format!("/v1/apps/{}/start", resolve_app_id(app_id)?);
        self.container_id_of(&Request::post(&path).action())
    }

    /// `POST /v1/apps/:appId/stop {"force":b}`: the container id.
    pub fn stop_app(&self, app_id: u32, force: bool) -> Result<String> {
        let path = format!("/v1/apps/{}/stop", resolve_app_id(app_id)?);
        self.container_id_of(&Request::post(&path).json(force_body(force)).action())
    }

    /// `GET /v1/device`: the JSON object text.
    pub fn state_json(&self) -> Result<String> {
        self.object_text(&Request::get("/v1/device"))
    }

    /// `GET /v1/device`, typed. Fields of the wrong type are
    /// [`ErrorKind::InvalidResponse`]; absent or null ones are `None`.
    pub fn device_state(&self) -> Result<DeviceState> {
        let req = Request::get("/v1/device");
        let resp = self.call(&req, &[200])?;
        let map = match serde_json::from_slice::<Value>(&resp.body) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(invalid_response(
                    &req,
                    &resp,
                    "the answer is not a JSON object",
                ))
            }
        };
        let wrong = |field: &str, want: &str| {
            invalid_response(&req, &resp, &format!("{field:?} is not {want}"))
        };
        let string = |field: &str| match map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(wrong(field, "a string")),
        };
        let boolean = |field: &str| match map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(wrong(field, "a boolean")),
        };
        let download_progress = match map.get("download_progress") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) if f.is_finite() => Some(f.clamp(i32::MIN as f64, i32::MAX as f64) as i32),
                _ => return Err(wrong("download_progress", "a number")),
            },
            Some(_) => return Err(wrong("download_progress", "a number")),
        };
        let api_port = match map.get("api_port") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64().and_then(|p| u16::try_from(p).ok()) {
                Some(p) => Some(p),
                None => return Err(wrong("api_port", "a port number")),
            },
            Some(_) => return Err(wrong("api_port", "a port number")),
        };
        Ok(DeviceState {
            status: string("status")?,
            commit: string("commit")?,
            os_version: string("os_version")?,
            supervisor_version: string("supervisor_version")?,
            ip_address: string("ip_address")?,
            mac_address: string("mac_address")?,
            download_progress,
            api_port,
            update_pending: boolean("update_pending")?,
            update_downloaded: boolean("update_downloaded")?,
            update_failed: boolean("update_failed")?,
        })
    }

    /// `GET /v1/device/host-config`: the JSON object text.
    pub fn host_config_json(&self) -> Result<String> {
        self.object_text(&Request::get("/v1/device/host-config"))
    }

    /// `PATCH /v1/device/host-config` with the caller's JSON object as given
    /// (its own `force` included).
    pub fn set_host_config_json(&self, json: JsonObject<'_>) -> Result<()> {
        let req = Request::patch("/v1/device/host-config").json(json.as_str());
        self.call(&req, &[200]).map(drop)
    }

    // ---- V2 ----

    /// `GET /v2/applications/state`: the JSON object text.
    pub fn applications_state_json(&self) -> Result<String> {
        self.object_text(&Request::get("/v2/applications/state"))
    }

    /// `GET /v2/applications/:appId/state`: the JSON object text.
    pub fn application_state_json(&self, app_id: u32) -> Result<String> {
        let path = format!("/v2/applications/{}/state", resolve_app_id(app_id)?);
        self.object_text(&Request::get(&path))
    }

    /// `GET /v2/state/status`: the JSON object text.
    pub fn state_status_json(&self) -> Result<String> {
        self.object_text(&Request::get("/v2/state/status"))
    }

    /// `POST /v2/applications/:appId/{restart,stop,start}-service` with
    /// `{"serviceName":s,"force":b}` or `{"imageId":N,"force":b}`.
    pub fn service_action(
        &self,
        app_id: u32,
        action: ServiceAction,
        service: Service<'_>,
        force: bool,
    ) -> Result<()> {
        let body = match service {
            Service::Name(name) => {
                check_service_name(name, "the service name")?;
                serde_json::json!({ "serviceName": name, "force": force }).to_string()
            }
            Service::Image(id) => format!(r#"{{"imageId":{id},"force":{force}}}"#),
        };
        let path = format!(
            "/v2/applications/{}/{}",
            resolve_app_id(app_id)?,
            action.path_segment()
        );
        self.call(&Request::post(&path).json(&body).action(), &[200])
            .map(drop)
    }

    /// `POST /v2/applications/:appId/restart {"force":b}`.
    pub fn restart_app(&self, app_id: u32, force: bool) -> Result<()> {
        let path = format!("/v2/applications/{}/restart", resolve_app_id(app_id)?);
        self.call(
            &Request::post(&path).json(force_body(force)).action(),
            &[200],
        )
        .map(drop)
    }

    /// `POST /v2/applications/:appId/purge {"force":b}`.
    pub fn purge_app(&self, app_id: u32, force: bool) -> Result<()> {
        let path = format!("/v2/applications/{}/purge", resolve_app_id(app_id)?);
        self.call(
            &Request::post(&path).json(force_body(force)).action(),
            &[200],
        )
        .map(drop)
    }

    /// `GET /v2/version`: the `version` string.
    pub fn supervisor_version(&self) -> Result<String> {
        self.field_string(&Request::get("/v2/version"), "version")
    }

    /// `GET /v2/containerId?service=s`: the container id of the service.
    pub fn container_id(&self, service: &str) -> Result<String> {
        check_service_name(service, "the service name")?;
        let path = format!("/v2/containerId?service={}", percent_encode(service));
        self.field_string(&Request::get(&path), "containerId")
    }

    /// `GET /v2/containerId`: the `services` object text (name → id).
    pub fn container_ids_json(&self) -> Result<String> {
        self.field_object(&Request::get("/v2/containerId"), "services")
    }

    /// `GET /v2/device/name`: the `deviceName` string.
    pub fn device_name(&self) -> Result<String> {
        self.field_string(&Request::get("/v2/device/name"), "deviceName")
    }

    /// `GET /v2/device/tags`: the `tags` array text.
    pub fn device_tags_json(&self) -> Result<String> {
        self.field_of_kind(&Request::get("/v2/device/tags"), "tags", '[', "an array")
    }

    /// `PATCH /v2/device/tags` with the caller's JSON object as given.
    pub fn set_device_tags_json(&self, json: JsonObject<'_>) -> Result<()> {
        let req = Request::patch("/v2/device/tags").json(json.as_str());
        self.call(&req, &[200, 202]).map(drop)
    }

    /// `GET /v2/device/vpn`: `(enabled, connected)`.
    pub fn vpn_status(&self) -> Result<(bool, bool)> {
        let req = Request::get("/v2/device/vpn");
        let (raw, resp) = self.field(&req, "vpn")?;
        let vpn = serde_json::from_str::<Value>(raw.get()).unwrap_or(Value::Null);
        match (
            vpn.get("enabled").and_then(Value::as_bool),
            vpn.get("connected").and_then(Value::as_bool),
        ) {
            (Some(e), Some(c)) => Ok((e, c)),
            _ => Err(invalid_response(
                &req,
                &resp,
                "\"vpn\" lacks the booleans \"enabled\" and \"connected\"",
            )),
        }
    }

    /// `GET /v2/cleanup-volumes`.
    pub fn cleanup_volumes(&self) -> Result<()> {
        self.call(&Request::get("/v2/cleanup-volumes"), &[200])
            .map(drop)
    }

    /// `GET /v2/local/target-state`: the `state` object text.
    pub fn local_target_state_json(&self) -> Result<String> {
        self.field_object(&Request::get("/v2/local/target-state"), "state")
    }

    /// `POST /v2/local/target-state` with the caller's JSON object as given.
    pub fn set_local_target_state_json(&self, json: JsonObject<'_>) -> Result<()> {
        let req = Request::post("/v2/local/target-state").json(json.as_str());
        self.call(&req, &[200]).map(drop)
    }

    /// `GET /v2/local/device-info`: the `info` object text.
    pub fn device_info_json(&self) -> Result<String> {
        self.field_object(&Request::get("/v2/local/device-info"), "info")
    }

    /// `POST /v2/journal-logs` with the caller's options object as body; each
    /// line goes to `on_line` as it arrives (return `false` to stop).
    pub fn journal_logs(
        &self,
        options: JsonObject<'_>,
        on_line: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        let req = Request::post("/v2/journal-logs").json(options.as_str());
        self.stream_lines(&req, on_line)
    }

    /// `GET /v2/local/logs` (NDJSON); each line goes to `on_line` as it
    /// arrives (return `false` to stop).
    pub fn local_logs(&self, on_line: &mut dyn FnMut(&[u8]) -> bool) -> Result<()> {
        self.stream_lines(&Request::get("/v2/local/logs"), on_line)
    }

    /// Poll `GET /ping` until it answers 200 or `timeout` has passed
    /// ([`ErrorKind::Timeout`]). Each ping is bounded by the time left.
    pub fn wait_for_supervisor(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last: Option<Error> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = last.map(|e| e.message().to_string()).unwrap_or_default();
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the supervisor at {} did not answer GET /ping within {} ms (last: {why})",
                        self.address().base(),
                        timeout.as_millis()
                    ),
                ));
            }
            let ping_ms = u32::try_from(left.as_millis().max(1)).unwrap_or(u32::MAX);
            match self.ping_within(ping_ms) {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            let pause =
                Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now()));
            std::thread::sleep(pause);
        }
    }
}
