//! The node's start-up configuration: the TOML file and the command line that overrides it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use menet_actors::cipher::Secret;
use menet_actors::limits::Limits;
use menet_actors::{Access, Settings};
use serde::Deserialize;
use thiserror::Error;

use crate::api::AdminAccess;

/// Environment variable with the tunnel secret (overrides the file).
pub const ENV_TUNNEL_SECRET: &str = "MENET_TUNNEL_SECRET";
/// Environment variable with the admin token (overrides the file).
pub const ENV_ADMIN_TOKEN: &str = "MENET_ADMIN_TOKEN";

pub const DEFAULT_PATH: &str = "config/menet.toml";

/// `--version`: the release and the tunnel protocol it speaks (a unit test keeps the two in step).
pub const VERSION_TEXT: &str = concat!(env!("CARGO_PKG_VERSION"), " (tunnel protocol 4)");

#[derive(Debug, Parser)]
#[command(
    name = "menet",
    version = VERSION_TEXT,
    about = "A dynamic TCP tunnel proxy: tunnels, services and binds are created at runtime over \
             the admin HTTP API (see /openapi.json, or the dashboard at /ui/)",
    after_help = "Environment:\n  \
        MENET_TUNNEL_SECRET  the tunnel secret (overrides [tunnel] secret and secret_file)\n  \
        MENET_ADMIN_TOKEN    the admin API token (overrides [admin] token and token_file)\n  \
        RUST_LOG             log filter, env_logger syntax (default info; e.g. menet_actors=debug)\n  \
        NOTIFY_SOCKET        set by systemd (Type=notify): READY=1 is sent once the node is ready\n  \
        WATCHDOG_USEC        set by systemd (WatchdogSec=): the event loop pings the watchdog\n\n\
        Exit status: 0 after SIGTERM or SIGINT (or a good --check), 1 on a start-up error."
)]
pub struct Cli {
    /// The TOML configuration file.
    #[arg(long, default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Admin API listen address (IP:PORT), overriding [admin] in the file.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Tunnel port listen address (IP:PORT), overriding [tunnel] in the file.
    #[arg(long)]
    pub tunnel: Option<SocketAddr>,
    /// The state file, overriding [state] path in the file.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Data threads for tunnels and their connections, overriding [node] threads (default: one
    /// per core; 0: all on the admin thread, as a single-threaded node).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Check the config file and the state file, print what they hold and exit: 0 if both are
    /// good, 1 with the reason otherwise. Nothing is bound or written.
    #[arg(long)]
    pub check: bool,
    /// Print the state file's contents (its snapshot with its journal applied) as JSON and exit.
    /// Nothing is locked or written: it works beside a running node.
    #[arg(long)]
    pub dump_state: bool,
    /// With --check: also check this desired-configuration document (what `PUT /config` takes:
    /// `GET /config`'s output, edited); every error is printed, each naming its object.
    #[arg(long, value_name = "FILE", requires = "check")]
    pub desired: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// `[admin]`: where the admin API listens and who may use it.
    #[serde(default)]
    admin: Admin,
    /// `[tunnel]`: the tunnel port, windows, heartbeats, secrets, lanes.
    #[serde(default)]
    tunnel: Tunnel,
    /// `[state]`: where the runtime configuration is kept.
    #[serde(default)]
    state: StateTable,
    /// `[limits]`: what peers and clients may use of this node.
    #[serde(default)]
    limits: LimitsTable,
    /// `[node]`: how the node uses the machine.
    #[serde(default)]
    node: NodeTable,
    /// `[log]`: how the log lines look.
    #[serde(default)]
    log: LogTable,
}

/// `[log]`: how the node's log lines look.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogTable {
    /// `"text"` (env_logger's lines, the default) or `"json"` (one object per line).
    #[serde(default)]
    format: crate::logfmt::LogFormat,
}

/// `[node]`: how the node uses the machine.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeTable {
    /// Data threads for tunnels and their connections; default: one per core.
    threads: Option<usize>,
    /// µs a data thread polls on after its last small read before it sleeps; 0: never.
    busy_poll_us: Option<u64>,
}

/// `[limits]`: what peers and clients may use of this node.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsTable {
    /// Tunnel-port handshakes under way at once.
    max_handshakes: Option<usize>,
    /// Tunnels accepted at once.
    max_tunnels: Option<usize>,
    /// Streams a peer may open per tunnel (announced to it).
    max_streams: Option<u32>,
    /// Clients of one local service at once.
    max_connections_per_service: Option<usize>,
    /// Flows (client addresses) of one local UDP service at once.
    max_udp_flows_per_service: Option<usize>,
    /// Backend connections one tunnel's peer may cause per second.
    max_dials_per_second: Option<u32>,
    /// Descriptors kept for the admin API, the tunnel port and the state file.
    fd_reserve: Option<usize>,
    /// Handshakes at once from one address.
    handshakes_per_address: Option<usize>,
    /// Handshakes at once from one /24 or /64.
    handshakes_per_network: Option<usize>,
    /// Places of `max_tunnels` kept for expected dialers.
    reserved_tunnels: Option<usize>,
    /// Tunnel names remembered at most.
    max_names: Option<usize>,
    /// New names one source address may claim per minute.
    new_names_per_minute: Option<u32>,
    /// What one tunnel or local service may hold of the descriptor pool.
    descriptor_share_percent: Option<u8>,
    /// Admin connections served at once.
    max_admin_connections: Option<usize>,
    /// Bytes all tunnels may hold for their streams.
    max_buffered_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateTable {
    /// Where the runtime configuration is kept; none: nothing is kept.
    path: Option<PathBuf>,
    /// The journal is folded into the snapshot once it is larger than this and the snapshot.
    compact_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Admin {
    /// The admin API's address (loopback by default).
    #[serde(default = "loopback")]
    ip: IpAddr,
    /// The admin API's port.
    #[serde(default = "admin_port")]
    port: u16,
    /// Bearer token every request must carry.
    token: Option<String>,
    /// A file holding the bearer token (read at start).
    token_file: Option<PathBuf>,
    /// Listen beyond loopback without a token.
    #[serde(default)]
    allow_insecure_admin: bool,
    /// Host names the API may be addressed by, beside IP literals and localhost.
    #[serde(default)]
    hosts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tunnel {
    /// The tunnel port's address.
    #[serde(default = "any")]
    ip: IpAddr,
    /// The tunnel port.
    #[serde(default = "tunnel_port")]
    port: u16,
    /// Receive window per stream, bytes.
    stream_window: Option<u32>,
    /// Receive window per tunnel, bytes.
    tunnel_window: Option<u32>,
    /// How far a stream's window may grow, bytes.
    max_stream_window: Option<u32>,
    /// How far the tunnel window (and the sum of its streams' windows) may grow, bytes.
    max_tunnel_window: Option<u32>,
    /// A PING this often, milliseconds.
    heartbeat_interval_ms: Option<u64>,
    /// A tunnel silent this long is dead, milliseconds.
    heartbeat_timeout_ms: Option<u64>,
    /// The node's tunnel secret: peers must prove it.
    secret: Option<String>,
    /// A file holding the node's tunnel secret (read at start).
    secret_file: Option<PathBuf>,
    /// `any` (default) or `known`: admit only names declared on this node.
    accept: Option<String>,
    /// A dialer on the tunnel port must send its HELLO within this, milliseconds.
    hello_timeout_ms: Option<u64>,
    /// ... and complete its handshake within this, milliseconds.
    handshake_timeout_ms: Option<u64>,
    /// A loose pinned name is forgotten this long after its dialer was last seen: "30d", "12h",
    /// "90m", "45s" or a number of seconds.
    pin_ttl: Option<toml::Value>,
    /// Seal every frame of the tunnels in records (default true); false only for measurements
    /// and links that are private already (a tunnel stays sealed if its peer wants it).
    encrypt: Option<bool>,
    /// TCP connections each tunnel this node dials runs over (default 2, at most 8): its
    /// streams spread over them, each stream on one.
    lanes: Option<usize>,
    /// A sealed tunnel replaces its sending key after this many bytes (default 1 GiB).
    rekey_bytes: Option<u64>,
    /// ... or after this long (default "1h"; a duration as for `pin_ttl`).
    rekey_interval: Option<toml::Value>,
}

/// `[node] busy_poll_us` when not given: a little more than a reply takes to come back through a
/// pair of nodes whose threads are awake (`menet_actors::busy_poll`).
const DEFAULT_BUSY_POLL_US: u64 = 50;

/// The most `[node] busy_poll_us` may be: past a few round trips, polling only burns the core.
const MAX_BUSY_POLL_US: u64 = 10_000;

/// A duration written as seconds (an integer) or a number with a unit: `s`, `m`, `h` or `d`.
fn parse_duration(v: &toml::Value) -> Option<Duration> {
    match v {
        toml::Value::Integer(n) => u64::try_from(*n).ok().map(Duration::from_secs),
        toml::Value::String(text) => {
            let text = text.trim();
            let split = text.len().checked_sub(1)?;
            let (number, unit) = text.split_at(split);
            let scale = match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                _ => return None,
            };
            let n: u64 = number.trim().parse().ok()?;
            n.checked_mul(scale).map(Duration::from_secs)
        }
        _ => None,
    }
}

fn loopback() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}
fn any() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}
fn admin_port() -> u16 {
    1234
}
fn tunnel_port() -> u16 {
    4321
}

impl Default for Admin {
    fn default() -> Admin {
        Admin {
            ip: loopback(),
            port: admin_port(),
            token: None,
            token_file: None,
            allow_insecure_admin: false,
            hosts: Vec::new(),
        }
    }
}

impl Default for Tunnel {
    fn default() -> Tunnel {
        Tunnel {
            ip: any(),
            port: tunnel_port(),
            stream_window: None,
            tunnel_window: None,
            max_stream_window: None,
            max_tunnel_window: None,
            heartbeat_interval_ms: None,
            heartbeat_timeout_ms: None,
            secret: None,
            secret_file: None,
            accept: None,
            hello_timeout_ms: None,
            handshake_timeout_ms: None,
            pin_ttl: None,
            encrypt: None,
            lanes: None,
            rekey_bytes: None,
            rekey_interval: None,
        }
    }
}

/// What the node listens on, and the engine's tunables.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the admin API listens.
    pub admin: SocketAddr,
    /// Where the tunnel port listens.
    pub tunnel: SocketAddr,
    /// Everything else the engine runs with.
    pub settings: Settings,
    /// The state file, if runtime configuration is kept.
    pub state: Option<PathBuf>,
    /// `[state] compact_bytes`: the journal's size before it is folded into the snapshot.
    pub compact_bytes: u64,
    /// `[node] threads`: the data threads.
    pub threads: usize,
    /// `[node] busy_poll_us`: how long a data thread polls on after its last small read.
    pub busy_poll: Duration,
    /// Tunnel secret and who may dial in.
    pub access: Access,
    /// Admin token and host names.
    pub admin_access: AdminAccess,
    /// The admin API may listen beyond loopback without a token.
    pub allow_insecure_admin: bool,
    /// `[log] format`.
    pub log_format: crate::logfmt::LogFormat,
}

/// Windows the protocol accepts: big enough for a full frame, at most 1 GiB.
const WINDOW_RANGE: std::ops::RangeInclusive<u32> = (64 * 1024)..=(1 << 30);
/// Heartbeat periods accepted, in milliseconds.
const HEARTBEAT_RANGE: std::ops::RangeInclusive<u64> = 10..=3_600_000;

impl Config {
    /// Reads the file (the default path may be absent: built-in defaults then apply) and applies
    /// the command-line overrides.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match std::fs::read_to_string(&cli.config) {
            Ok(text) => parse(&text, &cli.config)?,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && cli.config == Path::new(DEFAULT_PATH) =>
            {
                log::warn!("no {DEFAULT_PATH}: using built-in defaults");
                parse("", &cli.config)?
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: cli.config.clone(),
                    source,
                })
            }
        };
        let invalid = |message: String| ConfigError::Invalid {
            path: cli.config.clone(),
            message,
        };
        let mut settings = tunnel_settings(&file, &invalid)?;
        settings.limits = limits(&file, &invalid)?;
        let secret = from_sources(
            ENV_TUNNEL_SECRET,
            file.tunnel.secret,
            file.tunnel.secret_file,
            "[tunnel] secret",
            &invalid,
        )?;
        let token = from_sources(
            ENV_ADMIN_TOKEN,
            file.admin.token,
            file.admin.token_file,
            "[admin] token",
            &invalid,
        )?;
        let known_only = match file.tunnel.accept.as_deref() {
            None | Some("any") => false,
            Some("known") => true,
            Some(other) => {
                return Err(invalid(format!(
                    "[tunnel] accept = {other:?}: must be \"any\" or \"known\""
                )))
            }
        };
        let busy_poll_us = file.node.busy_poll_us.unwrap_or(DEFAULT_BUSY_POLL_US);
        if busy_poll_us > MAX_BUSY_POLL_US {
            return Err(invalid(format!(
                "[node] busy_poll_us = {busy_poll_us}: 0 (off) to {MAX_BUSY_POLL_US}"
            )));
        }
        Ok(Config {
            settings,
            access: Access {
                secret: secret.as_deref().map(Secret::new),
                known_only,
            },
            admin_access: AdminAccess {
                token,
                hosts: file.admin.hosts,
            },
            allow_insecure_admin: file.admin.allow_insecure_admin,
            log_format: file.log.format,
            state: cli.state.clone().or(file.state.path),
            compact_bytes: file
                .state
                .compact_bytes
                .unwrap_or(menet_actors::state::COMPACT_MIN),
            threads: cli.threads.or(file.node.threads).unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }),
            busy_poll: Duration::from_micros(busy_poll_us),
            admin: cli
                .admin
                .unwrap_or(SocketAddr::new(file.admin.ip, file.admin.port)),
            tunnel: cli
                .tunnel
                .unwrap_or(SocketAddr::new(file.tunnel.ip, file.tunnel.port)),
        })
    }
}

/// A secret from the environment, else from its file, else from the config file itself. An empty
/// secret is refused (it would look set and protect nothing).
fn from_sources(
    env: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
    what: &str,
    invalid: &dyn Fn(String) -> ConfigError,
) -> Result<Option<String>, ConfigError> {
    if inline.is_some() && file.is_some() {
        return Err(invalid(format!(
            "{what} and {what}_file are both set; keep one"
        )));
    }
    let value = match std::env::var(env) {
        Ok(v) => Some(v),
        Err(_) => match file {
            Some(path) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| invalid(format!("{what}_file {}: {e}", path.display())))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            None => inline,
        },
    };
    match value {
        Some(v) if v.is_empty() => Err(invalid(format!("{what} is empty"))),
        v => Ok(v),
    }
}

fn parse(text: &str, path: &Path) -> Result<File, ConfigError> {
    toml::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// `[tunnel]` flow-control windows, each within the protocol's range, maxima at least the
/// initial windows.
fn windows(
    file: &File,
    settings: &mut Settings,
    invalid: &dyn Fn(String) -> ConfigError,
) -> Result<(), ConfigError> {
    for (key, value, slot) in [
        (
            "stream_window",
            file.tunnel.stream_window,
            &mut settings.stream_window,
        ),
        (
            "tunnel_window",
            file.tunnel.tunnel_window,
            &mut settings.tunnel_window,
        ),
        (
            "max_stream_window",
            file.tunnel.max_stream_window,
            &mut settings.max_stream_window,
        ),
        (
            "max_tunnel_window",
            file.tunnel.max_tunnel_window,
            &mut settings.max_tunnel_window,
        ),
    ] {
        if let Some(v) = value {
            if !WINDOW_RANGE.contains(&v) {
                return Err(invalid(format!(
                    "[tunnel] {key} = {v} is outside 65536..=1073741824 bytes"
                )));
            }
            *slot = v;
        }
    }
    // A stream window set without a tunnel window: the tunnel's follows, so one stream may use
    // its whole window at once.
    if file.tunnel.tunnel_window.is_none() {
        settings.tunnel_window = settings.tunnel_window.max(settings.stream_window);
    }
    if settings.tunnel_window < settings.stream_window {
        return Err(invalid(
            "[tunnel] tunnel_window must be at least stream_window".to_owned(),
        ));
    }
    // A window set without its maximum: the maximum follows, so the setting is honoured.
    if file.tunnel.max_stream_window.is_none() {
        settings.max_stream_window = settings.max_stream_window.max(settings.stream_window);
    }
    if file.tunnel.max_tunnel_window.is_none() {
        settings.max_tunnel_window = settings.max_tunnel_window.max(settings.tunnel_window);
    }
    if settings.max_stream_window < settings.stream_window
        || settings.max_tunnel_window < settings.tunnel_window
    {
        return Err(invalid(
            "[tunnel] max_stream_window and max_tunnel_window must be at least stream_window and tunnel_window".to_owned(),
        ));
    }
    Ok(())
}

/// `[tunnel]`: windows, heartbeats and the handshake's deadlines and pins' TTL.
fn tunnel_settings(
    file: &File,
    invalid: &dyn Fn(String) -> ConfigError,
) -> Result<Settings, ConfigError> {
    let mut settings = Settings::default();
    windows(file, &mut settings, invalid)?;
    for (key, value, slot) in [
        (
            "heartbeat_interval_ms",
            file.tunnel.heartbeat_interval_ms,
            &mut settings.heartbeat_interval,
        ),
        (
            "heartbeat_timeout_ms",
            file.tunnel.heartbeat_timeout_ms,
            &mut settings.heartbeat_timeout,
        ),
    ] {
        if let Some(ms) = value {
            if !HEARTBEAT_RANGE.contains(&ms) {
                return Err(invalid(format!(
                    "[tunnel] {key} = {ms} is outside 10..=3600000 ms"
                )));
            }
            *slot = Duration::from_millis(ms);
        }
    }
    if settings.heartbeat_timeout <= settings.heartbeat_interval {
        return Err(invalid(format!(
            "[tunnel] heartbeat_timeout_ms ({} ms) must be longer than heartbeat_interval_ms ({} ms)",
            settings.heartbeat_timeout.as_millis(),
            settings.heartbeat_interval.as_millis()
        )));
    }
    for (key, value, slot) in [
        (
            "hello_timeout_ms",
            file.tunnel.hello_timeout_ms,
            &mut settings.hello_timeout,
        ),
        (
            "handshake_timeout_ms",
            file.tunnel.handshake_timeout_ms,
            &mut settings.handshake_timeout,
        ),
    ] {
        if let Some(ms) = value {
            if !(10..=60_000).contains(&ms) {
                return Err(invalid(format!(
                    "[tunnel] {key} = {ms} is outside 10..=60000 ms"
                )));
            }
            *slot = Duration::from_millis(ms);
        }
    }
    if let Some(ttl) = &file.tunnel.pin_ttl {
        settings.pin_ttl = parse_duration(ttl)
            .filter(|d| *d >= Duration::from_secs(1))
            .ok_or_else(|| {
                invalid(format!(
                    "[tunnel] pin_ttl = {ttl}: a duration such as \"30d\", \"12h\", \"90m\", \"45s\" or a number of seconds, at least 1 s"
                ))
            })?;
    }
    if let Some(encrypt) = file.tunnel.encrypt {
        settings.encrypt = encrypt;
    }
    if let Some(lanes) = file.tunnel.lanes {
        let max = menet_actors::tunnel::MAX_LANES;
        if !(1..=max).contains(&lanes) {
            return Err(invalid(format!("[tunnel] lanes = {lanes}: 1 to {max}")));
        }
        settings.lanes = lanes;
    }
    if let Some(bytes) = file.tunnel.rekey_bytes {
        if bytes < 1 << 20 {
            return Err(invalid(format!(
                "[tunnel] rekey_bytes = {bytes}: at least 1048576 (1 MiB)"
            )));
        }
        settings.rekey.bytes = bytes;
    }
    if let Some(every) = &file.tunnel.rekey_interval {
        settings.rekey.interval = parse_duration(every)
            .filter(|d| *d >= Duration::from_secs(1))
            .ok_or_else(|| {
                invalid(format!(
                    "[tunnel] rekey_interval = {every}: a duration such as \"1h\", \"10m\" or a number of seconds, at least 1 s"
                ))
            })?;
    }
    Ok(settings)
}

/// `[limits]`: what peers and clients may use of this node.
fn limits(file: &File, invalid: &dyn Fn(String) -> ConfigError) -> Result<Limits, ConfigError> {
    let l = &file.limits;
    let d = Limits::default();
    let mut limits = Limits {
        max_handshakes: l.max_handshakes.unwrap_or(d.max_handshakes),
        max_tunnels: l.max_tunnels.unwrap_or(d.max_tunnels),
        max_streams: l.max_streams.unwrap_or(d.max_streams),
        max_connections_per_service: l
            .max_connections_per_service
            .unwrap_or(d.max_connections_per_service),
        max_udp_flows_per_service: l
            .max_udp_flows_per_service
            .unwrap_or(d.max_udp_flows_per_service),
        max_dials_per_second: l.max_dials_per_second.unwrap_or(d.max_dials_per_second),
        fd_reserve: l.fd_reserve.unwrap_or(d.fd_reserve),
        handshakes_per_address: l.handshakes_per_address.unwrap_or(d.handshakes_per_address),
        handshakes_per_network: l.handshakes_per_network.unwrap_or(d.handshakes_per_network),
        reserved_tunnels: l.reserved_tunnels.unwrap_or(d.reserved_tunnels),
        max_names: l.max_names.unwrap_or(d.max_names),
        new_names_per_minute: l.new_names_per_minute.unwrap_or(d.new_names_per_minute),
        descriptor_share_percent: l
            .descriptor_share_percent
            .unwrap_or(d.descriptor_share_percent),
        max_admin_connections: l.max_admin_connections.unwrap_or(d.max_admin_connections),
        max_buffered_bytes: l.max_buffered_bytes.unwrap_or(d.max_buffered_bytes),
    };
    if limits.max_buffered_bytes < 1024 * 1024 {
        return Err(invalid(
            "[limits] max_buffered_bytes must be at least 1048576 (1 MiB)".to_owned(),
        ));
    }
    // Room for one stranger's new names and for every expected dialer, past any reserve.
    if l.max_tunnels.is_some() && l.reserved_tunnels.is_none() {
        limits.reserved_tunnels = limits.max_tunnels / 4;
    }
    let lim = &limits;
    if lim.reserved_tunnels >= lim.max_tunnels {
        return Err(invalid(format!(
            "[limits] reserved_tunnels ({}) must be less than max_tunnels ({})",
            lim.reserved_tunnels, lim.max_tunnels
        )));
    }
    if !(1..=100).contains(&lim.descriptor_share_percent) {
        return Err(invalid(
            "[limits] descriptor_share_percent must be within 1..=100".to_owned(),
        ));
    }
    for (key, v) in [
        ("max_handshakes", limits.max_handshakes),
        ("max_tunnels", limits.max_tunnels),
        ("max_streams", limits.max_streams as usize),
        (
            "max_connections_per_service",
            limits.max_connections_per_service,
        ),
        (
            "max_udp_flows_per_service",
            limits.max_udp_flows_per_service,
        ),
        ("max_dials_per_second", limits.max_dials_per_second as usize),
        ("handshakes_per_address", limits.handshakes_per_address),
        ("handshakes_per_network", limits.handshakes_per_network),
        ("max_names", limits.max_names),
        ("new_names_per_minute", limits.new_names_per_minute as usize),
        ("max_admin_connections", limits.max_admin_connections),
    ] {
        if v == 0 {
            return Err(invalid(format!("[limits] {key} must be at least 1")));
        }
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("menet").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_file_and_overrides() {
        let dir = std::env::temp_dir().join(format!("menet-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("m.toml");
        std::fs::write(
            &path,
            "[admin]\nport = 1300\n[tunnel]\nip = \"127.0.0.1\"\nport = 4400\n",
        )
        .expect("write");
        let p = path.to_str().expect("utf-8 path");
        let c = Config::load(&cli(&["--config", p])).expect("loads");
        assert_eq!(c.admin, "127.0.0.1:1300".parse().expect("addr"));
        assert_eq!(c.tunnel, "127.0.0.1:4400".parse().expect("addr"));
        let c = Config::load(&cli(&["--config", p, "--admin", "127.0.0.2:9"])).expect("loads");
        assert_eq!(c.admin, "127.0.0.2:9".parse().expect("addr"));

        std::fs::write(&path, "[admin]\nprot = 1\n").expect("write");
        let err = Config::load(&cli(&["--config", p])).expect_err("unknown key");
        assert!(err.to_string().contains("prot"), "{err}");
        assert!(err.to_string().contains("m.toml"), "{err}");

        std::fs::write(&path, "[tunnel]\nstream_window = 2097152\n").expect("write");
        let c = Config::load(&cli(&["--config", p])).expect("loads");
        assert_eq!(c.settings.stream_window, 2 << 20);
        std::fs::write(&path, "[tunnel]\nstream_window = 100\n").expect("write");
        let err = Config::load(&cli(&["--config", p])).expect_err("too small");
        assert!(err.to_string().contains("stream_window"), "{err}");

        std::fs::write(
            &path,
            "[tunnel]\nheartbeat_interval_ms = 200\nheartbeat_timeout_ms = 900\n[state]\npath = \"s/m.json\"\n",
        )
        .expect("write");
        let c = Config::load(&cli(&["--config", p])).expect("loads");
        assert_eq!(c.settings.heartbeat_interval, Duration::from_millis(200));
        assert_eq!(c.settings.heartbeat_timeout, Duration::from_millis(900));
        assert_eq!(c.state, Some(PathBuf::from("s/m.json")));
        let c = Config::load(&cli(&["--config", p, "--state", "o.json"])).expect("loads");
        assert_eq!(c.state, Some(PathBuf::from("o.json")));
        std::fs::write(&path, "[tunnel]\nheartbeat_timeout_ms = 4000\n").expect("write");
        let err = Config::load(&cli(&["--config", p])).expect_err("timeout below interval");
        assert!(err.to_string().contains("heartbeat_timeout_ms"), "{err}");

        std::fs::write(&path, "[tunnel]\nlanes = 4\n").expect("write");
        let c = Config::load(&cli(&["--config", p])).expect("loads");
        assert_eq!(c.settings.lanes, 4);
        for lanes in [0, 9] {
            std::fs::write(&path, format!("[tunnel]\nlanes = {lanes}\n")).expect("write");
            let err = Config::load(&cli(&["--config", p])).expect_err("out of range");
            assert!(err.to_string().contains("lanes = "), "{err}");
        }

        // Busy polling: 50 µs unless told; 0 turns it off; past 10 ms is refused.
        assert_eq!(c.busy_poll, Duration::from_micros(50));
        std::fs::write(&path, "[node]\nbusy_poll_us = 0\n").expect("write");
        let c = Config::load(&cli(&["--config", p])).expect("loads");
        assert_eq!(c.busy_poll, Duration::ZERO);
        std::fs::write(&path, "[node]\nbusy_poll_us = 10001\n").expect("write");
        let err = Config::load(&cli(&["--config", p])).expect_err("out of range");
        assert!(err.to_string().contains("busy_poll_us = 10001"), "{err}");

        let missing = dir.join("missing.toml");
        let m = missing.to_str().expect("utf-8 path");
        assert!(matches!(
            Config::load(&cli(&["--config", m])),
            Err(ConfigError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }
}
