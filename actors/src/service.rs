//! What a service is beyond its name, side, address, key and timeout: the transport it carries
//! (TCP or UDP), whether its backend is told the client's address (a PROXY protocol header), how
//! a remote service chooses among several backends, and the bandwidth its connections may use.
//! Plain data, shared by the admin API, the state file, the routes and the views.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a service carries. Both ends of a stream must name the same.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// A byte stream per client connection.
    #[default]
    Tcp,
    /// Datagrams, one flow per client address, boundaries kept.
    Udp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    pub fn is_tcp(&self) -> bool {
        *self == Protocol::Tcp
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Protocol, String> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err("must be \"tcp\" or \"udp\"".to_owned()),
        }
    }
}

/// The PROXY protocol header (HAProxy's specification) a remote service's backend receives
/// before the client's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    /// The text form: `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// The binary form (TCP and UDP).
    V2,
}

impl FromStr for ProxyVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<ProxyVersion, String> {
        match s {
            "v1" => Ok(ProxyVersion::V1),
            "v2" => Ok(ProxyVersion::V2),
            _ => Err("must be \"v1\" or \"v2\"".to_owned()),
        }
    }
}

/// How a remote service with several addresses picks one for a new stream.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// The first address, in order, that answers.
    #[default]
    First,
    /// Each new stream starts at the next address.
    RoundRobin,
}

impl Balance {
    pub fn is_first(&self) -> bool {
        *self == Balance::First
    }
}

impl FromStr for Balance {
    type Err = String;

    fn from_str(s: &str) -> Result<Balance, String> {
        match s {
            "first" => Ok(Balance::First),
            "round-robin" => Ok(Balance::RoundRobin),
            _ => Err("must be \"first\" or \"round-robin\"".to_owned()),
        }
    }
}

/// A service's options beyond its address, key and timeout; the defaults are a plain TCP
/// service as the seed API made it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceOptions {
    /// TCP or UDP; both ends must agree.
    pub protocol: Protocol,
    /// A remote TCP service's backend receives the client's address first.
    pub proxy_protocol: Option<ProxyVersion>,
    /// How a remote service with several addresses picks one.
    pub balance: Balance,
    /// A remote service's addresses are dialled this often (milliseconds) to find which answer.
    pub health_check_ms: Option<u64>,
    /// Bytes per second the service's connections may move together, each direction.
    pub bandwidth: Option<u64>,
}

/// Idle time after which a UDP flow ends when its service names no timeout.
pub const UDP_DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The shortest active health-check interval accepted.
pub const MIN_HEALTH_CHECK_MS: u64 = 100;

/// The lowest bandwidth limit accepted (bytes per second): below it one frame waits for seconds.
pub const MIN_BANDWIDTH: u64 = 1024;
