//! The admin API's shared HTTP pieces: its error type (JSON `{"error": ...}` with a status), the
//! fallbacks every route set uses, and which paths need no token. A leaf: every handler module
//! uses it, it uses none of them.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use thiserror::Error;
use utoipa::ToSchema;

use menet_actors::registry::AdminError;

/// A change was made: `{"ok": true}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Done {
    /// Always true: a failed change answers an [`ErrorReply`] with its status instead.
    pub ok: bool,
}

/// Every error's body: what is wrong, never a key, secret or token.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorReply {
    /// What is wrong, naming the field, object or header at fault.
    pub error: String,
    /// Every problem, when a document had several (`PUT /config`), each naming its object.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// `/healthz` and a ready `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `"ok"` (alive) or `"ready"`.
    pub status: &'static str,
}

/// A `/readyz` that is not ready, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotReady {
    /// Always `"not ready"`.
    pub status: &'static str,
    /// One line per thing not ready yet (the state file, the tunnel port, a local service).
    pub reasons: Vec<String>,
}

#[derive(Debug, Error)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status answered.
    status: StatusCode,
    /// What the client is told (anything it supplied escaped).
    message: String,
    /// Every problem of a document, when there were several.
    errors: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            errors: Vec::new(),
        }
    }

    /// A 400 for a document with `errors` (at least one): the first as the message, all listed.
    pub fn list(errors: Vec<String>) -> ApiError {
        let message = match errors.as_slice() {
            [one] => one.clone(),
            [first, rest @ ..] => format!("{first} (and {} more, in \"errors\")", rest.len()),
            [] => "the document is invalid".to_owned(),
        };
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message,
            errors,
        }
    }

    /// Every problem listed, if there were several.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The text of the `{"error": ...}` body.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut reply = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            reply.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"menet\""));
        }
        reply.json(ErrorReply {
            error: self.message.clone(),
            errors: self.errors.clone(),
        })
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
        // The Registry's checks of a whole document: one line each.
        if let AdminError::Invalid(lines) = &e {
            if lines.contains('\n') {
                return ApiError::list(lines.lines().map(str::to_owned).collect());
            }
        }
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

pub type Reply = Result<HttpResponse, ApiError>;

/// Paths served without the admin token: the dashboard's static files (they hold no data; the
/// page asks for the token and sends it with every API call) and the health probes.
pub fn open_path(path: &str) -> bool {
    matches!(path, "/" | "/healthz" | "/readyz") || path.starts_with("/ui/") || path == "/ui"
}

pub async fn method_not_allowed() -> Reply {
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this path",
    ))
}

pub async fn not_found() -> Reply {
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "no such path: see /openapi.json (the seed's /tunnel, /service, /bind, /config; \
         /tunnels, /services, /binds; /metrics, /healthz, /readyz; the dashboard at /ui/)",
    ))
}
