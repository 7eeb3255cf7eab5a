//! The log's line format: env_logger's text lines (the default), or one JSON object per line
//! (`[log] format = "json"`) for pipelines (Loki, Elasticsearch, journald's JSON export) to index
//! without a parser per line: `ts` (RFC 3339, milliseconds), `level`, `target`, `msg`, and the
//! fields the line is about as keys of their own (`tunnel`, `service`, `stream`, `peer`,
//! `status`, `reason`), read from the message's words, which name them the same way throughout
//! the node ("tunnel NAME: ...", "service NAME ...", "stream N", "from ADDR"). Peer-supplied
//! text was escaped where it was logged and stays inside its JSON string.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

/// Whether lines are JSON; set once the config file is read (lines before it are text).
static JSON: AtomicBool = AtomicBool::new(false);

/// `[log] format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Chooses the format of the lines from now on.
pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// Installs the logger (`RUST_LOG` filters, `info` by default).
pub fn init() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            let msg = record.args().to_string();
            if JSON.load(Ordering::Relaxed) {
                let line = Line::new(
                    buf.timestamp_millis().to_string(),
                    record.level().as_str(),
                    record.target(),
                    &msg,
                );
                serde_json::to_writer(&mut *buf, &line).map_err(std::io::Error::other)?;
                writeln!(buf)
            } else {
                writeln!(
                    buf,
                    "[{} {:<5} {}] {msg}",
                    buf.timestamp(),
                    record.level(),
                    record.target()
                )
            }
        })
        .init();
}

/// One JSON line.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    /// When, RFC 3339 with milliseconds.
    ts: String,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    level: &'a str,
    /// The module that logged it.
    target: &'a str,
    /// The line as text, peer-supplied parts escaped.
    msg: &'a str,
    /// The tunnel it is about, when the line names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel: Option<&'a str>,
    /// The service it is about, when the line names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<&'a str>,
    /// The stream it is about, when the line names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<u64>,
    /// The peer's or client's address, when the line names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<&'a str>,
    /// A status code, when the line says `status N`.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    /// Why, when the line gives a reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// The first word after `key` in `msg` (up to a space, colon, comma, parenthesis or
/// semicolon) that is not one of `skip`.
fn after_except<'a>(msg: &'a str, key: &str, skip: &[&str]) -> Option<&'a str> {
    let mut from = 0;
    while let Some(i) = msg[from..].find(key) {
        let at = from + i;
        // A whole word: at the start or after a space or a parenthesis.
        let starts = at == 0 || matches!(msg.as_bytes()[at - 1], b' ' | b'(');
        let rest = &msg[at + key.len()..];
        if starts {
            let end = rest
                .find([' ', ':', ',', '(', ')', ';'])
                .unwrap_or(rest.len());
            let word = &rest[..end];
            if !word.is_empty() && !skip.contains(&word) {
                return Some(word);
            }
        }
        from = at + key.len();
    }
    None
}

fn after<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    after_except(msg, key, &[])
}

/// The socket address after `key` (an address has colons of its own: it ends at a space, a
/// comma or a parenthesis, less a trailing colon or semicolon).
fn address_after<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.match_indices(key).find_map(|(at, _)| {
        let rest = &msg[at + key.len()..];
        let end = rest.find([' ', ',', '(', ')']).unwrap_or(rest.len());
        let word = rest[..end].trim_end_matches([':', ';']);
        word.parse::<std::net::SocketAddr>().is_ok().then_some(word)
    })
}

impl<'a> Line<'a> {
    pub fn new(ts: String, level: &'a str, target: &'a str, msg: &'a str) -> Line<'a> {
        let peer = address_after(msg, "from ").or_else(|| address_after(msg, "peer "));
        let status = after(msg, "status ").and_then(|w| w.parse().ok());
        // The explanation: what follows the line's subject ("tunnel t1: <reason>").
        let reason = msg
            .split_once(": ")
            .map(|(_, r)| r)
            .filter(|r| !r.is_empty());
        Line {
            ts,
            level,
            target,
            msg,
            // "tunnel port" is the node's port, "service is" a phrase: not names.
            tunnel: after_except(
                msg,
                "tunnel ",
                &["port", "window", "secret", "name", "names"],
            ),
            service: after_except(msg, "service ", &["is", "of", "key"]),
            stream: after(msg, "stream ")
                .or_else(|| after(msg, "flow "))
                .and_then(|w| w.parse().ok()),
            peer,
            status,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(msg: &str) -> serde_json::Value {
        serde_json::to_value(Line::new("t".into(), "WARN", "menet_actors::tunnel", msg))
            .expect("json")
    }

    #[test]
    fn the_fields_a_line_is_about_become_keys() {
        let v = line("tunnel t1: refusing stream 7: service web is not bound here");
        assert_eq!(v["tunnel"], "t1");
        assert_eq!(v["stream"], 7);
        assert_eq!(v["service"], "web");
        assert_eq!(
            v["reason"],
            "refusing stream 7: service web is not bound here"
        );
        let v = line("tunnel port: 127.0.0.1:4000 opened tunnel t2");
        assert_eq!(v["tunnel"], "t2", "the word `port:` is not a name");
        let v = line("service dns: dropping a datagram from 127.0.0.1:5353: no route");
        assert_eq!(
            (v["service"].clone(), v["peer"].clone()),
            ("dns".into(), "127.0.0.1:5353".into())
        );
        let v = line("admin API listening on 127.0.0.1:1");
        assert!(v.get("tunnel").is_none() && v.get("reason").is_none());
    }

    #[test]
    fn peer_text_stays_inside_its_string() {
        let msg = "tunnel port: refusing \"x\\n{\\\"level\\\":\\\"ERROR\\\"}\": bad";
        let text = serde_json::to_string(&Line::new("t".into(), "INFO", "m", msg)).expect("json");
        assert!(!text.contains('\n'));
        let back: serde_json::Value = serde_json::from_str(&text).expect("parses");
        assert_eq!(back["msg"], msg);
        assert_eq!(back["level"], "INFO");
    }
}
