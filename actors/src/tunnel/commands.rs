//! Commands from the Registry: close the tunnel or a service's streams (a head passes both on to
//! its lanes), and the test-only fault hooks. (Counters for `GET /config`: `group.rs`.)

use super::*;

/// Registry -> tunnel: close. With a goodbye the peer learns why at once (and forgets the tunnel
/// if it was deleted) instead of finding out from a broken connection or the heartbeat.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseTunnel {
    /// The GOAWAY code and reason to send first, if any.
    pub goodbye: Option<(GoAway, String)>,
}

impl Handler<CloseTunnel> for Tunnel {
    type Result = ();

    fn handle(&mut self, msg: CloseTunnel, ctx: &mut Self::Context) {
        // Every lane says the goodbye on its own connection: whichever the peer reads first, it
        // reads it before it sees a connection of the tunnel close (a deleted tunnel must not
        // be taken for a broken one and re-dialled).
        for lane in self.other_lanes() {
            lane.do_send(CloseTunnel {
                goodbye: msg.goodbye.clone(),
            });
        }
        match msg.goodbye {
            Some((code, reason)) => {
                for (_, e) in self.streams.drain() {
                    e.conn.do_send(StreamEvent::Abort);
                }
                self.sched.clear();
                // No frame of a connection may pass the goodbye now.
                self.upstream.set_open(false);
                self.life = Life::Closing {
                    reason: reason.clone(),
                };
                self.queue_control(&Frame::GoAway { code, reason }, ctx);
                crate::timer::run_later(ctx, CLOSE_GRACE, |_: &mut Tunnel, ctx| ctx.stop());
            }
            None => {
                self.upstream.set_open(false);
                self.life = Life::Down {
                    reason: "replaced".to_owned(),
                    goaway: None,
                };
                ctx.stop();
            }
        }
    }
}

/// Registry -> tunnel: a service was deleted; close its streams.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseService {
    /// The deleted service's name.
    pub service: String,
    /// Which end it was: only streams of that side close.
    pub side: Side,
}

impl Handler<CloseService> for Tunnel {
    type Result = ();

    fn handle(&mut self, msg: CloseService, ctx: &mut Self::Context) {
        for lane in self.other_lanes() {
            lane.do_send(CloseService {
                service: msg.service.clone(),
                side: msg.side,
            });
        }
        let ids: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, e)| e.side == msg.side && e.service == msg.service)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.reset_stream(id, ResetCode::Aborted, ctx);
        }
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<crate::Crash> for Tunnel {
    type Result = ();

    fn handle(&mut self, _: crate::Crash, _ctx: &mut Self::Context) {
        panic!("fault injected into tunnel {}", self.name);
    }
}

/// Test-only fault hook: make the connection actor of one stream panic.
#[cfg(feature = "fault-injection")]
#[derive(Message)]
#[rtype(result = "()")]
pub struct CrashStream {
    /// The stream whose connection actor is to panic.
    pub stream: u32,
}

#[cfg(feature = "fault-injection")]
impl Handler<CrashStream> for Tunnel {
    type Result = ();

    fn handle(&mut self, msg: CrashStream, _ctx: &mut Self::Context) {
        if let Some(e) = self.streams.get(&msg.stream) {
            e.conn.crash.do_send(crate::Crash);
        }
    }
}
