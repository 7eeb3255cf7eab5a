//! The admin API's body and reply schemas for the OpenAPI document (`utoipa`), in a leaf of
//! their own: the handlers name them in their annotations, the document gathers them, and
//! nothing here imports either.

use serde_json::Value;
use utoipa::ToSchema;

/// An `[ip, port]` pair: the IP a string, the port a number or a string of digits.
type Endpoint = Vec<Value>;

/// Which end of a tunnel a service is.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum SideParam {
    Local,
    Remote,
}

/// A tunnel's role.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum TunnelRole {
    /// This node dials `dest` (the default).
    Dialer,
    /// A name this node accepts from a dialer (no `dest`).
    Acceptor,
}

/// A service's cipher.
#[derive(ToSchema)]
pub enum Cipher {
    #[schema(rename = "rc4")]
    Rc4,
    #[schema(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
    #[schema(rename = "aes-256-gcm")]
    Aes256Gcm,
}

/// `POST /tunnel`, `DELETE /tunnel` (only `name` is needed to delete).
#[derive(ToSchema)]
#[schema(example = json!({"name": "t1", "dest": ["127.0.0.1", 7001]}))]
pub struct TunnelBody {
    pub name: String,
    /// The peer's tunnel port; required for a dialer, refused for an acceptor.
    #[schema(value_type = Option<Vec<serde_json::Value>>, min_items = 2, max_items = 2, example = json!(["127.0.0.1", 7001]))]
    pub dest: Option<Endpoint>,
    /// The tunnel's own secret, instead of the node's `[tunnel] secret`.
    pub secret: Option<String>,
    pub role: Option<TunnelRole>,
}

/// `PUT /tunnels/{name}`: a tunnel body without the name (or with the path's).
#[derive(ToSchema)]
pub struct TunnelPut {
    pub name: Option<String>,
    #[schema(value_type = Option<Vec<serde_json::Value>>, min_items = 2, max_items = 2, example = json!(["127.0.0.1", 7001]))]
    pub dest: Option<Endpoint>,
    pub secret: Option<String>,
    pub role: Option<TunnelRole>,
}

/// `POST /service`, `DELETE /service` (only `name` and `type` are needed to delete).
#[derive(ToSchema)]
#[schema(example = json!({"name": "web", "key": "k", "timeout": 30000, "type": "local",
                          "addr": ["127.0.0.1", 8080]}))]
pub struct ServiceBody {
    pub name: String,
    /// Encrypts the service's streams end to end; empty or absent: plaintext.
    pub key: Option<String>,
    /// With a key; default rc4.
    pub cipher: Option<Cipher>,
    /// Idle timeout in milliseconds (0 or absent: none).
    pub timeout: Option<u64>,
    #[schema(rename = "type")]
    pub side: SideParam,
    /// Local: where the service listens. Remote: where its streams are sent.
    #[schema(value_type = Vec<serde_json::Value>, min_items = 2, max_items = 2, example = json!(["127.0.0.1", 8080]))]
    pub addr: Endpoint,
}

/// `PUT /services/{side}/{name}`: a service body without name and type (or with the path's).
#[derive(ToSchema)]
pub struct ServicePut {
    pub name: Option<String>,
    pub key: Option<String>,
    pub cipher: Option<Cipher>,
    pub timeout: Option<u64>,
    #[schema(rename = "type")]
    pub side: Option<SideParam>,
    #[schema(value_type = Vec<serde_json::Value>, min_items = 2, max_items = 2, example = json!(["127.0.0.1", 8080]))]
    pub addr: Endpoint,
}

/// `POST /bind`, `DELETE /bind`.
#[derive(ToSchema)]
#[schema(example = json!({"tunnel": "t1", "service": "web", "type": "local"}))]
pub struct BindBody {
    pub tunnel: String,
    pub service: String,
    #[schema(rename = "type")]
    pub side: SideParam,
}

/// `PUT /binds/{side}/{service}` (and optionally `DELETE`).
#[derive(ToSchema)]
pub struct BindPut {
    pub tunnel: String,
    pub service: Option<String>,
    #[schema(rename = "type")]
    pub side: Option<SideParam>,
}

/// A change was made.
#[derive(ToSchema)]
pub struct Done {
    pub ok: bool,
}

/// Every error: what is wrong, never a key, secret or token.
#[derive(ToSchema)]
pub struct Error {
    pub error: String,
}

#[derive(ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(ToSchema)]
pub struct NotReady {
    pub status: String,
    pub reasons: Vec<String>,
}
