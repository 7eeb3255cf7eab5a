//! Request bodies: a JSON object whatever the `Content-Type` says, with known fields only and no
//! key twice ([`object`]), then deserialized into the handler's typed body ([`typed`]) whose
//! fields are read by the readers here (names, sides, addresses, secrets, timeouts, roles,
//! ciphers), each error naming the field in the API's own words. A leaf under the handlers.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use actix_web::http::StatusCode;
use serde::de::{DeserializeOwned, Deserializer, Visitor};
use serde_json::{Map, Value};

use menet_actors::cipher::CipherKind;
use menet_actors::limits::{printable, Escaped};
use menet_actors::tunnel::Role;
use menet_actors::Side;

use crate::http::ApiError;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest name of a tunnel or service (it travels in a one-byte length on the wire).
pub const MAX_NAME: usize = 255;

/// The body as a JSON object whatever the Content-Type says (`curl -d` sends a form type), with
/// no field outside `allowed` (a misspelt `"Key"` must not silently make a plaintext service).
pub fn object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    if body.len() > MAX_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is over {MAX_BODY} bytes"),
        ));
    }
    let map = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(ApiError::bad("body must be a JSON object")),
        Err(e) => return Err(ApiError::bad(format!("body is not valid JSON: {e}"))),
    };
    // A parser keeps the last of two equal keys, another the first: a body that says two
    // things is refused rather than read one way here and another way by whoever checked it.
    if let Err(e) = serde_json::from_slice::<NoDuplicateKeys>(body) {
        return Err(ApiError::bad(format!("body is not accepted: {e}")));
    }
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        let mut shown: String = unknown.chars().take(64).collect();
        shown = Escaped(&shown).to_string();
        return Err(ApiError::bad(format!(
            "unknown field \"{shown}\" (known: {})",
            allowed.join(", ")
        )));
    }
    Ok(map)
}

/// A JSON document walked only to find an object with a key twice (an error naming it).
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                let shown: String = key.chars().take(64).collect();
                return Err(serde::de::Error::custom(format!(
                    "duplicate key \"{}\"",
                    Escaped(&shown)
                )));
            }
            map.next_value::<NoDuplicateKeys>()?;
            seen.insert(key);
        }
        Ok(self)
    }
}

/// The body `map` (already checked by [`object`]) as the typed body `T`. Readers' errors keep
/// their words; serde's "missing field `x`" is said the API's way, `missing field "x"`.
pub fn typed<T: DeserializeOwned>(map: Map<String, Value>) -> Result<T, ApiError> {
    serde_json::from_value(Value::Object(map)).map_err(|e| {
        let text = e.to_string();
        match text.strip_prefix("missing field `") {
            Some(rest) => {
                ApiError::bad(format!("missing field \"{}\"", rest.trim_end_matches('`')))
            }
            None => ApiError::bad(text),
        }
    })
}

/// The JSON field names of the struct `T` deserializes (renames applied), read from its
/// `Deserialize` implementation: the list [`object`] checks a body against, never a copy.
pub fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    /// A deserializer that only records the fields a struct asks for, then stops.
    struct Fields(&'static [&'static str]);
    impl<'de> Deserializer<'de> for &mut Fields {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(serde::de::Error::custom("fields recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields = Fields(&[]);
    let _ = T::deserialize(&mut fields);
    fields.0
}

/// The value as `Some` unless it is JSON `null`.
fn given(v: &Value) -> Option<&Value> {
    (!v.is_null()).then_some(v)
}

fn missing(f: &str) -> ApiError {
    ApiError::bad(format!("missing field \"{f}\""))
}

/// A field of `body` that is there and not `null`.
pub fn field<'a>(body: &'a Map<String, Value>, f: &str) -> Result<&'a Value, ApiError> {
    body.get(f).and_then(given).ok_or_else(|| missing(f))
}

/// A field of `body` read as a name ([`name_value`]).
pub fn name(body: &Map<String, Value>, f: &str) -> Result<String, ApiError> {
    name_value(field(body, f)?, f)
}

/// A tunnel's or service's name: a non-empty printable string of at most [`MAX_NAME`] bytes.
pub fn name_value(v: &Value, f: &str) -> Result<String, ApiError> {
    match given(v).ok_or_else(|| missing(f))? {
        Value::String(s) if s.is_empty() => {
            Err(ApiError::bad(format!("field \"{f}\" must not be empty")))
        }
        Value::String(s) if s.len() > MAX_NAME => Err(ApiError::bad(format!(
            "field \"{f}\" is longer than {MAX_NAME} bytes"
        ))),
        Value::String(s) if !printable(s) => Err(ApiError::bad(format!(
            "field \"{f}\" must not contain control characters"
        ))),
        Value::String(s) => Ok(s.clone()),
        _ => Err(ApiError::bad(format!("field \"{f}\" must be a string"))),
    }
}

/// `"local"` or `"remote"`.
pub fn side_value(v: &Value, f: &str) -> Result<Side, ApiError> {
    match given(v).ok_or_else(|| missing(f))?.as_str() {
        Some("local") => Ok(Side::Local),
        Some("remote") => Ok(Side::Remote),
        _ => Err(ApiError::bad(format!(
            "field \"{f}\" must be \"local\" or \"remote\""
        ))),
    }
}

/// `[ip, port]`, the port a JSON number or a string of digits, 1..=65535.
pub fn endpoint_value(v: &Value, f: &str) -> Result<SocketAddr, ApiError> {
    let addr = any_port_endpoint_value(v, f)?;
    if addr.port() == 0 {
        return Err(ApiError::bad(format!(
            "field \"{f}\": port \"0\" is not a number in 1..65535"
        )));
    }
    Ok(addr)
}

/// `[ip, port]` where port 0 may be given too: a local service's address, where it means "any
/// free port" (the one bound is shown as `listening` in `GET /config`).
pub fn any_port_endpoint_value(v: &Value, f: &str) -> Result<SocketAddr, ApiError> {
    let shape = || ApiError::bad(format!("field \"{f}\" must be [ip, port]"));
    let pair = given(v)
        .ok_or_else(|| missing(f))?
        .as_array()
        .ok_or_else(shape)?;
    let [ip, port] = pair.as_slice() else {
        return Err(shape());
    };
    let shown =
        |v: &Value| Escaped(&v.to_string().chars().take(64).collect::<String>()).to_string();
    let ip: IpAddr = ip
        .as_str()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            ApiError::bad(format!("field \"{f}\": {} is not an IP address", shown(ip)))
        })?;
    let port = match port {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .filter(|p| *p <= 65535)
    .ok_or_else(|| {
        ApiError::bad(format!(
            "field \"{f}\": port {} is not a number in 1..65535",
            shown(port)
        ))
    })?;
    Ok(SocketAddr::new(ip, port as u16))
}

/// Peer- or user-supplied text as an error shows it: escaped, at most 64 characters.
pub fn shown(text: &str) -> String {
    Escaped(&text.chars().take(64).collect::<String>()).to_string()
}

/// One `[ip, port]` or a list of them (`[[ip, port], ...]`, a remote service's backends), port
/// 0 allowed (the caller decides); at most [`MAX_ADDRS`], none twice.
pub fn addrs_value(v: &Value, f: &str) -> Result<Vec<SocketAddr>, ApiError> {
    let Some(Value::Array(items)) = given(v) else {
        return any_port_endpoint_value(v, f).map(|a| vec![a]);
    };
    if !items.first().is_some_and(Value::is_array) {
        return any_port_endpoint_value(v, f).map(|a| vec![a]);
    }
    if items.len() > MAX_ADDRS {
        return Err(ApiError::bad(format!(
            "field \"{f}\": at most {MAX_ADDRS} addresses"
        )));
    }
    let mut addrs = Vec::with_capacity(items.len());
    for item in items {
        let a = any_port_endpoint_value(item, f)?;
        if addrs.contains(&a) {
            return Err(ApiError::bad(format!("field \"{f}\": {a} is given twice")));
        }
        addrs.push(a);
    }
    Ok(addrs)
}

/// The most addresses a remote service may have.
pub const MAX_ADDRS: usize = 64;

/// An optional word from a fixed set (`"udp"`, `"v2"`, `"round-robin"`): `null` is none; the
/// type's own parser says which words it takes.
pub fn word_value<T: std::str::FromStr<Err = String>>(
    v: &Value,
    f: &str,
) -> Result<Option<T>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(w) => w
            .trim()
            .parse::<T>()
            .map(Some)
            .map_err(|e| ApiError::bad(format!("field \"{f}\" {e}"))),
        _ => Err(ApiError::bad(format!("field \"{f}\" must be a string"))),
    }
}

/// An optional whole number (a number or a string of digits); `null` or 0 is none.
pub fn amount_value(v: &Value, f: &str) -> Result<Option<u64>, ApiError> {
    let n = match v {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .ok_or_else(|| ApiError::bad(format!("field \"{f}\" must be a whole number")))?;
    Ok((n > 0).then_some(n))
}

/// An optional `[ip, port]`: `null` is none.
pub fn optional_endpoint_value(v: &Value, f: &str) -> Result<Option<SocketAddr>, ApiError> {
    given(v).map(|v| endpoint_value(v, f)).transpose()
}

/// An optional secret (a service key, a tunnel secret); empty is the same as none. Never echoed.
pub fn secret_value(v: &Value, f: &str) -> Result<Option<String>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(ApiError::bad(format!("field \"{f}\" must be a string"))),
    }
}

/// Optional idle timeout in milliseconds; 0 means none.
pub fn timeout_value(v: &Value, f: &str) -> Result<Option<Duration>, ApiError> {
    let ms = match v {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        ApiError::bad(format!(
            "field \"{f}\" must be a whole number of milliseconds"
        ))
    })?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

/// A tunnel's role; `null` is the default, a dialer.
pub fn role_value(v: &Value, f: &str) -> Result<Role, ApiError> {
    match v {
        Value::Null => Ok(Role::Dialer),
        Value::String(r) if r == "dialer" => Ok(Role::Dialer),
        Value::String(r) if r == "acceptor" => Ok(Role::Acceptor),
        _ => Err(ApiError::bad(format!(
            "field \"{f}\" must be \"dialer\" or \"acceptor\""
        ))),
    }
}

/// An optional public identity of a node: 64 hex digits, as `GET /config` shows it.
pub fn identity_value(v: &Value, f: &str) -> Result<Option<[u8; 32]>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => menet_actors::handshake::parse_identity(s.trim())
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "field \"{f}\" must be 64 hex digits (a node's identity, as its GET /config \
                     shows it under security.identity)"
                ))
            }),
        _ => Err(ApiError::bad(format!("field \"{f}\" must be a string"))),
    }
}

/// An optional cipher name.
pub fn cipher_value(v: &Value, f: &str) -> Result<Option<CipherKind>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(c) => c
            .parse::<CipherKind>()
            .map(Some)
            .map_err(|e| ApiError::bad(format!("field \"{f}\" {e}"))),
        _ => Err(ApiError::bad(format!("field \"{f}\" must be a string"))),
    }
}

/// Reads one field of a typed body with a reader above, its errors in the API's words:
/// `field_reader!(fn_name, "json name", Type, reader)` makes the function a
/// `#[serde(deserialize_with = "fn_name")]` names.
#[macro_export]
macro_rules! field_reader {
    ($fn_name:ident, $field:literal, $ty:ty, $read:path) => {
        fn $fn_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            let v = <serde_json::Value as serde::Deserialize>::deserialize(d)?;
            $read(&v, $field).map_err(|e| serde::de::Error::custom(e.message()))
        }
    };
}
