//! A service's parts that outlive a route version: a remote service's backends (with their
//! health), any service's bandwidth buckets and datagram counts, made once per `POST /service`, and the active health check that dials
//! its addresses on an interval while the service exists.

use std::sync::Weak;

use super::*;

impl Registry {
    /// A remote service's shared parts; starts its health check if it asks for one. (The
    /// timeout is the caller's to set.)
    pub(super) fn remote_service(
        &self,
        name: &str,
        addrs: &[SocketAddr],
        key: Option<ServiceKey>,
        options: ServiceOptions,
        ctx: &mut Context<Self>,
    ) -> RemoteService {
        let backends = Arc::new(Backends::new(addrs, options.balance, |a| {
            metrics().backend(name, a)
        }));
        if let Some(ms) = options.health_check_ms {
            let every = Duration::from_millis(ms.max(service::MIN_HEALTH_CHECK_MS));
            let timeout = self.settings.connect_timeout.min(every);
            ctx.spawn(
                check_health(name.to_owned(), Arc::downgrade(&backends), every, timeout)
                    .into_actor(self),
            );
        }
        RemoteService {
            backends,
            key,
            timeout: None,
            pace: pace(name, Side::Remote, &options),
            options,
            datagrams: datagrams(name, Side::Remote),
        }
    }
}

/// A service's bandwidth buckets, if it has a limit.
pub(super) fn pace(name: &str, side: Side, options: &ServiceOptions) -> Option<Arc<Pace>> {
    options
        .bandwidth
        .map(|b| Arc::new(Pace::new(b, metrics().throttled(name, side))))
}

/// A service's datagram counts (series of a UDP service's own).
pub(super) fn datagrams(name: &str, side: Side) -> Arc<DatagramCounts> {
    Arc::new(metrics().datagrams(name, side))
}

/// Dials each address every `every` while the service lives (its backends are dropped when it
/// is deleted or replaced, and the check ends): one that answers is up, one that does not is
/// down for its back-off, so streams skip it without waiting for a connect timeout of their own.
async fn check_health(
    service: String,
    backends: Weak<Backends>,
    every: Duration,
    timeout: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let Some(b) = backends.upgrade() else {
            return;
        };
        let addrs: Vec<SocketAddr> = b.addrs().collect();
        drop(b);
        for (i, addr) in addrs.into_iter().enumerate() {
            let answer = tokio::time::timeout(timeout, TcpStream::connect(addr)).await;
            let Some(b) = backends.upgrade() else {
                return;
            };
            match answer {
                Ok(Ok(_)) => b.answered(i),
                Ok(Err(e)) => {
                    log_limited!(
                        info,
                        "health-check",
                        "service {service}: health check of {addr}: {e}; marked down"
                    );
                    b.failed_for(i, Instant::now(), every + timeout);
                }
                Err(_) => {
                    log_limited!(
                        info,
                        "health-check",
                        "service {service}: health check of {addr}: no answer within {} ms; \
                         marked down",
                        timeout.as_millis()
                    );
                    b.failed_for(i, Instant::now(), every + timeout);
                }
            }
        }
    }
}
