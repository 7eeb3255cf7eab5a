//! The check before every admin route: the `Host` must be this API's (an IP literal, `localhost`
//! or a configured name: DNS rebinding is refused), a browser's cross-site request is refused
//! (`Origin`, `Sec-Fetch-Site`), and with a token configured the request must carry it.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use sha2::{Digest, Sha256};

use menet_actors::limits::Escaped;
use menet_actors::log_limited;

use crate::http::ApiError;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
