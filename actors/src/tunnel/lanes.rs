//! A tunnel's connections (*lanes*). The first connection is the tunnel; a dialer configured
//! with `[tunnel] lanes = N` dials N - 1 more once it is up, each with a handshake of its own
//! that proves the same identity and secret and asks to join (`actors/PROTOCOL.md`, *Lanes*).
//!
//! A stream lives on one lane for its whole life: its opener places it on the lane carrying the
//! fewest streams, and every frame of it, both ways, travels there, so its frames keep their
//! order. Tunnel-wide frames (PING, tunnel credit) go on the first lane, a PONG on the lane its
//! PING came by, a GOAWAY on every lane (so the peer reads it before any connection closes). Credit, windows, stream ids and the stream table stay the tunnel's:
//! a lane is only a socket, its record keys and its own write queue. So one stream's bytes, or
//! the path's queue they fill, delay only the streams of its own lane: each lane is a TCP
//! connection of its own on the path (its own congestion window, its own place in a relay's
//! queues).
//!
//! Any lane that breaks, closes or goes silent takes the whole tunnel down (its streams reset),
//! and the dialer re-dials all of it: a tunnel is never half there.

use std::os::fd::RawFd;

use futures_util::StreamExt;

use super::*;

/// Lanes a tunnel carries at most (the first included): what a dialer may ask for and what an
/// acceptor takes.
pub const MAX_LANES: usize = 8;

/// Registry -> tunnel: another connection of this tunnel's dialer, handshake done, joins as a
/// lane.
#[derive(Message)]
#[rtype(result = "()")]
pub struct JoinLane {
    /// The socket, not yet registered with the tunnel's arbiter.
    pub sock: std::net::TcpStream,
    /// Its record keys from its own handshake; `None`: its frames go in the clear.
    pub keys: Option<SessionKeys>,
}

/// One of the tunnel's connections.
pub(super) struct Lane {
    /// The socket's write half; `None` while a write is under way (the write future owns it).
    pub(super) writer: Option<OwnedWriteHalf>,
    /// Seals what this lane sends; `None`: frames go to its socket as they are. (Boxed: a key
    /// schedule is large, and a clear lane should not carry its room.)
    pub(super) sealer: Option<Box<Sealer>>,
    /// Encoded control frames for this lane, written ahead of its data.
    pub(super) control: BytesMut,
    /// The socket's descriptor, to ask the kernel what waits in its queues.
    pub(super) fd: RawFd,
    /// When a frame last came on this lane: a lane silent past the heartbeat timeout is dead.
    pub(super) last_heard: Instant,
    /// Streams living on this lane now, to place a new one on the least used.
    pub(super) streams: u32,
}

/// A frame as one lane's reader hands it over: which lane it came by, and the frame or why the
/// lane's bytes are not one.
pub(super) struct Incoming {
    /// The lane it came by (a PONG goes back there; a peer's OPEN places its stream there).
    pub(super) lane: usize,
    pub(super) item: Result<Frame, ProtocolError>,
}

impl Tunnel {
    /// Takes `sock` over as the next lane: its socket registered on this arbiter, its reader
    /// added to the actor's streams, its writer and sealer kept.
    pub(super) fn attach_lane(
        &mut self,
        sock: std::net::TcpStream,
        keys: Option<SessionKeys>,
        ctx: &mut Context<Self>,
    ) -> Result<(), String> {
        let lane = self.lanes.len();
        crate::io::set_notsent_lowat(&sock, NOTSENT_LOWAT);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        let sock =
            TcpStream::from_std(sock).map_err(|e| format!("cannot take the socket over: {e}"))?;
        let (reader, writer) = sock.into_split();
        let tag = move |item| Incoming { lane, item };
        let sealer = match keys {
            Some(keys) => {
                let dialer = self.role == Role::Dialer;
                let (sealer, opener) = keys.split(dialer, self.shared.settings.rekey);
                let frames = FramedRead::with_capacity(
                    reader,
                    SealedFrameCodec::new(opener),
                    // The largest record a writer makes (one largest DATA frame); a larger one
                    // (up to MAX_RECORD) grows the buffer when it comes.
                    RECORD_HEADER + HEADER_LEN + MAX_DATA + TAG_LEN,
                );
                ctx.add_stream(frames.map(tag));
                Some(Box::new(sealer))
            }
            None => {
                let frames = FramedRead::with_capacity(reader, FrameCodec, HEADER_LEN + MAX_DATA);
                ctx.add_stream(frames.map(tag));
                None
            }
        };
        self.lanes.push(Lane {
            writer: Some(writer),
            sealer,
            control: BytesMut::new(),
            fd,
            last_heard: Instant::now(),
            streams: 0,
        });
        self.metrics.lanes.set(self.lanes.len() as i64);
        Ok(())
    }

    /// The lane a new stream of ours goes on: the one carrying the fewest streams (the first
    /// among equals).
    pub(super) fn pick_lane(&self) -> usize {
        self.lanes
            .iter()
            .enumerate()
            .min_by_key(|(i, l)| (l.streams, *i))
            .map_or(0, |(i, _)| i)
    }

    /// The lane `frame` leaves on: its stream's, or for a tunnel-wide frame the first (a PONG
    /// the lane its PING came by).
    pub(super) fn lane_of(&self, frame: &Frame) -> usize {
        let stream = match frame {
            Frame::Pong(_) => return self.arrival_lane,
            Frame::Ping(_) | Frame::GoAway { .. } => return 0,
            Frame::Open { stream, .. }
            | Frame::OpenOk { stream, .. }
            | Frame::OpenFail { stream, .. }
            | Frame::Data { stream, .. }
            | Frame::Fin { stream }
            | Frame::Reset { stream, .. }
            | Frame::Window { stream, .. } => *stream,
        };
        self.streams.get(&stream).map_or(0, |e| e.lane)
    }

    /// Bytes queued over all lanes' control queues.
    pub(super) fn control_bytes(&self) -> usize {
        self.lanes.iter().map(|l| l.control.len()).sum()
    }

    /// The kernel's queues of the tunnel's sockets, summed over its lanes.
    pub(super) fn socket_queues(&self) -> SocketQueues {
        self.lanes
            .iter()
            .map(|l| socket_queues(l.fd))
            .fold(SocketQueues::default(), |a, q| SocketQueues {
                unsent: a.unsent + q.unsent,
                unacked: a.unacked + q.unacked,
                unread: a.unread + q.unread,
            })
    }

    /// How long the most silent lane has been: past the heartbeat timeout the peer (or that
    /// connection) is dead.
    pub(super) fn longest_silence(&self, now: Instant) -> Duration {
        self.lanes
            .iter()
            .map(|l| now.saturating_duration_since(l.last_heard))
            .max()
            .unwrap_or_default()
    }
}

impl Handler<JoinLane> for Tunnel {
    type Result = ();

    fn handle(&mut self, msg: JoinLane, ctx: &mut Self::Context) {
        if !matches!(self.life, Life::Open) || self.lanes.len() >= MAX_LANES {
            crate::io::reset_now(&msg.sock);
            return;
        }
        let lane = self.lanes.len();
        match self.attach_lane(msg.sock, msg.keys, ctx) {
            Ok(()) => {
                debug!("tunnel {}: lane {lane} joined", self.name);
                // A first ping, so the lane is heard from at once (a value of the lane's own, as
                // at each heartbeat: its PONG is no round-trip sample).
                self.queue_control_on(lane, &Frame::Ping(u64::MAX - lane as u64), ctx);
            }
            Err(e) => self.fail(ctx, e),
        }
    }
}
