//! Shutdown (goodbyes to every peer, the state flushed) and the test-only fault hook.

use super::*;

/// The node is stopping (SIGTERM, SIGINT): stop accepting, say goodbye to every peer (dialers
/// re-dial, acceptors drop the tunnel at once instead of waiting for the heartbeat), close every
/// connection, flush the state file. Resolves once the tunnels have stopped, or after a grace.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        self.shutting_down = true;
        self.current.closed = true;
        self.publish();
        if let Some(port) = self.tunnel_port.take() {
            port.close(ctx);
        }
        let services: Vec<String> = self.local.keys().cloned().collect();
        for name in services {
            if let Some(s) = self.local.get_mut(&name) {
                let addr = s.listening.addr;
                let listening = std::mem::replace(&mut s.listening, Listening::new(addr, None));
                listening.close(ctx);
                if let Some(udp) = s.udp.take() {
                    udp.actor.do_send(crate::udp_listener::StopUdp);
                }
            }
        }
        self.dialing.clear();
        let mut closing = Vec::new();
        for t in self.tunnels.values_mut() {
            match &t.link {
                Link::Up(actor) => {
                    actor.do_send(CloseTunnel {
                        goodbye: Some((GoAway::Leaving, "the node is shutting down".to_owned())),
                    });
                    closing.push(actor.clone());
                }
                Link::Retrying { task, .. } => {
                    ctx.cancel_future(*task);
                }
            }
        }
        info!("shutting down: {} tunnels told", closing.len());
        // Every change is journaled already; leave one compact snapshot behind.
        let compacted = self.store.as_ref().map(StateStore::compact);
        Box::pin(async move {
            if let Some(done) = compacted {
                if let Ok(Err(e)) = done.await {
                    error!("state file: cannot compact at shutdown: {e}");
                }
            }
            let deadline = Instant::now() + SHUTDOWN_GRACE;
            while closing.iter().any(Addr::connected) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    }
}

/// Test-only fault hook: makes one actor panic, to prove that the node notices and recovers.
#[cfg(feature = "fault-injection")]
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), AdminError>")]
pub enum InjectFault {
    Registry,
    TunnelPort,
    Listener { service: String },
    Tunnel { name: String },
    Connection { tunnel: String, stream: u32 },
}

#[cfg(feature = "fault-injection")]
impl Handler<InjectFault> for Registry {
    type Result = Result<(), AdminError>;

    fn handle(&mut self, msg: InjectFault, _ctx: &mut Self::Context) -> Self::Result {
        warn!("fault injection: {msg:?}");
        let missing = || AdminError::NotFound(format!("no live actor for {msg:?}"));
        match &msg {
            InjectFault::Registry => panic!("fault injected into the registry"),
            InjectFault::TunnelPort => self
                .tunnel_port
                .as_ref()
                .and_then(|l| l.actor.as_ref())
                .ok_or_else(missing)?
                .do_send(crate::Crash),
            InjectFault::Listener { service } => match self.local.get(service) {
                Some(s) if s.udp.is_some() => s
                    .udp
                    .as_ref()
                    .ok_or_else(missing)?
                    .actor
                    .do_send(crate::Crash),
                s => s
                    .and_then(|s| s.listening.actor.as_ref())
                    .ok_or_else(missing)?
                    .do_send(crate::Crash),
            },
            InjectFault::Tunnel { name } => self
                .connected_tunnel(name)
                .ok_or_else(missing)?
                .do_send(crate::Crash),
            InjectFault::Connection { tunnel, stream } => self
                .connected_tunnel(tunnel)
                .ok_or_else(missing)?
                .do_send(crate::tunnel::CrashStream { stream: *stream }),
        }
        Ok(())
    }
}
