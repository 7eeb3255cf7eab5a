//! The admin HTTP API's seed routes (`/tunnel`, `/service`, `/bind`, `/config`): each handler
//! parses its body into a Registry message ([`parse`] in `bodies.rs`, a plain function, fuzzed
//! and unit-tested without a server) and turns the Registry's answer into a response. Every error
//! is JSON `{"error": ...}` naming what is wrong; no error repeats a key, a secret or a token.
//! [`guard`] (`guard.rs`) runs before every route.

mod bodies;
pub mod desired;
mod guard;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use crate::http::not_found;
pub use crate::http::{method_not_allowed, ApiError, Reply};
use menet_actors::registry::{ApplyConfig, ConfigFilter, GetConfig, Parts, Registry};

#[cfg(feature = "fault-injection")]
use crate::body::{field, name};
pub use crate::body::{object, MAX_BODY};
pub use bodies::{
    fields, parse, BindBody, BindPut, Request, Route, ServiceBody, ServicePut, TunnelBody,
    TunnelPut,
};
pub use guard::{guard, AdminAccess};

/// The admin fuzz target's entry point (`fuzz/`): the first byte picks the route, the rest is
/// the body; the same bytes are also read as a whole desired document (`PUT /config`).
pub fn fuzz_request(data: &[u8]) {
    bodies::fuzz_body(data);
    if let Some((_, body)) = data.split_first() {
        let _ = desired::read(body, Parts::ALL);
    }
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
                .route(web::put().to(put_config))
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
    Ok(HttpResponse::Ok().json(crate::http::Done { ok: true }))
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
    request_body = crate::api::TunnelBody,
    responses((status = 200, description = "Connected (or declared)", body = crate::http::Done),
              (status = 400, description = "Invalid request", body = crate::http::ErrorReply),
              (status = 409, description = "The name is taken in another role", body = crate::http::ErrorReply),
              (status = 502, description = "The peer could not be reached or refused", body = crate::http::ErrorReply)))]
pub async fn post_tunnel(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    handle(registry, body, Route::PostTunnel).await
}

#[utoipa::path(delete, path = "/tunnel", tag = "seed",
    description = "Closes and forgets tunnel `name` (the other fields of its POST may be sent too).",
    request_body = crate::api::TunnelBody,
    responses((status = 200, description = "Deleted", body = crate::http::Done),
              (status = 400, description = "Invalid request", body = crate::http::ErrorReply),
              (status = 404, description = "No such tunnel", body = crate::http::ErrorReply)))]
pub async fn delete_tunnel(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    handle(registry, body, Route::DeleteTunnel).await
}

#[utoipa::path(post, path = "/service", tag = "seed",
    description = "Creates or replaces a service: a local one listens on `addr`, a remote one is \
                   where streams arriving over a tunnel are sent.",
    request_body = crate::api::ServiceBody,
    responses((status = 200, description = "Done", body = crate::http::Done),
              (status = 400, description = "Invalid request", body = crate::http::ErrorReply),
              (status = 409, description = "The address is taken", body = crate::http::ErrorReply)))]
pub async fn post_service(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    handle(registry, body, Route::PostService).await
}

#[utoipa::path(delete, path = "/service", tag = "seed",
    description = "Deletes service `name` of side `type`; its connections are reset.",
    request_body = crate::api::ServiceBody,
    responses((status = 200, description = "Deleted", body = crate::http::Done),
              (status = 400, description = "Invalid request", body = crate::http::ErrorReply),
              (status = 404, description = "No such service", body = crate::http::ErrorReply)))]
pub async fn delete_service(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    handle(registry, body, Route::DeleteService).await
}

#[utoipa::path(post, path = "/bind", tag = "seed",
    description = "Carries service `service` of side `type` over tunnel `tunnel`.",
    request_body = crate::api::BindBody,
    responses((status = 200, description = "Done", body = crate::http::Done),
              (status = 400, description = "Invalid request", body = crate::http::ErrorReply),
              (status = 404, description = "No such service", body = crate::http::ErrorReply)))]
pub async fn post_bind(registry: web::Data<Addr<Registry>>, body: web::Payload) -> Reply {
    handle(registry, body, Route::PostBind).await
}

#[utoipa::path(delete, path = "/bind", tag = "seed",
    description = "Stops carrying the service over the tunnel.",
    request_body = crate::api::BindBody,
    responses((status = 200, description = "Unbound", body = crate::http::Done),
              (status = 400, description = "Invalid request", body = crate::http::ErrorReply),
              (status = 404, description = "No such bind", body = crate::http::ErrorReply)))]
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
              (status = 400, description = "An unknown or malformed query parameter", body = crate::http::ErrorReply)))]
pub async fn get_config(registry: web::Data<Addr<Registry>>, req: HttpRequest) -> Reply {
    let filter = config_filter(req.query_string())?;
    let config = registry.send(GetConfig(filter)).await?;
    Ok(HttpResponse::Ok().json(config))
}

#[utoipa::path(put, path = "/config", tag = "seed",
    description = "The configuration as one document: the body is what GET /config returns, \
                   edited. Its tunnels (dialers), declared accepted names, services and binds \
                   are the desired state; runtime fields are ignored; a key or secret \"***\" \
                   keeps the current one. The whole document is checked first (400 with every \
                   error, nothing changed); then only the difference is applied (new services, \
                   tunnels and names, then binds, then removals), unchanged objects and their \
                   connections untouched; a step that fails undoes the others (409). With a \
                   state file, one journal transaction. Tunnels are dialled in the background.",
    params(("dry_run" = Option<bool>, Query, description = "true: answer what would change, change nothing")),
    request_body = serde_json::Value,
    responses((status = 200, description = "Applied (or, dry_run, what would be)", body = desired::Applied),
              (status = 400, description = "Every error of the document", body = crate::http::ErrorReply),
              (status = 409, description = "A step failed (a port taken); nothing was changed", body = crate::http::ErrorReply)))]
pub async fn put_config(
    registry: web::Data<Addr<Registry>>,
    req: HttpRequest,
    body: web::Payload,
) -> Reply {
    let body = read_body_up_to(body, desired::MAX_DOCUMENT).await?;
    apply_document(&registry, req.query_string(), &body, Parts::ALL).await
}

/// Applies a desired document governing `parts` (`PUT /config`, the path API's collections).
pub async fn apply_document(
    registry: &Addr<Registry>,
    query: &str,
    body: &[u8],
    parts: Parts,
) -> Reply {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Query {
        /// Answer what would change, change nothing.
        dry_run: Option<bool>,
    }
    let dry_run = web::Query::<Query>::from_query(query)
        .map_err(|e| ApiError::bad(format!("query: {e} (known: dry_run)")))?
        .dry_run
        .unwrap_or(false);
    let desired = desired::read(body, parts).map_err(ApiError::list)?;
    let diff = registry
        .send(ApplyConfig {
            desired,
            parts,
            dry_run,
        })
        .await??;
    Ok(HttpResponse::Ok().json(desired::Applied { ok: true, diff }))
}

/// `?tunnel=T&service=S&connections=false`, as a [`ConfigFilter`]; anything else is a 400.
pub fn config_filter(query: &str) -> Result<ConfigFilter, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Query {
        /// Only this tunnel.
        tunnel: Option<String>,
        /// Only this service's objects and connections.
        service: Option<String>,
        /// `false` leaves the connections out.
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
pub async fn read_body(payload: web::Payload) -> Result<web::BytesMut, ApiError> {
    read_body_up_to(payload, MAX_BODY).await
}

/// Reads the body, at most `max` bytes.
pub async fn read_body_up_to(
    mut payload: web::Payload,
    max: usize,
) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is over {max} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
