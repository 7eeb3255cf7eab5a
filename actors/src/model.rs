//! The state model: what the state file keeps (tunnels this node dials, accepted names,
//! services, binds, the identity), its versions and its checks. Plain data: the journal's line
//! format (`journal.rs`) and the writer thread (`state.rs`) build on it.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::service::{Balance, Protocol, ProxyVersion, ServiceOptions};

/// The format this build writes. It reads versions 1 (which had no identities, secrets,
/// accepted names or ciphers) and 2 (no protocols, PROXY headers, several addresses, health
/// checks or bandwidth limits) too.
pub const VERSION: u64 = 3;
/// Versions this build reads.
pub const READS: [u64; 3] = [1, 2, 3];

#[derive(Debug, Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("state file {path} is corrupt ({source}); fix or remove it, it is never overwritten")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("state file {path} has version {found}, this menet reads versions 1 to {VERSION}; it is left as it is")]
    Version { path: PathBuf, found: String },
    #[error("state file {path} is inconsistent: {message}")]
    Inconsistent { path: PathBuf, message: String },
    #[error("state file {path} is in use by another menet (lock {lock} held)")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("journal {path} is corrupt at offset {offset} (good records follow a bad one, so this is not a torn write); fix or remove it, it is never overwritten")]
    Journal { path: PathBuf, offset: u64 },
    #[error("{path} {problem}: the state holds keys, secrets and this node's identity, so it is kept only where no other user can read or replace it; fix the ownership or mode (chown to this user, chmod go-w for a directory, chmod 600 for a file) or choose another path")]
    Unsafe { path: PathBuf, problem: String },
}

/// What is kept. Field names follow the admin API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The format's version: a file from a newer menet is left as it is, not misread.
    pub version: u64,
    /// This node's identity key as a dialer (Ed25519 seed, hex): acceptors pin the names it
    /// claims to it, so it can reclaim them after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Tunnels this node dials, by name. Accepted tunnels are not kept: their dialer re-dials.
    #[serde(default)]
    pub tunnels: BTreeMap<String, TunnelRecord>,
    /// Names peers may claim: declared ones and those pinned to the identity of their dialer.
    #[serde(default)]
    pub accepted: BTreeMap<String, AcceptedRecord>,
    /// Services, by side and name.
    #[serde(default)]
    pub services: Services,
    /// Binds, by side: service -> tunnel.
    #[serde(default)]
    pub bind: Binds,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelRecord {
    /// The peer's tunnel port this node dials.
    pub dest: SocketAddr,
    /// The tunnel's own secret, in clear like the keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The acceptor's public identity (hex) pinned to the tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_identity: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptedRecord {
    /// The name's own secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The public identity (hex) of the dialer holding the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Declared by the admin API (not only claimed by a dialer).
    #[serde(default)]
    pub declared: bool,
    /// When its dialer was last connected (seconds since the Unix epoch): a pin expires
    /// `pin_ttl` after it, across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Services {
    /// Services that listen on this node, by name.
    #[serde(default)]
    pub local: BTreeMap<String, ServiceRecord>,
    /// Services whose streams this node dials, by name.
    #[serde(default)]
    pub remote: BTreeMap<String, ServiceRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRecord {
    /// Where a local service listens, or a remote service's first address.
    pub addr: SocketAddr,
    /// Stored in clear: the file is readable by its owner only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A keyed service's cipher when not RC4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    /// The idle timeout in milliseconds, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A remote service's further addresses, after `addr`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_addrs: Vec<SocketAddr>,
    /// `udp`, when not TCP.
    #[serde(default, skip_serializing_if = "Protocol::is_tcp")]
    pub protocol: Protocol,
    /// The PROXY header a remote service's backend receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyVersion>,
    /// `round-robin`, when not `first`.
    #[serde(default, skip_serializing_if = "Balance::is_first")]
    pub balance: Balance,
    /// A remote service's health-check period in milliseconds, when checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_ms: Option<u64>,
    /// Bytes per second, each direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
}

impl ServiceRecord {
    /// A plaintext TCP service at `addr`, nothing else set.
    pub fn plain(addr: SocketAddr) -> ServiceRecord {
        ServiceRecord {
            addr,
            key: None,
            cipher: None,
            timeout_ms: None,
            more_addrs: Vec::new(),
            protocol: Protocol::Tcp,
            proxy_protocol: None,
            balance: Balance::First,
            health_check_ms: None,
            bandwidth: None,
        }
    }

    /// The options kept beside the address, key and timeout.
    pub fn options(&self) -> ServiceOptions {
        ServiceOptions {
            protocol: self.protocol,
            proxy_protocol: self.proxy_protocol,
            balance: self.balance,
            health_check_ms: self.health_check_ms,
            bandwidth: self.bandwidth,
        }
    }

    /// Sets the options kept beside the address, key and timeout.
    pub fn with_options(mut self, o: &ServiceOptions) -> ServiceRecord {
        self.protocol = o.protocol;
        self.proxy_protocol = o.proxy_protocol;
        self.balance = o.balance;
        self.health_check_ms = o.health_check_ms;
        self.bandwidth = o.bandwidth;
        self
    }
}

/// Service name -> tunnel name, per side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binds {
    /// Local services and the tunnel each is carried over.
    #[serde(default)]
    pub local: BTreeMap<String, String>,
    /// Remote services and the tunnel each accepts streams from.
    #[serde(default)]
    pub remote: BTreeMap<String, String>,
}

impl State {
    pub fn new() -> State {
        State {
            version: VERSION,
            ..State::default()
        }
    }

    /// Parses and checks a whole state (tests; loading goes through the journal).
    #[cfg(test)]
    pub fn parse(text: &[u8], path: &Path) -> Result<State, StateError> {
        let state = State::parse_only(text, path)?;
        state.validate(path)?;
        Ok(state)
    }

    pub fn parse_only(text: &[u8], path: &Path) -> Result<State, StateError> {
        let corrupt = |source| StateError::Corrupt {
            path: path.to_owned(),
            source,
        };
        let value: serde_json::Value = serde_json::from_slice(text).map_err(corrupt)?;
        match value.get("version") {
            Some(v) if v.as_u64().is_some_and(|v| READS.contains(&v)) => {}
            found => {
                return Err(StateError::Version {
                    path: path.to_owned(),
                    found: found.map_or("(none)".to_owned(), |v| v.to_string()),
                })
            }
        }
        let mut state: State = serde_json::from_value(value).map_err(corrupt)?;
        state.version = VERSION;
        Ok(state)
    }

    /// The checks a loaded state must pass (ciphers, identities, binds naming services).
    pub fn validate(&self, path: &Path) -> Result<(), StateError> {
        let state = self;
        let inconsistent = |message: String| StateError::Inconsistent {
            path: path.to_owned(),
            message,
        };
        for (name, s) in state.services.local.iter().chain(&state.services.remote) {
            if let Some(c) = &s.cipher {
                c.parse::<crate::cipher::CipherKind>()
                    .map_err(|e| inconsistent(format!("service {name}: cipher {e}")))?;
            }
        }
        if let Some(id) = &state.identity {
            crate::handshake::Identity::from_hex(id)
                .map_err(|e| inconsistent(format!("identity: {e}")))?;
        }
        for (name, a) in &state.accepted {
            let ok = a
                .identity
                .as_deref()
                .is_none_or(|id| crate::handshake::from_hex(id).is_some_and(|v| v.len() == 32));
            if !ok {
                return Err(inconsistent(format!(
                    "accepted tunnel {name}: an identity is 64 hex digits"
                )));
            }
        }
        for (side, binds, services) in [
            ("local", &state.bind.local, &state.services.local),
            ("remote", &state.bind.remote, &state.services.remote),
        ] {
            if let Some(service) = binds.keys().find(|s| !services.contains_key(*s)) {
                return Err(StateError::Inconsistent {
                    path: path.to_owned(),
                    message: format!("a bind names {side} service {service}, which is not there"),
                });
            }
        }
        Ok(())
    }
}
