//! `PUT /config`: the document `GET /config` returns, edited, as the desired configuration.
//! Each object is read by the same parser as its single-object route (so its errors are those
//! routes' words), prefixed with where it is in the document; every error is collected, not just
//! the first. Runtime-only fields (state, counters, connections, limits, security, identities)
//! are ignored; a key or secret shown as `"***"` keeps the current one (the Registry resolves it).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use menet_actors::registry::{AddService, AddTunnel, ConfigDiff, Desired, DesiredTunnel, Parts};
use menet_actors::tunnel::Role;
use menet_actors::Side;

use super::bodies::{fields, parse, Request, Route};
use crate::body::name_value;

/// Top-level keys of a `GET /config` document that are not configuration.
const RUNTIME: [&str; 3] = ["connections", "security", "limits"];

/// The largest desired document read (a configuration of many thousands of objects).
pub const MAX_DOCUMENT: usize = 16 << 20;

/// `PUT /config`'s answer: what changed (or would, with `dry_run`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Applied {
    /// Always true: a refused document answers an error.
    pub ok: bool,
    /// What changed (or would, with `dry_run`).
    #[serde(flatten)]
    pub diff: ConfigDiff,
}

/// Reads a desired document; the parts it names (a part left out is kept as it is, but
/// `PUT /config` names all four); or every problem, each naming its object and field.
pub fn read(body: &[u8], parts: Parts) -> Result<Desired, Vec<String>> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| vec![format!("body is not JSON: {e}")])?;
    let Value::Object(doc) = doc else {
        return Err(vec!["the document must be a JSON object".to_owned()]);
    };
    let mut errors = Vec::new();
    let mut desired = Desired::default();
    for key in doc.keys() {
        let known = ["tunnels", "accepted", "services", "bind"].contains(&key.as_str());
        if !known && !RUNTIME.contains(&key.as_str()) {
            errors.push(format!(
                "unknown field \"{}\" (the document's parts: tunnels, accepted, services, bind)",
                crate::body::shown(key)
            ));
        }
    }
    read_names(&doc, parts, &mut desired, &mut errors);
    if parts.services {
        let services = doc.get("services").cloned().unwrap_or(Value::Null);
        for side in [Side::Local, Side::Remote] {
            let mut part = Map::new();
            part.insert(
                side.to_string(),
                services
                    .get(side.to_string())
                    .cloned()
                    .unwrap_or(Value::Null),
            );
            for (name, obj) in objects(&part, &side.to_string(), &mut errors) {
                match service(&name, side, obj) {
                    Ok(AddService(spec)) => desired.services.push(spec),
                    Err(e) => errors.push(format!("services.{side}.{name}: {e}")),
                }
            }
        }
    }
    if parts.binds {
        let binds = doc.get("bind").cloned().unwrap_or(Value::Null);
        for side in [Side::Local, Side::Remote] {
            let mut part = Map::new();
            part.insert(
                side.to_string(),
                binds.get(side.to_string()).cloned().unwrap_or(Value::Null),
            );
            let mut these = BTreeMap::new();
            if let Some(map) = entries(&part, &side.to_string(), &mut errors) {
                for (service, tunnel) in map {
                    match name_value(tunnel, "tunnel") {
                        Ok(t) => {
                            these.insert(service.clone(), t);
                        }
                        Err(e) => errors.push(format!("bind.{side}.{service}: {}", e.message())),
                    }
                }
            }
            desired.binds.insert(side, these);
        }
    }
    if errors.is_empty() {
        Ok(desired)
    } else {
        Err(errors)
    }
}

/// The tunnels this node dials and the names it declares, from the document.
fn read_names(
    doc: &Map<String, Value>,
    parts: Parts,
    desired: &mut Desired,
    errors: &mut Vec<String>,
) {
    if parts.tunnels {
        for (name, obj) in objects(doc, "tunnels", errors) {
            if obj.get("role").and_then(Value::as_str) == Some("acceptor") {
                // A tunnel a peer dialled: runtime; its declaration, if any, is under accepted.
                continue;
            }
            match tunnel(&name, obj) {
                Ok(t) => {
                    desired.tunnels.insert(name, t);
                }
                Err(e) => errors.push(format!("tunnels.{name}: {e}")),
            }
        }
    }
    if parts.accepted {
        for (name, obj) in objects(doc, "accepted", errors) {
            if obj.get("declared").and_then(Value::as_bool) != Some(true) {
                // A name only pinned to the dialer that claimed it: runtime.
                continue;
            }
            match accepted(&name, obj) {
                Ok(secret) => {
                    desired.accepted.insert(name, secret);
                }
                Err(e) => errors.push(format!("accepted.{name}: {e}")),
            }
        }
    }
    for part in ["services", "bind"] {
        if let Some(Value::Object(sides)) = doc.get(part) {
            for side in sides.keys().filter(|k| *k != "local" && *k != "remote") {
                errors.push(format!(
                    "{part}.{}: not a side (local or remote)",
                    crate::body::shown(side)
                ));
            }
        }
    }
}

/// The object at `doc[part]`: `null` or absent is empty; anything but an object is an error.
fn entries<'a>(
    doc: &'a Map<String, Value>,
    part: &str,
    errors: &mut Vec<String>,
) -> Option<&'a Map<String, Value>> {
    match doc.get(part) {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => {
            errors.push(format!("{part}: must be an object of names"));
            None
        }
    }
}

/// The named objects of `doc[part]`, each checked to be an object with a good name.
fn objects(
    doc: &Map<String, Value>,
    part: &str,
    errors: &mut Vec<String>,
) -> Vec<(String, Map<String, Value>)> {
    let mut out = Vec::new();
    for (name, v) in entries(doc, part, errors).into_iter().flatten() {
        if let Err(e) = name_value(&Value::String(name.clone()), "name") {
            errors.push(format!(
                "{part}.{}: {}",
                crate::body::shown(name),
                e.message()
            ));
            continue;
        }
        match v {
            Value::Object(m) => out.push((name.clone(), m.clone())),
            _ => errors.push(format!("{part}.{name}: must be an object")),
        }
    }
    out
}

/// Keeps the fields a route's body takes (the rest of a `GET /config` object is runtime), adds
/// `extra`, and parses it with that route's own parser.
fn as_body(
    route: Route,
    mut obj: Map<String, Value>,
    extra: &[(&str, Value)],
) -> Result<Request, String> {
    let allowed = fields(route);
    obj.retain(|k, v| allowed.contains(&k.as_str()) && !v.is_null());
    for (k, v) in extra {
        obj.insert((*k).to_owned(), v.clone());
    }
    let body = serde_json::to_vec(&Value::Object(obj)).unwrap_or_default();
    parse(route, &body).map_err(|e| e.message().to_owned())
}

fn tunnel(name: &str, obj: Map<String, Value>) -> Result<DesiredTunnel, String> {
    match as_body(
        Route::PostTunnel,
        obj,
        &[("name", Value::String(name.to_owned()))],
    )? {
        Request::AddTunnel(AddTunnel {
            role: Role::Dialer,
            dest: Some(dest),
            secret,
            peer_identity,
            ..
        }) => Ok(DesiredTunnel {
            dest,
            secret,
            peer_identity,
        }),
        _ => Err("field \"dest\" is required for a tunnel this node dials".to_owned()),
    }
}

fn accepted(name: &str, obj: Map<String, Value>) -> Result<Option<String>, String> {
    let secret = obj.get("secret").cloned().unwrap_or(Value::Null);
    crate::body::secret_value(&secret, "secret")
        .map_err(|e| e.message().to_owned())
        .and_then(|s| {
            name_value(&Value::String(name.to_owned()), "name")
                .map(|_| s)
                .map_err(|e| e.message().to_owned())
        })
}

fn service(name: &str, side: Side, obj: Map<String, Value>) -> Result<AddService, String> {
    let extra = [
        ("name", Value::String(name.to_owned())),
        ("type", Value::String(side.to_string())),
    ];
    match as_body(Route::PostService, obj, &extra)? {
        Request::AddService(s) => Ok(s),
        _ => Err("not a service".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_config_document_reads_back_as_its_configuration() {
        let doc = br#"{
            "tunnels": {"t1": {"dest": ["127.0.0.1", 7001], "role": "dialer", "state": "connected",
                               "secret": "***", "peer_identity": null, "streams": 3},
                        "in": {"dest": null, "role": "acceptor", "state": "connected"}},
            "accepted": {"in": {"declared": false, "identity": "ab"},
                         "t9": {"declared": true, "secret": null, "connected": false}},
            "services": {"local": {"web": {"addr": ["0.0.0.0", 8080], "key": "***", "cipher": "rc4",
                                           "timeout": null, "listening": "0.0.0.0:8080",
                                           "connections": 4, "last_error": null, "protocol": "tcp"}},
                         "remote": {"db": {"addr": [["127.0.0.1", 5432], ["127.0.0.1", 5433]],
                                           "balance": "round-robin", "backends": [],
                                           "protocol": "tcp", "key": null}}},
            "bind": {"local": {"web": "t1"}, "remote": {"db": "in"}},
            "connections": {}, "security": {}, "limits": {}
        }"#;
        let d = read(doc, Parts::ALL).expect("reads");
        assert_eq!(d.tunnels.len(), 1);
        assert_eq!(d.tunnels["t1"].secret.as_deref(), Some("***"));
        assert_eq!(d.accepted.len(), 1);
        assert_eq!(d.services.len(), 2);
        assert_eq!(d.binds[&Side::Remote]["db"], "in");
    }

    #[test]
    fn every_bad_object_is_named_and_nothing_is_read() {
        let doc = br#"{
            "services": {"local": {"bad": {"addr": ["127.0.0.1", "x"]},
                                   "good": {"addr": ["127.0.0.1", 1]},
                                   "worse": {"addr": ["127.0.0.1", 2], "timeout": "soon"}}},
            "tunnels": {"t": {"role": "dialer"}},
            "servces": {}
        }"#;
        let errors = read(doc, Parts::ALL).expect_err("refused");
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors
            .iter()
            .any(|e| e.starts_with("services.local.bad: field \"addr\"")));
        assert!(errors
            .iter()
            .any(|e| e.starts_with("services.local.worse: field \"timeout\"")));
        assert!(errors.iter().any(|e| e.starts_with("tunnels.t: ")));
        assert!(errors
            .iter()
            .any(|e| e.contains("unknown field \"servces\"")));
    }
}
