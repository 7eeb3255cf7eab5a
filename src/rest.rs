//! The path-addressed API beside the seed's body-addressed one: `/tunnels/{name}`,
//! `/services/{local|remote}/{name}`, `/binds/{local|remote}/{service}`.
//!
//! One implementation behind both: a path request becomes the body of the seed's route (the
//! path's parts written into it) and goes through the same [`api::parse`] and the same Registry
//! message, so validation, errors and persistence cannot differ. A `GET` answers exactly the
//! object's part of `GET /config`.

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{Map, Value};

use serde::Serialize;
use utoipa::ToSchema;

use menet_actors::registry::{
    AcceptedView, BindsView, ConfigFilter, ConfigView, GetConfig, LocalServiceView, Parts,
    Registry, RemoteServiceView, ServicesView, TunnelView,
};

use crate::api::{self, ApiError, Reply, Route};

pub fn routes(cfg: &mut web::ServiceConfig) {
    let not_allowed = || web::to(crate::http::method_not_allowed);
    cfg.service(
        web::resource("/tunnels")
            .route(web::get().to(list_tunnels))
            .route(web::put().to(put_tunnels))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/tunnels/{name}")
            .route(web::get().to(get_tunnel))
            .route(web::put().to(put_tunnel))
            .route(web::delete().to(delete_tunnel))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/services")
            .route(web::get().to(list_services))
            .route(web::put().to(put_services))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/services/{side}/{name}")
            .route(web::get().to(get_service))
            .route(web::put().to(put_service))
            .route(web::delete().to(delete_service))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/binds")
            .route(web::get().to(list_binds))
            .route(web::put().to(put_binds))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/binds/{side}/{service}")
            .route(web::get().to(get_bind))
            .route(web::put().to(put_bind))
            .route(web::delete().to(delete_bind))
            .default_service(not_allowed()),
    );
}

/// `local` or `remote` from the path; anything else is a path that does not exist.
fn side(side: &str) -> Result<&'static str, ApiError> {
    match side {
        "local" => Ok("local"),
        "remote" => Ok("remote"),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no such path: the side is \"local\" or \"remote\"",
        )),
    }
}

/// The request body as an object (an empty body is an empty object), with the path's parts
/// written in. A body that names the object too must name the same one.
fn with_path(body: &[u8], route: Route, parts: &[(&str, &str)]) -> Result<Vec<u8>, ApiError> {
    let mut map = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        api::object(body, api::fields(route))?
    };
    for (field, value) in parts {
        match map.get(*field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == value => {}
            Some(_) => {
                return Err(ApiError::bad(format!(
                    "field \"{field}\" differs from the path; omit it"
                )))
            }
        }
        map.insert((*field).to_owned(), Value::String((*value).to_owned()));
    }
    serde_json::to_vec(&Value::Object(map))
        .map_err(|e| ApiError::bad(format!("cannot re-encode the body: {e}")))
}

async fn run(
    registry: web::Data<Addr<Registry>>,
    body: web::Payload,
    route: Route,
    parts: &[(&str, &str)],
) -> Reply {
    let body = with_path(&api::read_body(body).await?, route, parts)?;
    api::execute(&registry, route, &body).await
}

/// A filter for the part of `GET /config` an object's GET needs (no connections: they are not
/// any one object's part).
fn only(tunnel: Option<&str>, service: Option<&str>) -> ConfigFilter {
    ConfigFilter {
        tunnel: tunnel.map(str::to_owned),
        service: service.map(str::to_owned),
        connections: false,
    }
}

/// `GET /config` built with `filter`, typed: each GET below answers one part of it.
async fn view(registry: &Addr<Registry>, filter: ConfigFilter) -> Result<ConfigView, ApiError> {
    Ok(registry.send(GetConfig(filter)).await?)
}

/// The part found, or a 404 saying what is missing.
fn found<T: Serialize>(part: Option<T>, missing: impl FnOnce() -> String) -> Reply {
    match part {
        Some(part) => Ok(HttpResponse::Ok().json(part)),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, missing())),
    }
}

/// `GET /tunnels/{name}`: a tunnel, or a name only declared for acceptance.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum TunnelPart {
    /// `tunnels.NAME`: connected, connecting or re-dialling.
    Tunnel(Box<TunnelView>),
    /// `accepted.NAME`: a name peers may claim, not connected now.
    Accepted(AcceptedView),
}

type Name = web::Path<String>;
type SideName = web::Path<(String, String)>;

#[utoipa::path(get, path = "/tunnels", tag = "paths", operation_id = "list_tunnels_by_path",
    description = "The `tunnels` part of `GET /config`.",
    responses((status = 200, description = "Every tunnel by name", body = BTreeMap<String, TunnelView>)))]
pub async fn list_tunnels(registry: web::Data<Addr<Registry>>) -> Reply {
    Ok(HttpResponse::Ok().json(view(&registry, only(None, None)).await?.tunnels))
}

#[utoipa::path(get, path = "/tunnels/{name}", tag = "paths", operation_id = "get_tunnel_by_path",
    description = "One tunnel's part of `GET /config` (`tunnels.NAME`; a name that is only \
                   declared for acceptance: `accepted.NAME`).",
    params(("name" = String, Path, description = "Tunnel name")),
    responses((status = 200, description = "The tunnel", body = TunnelPart),
              (status = 404, description = "No such tunnel", body = crate::http::ErrorReply)))]
pub async fn get_tunnel(registry: web::Data<Addr<Registry>>, name: Name) -> Reply {
    let mut config = view(&registry, only(Some(name.as_str()), None)).await?;
    let part = match config.tunnels.remove(name.as_str()) {
        Some(t) => Some(TunnelPart::Tunnel(Box::new(t))),
        None => config
            .accepted
            .remove(name.as_str())
            .map(TunnelPart::Accepted),
    };
    found(part, || format!("no tunnel named {}", name.as_str()))
}

#[utoipa::path(put, path = "/tunnels/{name}", tag = "paths", operation_id = "put_tunnel_by_path",
    description = "Creates or changes a tunnel: the same as `POST /tunnel` with this name.",
    params(("name" = String, Path, description = "Tunnel name")),
    request_body = crate::api::TunnelPut,
    responses((status = 200, description = "Done", body = crate::http::Done),
              (status = 400, description = "Invalid request", body = crate::http::ErrorReply),
              (status = 409, description = "The name is taken in another role", body = crate::http::ErrorReply),
              (status = 502, description = "The peer could not be reached or refused", body = crate::http::ErrorReply)))]
pub async fn put_tunnel(
    registry: web::Data<Addr<Registry>>,
    name: Name,
    body: web::Payload,
) -> Reply {
    run(registry, body, Route::PostTunnel, &[("name", &name)]).await
}

#[utoipa::path(delete, path = "/tunnels/{name}", tag = "paths", operation_id = "delete_tunnel_by_path",
    description = "Deletes a tunnel: the same as `DELETE /tunnel` with this name.",
    params(("name" = String, Path, description = "Tunnel name")),
    responses((status = 200, description = "Deleted", body = crate::http::Done),
              (status = 400, description = "Invalid body", body = crate::http::ErrorReply),
              (status = 404, description = "No such tunnel", body = crate::http::ErrorReply)))]
pub async fn delete_tunnel(
    registry: web::Data<Addr<Registry>>,
    name: Name,
    body: web::Payload,
) -> Reply {
    run(registry, body, Route::DeleteTunnel, &[("name", &name)]).await
}

#[utoipa::path(get, path = "/services", tag = "paths", operation_id = "list_services_by_path",
    description = "The `services` part of `GET /config`: `local` and `remote`.",
    responses((status = 200, description = "Every service by side and name", body = ServicesView)))]
pub async fn list_services(registry: web::Data<Addr<Registry>>) -> Reply {
    Ok(HttpResponse::Ok().json(view(&registry, only(None, None)).await?.services))
}

#[utoipa::path(get, path = "/services/{side}/{name}", tag = "paths", operation_id = "get_service_by_path",
    description = "One service's part of `GET /config` (`services.SIDE.NAME`).",
    params(("side" = menet_actors::Side, Path, description = "local or remote"),
           ("name" = String, Path, description = "Service name")),
    responses((status = 200, description = "The service", body = ServicePart),
              (status = 404, description = "No such service", body = crate::http::ErrorReply)))]
pub async fn get_service(registry: web::Data<Addr<Registry>>, path: SideName) -> Reply {
    let (s, name) = path.into_inner();
    let s = side(&s)?;
    let mut services = view(&registry, only(None, Some(&name))).await?.services;
    let part = match s {
        "local" => services.local.remove(&name).map(ServicePart::Local),
        _ => services.remote.remove(&name).map(ServicePart::Remote),
    };
    found(part, || format!("no {s} service named {name}"))
}

/// `GET /services/{side}/{name}`: one service of the side the path names.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ServicePart {
    /// `services.local.NAME`.
    Local(LocalServiceView),
    /// `services.remote.NAME`.
    Remote(RemoteServiceView),
}

#[utoipa::path(put, path = "/services/{side}/{name}", tag = "paths", operation_id = "put_service_by_path",
    description = "Creates or changes a service: the same as `POST /service` with this name and type.",
    params(("side" = menet_actors::Side, Path, description = "local or remote"),
           ("name" = String, Path, description = "Service name")),
    request_body = crate::api::ServicePut,
    responses((status = 200, description = "Done", body = crate::http::Done),
              (status = 400, description = "Invalid request", body = crate::http::ErrorReply),
              (status = 404, description = "No such side", body = crate::http::ErrorReply),
              (status = 409, description = "The address is taken", body = crate::http::ErrorReply)))]
pub async fn put_service(
    registry: web::Data<Addr<Registry>>,
    path: SideName,
    body: web::Payload,
) -> Reply {
    let (s, name) = path.into_inner();
    let parts = [("name", name.as_str()), ("type", side(&s)?)];
    run(registry, body, Route::PostService, &parts).await
}

#[utoipa::path(delete, path = "/services/{side}/{name}", tag = "paths", operation_id = "delete_service_by_path",
    description = "Deletes a service: the same as `DELETE /service` with this name and type.",
    params(("side" = menet_actors::Side, Path, description = "local or remote"),
           ("name" = String, Path, description = "Service name")),
    responses((status = 200, description = "Deleted", body = crate::http::Done),
              (status = 400, description = "Invalid body", body = crate::http::ErrorReply),
              (status = 404, description = "No such service", body = crate::http::ErrorReply)))]
pub async fn delete_service(
    registry: web::Data<Addr<Registry>>,
    path: SideName,
    body: web::Payload,
) -> Reply {
    let (s, name) = path.into_inner();
    let parts = [("name", name.as_str()), ("type", side(&s)?)];
    run(registry, body, Route::DeleteService, &parts).await
}

#[utoipa::path(get, path = "/binds", tag = "paths", operation_id = "list_binds_by_path",
    description = "The `bind` part of `GET /config`: for each side, service name -> tunnel name.",
    responses((status = 200, description = "Every bind", body = BindsView)))]
pub async fn list_binds(registry: web::Data<Addr<Registry>>) -> Reply {
    Ok(HttpResponse::Ok().json(view(&registry, only(None, None)).await?.bind))
}

/// A collection's PUT: its part of a `PUT /config` document (`part` in it), the rest kept.
async fn put_part(
    registry: &Addr<Registry>,
    req: &HttpRequest,
    body: web::Payload,
    part: &str,
    parts: Parts,
) -> Reply {
    let body = crate::api::read_body_up_to(body, crate::api::desired::MAX_DOCUMENT).await?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("body is not JSON: {e}")))?;
    let doc = serde_json::to_vec(&serde_json::json!({ part: value })).unwrap_or_default();
    crate::api::apply_document(registry, req.query_string(), &doc, parts).await
}

#[utoipa::path(put, path = "/tunnels", tag = "paths",
    description = "The tunnels this node dials, as `GET /tunnels` returns them, edited: \
                   `PUT /config` for that part alone (services and binds are kept).",
    params(("dry_run" = Option<bool>, Query, description = "true: answer what would change")),
    request_body = serde_json::Value,
    responses((status = 200, description = "Applied", body = crate::api::desired::Applied),
              (status = 400, description = "Every error", body = crate::http::ErrorReply)))]
pub async fn put_tunnels(
    registry: web::Data<Addr<Registry>>,
    req: HttpRequest,
    body: web::Payload,
) -> Reply {
    let parts = Parts {
        tunnels: true,
        ..Parts::NONE
    };
    put_part(&registry, &req, body, "tunnels", parts).await
}

#[utoipa::path(put, path = "/services", tag = "paths",
    description = "The services, as `GET /services` returns them, edited: `PUT /config` for \
                   that part alone (tunnels and binds are kept; a removed service's bind goes \
                   with it).",
    params(("dry_run" = Option<bool>, Query, description = "true: answer what would change")),
    request_body = serde_json::Value,
    responses((status = 200, description = "Applied", body = crate::api::desired::Applied),
              (status = 400, description = "Every error", body = crate::http::ErrorReply),
              (status = 409, description = "A step failed; nothing changed", body = crate::http::ErrorReply)))]
pub async fn put_services(
    registry: web::Data<Addr<Registry>>,
    req: HttpRequest,
    body: web::Payload,
) -> Reply {
    let parts = Parts {
        services: true,
        ..Parts::NONE
    };
    put_part(&registry, &req, body, "services", parts).await
}

#[utoipa::path(put, path = "/binds", tag = "paths",
    description = "The binds, as `GET /binds` returns them, edited: `PUT /config` for that \
                   part alone.",
    params(("dry_run" = Option<bool>, Query, description = "true: answer what would change")),
    request_body = serde_json::Value,
    responses((status = 200, description = "Applied", body = crate::api::desired::Applied),
              (status = 400, description = "Every error", body = crate::http::ErrorReply)))]
pub async fn put_binds(
    registry: web::Data<Addr<Registry>>,
    req: HttpRequest,
    body: web::Payload,
) -> Reply {
    let parts = Parts {
        binds: true,
        ..Parts::NONE
    };
    put_part(&registry, &req, body, "bind", parts).await
}

#[utoipa::path(get, path = "/binds/{side}/{service}", tag = "paths", operation_id = "get_bind_by_path",
    description = "One bind's part of `GET /config` (`bind.SIDE.SERVICE`): its tunnel's name, \
                   a JSON string.",
    params(("side" = menet_actors::Side, Path, description = "local or remote"),
           ("service" = String, Path, description = "Service name")),
    responses((status = 200, description = "The tunnel the service is bound to", body = String),
              (status = 404, description = "The service is not bound", body = crate::http::ErrorReply)))]
pub async fn get_bind(registry: web::Data<Addr<Registry>>, path: SideName) -> Reply {
    let (s, service) = path.into_inner();
    let s = side(&s)?;
    let tunnel = bound_tunnel(&registry, s, &service).await?;
    found(tunnel, || format!("{s} service {service} is not bound"))
}

/// The tunnel `side` service `service` is bound to, if it is.
async fn bound_tunnel(
    registry: &Addr<Registry>,
    side: &str,
    service: &str,
) -> Result<Option<String>, ApiError> {
    let mut bind = view(registry, only(None, Some(service))).await?.bind;
    Ok(match side {
        "local" => bind.local.remove(service),
        _ => bind.remote.remove(service),
    })
}

#[utoipa::path(put, path = "/binds/{side}/{service}", tag = "paths", operation_id = "put_bind_by_path",
    description = "Binds a service to a tunnel: the same as `POST /bind`.",
    params(("side" = menet_actors::Side, Path, description = "local or remote"),
           ("service" = String, Path, description = "Service name")),
    request_body = crate::api::BindPut,
    responses((status = 200, description = "Done", body = crate::http::Done),
              (status = 400, description = "Invalid request", body = crate::http::ErrorReply),
              (status = 404, description = "No such service", body = crate::http::ErrorReply)))]
pub async fn put_bind(
    registry: web::Data<Addr<Registry>>,
    path: SideName,
    body: web::Payload,
) -> Reply {
    let (s, service) = path.into_inner();
    let parts = [("service", service.as_str()), ("type", side(&s)?)];
    run(registry, body, Route::PostBind, &parts).await
}

#[utoipa::path(delete, path = "/binds/{side}/{service}", tag = "paths", operation_id = "delete_bind_by_path",
    description = "Unbinds a service: the same as `DELETE /bind`; the body may name the tunnel \
                   (`{\"tunnel\"}`) or be empty.",
    params(("side" = menet_actors::Side, Path, description = "local or remote"),
           ("service" = String, Path, description = "Service name")),
    request_body = crate::api::BindPut,
    responses((status = 200, description = "Unbound", body = crate::http::Done),
              (status = 400, description = "Invalid request", body = crate::http::ErrorReply),
              (status = 404, description = "No such bind", body = crate::http::ErrorReply)))]
pub async fn delete_bind(
    registry: web::Data<Addr<Registry>>,
    path: SideName,
    body: web::Payload,
) -> Reply {
    let (s, service) = path.into_inner();
    let s = side(&s)?;
    let parts = [("service", service.as_str()), ("type", s)];
    let mut body = with_path(&api::read_body(body).await?, Route::DeleteBind, &parts)?;
    // The seed's DELETE /bind names the tunnel; here the path is enough: the bind's tunnel is
    // looked up when the body leaves it out.
    if let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(&body) {
        if !map.contains_key("tunnel") {
            let Some(tunnel) = bound_tunnel(&registry, s, &service).await? else {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("{s} service {service} is not bound"),
                ));
            };
            map.insert("tunnel".to_owned(), Value::String(tunnel));
            body = serde_json::to_vec(&Value::Object(map))
                .map_err(|e| ApiError::bad(format!("cannot re-encode the body: {e}")))?;
        }
    }
    api::execute(&registry, Route::DeleteBind, &body).await
}
