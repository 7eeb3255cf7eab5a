//! What operators use beside the configuration routes: `GET /metrics` (Prometheus), `GET /healthz`
//! and `GET /readyz`, the dashboard under `/ui/`, and the counting of every admin request.

use actix::Addr;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use menet_actors::metrics::metrics;
use menet_actors::registry::{GetReadiness, Registry};

use crate::http::{ApiError, Health, NotReady};

/// The dashboard: one page, its script and its style, embedded (no build step, no CDN).
const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/app.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/style.css");

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/metrics")
            .route(web::get().to(get_metrics))
            .default_service(web::to(crate::http::method_not_allowed)),
    )
    .service(
        web::resource("/healthz")
            .route(web::get().to(healthz))
            .default_service(web::to(crate::http::method_not_allowed)),
    )
    .service(
        web::resource("/readyz")
            .route(web::get().to(readyz))
            .default_service(web::to(crate::http::method_not_allowed)),
    )
    .service(web::resource("/").route(web::get().to(to_dashboard)))
    .service(web::resource("/ui").route(web::get().to(to_dashboard)))
    .service(web::resource("/ui/").route(web::get().to(dashboard_page)))
    .service(web::resource("/ui/app.js").route(web::get().to(dashboard_js)))
    .service(web::resource("/ui/style.css").route(web::get().to(dashboard_css)));
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    description = "Prometheus metrics in the OpenMetrics text format.",
    responses((status = 200, description = "The metrics", content_type = "application/openmetrics-text", body = String)))]
pub async fn get_metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics().encode())
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    description = "200 while the process runs its event loop. Needs no token.",
    responses((status = 200, description = "Alive", body = crate::http::Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    description = "200 once the state file is loaded and the tunnel port and every local service \
                   listen; 503 with the reasons otherwise. Needs no token.",
    responses((status = 200, description = "Ready", body = crate::http::Health),
              (status = 503, description = "Not ready, and why", body = crate::http::NotReady)))]
pub async fn readyz(registry: web::Data<Addr<Registry>>) -> Result<HttpResponse, ApiError> {
    match registry.send(GetReadiness).await? {
        Ok(()) => Ok(HttpResponse::Ok().json(Health { status: "ready" })),
        Err(reasons) => Ok(HttpResponse::ServiceUnavailable().json(NotReady {
            status: "not ready",
            reasons,
        })),
    }
}

async fn to_dashboard() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, "/ui/"))
        .finish()
}

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

async fn dashboard_page() -> HttpResponse {
    asset("text/html; charset=utf-8", DASHBOARD_HTML)
}

async fn dashboard_js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", DASHBOARD_JS)
}

async fn dashboard_css() -> HttpResponse {
    asset("text/css; charset=utf-8", DASHBOARD_CSS)
}

/// Counts every admin request by route pattern (not the raw path: the label set stays bounded),
/// method and status, refused ones included. Wraps everything else.
pub async fn count_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let res = next.call(req).await?.map_into_boxed_body();
    metrics().count_admin_request(&route, &method, res.status().as_u16());
    Ok(res)
}
