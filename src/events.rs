//! `GET /events`: the node's traffic as server-sent events, for the dashboard's charts. Each
//! second the node samples every tunnel's and service's byte counters (the `/metrics` series)
//! and keeps the rates of the last 15 minutes in memory, sparse (an idle object costs nothing)
//! and bounded ([`MAX_POINTS`]). A client first gets the history (`event: history`), then one
//! `event: sample` a second: the rates of the objects that moved, and each tunnel's state and
//! streams. Never the whole configuration: a node with 10,000 objects sends what moved.
//!
//! A client that reads too slowly misses samples (a bounded broadcast), it never makes the node
//! hold more.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpResponse};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use tokio::sync::broadcast;
use utoipa::ToSchema;

use menet_actors::metrics::{metrics, Traffic};

/// Seconds of history kept.
pub const HISTORY: usize = 15 * 60;
/// Rates kept over all seconds and objects at most; past it the oldest seconds go first.
pub const MAX_POINTS: usize = 500_000;
/// Samples queued for one slow client before it skips ahead.
const CLIENT_QUEUE: usize = 8;

/// One second's rates: object key (`tunnel:NAME`, `service:SIDE:NAME`) -> [in, out] bytes/s.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Sample {
    /// Unix seconds.
    pub t: u64,
    /// Objects that moved bytes this second: `[received, sent]` bytes per second (for a tunnel,
    /// from and to the peer; for a service, out of and into its sockets).
    pub rates: BTreeMap<String, [f64; 2]>,
    /// Each tunnel: connected, and its streams now.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tunnels: BTreeMap<String, TunnelNow>,
}

/// A tunnel's state in a sample.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TunnelNow {
    /// Whether it was up at that second.
    pub connected: bool,
    /// Streams open at that second.
    pub streams: i64,
}

/// The history a client gets first.
#[derive(Debug, Serialize, ToSchema)]
pub struct History<'a> {
    /// Seconds, oldest first (tunnel states left out).
    pub seconds: Vec<&'a Sample>,
}

/// The samples kept, and where new ones are published.
pub struct Samples {
    /// The last seconds' samples, bounded.
    seconds: Mutex<Kept>,
    /// Each new sample, encoded once, to every dashboard client (bounded: one that lags skips).
    publish: broadcast::Sender<Arc<String>>,
}

#[derive(Default)]
struct Kept {
    /// The samples, oldest first, at most the history's length.
    seconds: VecDeque<Sample>,
    /// Rates over all seconds kept.
    points: usize,
    /// Each object's counters at the last sample: [received, sent].
    last: HashMap<String, [u64; 2]>,
}

impl Kept {
    /// Takes a reading of the counters: the rates since the last one, kept and returned.
    fn take(&mut self, t: u64, traffic: Traffic, elapsed: f64) -> Sample {
        let mut now: HashMap<String, [u64; 2]> = HashMap::new();
        let mut sample = Sample {
            t,
            ..Sample::default()
        };
        for tun in traffic.tunnels {
            now.insert(format!("tunnel:{}", tun.name), [tun.received, tun.sent]);
            sample.tunnels.insert(
                tun.name,
                TunnelNow {
                    connected: tun.connected,
                    streams: tun.streams,
                },
            );
        }
        for s in traffic.services {
            now.insert(
                format!("service:{}:{}", s.side, s.name),
                [s.received, s.sent],
            );
        }
        for (key, counts) in &now {
            let before = self.last.get(key).copied().unwrap_or(*counts);
            let rate = |i: usize| counts[i].saturating_sub(before[i]) as f64 / elapsed.max(1e-3);
            let r = [rate(0), rate(1)];
            if r != [0.0, 0.0] {
                sample.rates.insert(key.clone(), r);
            }
        }
        self.last = now;
        let kept = Sample {
            tunnels: BTreeMap::new(),
            ..sample.clone()
        };
        self.points += kept.rates.len();
        self.seconds.push_back(kept);
        while self.seconds.len() > HISTORY || self.points > MAX_POINTS {
            match self.seconds.pop_front() {
                Some(old) => self.points -= old.rates.len(),
                None => break,
            }
        }
        debug_assert_eq!(
            self.points,
            self.seconds.iter().map(|s| s.rates.len()).sum::<usize>()
        );
        sample
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn event(kind: &str, data: &impl Serialize) -> String {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
    format!("event: {kind}\ndata: {json}\n\n")
}

impl Samples {
    /// Starts sampling each second on the current actix system.
    pub fn start() -> Arc<Samples> {
        let (publish, _) = broadcast::channel(CLIENT_QUEUE);
        let samples = Arc::new(Samples {
            seconds: Mutex::new(Kept::default()),
            publish,
        });
        let sampler = samples.clone();
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                let now = tokio::time::Instant::now();
                let elapsed = now.duration_since(last).as_secs_f64();
                last = now;
                let traffic = metrics().traffic();
                let sample = match sampler.seconds.lock() {
                    Ok(mut kept) => kept.take(unix_now(), traffic, elapsed),
                    Err(_) => continue,
                };
                // No client listening is not an error.
                let _ = sampler.publish.send(Arc::new(event("sample", &sample)));
            }
        });
        samples
    }

    fn history(&self) -> String {
        match self.seconds.lock() {
            Ok(kept) => event(
                "history",
                &History {
                    seconds: kept.seconds.iter().collect(),
                },
            ),
            Err(_) => event(
                "history",
                &History {
                    seconds: Vec::new(),
                },
            ),
        }
    }
}

/// Mounts `GET /events`, served from `samples`.
pub fn routes(cfg: &mut web::ServiceConfig, samples: Arc<Samples>) {
    cfg.app_data(web::Data::new(samples)).service(
        web::resource("/events")
            .route(web::get().to(get_events))
            .default_service(web::to(crate::http::method_not_allowed)),
    );
}

#[utoipa::path(get, path = "/events", tag = "operations",
    description = "Server-sent events (text/event-stream): first `history` (the last 15 \
                   minutes of rates, one per second), then a `sample` each second: bytes per \
                   second of each tunnel (`tunnel:NAME`) and service (`service:SIDE:NAME`) \
                   that moved, and each tunnel's state. For the dashboard's charts.",
    responses((status = 200, description = "The event stream", content_type = "text/event-stream", body = Sample)))]
pub async fn get_events(samples: web::Data<Arc<Samples>>) -> HttpResponse {
    let first = samples.history();
    let updates = samples.publish.subscribe();
    let live = stream::unfold(updates, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(text) => return Some((text.as_str().to_owned(), rx)),
                // Too slow: skip to the newest.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let body = stream::once(async move { first })
        .chain(live)
        .map(|text| Ok::<_, std::convert::Infallible>(web::Bytes::from(text)));
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use menet_actors::metrics::{ServiceTraffic, TunnelTraffic};
    use menet_actors::Side;

    fn traffic(bytes: u64, services: usize) -> Traffic {
        Traffic {
            tunnels: vec![TunnelTraffic {
                name: "t1".into(),
                sent: bytes,
                received: 2 * bytes,
                connected: true,
                streams: 1,
            }],
            services: (0..services)
                .map(|i| ServiceTraffic {
                    name: format!("s{i}"),
                    side: Side::Local,
                    sent: 0,
                    received: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn rates_are_kept_sparse_and_bounded() {
        let mut kept = Kept::default();
        assert!(kept.take(0, traffic(0, 10_000), 1.0).rates.is_empty());
        let s = kept.take(1, traffic(1000, 10_000), 1.0);
        assert_eq!(s.rates["tunnel:t1"], [2000.0, 1000.0]);
        // 10,000 idle services cost nothing.
        assert_eq!(s.rates.len(), 1);
        for t in 2..2000 {
            kept.take(t, traffic(1000 * t, 0), 1.0);
        }
        assert_eq!(kept.seconds.len(), HISTORY);
        assert!(kept.points <= HISTORY);
    }
}
