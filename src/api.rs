//! The admin HTTP API: each handler validates a request into a Registry message and turns the
//! Registry's answer into a response. Every error is JSON `{"error": ...}` naming what is wrong.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use thiserror::Error;

use menet_actors::registry::{
    AddService, AddTunnel, AdminError, DeleteService, DeleteTunnel, GetConfig, Registry,
    ServiceSpec, SetBind,
};
use menet_actors::Side;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest name of a tunnel or service (it travels in a one-byte length on the wire).
const MAX_NAME: usize = 255;

#[derive(Debug, Error)]
#[error("{message}")]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({ "error": self.message }))
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> ApiError {
        let status = match e {
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
            AdminError::Unreachable(_) => StatusCode::BAD_GATEWAY,
            AdminError::Unsaved(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("registry unavailable: {e}"),
        )
    }
}

type Reply = Result<HttpResponse, ApiError>;

pub fn routes(cfg: &mut web::ServiceConfig, registry: Addr<Registry>) {
    cfg.app_data(web::Data::new(registry))
        .service(
            web::resource("/tunnel")
                .route(web::post().to(post_tunnel))
                .route(web::delete().to(delete_tunnel))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/service")
                .route(web::post().to(post_service))
                .route(web::delete().to(delete_service))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/bind")
                .route(web::post().to(post_bind))
                .route(web::delete().to(delete_bind))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/config")
                .route(web::get().to(get_config))
                .default_service(web::to(method_not_allowed)),
        )
        .default_service(web::to(not_found));
    #[cfg(feature = "fault-injection")]
    cfg.service(web::resource("/fault").route(web::post().to(post_fault)));
}

/// Test-only: `{"actor": "registry"}`, `{"actor": "tunnel-port"}`,
/// `{"actor": "listener", "service": S}`, `{"actor": "tunnel", "tunnel": T}` or
/// `{"actor": "connection", "tunnel": T, "stream": N}` makes that actor panic.
#[cfg(feature = "fault-injection")]
async fn post_fault(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    use menet_actors::registry::InjectFault;
    let body = read_object(body).await?;
    let msg =
        match field(&body, "actor")?.as_str() {
            Some("registry") => InjectFault::Registry,
        Some("tunnel-port") => InjectFault::TunnelPort,
            Some("listener") => InjectFault::Listener {
                service: name(&body, "service")?,
            },
            Some("tunnel") => InjectFault::Tunnel {
                name: name(&body, "tunnel")?,
            },
            Some("connection") => InjectFault::Connection {
                tunnel: name(&body, "tunnel")?,
                stream: field(&body, "stream")?
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| ApiError::bad("field \"stream\" must be a stream id"))?,
            },
            _ => return Err(ApiError::bad(
                "field \"actor\" must be \"registry\", \"tunnel-port\", \"listener\", \"tunnel\" or \"connection\"",
            )),
        };
    registry.send(msg).await??;
    ok()
}

fn ok() -> Reply {
    Ok(HttpResponse::Ok().json(json!({"ok": true})))
}

async fn method_not_allowed() -> Reply {
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this path",
    ))
}

async fn not_found() -> Reply {
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "no such path: use /tunnel, /service, /bind or /config",
    ))
}

async fn post_tunnel(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    let body = read_object(body).await?;
    let msg = AddTunnel {
        name: name(&body, "name")?,
        dest: endpoint(&body, "dest")?,
    };
    registry.send(msg).await??;
    ok()
}

async fn delete_tunnel(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    let body = read_object(body).await?;
    let msg = DeleteTunnel {
        name: name(&body, "name")?,
    };
    registry.send(msg).await??;
    ok()
}

async fn post_service(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    let body = read_object(body).await?;
    let spec = ServiceSpec {
        name: name(&body, "name")?,
        key: key(&body)?,
        timeout: timeout(&body)?,
        side: side(&body)?,
        addr: endpoint(&body, "addr")?,
    };
    registry.send(AddService(spec)).await??;
    ok()
}

async fn delete_service(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    let body = read_object(body).await?;
    let msg = DeleteService {
        name: name(&body, "name")?,
        side: side(&body)?,
    };
    registry.send(msg).await??;
    ok()
}

async fn post_bind(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    bind(registry, body, true).await
}

async fn delete_bind(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    bind(registry, body, false).await
}

async fn bind(registry: web::Data<Addr<Registry>>, body: web::Payload, bound: bool) -> Reply {
    let body = read_object(body).await?;
    let msg = SetBind {
        tunnel: name(&body, "tunnel")?,
        service: name(&body, "service")?,
        side: side(&body)?,
        bound,
    };
    registry.send(msg).await??;
    ok()
}

async fn get_config(registry: web::Data<Addr<Registry>>) -> Reply {
    let config = registry.send(GetConfig).await?;
    Ok(HttpResponse::Ok().json(config))
}

/// Reads the body as JSON whatever the Content-Type says (`curl -d` sends a form type).
async fn read_object(mut payload: web::Payload) -> Result<Map<String, Value>, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is over {MAX_BODY} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad("body must be a JSON object")),
        Err(e) => Err(ApiError::bad(format!("body is not valid JSON: {e}"))),
    }
}

fn field<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a Value, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Err(ApiError::bad(format!("missing field \"{field}\""))),
        Some(v) => Ok(v),
    }
}

fn name(body: &Map<String, Value>, f: &str) -> Result<String, ApiError> {
    match field(body, f)? {
        Value::String(s) if s.is_empty() => {
            Err(ApiError::bad(format!("field \"{f}\" must not be empty")))
        }
        Value::String(s) if s.len() > MAX_NAME => Err(ApiError::bad(format!(
            "field \"{f}\" is longer than {MAX_NAME} bytes"
        ))),
        Value::String(s) => Ok(s.clone()),
        _ => Err(ApiError::bad(format!("field \"{f}\" must be a string"))),
    }
}

fn side(body: &Map<String, Value>) -> Result<Side, ApiError> {
    match field(body, "type")?.as_str() {
        Some("local") => Ok(Side::Local),
        Some("remote") => Ok(Side::Remote),
        _ => Err(ApiError::bad(
            "field \"type\" must be \"local\" or \"remote\"",
        )),
    }
}

/// `[ip, port]`, the port a JSON number or a string of digits, 1..=65535.
fn endpoint(body: &Map<String, Value>, f: &str) -> Result<SocketAddr, ApiError> {
    let shape = || ApiError::bad(format!("field \"{f}\" must be [ip, port]"));
    let pair = field(body, f)?.as_array().ok_or_else(shape)?;
    let [ip, port] = pair.as_slice() else {
        return Err(shape());
    };
    let ip: IpAddr = ip
        .as_str()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| ApiError::bad(format!("field \"{f}\": {ip} is not an IP address")))?;
    let port = match port {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .filter(|p| (1..=65535).contains(p))
    .ok_or_else(|| {
        ApiError::bad(format!(
            "field \"{f}\": port {port} is not a number in 1..65535"
        ))
    })?;
    Ok(SocketAddr::new(ip, port as u16))
}

/// Optional; an empty key is the same as none (plaintext).
fn key(body: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match body.get("key") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad("field \"key\" must be a string")),
    }
}

/// Optional idle timeout in milliseconds; 0 means none.
fn timeout(body: &Map<String, Value>) -> Result<Option<Duration>, ApiError> {
    let ms = match body.get("timeout") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    }
    .ok_or_else(|| ApiError::bad("field \"timeout\" must be a whole number of milliseconds"))?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn endpoints_accept_string_and_number_ports() {
        let b = obj(json!({"a": ["127.0.0.1", "4322"], "b": ["::1", 80]}));
        assert_eq!(
            endpoint(&b, "a").expect("ok"),
            "127.0.0.1:4322".parse().expect("addr")
        );
        assert_eq!(endpoint(&b, "b").expect("ok").port(), 80);
        for bad in [
            json!({"a": ["127.0.0.1", "0"]}),
            json!({"a": ["127.0.0.1", 70000]}),
            json!({"a": ["127.0.0.1", "http"]}),
            json!({"a": ["localhost", 80]}),
            json!({"a": ["127.0.0.1"]}),
            json!({"a": "127.0.0.1:80"}),
            json!({}),
        ] {
            let e = endpoint(&obj(bad.clone()), "a").expect_err("refused");
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.message.contains("\"a\""), "{}", e.message);
        }
    }

    #[test]
    fn names_types_keys_and_timeouts() {
        assert!(name(&obj(json!({"name": ""})), "name").is_err());
        assert!(name(&obj(json!({"name": 5})), "name").is_err());
        assert!(side(&obj(json!({"type": "both"}))).is_err());
        assert_eq!(key(&obj(json!({"key": ""}))).expect("ok"), None);
        assert!(key(&obj(json!({"key": 1}))).is_err());
        assert_eq!(
            timeout(&obj(json!({"timeout": "250"}))).expect("ok"),
            Some(Duration::from_millis(250))
        );
        assert!(timeout(&obj(json!({"timeout": -1}))).is_err());
    }
}
