//! The heartbeat's clock: a task beside the tunnel actor, on its thread, sends the actor a
//! [`Tick`] at the shorter of the ping interval and an eighth of the silence timeout, saying
//! which duty is due (a ping that keeps an idle tunnel audible, a check for silence and for
//! idle streams' windows, each within half a tick). The actor holds no timer of its own for it:
//! actix polls every future an actor holds at each wake-up of its task, that is, for every frame
//! and every message, where a tick costs the actor only when it comes.

use super::*;

/// Heartbeat clock -> its tunnel: the duties due now.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Tick {
    /// A ping is due.
    ping: bool,
    /// The check for silence (and idle streams' windows) is due.
    check: bool,
}

impl Tunnel {
    /// Starts the clock; it ends once the actor is gone.
    pub(super) fn start_heartbeat(&self, ctx: &mut Context<Self>) {
        let heartbeat = self.shared.settings.heartbeat_interval;
        let check_every = (self.shared.settings.heartbeat_timeout / 8).min(Duration::from_secs(1));
        let tick = heartbeat.min(check_every);
        let tunnel = ctx.address().downgrade();
        // Made here, where its timer's runtime is chosen (`crate::timer`).
        let start = tokio::time::Instant::now();
        let mut clock = crate::timer::interval_at(start + tick, tick);
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        actix_rt::spawn(async move {
            let (mut next_ping, mut next_check) = (start + heartbeat, start + check_every);
            loop {
                let now = clock.tick().await;
                let due = |at: tokio::time::Instant| now + tick / 2 >= at;
                let ping = due(next_ping);
                if ping {
                    next_ping = now + heartbeat;
                }
                let check = due(next_check);
                if check {
                    next_check = now + check_every;
                }
                match tunnel.upgrade() {
                    Some(tunnel) if tunnel.connected() => tunnel.do_send(Tick { ping, check }),
                    _ => return,
                }
            }
        });
    }
}

impl Handler<Tick> for Tunnel {
    type Result = ();

    fn handle(&mut self, tick: Tick, ctx: &mut Context<Self>) {
        // A tick that comes once the tunnel is closing or down has nothing left to keep alive.
        if !matches!(self.life, Life::Open) {
            return;
        }
        if tick.ping {
            self.send_ping(ctx);
        }
        if tick.check {
            self.check(Instant::now(), ctx);
        }
    }
}
