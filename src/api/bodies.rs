//! The admin API's request bodies, one type per body beside the parser that fills it: each
//! derives `Deserialize` (its fields read by `body.rs`'s readers, so errors keep the API's words)
//! and `ToSchema` (the OpenAPI document describes the type the parser fills, not a copy).
//! [`parse`] turns a route's body into the Registry message it becomes.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use utoipa::ToSchema;

use menet_actors::cipher::CipherKind;
use menet_actors::registry::{
    AddService, AddTunnel, DeleteService, DeleteTunnel, ServiceSpec, SetBind,
};
use menet_actors::service::{
    Balance, Protocol, ProxyVersion, ServiceOptions, MIN_BANDWIDTH, MIN_HEALTH_CHECK_MS,
};
use menet_actors::tunnel::Role;
use menet_actors::Side;

use crate::body::{
    addrs_value, amount_value, cipher_value, field_names, identity_value, name_value, object,
    optional_endpoint_value, role_value, secret_value, side_value, timeout_value, typed,
    word_value,
};
use crate::field_reader;
use crate::http::ApiError;

field_reader!(read_name, "name", String, name_value);
field_reader!(read_tunnel, "tunnel", String, name_value);
field_reader!(read_service, "service", String, name_value);
field_reader!(
    read_dest,
    "dest",
    Option<SocketAddr>,
    optional_endpoint_value
);
field_reader!(read_addrs, "addr", Vec<SocketAddr>, addrs_value);
field_reader!(read_protocol, "protocol", Option<Protocol>, word_value);
field_reader!(
    read_proxy_protocol,
    "proxy_protocol",
    Option<ProxyVersion>,
    word_value
);
field_reader!(read_balance, "balance", Option<Balance>, word_value);
field_reader!(
    read_health_check,
    "health_check_ms",
    Option<u64>,
    amount_value
);
field_reader!(read_bandwidth, "bandwidth", Option<u64>, amount_value);
field_reader!(read_secret, "secret", Option<String>, secret_value);
field_reader!(read_key, "key", Option<String>, secret_value);
field_reader!(read_role, "role", Role, role_value);
field_reader!(
    read_peer_identity,
    "peer_identity",
    Option<[u8; 32]>,
    identity_value
);
field_reader!(read_cipher, "cipher", Option<CipherKind>, cipher_value);
field_reader!(read_timeout, "timeout", Option<Duration>, timeout_value);
field_reader!(read_side, "type", Side, side_value);

/// `POST /tunnel` (and `DELETE /tunnel`, which needs only `name`).
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"name": "t1", "dest": ["127.0.0.1", 7001]}))]
pub struct TunnelBody {
    /// The tunnel's name on this node, which the peer learns in the handshake.
    #[serde(deserialize_with = "read_name")]
    pub name: String,
    /// The peer's tunnel port `[ip, port]` (the port a number or a string); required for a
    /// dialer, refused for an acceptor.
    #[serde(default, deserialize_with = "read_dest")]
    #[schema(value_type = Option<Vec<serde_json::Value>>, min_items = 2, max_items = 2, example = json!(["127.0.0.1", 7001]))]
    pub dest: Option<SocketAddr>,
    /// The tunnel's own secret, instead of the node's `[tunnel] secret`.
    #[serde(default, deserialize_with = "read_secret")]
    pub secret: Option<String>,
    /// `dialer` (the default) dials `dest`; `acceptor` declares a name peers may claim.
    #[serde(default = "dialer", deserialize_with = "read_role")]
    pub role: Role,
    /// A dialer's: the acceptor's identity (64 hex digits) to require, instead of pinning
    /// whatever identity answers first; a new one replaces the pin.
    #[serde(default, deserialize_with = "read_peer_identity")]
    #[schema(value_type = Option<String>, example = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")]
    pub peer_identity: Option<[u8; 32]>,
}

fn dialer() -> Role {
    Role::Dialer
}

/// The one field `DELETE /tunnel` reads (the rest of a POST body is accepted and ignored).
#[derive(Debug, Deserialize)]
struct TunnelName {
    /// Which tunnel.
    #[serde(deserialize_with = "read_name")]
    name: String,
}

/// A service's cipher, as the document names it.
#[derive(ToSchema)]
#[allow(dead_code)]
enum Cipher {
    #[schema(rename = "rc4")]
    Rc4,
    #[schema(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
    #[schema(rename = "aes-256-gcm")]
    Aes256Gcm,
}

/// `POST /service` (and `DELETE /service`, which needs only `name` and `type`).
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"name": "web", "key": "k", "timeout": 30000, "type": "local",
                          "addr": ["127.0.0.1", 8080]}))]
pub struct ServiceBody {
    /// The service's name, the same on both ends of a tunnel.
    #[serde(deserialize_with = "read_name")]
    pub name: String,
    /// Encrypts the service's streams end to end; empty or absent: plaintext.
    #[serde(default, deserialize_with = "read_key")]
    pub key: Option<String>,
    /// The cipher of a keyed service; default rc4.
    #[serde(default, deserialize_with = "read_cipher")]
    #[schema(value_type = Option<Cipher>)]
    pub cipher: Option<CipherKind>,
    /// Idle timeout in milliseconds, a number or a string of digits (0 or absent: none).
    #[serde(default, deserialize_with = "read_timeout")]
    #[schema(value_type = Option<u64>)]
    pub timeout: Option<Duration>,
    /// `local` (listens on `addr`) or `remote` (streams arriving over a tunnel go to `addr`).
    #[serde(rename = "type", deserialize_with = "read_side")]
    pub side: Side,
    /// `[ip, port]`: where a local service listens (port 0: any free port, shown as `listening`
    /// in `GET /config`), where a remote one's streams are sent; a remote service may have a
    /// list of them (`[["127.0.0.1", 8000], ["127.0.0.1", 8001]]`), tried as `balance` says.
    #[serde(deserialize_with = "read_addrs")]
    #[schema(value_type = Vec<serde_json::Value>, example = json!(["127.0.0.1", 8080]))]
    pub addr: Vec<SocketAddr>,
    /// `tcp` (the default) or `udp`; both ends of a tunnel must name the same.
    #[serde(default, deserialize_with = "read_protocol")]
    #[schema(value_type = Option<Protocol>)]
    pub protocol: Option<Protocol>,
    /// A remote service's backend receives a PROXY protocol header (`v1`, TCP only, or `v2`)
    /// with the client's address before its first byte.
    #[serde(default, deserialize_with = "read_proxy_protocol")]
    #[schema(value_type = Option<ProxyVersion>)]
    pub proxy_protocol: Option<ProxyVersion>,
    /// A remote service with several addresses: `first` (the default: the first that
    /// answers, in order) or `round-robin`.
    #[serde(default, deserialize_with = "read_balance")]
    #[schema(value_type = Option<Balance>)]
    pub balance: Option<Balance>,
    /// A remote service's addresses are dialled this often (milliseconds, at least 100) to
    /// find which answer; absent: only streams' dials tell.
    #[serde(default, deserialize_with = "read_health_check")]
    pub health_check_ms: Option<u64>,
    /// Bytes per second the service's connections may move together, each direction (at
    /// least 1024); absent: no limit.
    #[serde(default, deserialize_with = "read_bandwidth")]
    pub bandwidth: Option<u64>,
}

/// The fields `DELETE /service` reads.
#[derive(Debug, Deserialize)]
struct ServiceRef {
    /// Which service.
    #[serde(deserialize_with = "read_name")]
    name: String,
    /// Of which side.
    #[serde(rename = "type", deserialize_with = "read_side")]
    side: Side,
}

/// `POST /bind`, `DELETE /bind`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"tunnel": "t1", "service": "web", "type": "local"}))]
pub struct BindBody {
    /// The tunnel that carries the service.
    #[serde(deserialize_with = "read_tunnel")]
    pub tunnel: String,
    /// The service carried.
    #[serde(deserialize_with = "read_service")]
    pub service: String,
    /// Which side's service.
    #[serde(rename = "type", deserialize_with = "read_side")]
    pub side: Side,
}

/// `PUT /tunnels/{name}`: a [`TunnelBody`] whose `name`, if given, must be the path's.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TunnelPut {
    /// The tunnel's name; if given, the path's.
    name: Option<String>,
    /// The peer's tunnel port `[ip, port]`; required for a dialer, refused for an acceptor.
    #[schema(value_type = Option<Vec<serde_json::Value>>, min_items = 2, max_items = 2, example = json!(["127.0.0.1", 7001]))]
    dest: Option<SocketAddr>,
    /// The tunnel's own secret, instead of the node's `[tunnel] secret`.
    secret: Option<String>,
    /// `dialer` (the default) dials `dest`; `acceptor` declares a name peers may claim.
    role: Option<Role>,
    /// A dialer's: the acceptor's identity (64 hex digits) to require.
    peer_identity: Option<String>,
}

/// `PUT /services/{side}/{name}`: a [`ServiceBody`] whose `name` and `type`, if given, must be
/// the path's.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ServicePut {
    /// The service's name; if given, the path's.
    name: Option<String>,
    /// Encrypts the service's streams end to end; empty or absent: plaintext.
    key: Option<String>,
    /// The cipher of a keyed service; default rc4.
    cipher: Option<Cipher>,
    /// Idle timeout in milliseconds (0 or absent: none).
    timeout: Option<u64>,
    /// `local` or `remote`; if given, the path's.
    #[schema(rename = "type")]
    side: Option<Side>,
    /// `[ip, port]`: where a local service listens, where a remote one's streams go.
    #[schema(value_type = Vec<serde_json::Value>, example = json!(["127.0.0.1", 8080]))]
    addr: SocketAddr,
    /// `tcp` (the default) or `udp`; both ends of a tunnel must name the same.
    protocol: Option<Protocol>,
    /// A remote service's backend receives a PROXY header (`v1` or `v2`) first.
    proxy_protocol: Option<ProxyVersion>,
    /// A remote service with several addresses: `first` (the default) or `round-robin`.
    balance: Option<Balance>,
    /// A remote service's addresses are dialled this often (ms, at least 100).
    health_check_ms: Option<u64>,
    /// Bytes per second the service's connections may move together, each direction.
    bandwidth: Option<u64>,
}

/// `PUT /binds/{side}/{service}` (and optionally `DELETE`): a [`BindBody`] whose `service` and
/// `type`, if given, must be the path's.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BindPut {
    /// The tunnel that carries the service.
    tunnel: String,
    /// The service carried; if given, the path's.
    service: Option<String>,
    /// `local` or `remote`; if given, the path's.
    #[schema(rename = "type")]
    side: Option<Side>,
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

/// The fields a body of `route` may have: its POST type's. A DELETE may carry the whole body of
/// its POST (people copy it); the extra fields are known, so they are accepted and ignored.
/// Anything else is a 400 naming it.
pub fn fields(route: Route) -> &'static [&'static str] {
    match route {
        Route::PostTunnel | Route::DeleteTunnel => field_names::<TunnelBody>(),
        Route::PostService | Route::DeleteService => field_names::<ServiceBody>(),
        Route::PostBind | Route::DeleteBind => field_names::<BindBody>(),
    }
}

/// Parses a request body for `route`. Never panics, whatever the bytes.
pub fn parse(route: Route, body: &[u8]) -> Result<Request, ApiError> {
    let body = object(body, fields(route))?;
    Ok(match route {
        Route::PostTunnel => Request::AddTunnel(add_tunnel(typed(body)?)?),
        Route::DeleteTunnel => {
            let TunnelName { name } = typed(body)?;
            Request::DeleteTunnel(DeleteTunnel { name })
        }
        Route::PostService => Request::AddService(add_service(typed(body)?)?),
        Route::DeleteService => {
            let ServiceRef { name, side } = typed(body)?;
            Request::DeleteService(DeleteService { name, side })
        }
        Route::PostBind | Route::DeleteBind => {
            let BindBody {
                tunnel,
                service,
                side,
            } = typed(body)?;
            Request::SetBind(SetBind {
                tunnel,
                service,
                side,
                bound: route == Route::PostBind,
            })
        }
    })
}

/// A tunnel body's fields that depend on each other: a dialer needs `dest`, an acceptor has none.
fn add_tunnel(b: TunnelBody) -> Result<AddTunnel, ApiError> {
    if b.role == Role::Acceptor && b.peer_identity.is_some() {
        return Err(ApiError::bad(
            "field \"peer_identity\": an accepted tunnel pins its dialer's identity at first \
             contact; omit it",
        ));
    }
    match (b.role, b.dest) {
        (Role::Dialer, None) => Err(ApiError::bad("missing field \"dest\"")),
        (Role::Acceptor, Some(_)) => Err(ApiError::bad(
            "field \"dest\": an accepted tunnel is dialled by its peer; omit it",
        )),
        (role, dest) => Ok(AddTunnel {
            name: b.name,
            role,
            dest,
            secret: b.secret,
            peer_identity: b.peer_identity,
        }),
    }
}

/// A service body's fields that depend on each other: a cipher needs a key; several addresses,
/// a PROXY header, a balance and a health check are a remote service's.
fn add_service(b: ServiceBody) -> Result<AddService, ApiError> {
    let bad = |m: &str| Err(ApiError::bad(m.to_owned()));
    if b.cipher.is_some() && b.key.is_none() {
        return bad("field \"cipher\" needs a \"key\": a plaintext service has no cipher");
    }
    let Some((&addr, more)) = b.addr.split_first() else {
        return bad("field \"addr\" must be [ip, port] or a list of them");
    };
    let local = b.side == Side::Local;
    if local && !more.is_empty() {
        return bad("field \"addr\": a local service listens on one address");
    }
    if !local && b.addr.iter().any(|a| a.port() == 0) {
        return bad("field \"addr\": port 0 (any free port) is only for a local service");
    }
    let protocol = b.protocol.unwrap_or_default();
    for (given, field) in [
        (b.proxy_protocol.is_some(), "proxy_protocol"),
        (b.balance.is_some(), "balance"),
        (b.health_check_ms.is_some(), "health_check_ms"),
    ] {
        if local && given {
            return Err(ApiError::bad(format!(
                "field \"{field}\" is a remote service's (where connections are sent)"
            )));
        }
    }
    if protocol == Protocol::Udp && b.proxy_protocol.is_some() {
        return bad("field \"proxy_protocol\" is for a TCP service");
    }
    if b.health_check_ms.is_some_and(|ms| ms < MIN_HEALTH_CHECK_MS) {
        return Err(ApiError::bad(format!(
            "field \"health_check_ms\" must be at least {MIN_HEALTH_CHECK_MS}"
        )));
    }
    if b.bandwidth.is_some_and(|n| n < MIN_BANDWIDTH) {
        return Err(ApiError::bad(format!(
            "field \"bandwidth\" must be at least {MIN_BANDWIDTH} bytes per second"
        )));
    }
    Ok(AddService(ServiceSpec {
        name: b.name,
        key: b.key,
        cipher: b.cipher,
        timeout: b.timeout,
        side: b.side,
        addr,
        more_addrs: more.to_vec(),
        options: ServiceOptions {
            protocol,
            proxy_protocol: b.proxy_protocol,
            balance: b.balance.unwrap_or_default(),
            health_check_ms: b.health_check_ms,
            bandwidth: b.bandwidth,
        },
    }))
}

/// One body for one route, as the fuzz target gives them: the first byte picks the route.
pub fn fuzz_body(data: &[u8]) {
    if let Some((first, body)) = data.split_first() {
        let _ = parse(Route::ALL[usize::from(*first) % Route::ALL.len()], body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{
        cipher_value, endpoint_value, name_value, role_value, secret_value, side_value,
        timeout_value,
    };
    use actix_web::http::StatusCode;
    use serde_json::{json, Value};

    fn refused(route: Route, body: &str) -> ApiError {
        match parse(route, body.as_bytes()) {
            Ok(_) => panic!("accepted: {body}"),
            Err(e) => e,
        }
    }

    #[test]
    fn endpoints_accept_string_and_number_ports() {
        let b = json!({"a": ["127.0.0.1", "4322"], "b": ["::1", 80]});
        assert_eq!(
            endpoint_value(&b["a"], "a").expect("ok"),
            "127.0.0.1:4322".parse().expect("addr")
        );
        assert_eq!(endpoint_value(&b["b"], "b").expect("ok").port(), 80);
        for bad in [
            json!({"a": ["127.0.0.1", "0"]}),
            json!({"a": ["127.0.0.1", 70000]}),
            json!({"a": ["127.0.0.1", "http"]}),
            json!({"a": ["localhost", 80]}),
            json!({"a": ["127.0.0.1"]}),
            json!({"a": "127.0.0.1:80"}),
            json!({}),
        ] {
            let e = endpoint_value(&bad["a"], "a").expect_err("refused");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.message().contains("\"a\""), "{}", e.message());
        }
    }

    #[test]
    fn names_types_keys_and_timeouts() {
        assert!(name_value(&json!(""), "name").is_err());
        assert!(name_value(&json!(5), "name").is_err());
        assert!(name_value(&json!("a\nb"), "name").is_err());
        assert!(name_value(&Value::Null, "name").is_err());
        assert!(side_value(&json!("both"), "type").is_err());
        assert_eq!(secret_value(&json!(""), "key").expect("ok"), None);
        assert!(secret_value(&json!(1), "key").is_err());
        assert_eq!(
            timeout_value(&json!("250"), "timeout").expect("ok"),
            Some(Duration::from_millis(250))
        );
        assert!(timeout_value(&json!(-1), "timeout").is_err());
        assert_eq!(role_value(&Value::Null, "role").expect("ok"), Role::Dialer);
        assert!(cipher_value(&json!("des"), "cipher").is_err());
    }

    /// The typed bodies answer in the API's words: which field, what is wrong with it.
    #[test]
    fn typed_bodies_name_the_field_at_fault() {
        for (route, body, said) in [
            (
                Route::PostTunnel,
                r#"{"dest":["127.0.0.1",1]}"#,
                "missing field \"name\"",
            ),
            (
                Route::PostTunnel,
                r#"{"name":"t"}"#,
                "missing field \"dest\"",
            ),
            (
                Route::PostTunnel,
                r#"{"name":null,"dest":["127.0.0.1",1]}"#,
                "missing field \"name\"",
            ),
            (
                Route::PostTunnel,
                r#"{"name":"t","dest":["127.0.0.1",1],"role":"boss"}"#,
                "field \"role\" must be \"dialer\" or \"acceptor\"",
            ),
            (
                Route::PostService,
                r#"{"name":"s","type":"local"}"#,
                "missing field \"addr\"",
            ),
            (
                Route::PostService,
                r#"{"name":"s","type":"up","addr":["127.0.0.1",1]}"#,
                "field \"type\" must be \"local\" or \"remote\"",
            ),
            (
                Route::PostService,
                r#"{"name":"s","type":"local","addr":["127.0.0.1",1],"timeout":"x"}"#,
                "field \"timeout\" must be a whole number of milliseconds",
            ),
            (
                Route::PostService,
                r#"{"name":"s","key":"k","cipher":"des","type":"local","addr":["127.0.0.1",1]}"#,
                "field \"cipher\" must be",
            ),
            (
                Route::DeleteService,
                r#"{"name":"s"}"#,
                "missing field \"type\"",
            ),
            (
                Route::PostService,
                r#"{"name":"s","type":"remote","addr":["127.0.0.1",0]}"#,
                "field \"addr\": port 0",
            ),
            (
                Route::PostTunnel,
                r#"{"name":"t","dest":["127.0.0.1","0"]}"#,
                "field \"dest\": port \"0\" is not",
            ),
            (
                Route::PostBind,
                r#"{"tunnel":"t","service":"","type":"local"}"#,
                "field \"service\" must not be empty",
            ),
        ] {
            let e = refused(route, body);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            assert!(e.message().starts_with(said), "{body}: {}", e.message());
        }
        assert!(parse(
            Route::PostService,
            br#"{"name":"s","type":"local","addr":["127.0.0.1",0]}"#
        )
        .is_ok());
        // A DELETE reads only what it needs; the rest of its POST body is accepted.
        assert!(parse(Route::DeleteService, br#"{"name":"s","type":"local"}"#).is_ok());
        assert!(parse(
            Route::DeleteTunnel,
            br#"{"name":"t","dest":["127.0.0.1","4322"]}"#
        )
        .is_ok());
    }

    #[test]
    fn the_options_of_a_service_are_read_and_checked_together() {
        let Request::AddService(AddService(spec)) = parse(
            Route::PostService,
            br#"{"name":"s","type":"remote","addr":[["127.0.0.1",8000],["127.0.0.1","8001"]],
                 "balance":"round-robin","health_check_ms":"500","proxy_protocol":"v2",
                 "bandwidth":1048576}"#,
        )
        .expect("parses") else {
            panic!("not a service");
        };
        assert_eq!(spec.addr.port(), 8000);
        assert_eq!(spec.more_addrs.len(), 1);
        assert_eq!(spec.options.balance, Balance::RoundRobin);
        assert_eq!(spec.options.health_check_ms, Some(500));
        assert_eq!(spec.options.proxy_protocol, Some(ProxyVersion::V2));
        assert_eq!(spec.options.bandwidth, Some(1 << 20));
        for (body, words) in [
            (
                r#"{"name":"s","type":"local","addr":[["127.0.0.1",1],["127.0.0.1",2]]}"#,
                "a local service listens on one address",
            ),
            (
                r#"{"name":"s","type":"local","addr":["127.0.0.1",1],"proxy_protocol":"v1"}"#,
                "field \"proxy_protocol\" is a remote service's",
            ),
            (
                r#"{"name":"s","type":"remote","addr":["127.0.0.1",1],"protocol":"sctp"}"#,
                "field \"protocol\" must be \"tcp\" or \"udp\"",
            ),
            (
                r#"{"name":"s","type":"remote","addr":["127.0.0.1",1],"protocol":"udp",
                    "proxy_protocol":"v1"}"#,
                "field \"proxy_protocol\" is for a TCP service",
            ),
            (
                r#"{"name":"s","type":"remote","addr":["127.0.0.1",1],"balance":"random"}"#,
                "field \"balance\" must be",
            ),
            (
                r#"{"name":"s","type":"remote","addr":["127.0.0.1",1],"bandwidth":10}"#,
                "field \"bandwidth\" must be at least 1024",
            ),
            (
                r#"{"name":"s","type":"remote","addr":["127.0.0.1",1],"health_check_ms":"x"}"#,
                "field \"health_check_ms\" must be a whole number",
            ),
            (
                r#"{"name":"s","type":"remote","addr":[["127.0.0.1",1],["127.0.0.1",1]]}"#,
                "is given twice",
            ),
        ] {
            let e = refused(Route::PostService, body);
            assert!(e.message().contains(words), "{body}: {}", e.message());
        }
    }

    #[test]
    fn allowed_fields_come_from_the_body_types() {
        assert_eq!(
            fields(Route::PostTunnel),
            ["name", "dest", "secret", "role", "peer_identity"]
        );
        assert_eq!(
            fields(Route::DeleteService),
            [
                "name",
                "key",
                "cipher",
                "timeout",
                "type",
                "addr",
                "protocol",
                "proxy_protocol",
                "balance",
                "health_check_ms",
                "bandwidth"
            ]
        );
        assert_eq!(fields(Route::PostBind), ["tunnel", "service", "type"]);
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
