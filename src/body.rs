//! Request bodies: a JSON object whatever the `Content-Type` says, with known fields only and no
//! key twice, and its fields read as the types the admin API takes (names, sides, addresses,
//! secrets, timeouts), each error naming the field. A leaf under the handlers.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use actix_web::http::StatusCode;
use serde_json::{Map, Value};

use menet_actors::limits::{printable, Escaped};
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

pub fn present(body: &Map<String, Value>, field: &str) -> bool {
    !matches!(body.get(field), None | Some(Value::Null))
}

pub fn field<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a Value, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Err(ApiError::bad(format!("missing field \"{field}\""))),
        Some(v) => Ok(v),
    }
}

pub fn name(body: &Map<String, Value>, f: &str) -> Result<String, ApiError> {
    match field(body, f)? {
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

pub fn side(body: &Map<String, Value>) -> Result<Side, ApiError> {
    match field(body, "type")?.as_str() {
        Some("local") => Ok(Side::Local),
        Some("remote") => Ok(Side::Remote),
        _ => Err(ApiError::bad(
            "field \"type\" must be \"local\" or \"remote\"",
        )),
    }
}

/// `[ip, port]`, the port a JSON number or a string of digits, 1..=65535.
pub fn endpoint(body: &Map<String, Value>, f: &str) -> Result<SocketAddr, ApiError> {
    let shape = || ApiError::bad(format!("field \"{f}\" must be [ip, port]"));
    let pair = field(body, f)?.as_array().ok_or_else(shape)?;
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
    .filter(|p| (1..=65535).contains(p))
    .ok_or_else(|| {
        ApiError::bad(format!(
            "field \"{f}\": port {} is not a number in 1..65535",
            shown(port)
        ))
    })?;
    Ok(SocketAddr::new(ip, port as u16))
}

/// An optional secret (a service key, a tunnel secret); empty is the same as none. Never echoed.
pub fn secret(body: &Map<String, Value>, f: &str) -> Result<Option<String>, ApiError> {
    match body.get(f) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad(format!("field \"{f}\" must be a string"))),
    }
}

/// Optional idle timeout in milliseconds; 0 means none.
pub fn timeout(body: &Map<String, Value>) -> Result<Option<Duration>, ApiError> {
    let ms = match body.get("timeout") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    }
    .ok_or_else(|| ApiError::bad("field \"timeout\" must be a whole number of milliseconds"))?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}
