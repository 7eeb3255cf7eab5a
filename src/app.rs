//! The admin API assembled: every route set in one place, so that none of them imports another
//! to be mounted (the seed's routes, the path API, operations, the OpenAPI document).

use std::sync::Arc;

use actix::Addr;
use actix_web::web;

use menet_actors::registry::Registry;

use crate::events::Samples;

/// Mounts every route of the admin API (the guard and the request counter wrap them in `main`).
pub fn routes(cfg: &mut web::ServiceConfig, registry: Addr<Registry>, samples: Arc<Samples>) {
    cfg.configure(crate::rest::routes)
        .configure(crate::ops::routes)
        .configure(|c| crate::events::routes(c, samples))
        .configure(crate::openapi::routes)
        .configure(|c| crate::api::routes(c, registry));
}
