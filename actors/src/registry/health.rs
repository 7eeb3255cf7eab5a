//! A remote service's parts that outlive a route version: its backends (with their health) and
//! its bandwidth buckets, made once per `POST /service`, and the active health check that dials
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
        let backends = Arc::new(Backends::new(addrs, options.balance));
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
            pace: options.bandwidth.map(|b| Arc::new(Pace::new(b))),
            options,
            datagrams: Arc::new(DatagramCounts::default()),
        }
    }
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
