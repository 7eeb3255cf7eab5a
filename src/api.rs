//! The admin HTTP API: each handler parses a request into a Registry message ([`parse`], a plain
//! function, fuzzed and unit-tested without a server) and turns the Registry's answer into a
//! response. Every error is JSON `{"error": ...}` naming what is wrong; no error repeats a key,
//! a secret or a token.
//!
//! [`guard`] runs before every route: the `Host` must be this API's (an IP literal, `localhost`
//! or a configured name: DNS rebinding is refused), a browser's cross-site request is refused
//! (`Origin`, `Sec-Fetch-Site`), and with a token configured the request must carry it.

use std::net::IpAddr;
use std::sync::Arc;

use actix::Addr;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::http::not_found;
pub use crate::http::{method_not_allowed, ApiError, Reply};
use menet_actors::cipher::CipherKind;
use menet_actors::limits::Escaped;
use menet_actors::log_limited;
use menet_actors::registry::{
    AddService, AddTunnel, ConfigFilter, DeleteService, DeleteTunnel, GetConfig, Registry,
    ServiceSpec, SetBind,
};
use menet_actors::tunnel::Role;

#[cfg(feature = "fault-injection")]
use crate::body::field;
use crate::body::{endpoint, name, present, secret, side, timeout};
pub use crate::body::{object, MAX_BODY};

/// Who may use the admin API, checked by [`guard`] before every route.
#[derive(Debug, Clone, Default)]
pub struct AdminAccess {
    /// `Authorization: Bearer` token every request must carry, if set.
    pub token: Option<String>,
    /// Host names (beside IP literals and `localhost`) a request may address the API by.
    pub hosts: Vec<String>,
}

impl AdminAccess {
    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        name.eq_ignore_ascii_case("localhost")
            || name.parse::<IpAddr>().is_ok()
            || self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    fn token_matches(&self, given: Option<&str>) -> bool {
        match &self.token {
            None => true,
            Some(token) => given.is_some_and(|g| same_secret(g, token)),
        }
    }
}

/// The host part of a `Host` header (`[::1]:80` -> `::1`, `a:80` -> `a`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Compares two secrets in constant time (of their hashes, so the length leaks nothing either).
fn same_secret(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// Whether every percent-escape of `path` decodes, with the rest, to UTF-8: `%FF` or an
/// overlong `%C0%AE` would otherwise become U+FFFD, and two names would collapse into one.
fn path_is_utf8(path: &str) -> bool {
    let raw = path.as_bytes();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            raw[i],
            raw.get(i + 1).and_then(|b| hex(*b)),
            raw.get(i + 2).and_then(|b| hex(*b)),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                decoded.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

fn refuse(req: &ServiceRequest, access: &AdminAccess) -> Option<ApiError> {
    if !path_is_utf8(req.uri().path()) {
        return Some(ApiError::bad(
            "the path is not valid UTF-8 once its percent-escapes are decoded",
        ));
    }
    let headers = req.headers();
    let text =
        |name: header::HeaderName| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let host = text(header::HOST);
    if let Some(host) = host {
        if !access.host_allowed(host) {
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                "the Host header names another server (a DNS rebinding attempt?); \
                 add the name to [admin] hosts to allow it",
            ));
        }
    }
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        if site != "same-origin" && site != "none" {
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                "cross-site requests are refused",
            ));
        }
    }
    if let Some(origin) = text(header::ORIGIN) {
        let own = host.map(|h| format!("http://{h}"));
        if own.as_deref() != Some(origin) {
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                "cross-site requests are refused (Origin is not this admin API)",
            ));
        }
    }
    let bearer = text(header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer "));
    if !crate::http::open_path(req.path()) && !access.token_matches(bearer.map(str::trim)) {
        return Some(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this admin API needs \"Authorization: Bearer TOKEN\"",
        ));
    }
    None
}

/// Runs before every route: Host, cross-site and token checks.
pub async fn guard(
    access: web::Data<Arc<AdminAccess>>,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if let Some(e) = refuse(&req, &access) {
        let client = req.peer_addr().map_or("?".to_owned(), |a| a.to_string());
        log_limited!(
            warn,
            "admin-refused",
            "admin API: {} {} from {client} refused: {e}",
            menet_actors::metrics::method_label(req.method().as_str()),
            Escaped(&req.path().chars().take(256).collect::<String>())
        );
        return Ok(req.into_response(e.error_response()));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

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
    let body = object(
        &read_body(body).await?,
        &["actor", "service", "tunnel", "stream"],
    )?;
    let msg = match field(&body, "actor")?.as_str() {
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
        _ => {
            return Err(ApiError::bad(
                "field \"actor\" must be \"registry\", \"tunnel-port\", \"listener\", \"tunnel\" or \"connection\"",
            ))
        }
    };
    registry.send(msg).await??;
    ok()
}

fn ok() -> Reply {
    Ok(HttpResponse::Ok().json(json!({"ok": true})))
}

/// The body-carrying routes, for [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    PostTunnel,
    DeleteTunnel,
    PostService,
    DeleteService,
    PostBind,
    DeleteBind,
}

impl Route {
    pub const ALL: [Route; 6] = [
        Route::PostTunnel,
        Route::DeleteTunnel,
        Route::PostService,
        Route::DeleteService,
        Route::PostBind,
        Route::DeleteBind,
    ];
}

/// A request parsed and validated: the Registry message it becomes.
pub enum Request {
    AddTunnel(AddTunnel),
    DeleteTunnel(DeleteTunnel),
    AddService(AddService),
    DeleteService(DeleteService),
    SetBind(SetBind),
}

pub const TUNNEL_FIELDS: &[&str] = &["name", "dest", "secret", "role"];
pub const SERVICE_FIELDS: &[&str] = &["name", "key", "cipher", "timeout", "type", "addr"];
pub const BIND_FIELDS: &[&str] = &["tunnel", "service", "type"];

/// The fields a body of `route` may have. A DELETE may carry the whole body of its POST (people
/// copy it); the extra fields are known, so they are accepted and ignored. Anything else is a
/// 400 naming it.
pub fn fields(route: Route) -> &'static [&'static str] {
    match route {
        Route::PostTunnel | Route::DeleteTunnel => TUNNEL_FIELDS,
        Route::PostService | Route::DeleteService => SERVICE_FIELDS,
        Route::PostBind | Route::DeleteBind => BIND_FIELDS,
    }
}

/// Parses a request body for `route`. Never panics, whatever the bytes.
pub fn parse(route: Route, body: &[u8]) -> Result<Request, ApiError> {
    let body = object(body, fields(route))?;
    Ok(match route {
        Route::PostTunnel => {
            let role = match body.get("role") {
                None | Some(Value::Null) => Role::Dialer,
                Some(Value::String(r)) if r == "dialer" => Role::Dialer,
                Some(Value::String(r)) if r == "acceptor" => Role::Acceptor,
                Some(_) => {
                    return Err(ApiError::bad(
                        "field \"role\" must be \"dialer\" or \"acceptor\"",
                    ))
                }
            };
            let dest = match role {
                Role::Dialer => Some(endpoint(&body, "dest")?),
                Role::Acceptor if present(&body, "dest") => {
                    return Err(ApiError::bad(
                        "field \"dest\": an accepted tunnel is dialled by its peer; omit it",
                    ))
                }
                Role::Acceptor => None,
            };
            Request::AddTunnel(AddTunnel {
                name: name(&body, "name")?,
                role,
                dest,
                secret: secret(&body, "secret")?,
            })
        }
        Route::DeleteTunnel => Request::DeleteTunnel(DeleteTunnel {
            name: name(&body, "name")?,
        }),
        Route::PostService => {
            let key = secret(&body, "key")?;
            let cipher = match body.get("cipher") {
                None | Some(Value::Null) => None,
                Some(Value::String(c)) => Some(
                    c.parse::<CipherKind>()
                        .map_err(|e| ApiError::bad(format!("field \"cipher\" {e}")))?,
                ),
                Some(_) => return Err(ApiError::bad("field \"cipher\" must be a string")),
            };
            if cipher.is_some() && key.is_none() {
                return Err(ApiError::bad(
                    "field \"cipher\" needs a \"key\": a plaintext service has no cipher",
                ));
            }
            Request::AddService(AddService(ServiceSpec {
                name: name(&body, "name")?,
                key,
                cipher,
                timeout: timeout(&body)?,
                side: side(&body)?,
                addr: endpoint(&body, "addr")?,
            }))
        }
        Route::DeleteService => Request::DeleteService(DeleteService {
            name: name(&body, "name")?,
            side: side(&body)?,
        }),
        Route::PostBind | Route::DeleteBind => Request::SetBind(SetBind {
            tunnel: name(&body, "tunnel")?,
            service: name(&body, "service")?,
            side: side(&body)?,
            bound: route == Route::PostBind,
        }),
    })
}

/// The admin fuzz target's entry point (`fuzz/`): the first byte picks the route, the rest is
/// the body.
pub fn fuzz_request(data: &[u8]) {
    if let Some((first, body)) = data.split_first() {
        let _ = parse(Route::ALL[usize::from(*first) % Route::ALL.len()], body);
    }
}

async fn handle(registry: web::Data<Addr<Registry>>, body: web::Payload, route: Route) -> Reply {
    execute(&registry, route, &read_body(body).await?).await
}

/// Parses `body` for `route` and carries it out: behind the seed's routes and the path API alike.
pub async fn execute(registry: &Addr<Registry>, route: Route, body: &[u8]) -> Reply {
    match parse(route, body)? {
        Request::AddTunnel(m) => registry.send(m).await??,
        Request::DeleteTunnel(m) => registry.send(m).await??,
        Request::AddService(m) => registry.send(m).await??,
        Request::DeleteService(m) => registry.send(m).await??,
        Request::SetBind(m) => registry.send(m).await??,
    }
    ok()
}

#[utoipa::path(post, path = "/tunnel", tag = "seed",
    description = "Dials a peer's tunnel port (`dest`) and registers the tunnel as `name` once the \
                   handshake is done; with `\"role\":\"acceptor\"` (no `dest`), declares a name \
                   peers may claim. Re-posting an unchanged tunnel changes nothing.",
    request_body = crate::schema::TunnelBody,
    responses((status = 200, description = "Connected (or declared)", body = crate::schema::Done),
              (status = 400, description = "Invalid request", body = crate::schema::Error),
              (status = 409, description = "The name is taken in another role", body = crate::schema::Error),
              (status = 502, description = "The peer could not be reached or refused", body = crate::schema::Error)))]
pub async fn post_tunnel(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    handle(registry, body, Route::PostTunnel).await
}

#[utoipa::path(delete, path = "/tunnel", tag = "seed",
    description = "Closes and forgets tunnel `name` (the other fields of its POST may be sent too).",
    request_body = crate::schema::TunnelBody,
    responses((status = 200, description = "Deleted", body = crate::schema::Done),
              (status = 400, description = "Invalid request", body = crate::schema::Error),
              (status = 404, description = "No such tunnel", body = crate::schema::Error)))]
pub async fn delete_tunnel(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    handle(registry, body, Route::DeleteTunnel).await
}

#[utoipa::path(post, path = "/service", tag = "seed",
    description = "Creates or replaces a service: a local one listens on `addr`, a remote one is \
                   where streams arriving over a tunnel are sent.",
    request_body = crate::schema::ServiceBody,
    responses((status = 200, description = "Done", body = crate::schema::Done),
              (status = 400, description = "Invalid request", body = crate::schema::Error),
              (status = 409, description = "The address is taken", body = crate::schema::Error)))]
pub async fn post_service(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    handle(registry, body, Route::PostService).await
}

#[utoipa::path(delete, path = "/service", tag = "seed",
    description = "Deletes service `name` of side `type`; its connections are reset.",
    request_body = crate::schema::ServiceBody,
    responses((status = 200, description = "Deleted", body = crate::schema::Done),
              (status = 400, description = "Invalid request", body = crate::schema::Error),
              (status = 404, description = "No such service", body = crate::schema::Error)))]
pub async fn delete_service(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    handle(registry, body, Route::DeleteService).await
}

#[utoipa::path(post, path = "/bind", tag = "seed",
    description = "Carries service `service` of side `type` over tunnel `tunnel`.",
    request_body = crate::schema::BindBody,
    responses((status = 200, description = "Done", body = crate::schema::Done),
              (status = 400, description = "Invalid request", body = crate::schema::Error),
              (status = 404, description = "No such service", body = crate::schema::Error)))]
pub async fn post_bind(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    handle(registry, body, Route::PostBind).await
}

#[utoipa::path(delete, path = "/bind", tag = "seed",
    description = "Stops carrying the service over the tunnel.",
    request_body = crate::schema::BindBody,
    responses((status = 200, description = "Unbound", body = crate::schema::Done),
              (status = 400, description = "Invalid request", body = crate::schema::Error),
              (status = 404, description = "No such bind", body = crate::schema::Error)))]
pub async fn delete_bind(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    handle(registry, body, Route::DeleteBind).await
}

#[utoipa::path(get, path = "/config", tag = "seed",
    description = "Everything the node knows, live: tunnels, accepted names, services, binds, \
                   connections, security and limits; or the part the query asks for.",
    params(("tunnel" = Option<String>, Query, description = "Only this tunnel and the services bound to it"),
           ("service" = Option<String>, Query, description = "Only this service (both sides) and the tunnels it is bound to"),
           ("connections" = Option<bool>, Query, description = "false: leave the live connections out")),
    responses((status = 200, description = "The configuration", body = menet_actors::registry::ConfigView),
              (status = 400, description = "An unknown or malformed query parameter", body = crate::schema::Error)))]
pub async fn get_config(registry: web::Data<Addr<Registry>>, req: HttpRequest) -> Reply {
    let filter = config_filter(req.query_string())?;
    let config = registry.send(GetConfig(filter)).await?;
    Ok(HttpResponse::Ok().json(config))
}

/// `?tunnel=T&service=S&connections=false`, as a [`ConfigFilter`]; anything else is a 400.
pub fn config_filter(query: &str) -> Result<ConfigFilter, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Query {
        tunnel: Option<String>,
        service: Option<String>,
        connections: Option<bool>,
    }
    let q = web::Query::<Query>::from_query(query)
        .map_err(|e| ApiError::bad(format!("query: {e} (known: tunnel, service, connections)")))?
        .into_inner();
    Ok(ConfigFilter {
        tunnel: q.tunnel,
        service: q.service,
        connections: q.connections.unwrap_or(true),
    })
}

/// Reads the body, at most [`MAX_BODY`] bytes.
pub async fn read_body(mut payload: web::Payload) -> Result<web::BytesMut, ApiError> {
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
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;
    use std::time::Duration;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn refused(route: Route, body: &str) -> ApiError {
        match parse(route, body.as_bytes()) {
            Ok(_) => panic!("accepted: {body}"),
            Err(e) => e,
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
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.message().contains("\"a\""), "{}", e.message());
        }
    }

    #[test]
    fn names_types_keys_and_timeouts() {
        assert!(name(&obj(json!({"name": ""})), "name").is_err());
        assert!(name(&obj(json!({"name": 5})), "name").is_err());
        assert!(name(&obj(json!({"name": "a\nb"})), "name").is_err());
        assert!(side(&obj(json!({"type": "both"}))).is_err());
        assert_eq!(secret(&obj(json!({"key": ""})), "key").expect("ok"), None);
        assert!(secret(&obj(json!({"key": 1})), "key").is_err());
        assert_eq!(
            timeout(&obj(json!({"timeout": "250"}))).expect("ok"),
            Some(Duration::from_millis(250))
        );
        assert!(timeout(&obj(json!({"timeout": -1}))).is_err());
    }

    #[test]
    fn the_seed_bodies_parse_and_unknown_fields_are_named() {
        for (route, body) in [
            (
                Route::PostTunnel,
                r#"{"name":"tunnel1", "dest":["127.0.0.1", "4322"]}"#,
            ),
            (
                Route::PostService,
                r#"{"name":"service1", "key":"UHI@&s8sa*S", "type": "local", "addr":["0.0.0.0", "8080"]}"#,
            ),
            (
                Route::PostBind,
                r#"{"tunnel": "tunnel1", "service":"service1", "type": "local"}"#,
            ),
        ] {
            assert!(parse(route, body.as_bytes()).is_ok(), "{body}");
        }
        let e = refused(
            Route::PostService,
            r#"{"name":"s", "Key":"k", "type": "local", "addr":["0.0.0.0", "8080"]}"#,
        );
        assert!(
            e.message().contains("unknown field \"Key\""),
            "{}",
            e.message()
        );
        let e = refused(
            Route::PostService,
            r#"{"name":"s", "cipher":"aes-256-gcm", "type": "local", "addr":["0.0.0.0", "8080"]}"#,
        );
        assert!(e.message().contains("needs a \"key\""), "{}", e.message());
        let e = refused(
            Route::PostTunnel,
            r#"{"name":"t", "role":"acceptor", "dest":["127.0.0.1", "1"]}"#,
        );
        assert!(e.message().contains("\"dest\""), "{}", e.message());
        let e = refused(Route::PostTunnel, r#"{"name":"t", "secret":"hunter2"}"#);
        assert!(!e.message().contains("hunter2"), "{}", e.message());
    }

    #[test]
    fn hosts_and_tokens() {
        let access = AdminAccess {
            token: Some("t0ken".into()),
            hosts: vec!["menet.example".into()],
        };
        for ok in [
            "127.0.0.1:1234",
            "[::1]:80",
            "localhost:1",
            "menet.example",
            "10.1.2.3",
        ] {
            assert!(access.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example:1234", "127.0.0.1.evil.example"] {
            assert!(!access.host_allowed(bad), "{bad}");
        }
        assert!(access.token_matches(Some("t0ken")));
        assert!(!access.token_matches(Some("t0ke")));
        assert!(!access.token_matches(None));
        assert!(AdminAccess::default().token_matches(None));
    }

    /// Random and mutated bodies: a request or an error, never a panic.
    #[test]
    fn random_bodies_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(1234);
        let seed = br#"{"name":"service1", "key":"k", "cipher":"rc4", "timeout": 5, "type": "local", "addr":["0.0.0.0", "8080"]}"#;
        let routes = Route::ALL;
        for round in 0..20_000 {
            let mut v = seed.to_vec();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..v.len());
                v[i] = rng.gen();
            }
            let _ = parse(routes[round % routes.len()], &v);
        }
    }
}
