//! The remote end's dial (one of the service's backends, the next when one fails, then the PROXY
//! header before any client byte) and the read side's pacing against the service's bandwidth.

use super::*;

use crate::backends::Backends;

/// Where the remote end of a stream is dialled.
pub struct Target {
    /// The service's addresses and their health.
    pub backends: Arc<Backends>,
    /// How long one address may take to answer before the next is tried.
    pub connect_timeout: Duration,
    /// The PROXY protocol header the backend receives before the client's first byte.
    pub header: Option<Vec<u8>>,
}

impl Connection {
    /// Dials the addresses in the order the service's balance gives, skipping those that refuse
    /// or do not answer (each marked down); the stream is refused only when none answers.
    pub(super) fn dial(&mut self, target: Target, ctx: &mut Context<Self>) {
        let Target {
            backends,
            connect_timeout,
            header,
        } = target;
        let service = self.service.clone();
        ctx.spawn(
            async move {
                let mut last = String::new();
                for i in backends.order(Instant::now()) {
                    let addr = backends.addr(i);
                    let error = match crate::timer::timeout(
                        connect_timeout,
                        TcpStream::connect(addr),
                    )
                    .await
                    {
                        Ok(Ok(sock)) => {
                            backends.connected(i);
                            return Ok(sock);
                        }
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => {
                            format!("no answer within {} ms", connect_timeout.as_millis())
                        }
                    };
                    backends.failed(i, Instant::now());
                    crate::log_limited!(
                        warn,
                        "backend-unreachable",
                        "service {service}: cannot reach {addr}: {error}; it is skipped for a while"
                    );
                    last = format!("{addr}: {error}");
                }
                Err(last)
            }
            .into_actor(self)
            .map(move |result, act, ctx| match result {
                Ok(sock) if act.reported => {
                    // The stream went while we dialled.
                    reset_now(&sock);
                }
                Ok(sock) => {
                    act.attach(sock);
                    if let Some(header) = header {
                        // Ahead of anything from the client; it holds no credit of the stream.
                        act.out.push_front(Bytes::from(header));
                        act.write_more(ctx);
                    }
                    act.read = ReadState::Idle;
                    let stream = act.stream;
                    act.report(FromConnection::Dialed { stream });
                    act.read_more(ctx);
                }
                Err(error) => {
                    crate::log_limited!(
                        warn,
                        "backend-unreachable",
                        "service {}: no address answered (last {error}); refusing the stream",
                        act.service
                    );
                    act.abort(
                        ctx,
                        ResetCode::Aborted,
                        format!("cannot reach the service: {error}"),
                    );
                }
            }),
        );
    }

    /// Whether the service's bandwidth holds reads back now: if so the read side waits (its
    /// grant kept) until the bucket has tokens again, then reads on.
    pub(super) fn pace_reads(&mut self, ctx: &mut Context<Self>) -> bool {
        let Some(wait) = self.pace.as_ref().and_then(|p| p.wait(Direction::Read)) else {
            return false;
        };
        let spending = match self.read {
            ReadState::Spending => true,
            ReadState::Idle => true,
            ReadState::Wanting => false,
            _ => return false,
        };
        self.read = ReadState::Paced { spending };
        crate::timer::run_later(ctx, wait, move |act: &mut Connection, ctx| {
            if let ReadState::Paced { spending } = act.read {
                act.read = if spending {
                    ReadState::Spending
                } else {
                    ReadState::Wanting
                };
                act.read_more(ctx);
            }
        });
        true
    }
}
