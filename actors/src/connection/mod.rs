//! The connection actor: one downstream TCP connection, either accepted by a local service's
//! listener or dialled to a remote service's `addr`, carried as one stream of a tunnel.
//!
//! It reads its socket only against credit granted by its tunnel, asked for once the socket is
//! readable and handed back when it runs dry, and reports bytes back to the tunnel only once they
//! are written to its socket, so a slow client slows exactly its own stream. Reads are
//! non-blocking and happen in the handlers; readability is waited for by one lasting item of the
//! actor (`watch.rs`), and a write the socket does not take at once runs as a future of this actor
//! that owns the write half meanwhile. The actor never blocks and never buffers beyond
//! the stream window.
//!
//! A stream that ends cleanly (a FIN each way) closes its socket with a FIN; one that does not
//! (a RESET from the peer, a tunnel lost, a failed socket, an idle timeout, a frame that fails
//! its integrity check) closes it with a TCP reset, so a truncated transfer never looks complete.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use log::{debug, error, info, warn};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use std::sync::Arc;

use crate::cipher::{ServiceKey, StreamCrypto};
use crate::io::{reset_now, try_read_data_frame, try_write_now, write_all_vectored, Chunk};
use crate::limits::Slot;
use crate::pace::{take_paced, Direction, Pace, PACE_CHUNK};
use crate::protocol::{set_frame_len, ResetCode, HEADER_LEN, MAX_DATA, NONCE_LEN};

/// Connection -> its tunnel: what happens on a stream's downstream socket. A report going up,
/// declared here beside its sender and queued in its tunnel's [`Upstream`] (a datagram flow's
/// too).
pub enum FromConnection {
    /// The remote end reached its target: the stream is open.
    Dialed { stream: u32 },
    /// The socket has data: the connection wants credit.
    Want { stream: u32 },
    /// Credit granted but not used: the socket ran dry.
    Return { stream: u32, bytes: u64 },
    /// A DATA frame, header included, built against a grant.
    Data { stream: u32, frame: Bytes },
    /// DATA frames went straight to the tunnel's socket (`upstream.rs`): their payload, left in
    /// the stream's [`Downstream`], is to be counted.
    Sent { stream: u32 },
    /// End of the downstream socket's input.
    Fin { stream: u32 },
    /// This many received (wire) bytes have been written downstream.
    Consumed { stream: u32, bytes: u64 },
    /// The connection is gone; `failure` says why (and with which code the stream is reset) if
    /// it did not end cleanly.
    Closed {
        stream: u32,
        failure: Option<(ResetCode, String)>,
    },
}

/// Tunnel -> stream: to a connection through the queue it shares with its tunnel
/// ([`Downstream::send`]), to a UDP flow as an actor message.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum StreamEvent {
    /// The far end reached its target: data may flow. `nonce`: the acceptor's stream nonce of
    /// a keyed stream.
    Opened { nonce: Option<[u8; NONCE_LEN]> },
    /// Credit to read this many more bytes from the socket.
    Grant(u64),
    /// How much credit to keep across hand-backs (a standing grant): a short request is read and
    /// sent at once, with no Want/Grant round. The credit itself follows as a `Grant`.
    Standing(u64),
    /// Bytes from the far end, to be written to the socket (decrypted here, in place).
    Data(BytesMut),
    /// The far end will send no more: shut down our write side once the queue is written.
    Fin,
    /// The stream is gone (reset, refused, tunnel closed): drop the socket now.
    Abort,
}

/// A keyed stream's crypto, through its life.
pub enum Keying {
    /// We opened the stream: its keys need the acceptor's nonce, which OPEN_OK brings.
    Opener {
        key: ServiceKey,
        nonce: [u8; NONCE_LEN],
    },
    /// Keys derived from both nonces (boxed: an RC4 state is large).
    Ready(Box<StreamCrypto>),
}

impl Keying {
    /// Bytes the cipher adds to each DATA frame (none until the keys are derived).
    pub fn overhead(keying: &Option<Keying>) -> usize {
        match keying {
            Some(Keying::Ready(c)) => c.seal.overhead(),
            _ => 0,
        }
    }

    /// OPEN_OK came with the acceptor's nonce: an opener derives the stream's keys. An error if
    /// a keyed stream's OPEN_OK had no nonce.
    pub fn opened(
        keying: &mut Option<Keying>,
        nonce: Option<[u8; NONCE_LEN]>,
    ) -> Result<(), &'static str> {
        if let Some(Keying::Opener { key, nonce: ours }) = keying {
            let theirs = nonce.ok_or("the peer sent no stream nonce for a keyed stream")?;
            *keying = Some(Keying::Ready(Box::new(key.stream(ours, &theirs, true))));
        }
        Ok(())
    }

    /// Seals a whole DATA frame's payload in place, its length fixed in the header.
    pub fn seal_frame(keying: &mut Option<Keying>, frame: &mut BytesMut) {
        if let Some(Keying::Ready(c)) = keying {
            let mut payload = frame.split_off(HEADER_LEN);
            c.seal.seal(&mut payload);
            let len = payload.len();
            frame.unsplit(payload);
            set_frame_len(frame, len);
        }
    }

    /// Opens a received payload in place; or the code to reset the stream with, and why.
    pub fn open(
        keying: &mut Option<Keying>,
        payload: &mut BytesMut,
    ) -> Result<(), (ResetCode, String)> {
        match keying {
            Some(Keying::Ready(c)) => c
                .open
                .open(payload)
                .map_err(|e| (ResetCode::Integrity, e.to_string())),
            Some(Keying::Opener { .. }) => Err((
                ResetCode::Aborted,
                "data before the stream was open".to_owned(),
            )),
            None => Ok(()),
        }
    }
}

/// The socket's read side, through the stream's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    /// Before OPEN_OK (or before the backend answered): not read.
    Unopened,
    /// Open, neither waiting for readability nor holding a request for credit (transient).
    Idle,
    /// Waiting for readability (the lasting watch item polls it: `watch.rs`).
    Watching,
    /// Readable: credit was asked for, and what is granted is read until the socket runs dry.
    Wanting,
    /// Readable: the standing grant is being spent without asking; more is asked for only if it
    /// runs out before the socket runs dry.
    Spending,
    /// The service's bandwidth limit holds reads back until a timer ends; `spending` says which
    /// of the two states above it resumes.
    Paced { spending: bool },
    /// EOF read and FIN sent to the tunnel.
    Done,
}

/// The socket's write side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteState {
    /// Nothing being written.
    Idle,
    /// A write future owns the write half.
    Writing,
    /// The service's bandwidth limit holds writes back until a timer ends.
    Paced,
    /// The far end's FIN was carried out: our write side is shut down.
    Done,
}

/// What a connection is given about its stream when its tunnel starts it.
pub struct StreamSpec {
    /// The stream's id on its tunnel.
    pub stream: u32,
    /// Where the connection reports and writes: its tunnel's queue and way out (`upstream.rs`).
    pub upstream: Upstream,
    /// The service it carries, for logs and `GET /config`.
    pub service: String,
    /// The stream's keys, if its service is keyed.
    pub keying: Option<Keying>,
    /// Closed (with a reset) after this long without a byte either way.
    pub idle_timeout: Option<Duration>,
    /// The service's bandwidth limit: reads and writes wait for its tokens.
    pub pace: Option<Arc<Pace>>,
    /// Its descriptor and its places in the node's limits, held for its life.
    pub slots: Vec<Slot>,
}

pub struct Connection {
    /// Where its reports go: its tunnel's queue on this thread.
    upstream: Upstream,
    /// The service carried, for log lines.
    service: String,
    /// The stream it is on its tunnel: the id every report and frame carries.
    stream: u32,
    /// The remote end's backends, dialled when the actor starts (boxed: only a dialling
    /// connection has one, and only until it starts).
    target: Option<Box<Target>>,
    /// The client's address (local end), for log lines.
    peer: Option<SocketAddr>,
    /// The socket's descriptor, kept to reset the connection whichever future holds a half.
    fd: Option<std::os::fd::RawFd>,
    /// The read half: `None` until a dialled socket is attached, and once closed.
    reader: Option<OwnedReadHalf>,
    /// The readability watch's waker and ordering (`watch.rs`).
    watch: crate::lasting::LastingItem,
    /// The write half, shared with the tunnel for its direct writes (`downstream.rs`).
    down: Rc<Downstream>,
    /// Where the socket's read side is: unopened, waiting for readability, asking for and using
    /// credit, or done.
    read: ReadState,
    /// Where its write side is.
    write: WriteState,
    /// Wire bytes the tunnel let us send and we have not used yet.
    grant: u64,
    /// Credit we keep when the socket runs dry (the standing grant), so the next short burst
    /// needs no round to the tunnel; 0 if the tunnel's standing pool had none for us.
    keep: u64,
    /// The far end's FIN arrived: shut our write side once `out` is written.
    peer_fin: bool,
    /// Decrypted bytes waiting to be written to the socket.
    out: VecDeque<Bytes>,
    /// Wire bytes (tags included) behind `out`: what goes back to the tunnel as consumed.
    out_wire: u64,
    /// `None` for a plaintext service.
    keying: Option<Keying>,
    /// The service's idle timeout: the stream is reset after this long without a byte either way.
    idle_timeout: Option<Duration>,
    /// The service's bandwidth limit, if any.
    pace: Option<Arc<Pace>>,
    /// The tunnel has been told the stream is over (or told us so).
    reported: bool,
    /// The connection's descriptor and limit slots, given back when the actor goes.
    _slots: Vec<Slot>,
}

impl Connection {
    fn new(spec: StreamSpec) -> Connection {
        Connection {
            upstream: spec.upstream,
            service: spec.service,
            stream: spec.stream,
            target: None,
            peer: None,
            fd: None,
            reader: None,
            watch: crate::lasting::LastingItem::default(),
            down: Rc::new(Downstream::new()),
            read: ReadState::Unopened,
            write: WriteState::Idle,
            grant: 0,
            keep: 0,
            peer_fin: false,
            out: VecDeque::new(),
            out_wire: 0,
            keying: spec.keying,
            idle_timeout: spec.idle_timeout,
            pace: spec.pace,
            reported: false,
            _slots: spec.slots,
        }
    }

    /// A client accepted by a local service, carried as stream `spec.stream`; `peer`: who
    /// connected, if the caller knows (else asked here).
    pub fn accepted(spec: StreamSpec, sock: TcpStream, peer: Option<SocketAddr>) -> Connection {
        let mut c = Connection::new(spec);
        c.peer = peer.or_else(|| sock.peer_addr().ok());
        c.attach(sock);
        c
    }

    /// The remote end of stream `spec.stream`, to be dialled to one of `target`'s backends.
    pub fn dialing(spec: StreamSpec, target: Target) -> Connection {
        let mut c = Connection::new(spec);
        c.target = Some(Box::new(target));
        c
    }

    /// Bytes the cipher adds to each DATA frame.
    fn overhead(&self) -> usize {
        Keying::overhead(&self.keying)
    }

    fn attach(&mut self, sock: TcpStream) {
        use std::os::fd::AsRawFd;
        // Latency over coalescing: we already write whole chunks.
        let _ = sock.set_nodelay(true);
        self.fd = Some(sock.as_raw_fd());
        let (r, w) = sock.into_split();
        self.reader = Some(r);
        self.down.put_writer(w);
        self.refresh_direct();
    }

    /// What the tunnel shares with this connection: hand it to the tunnel with the actor.
    pub fn downstream(&self) -> Rc<Downstream> {
        self.down.clone()
    }

    /// Tells the tunnel whether it may write to the socket directly now: nothing of ours queued
    /// or being written, our write side up, a plaintext and unpaced stream.
    fn refresh_direct(&self) {
        self.down.set_open(
            self.write == WriteState::Idle
                && self.out.is_empty()
                && !self.peer_fin
                && self.keying.is_none()
                && self.pace.is_none()
                && self.down.has_writer(),
        );
    }

    fn report(&mut self, msg: FromConnection) {
        self.upstream.send(msg);
    }

    /// Reads what the socket has ready, against the grant. When the socket runs dry the grant
    /// beyond the standing one goes back to the tunnel and the actor waits for readability before
    /// asking again: an idle connection holds at most its standing grant and no buffer.
    fn read_more(&mut self, ctx: &mut Context<Self>) {
        if !matches!(
            self.read,
            ReadState::Idle | ReadState::Wanting | ReadState::Spending
        ) {
            return;
        }
        let stream = self.stream;
        let overhead = self.overhead();
        let buffer = crate::io::read_buffer();
        loop {
            // The grant counts wire bytes: an AEAD tag takes its share.
            let room = self.grant.min(MAX_DATA as u64) as usize;
            if room <= overhead {
                self.out_of_grant(stream);
                break;
            }
            let max = room - overhead;
            if self.pace_reads(ctx) {
                return;
            }
            let Some(reader) = self.reader.as_ref() else {
                return;
            };
            // The thread's read buffer; should it be in use (it is not: nothing that sends a
            // frame reads one), a buffer of this read's own.
            let mut own = BytesMut::new();
            let mut shared = buffer.try_borrow_mut();
            let frame = match shared.as_deref_mut() {
                Ok(shared) => shared,
                Err(_) => &mut own,
            };
            match try_read_data_frame(frame, reader, stream, max, overhead) {
                Ok(Chunk::Frame { drained }) => {
                    if let Some(p) = &self.pace {
                        p.take(Direction::Read, (frame.len() - HEADER_LEN) as u64);
                    }
                    self.send_frame(stream, frame);
                    if drained {
                        self.hand_back(stream);
                        break;
                    }
                }
                Ok(Chunk::Eof) => return self.read_ended(ctx),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.hand_back(stream);
                    break;
                }
                Err(e) => return self.read_failed(ctx, e),
            }
        }
        if self.read == ReadState::Idle {
            self.watch();
        }
    }

    /// The grant ran out before the socket did (out of line: a short exchange never gets here,
    /// and its path stays compact in the instruction cache).
    #[cold]
    fn out_of_grant(&mut self, stream: u32) {
        match self.read {
            ReadState::Spending => {
                // The standing grant ran out with data still waiting: ask, as usual.
                self.read = ReadState::Wanting;
                self.report(FromConnection::Want { stream });
            }
            // Nothing in hand: wait for what was asked for (or for readability).
            _ if self.grant == 0 => {}
            _ => self.hand_back(stream),
        }
    }

    /// The client or backend ended its side: a FIN for the stream (out of line, as above).
    #[cold]
    fn read_ended(&mut self, ctx: &mut Context<Self>) {
        self.read = ReadState::Done;
        self.report(FromConnection::Fin {
            stream: self.stream,
        });
        self.finish_if_done(ctx);
    }

    /// A read failed: the stream is reset (out of line, as above).
    #[cold]
    fn read_failed(&mut self, ctx: &mut Context<Self>, e: io::Error) {
        self.abort(ctx, ResetCode::Aborted, format!("read failed: {e}"));
    }

    /// The socket ran dry: give back the grant beyond the standing one, and stop wanting (the
    /// tunnel is told even when nothing goes back, if we had asked).
    fn hand_back(&mut self, stream: u32) {
        let unused = self.grant.saturating_sub(self.keep);
        self.grant -= unused;
        if unused > 0 || self.read == ReadState::Wanting {
            self.report(FromConnection::Return {
                stream,
                bytes: unused,
            });
        }
        self.read = ReadState::Idle;
    }

    /// Credit that arrives when we did not ask (a refill of the standing grant, or a grant that
    /// crossed our hand-back in flight): keep up to the standing grant, return the rest.
    fn take_unasked(&mut self, n: u64) {
        let room = if self.read == ReadState::Done {
            0
        } else {
            self.keep.saturating_sub(self.grant)
        };
        let kept = n.min(room);
        self.grant += kept;
        if n > kept {
            self.report(FromConnection::Return {
                stream: self.stream,
                bytes: n - kept,
            });
        }
    }

    /// Sends the DATA frame just read into this thread's read buffer `frame`.
    fn send_frame(&mut self, stream: u32, frame: &mut BytesMut) {
        Keying::seal_frame(&mut self.keying, frame);
        let n = (frame.len() - HEADER_LEN) as u64;
        self.grant = self.grant.saturating_sub(n);
        self.down.touch();
        self.upstream.send_data(stream, frame, &self.down);
    }

    fn write_more(&mut self, ctx: &mut Context<Self>) {
        if self.write != WriteState::Idle {
            return;
        }
        let Some(mut writer) = self.down.take_writer() else {
            return;
        };
        if self.out.is_empty() && self.out_wire > 0 {
            // Only tags arrived (an empty sealed frame): nothing to write, the credit goes back.
            let bytes = std::mem::take(&mut self.out_wire);
            self.report(FromConnection::Consumed {
                stream: self.stream,
                bytes,
            });
        }
        if self.out.is_empty() {
            return self.nothing_to_write(writer, ctx);
        }
        if let Some(wait) = self.pace.as_ref().and_then(|p| p.wait(Direction::Write)) {
            self.down.put_writer(writer);
            self.write = WriteState::Paced;
            crate::timer::run_later(ctx, wait, |act: &mut Connection, ctx| {
                if act.write == WriteState::Paced {
                    act.write = WriteState::Idle;
                    act.write_more(ctx);
                }
            });
            return;
        }
        let (mut batch, bytes) = self.next_batch();
        match try_write_now(&writer, &mut batch) {
            Ok(true) => {
                self.down.put_writer(writer);
                self.written(bytes);
                return self.write_more(ctx);
            }
            Ok(false) => {}
            Err(e) => {
                self.down.put_writer(writer);
                return self.abort(ctx, ResetCode::Aborted, format!("write failed: {e}"));
            }
        }
        self.write = WriteState::Writing;
        self.refresh_direct();
        ctx.spawn(
            async move {
                let result = write_all_vectored(&mut writer, batch).await;
                (writer, result)
            }
            .into_actor(self)
            .map(move |(writer, result), act, ctx| {
                act.write = WriteState::Idle;
                act.down.put_writer(writer);
                match result {
                    Ok(()) => {
                        act.written(bytes);
                        act.write_more(ctx);
                    }
                    Err(e) => act.abort(ctx, ResetCode::Aborted, format!("write failed: {e}")),
                }
            }),
        );
    }

    /// Nothing is queued for the client: after the peer's FIN the write side closes (and the
    /// socket with it once both ways are done), else the writer waits for the next frame.
    fn nothing_to_write(&mut self, writer: OwnedWriteHalf, ctx: &mut Context<Self>) {
        if self.peer_fin {
            match self.reader.take() {
                // Both ways are done: closing the socket sends the FIN a shutdown would (no
                // byte is left unread to turn it into a reset), one system call fewer.
                Some(reader) if self.read == ReadState::Done => {
                    // Closed here: a reset later must not reach a reused descriptor.
                    self.fd = None;
                    drop(reader.reunite(writer));
                }
                // Dropping the write half shuts down our side: the half-close travels on.
                reader => {
                    self.reader = reader;
                    drop(writer);
                }
            }
            self.write = WriteState::Done;
            self.refresh_direct();
            self.finish_if_done(ctx);
        } else {
            self.down.put_writer(writer);
            self.refresh_direct();
        }
    }

    /// The next writes to the client and the wire credit they return once written: the whole
    /// queue, or with a pace what its bucket allows now.
    fn next_batch(&mut self) -> (Vec<Bytes>, u64) {
        match &self.pace {
            None => (
                self.out.drain(..).collect::<Vec<Bytes>>(),
                std::mem::take(&mut self.out_wire),
            ),
            // What the bucket holds, not the whole queue (a window's worth at once would burst
            // above the limit); the credit goes back in proportion, the rest once all is out.
            Some(p) => {
                let queued: u64 = self.out.iter().map(|b| b.len() as u64).sum();
                let allowance = p.allowance(Direction::Write).max(PACE_CHUNK);
                let batch = take_paced(&mut self.out, allowance);
                let n: u64 = batch.iter().map(|b| b.len() as u64).sum();
                p.take(Direction::Write, n);
                let bytes = if self.out.is_empty() {
                    self.out_wire
                } else {
                    self.out_wire * n / queued.max(1)
                };
                self.out_wire -= bytes;
                (batch, bytes)
            }
        }
    }

    /// A write completed: `bytes` of wire credit go back to the tunnel.
    fn written(&mut self, bytes: u64) {
        self.down.touch();
        if bytes > 0 {
            let stream = self.stream;
            self.report(FromConnection::Consumed { stream, bytes });
        }
    }

    fn finish_if_done(&mut self, ctx: &mut Context<Self>) {
        if self.read == ReadState::Done && self.write == WriteState::Done {
            self.report(FromConnection::Closed {
                stream: self.stream,
                failure: None,
            });
            self.reported = true;
            ctx.stop();
        }
    }

    /// Ends the stream abnormally: the tunnel resets it with `code` (or refuses it if not yet
    /// open), and the socket is reset, not closed with a FIN.
    fn abort(&mut self, ctx: &mut Context<Self>, code: ResetCode, why: String) {
        debug!(
            "service {}: stream {} ({:?}): {why}",
            self.service, self.stream, self.peer
        );
        if !self.reported {
            self.report(FromConnection::Closed {
                stream: self.stream,
                failure: Some((code, why)),
            });
        }
        self.reported = true;
        self.reset_socket();
        ctx.stop();
    }

    /// Sends a TCP reset now, whichever half is where; the descriptor closes with the actor.
    fn reset_socket(&mut self) {
        // No direct write after the reset.
        self.down.set_open(false);
        if let Some(fd) = self.fd.take() {
            crate::io::reset_fd(fd);
        }
    }
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.start_watch(ctx);
        if let Some(target) = self.target.take() {
            self.dial(*target, ctx);
        }
        if let Some(idle) = self.idle_timeout {
            // Idle since the first look that saw the activity count where it is now: closed
            // between `idle` and `idle` + two periods after its last byte.
            let period = (idle / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
            let mut seen = (self.down.activity(), Instant::now());
            crate::timer::run_interval(ctx, period, move |act: &mut Connection, ctx| {
                let now = Instant::now();
                if act.down.activity() != seen.0 {
                    seen = (act.down.activity(), now);
                } else if now.duration_since(seen.1) >= idle {
                    info!(
                        "service {}: connection {:?} idle for {} ms; closing",
                        act.service,
                        act.peer,
                        idle.as_millis()
                    );
                    act.abort(ctx, ResetCode::IdleTimeout, "idle timeout".to_owned());
                }
            });
        }
    }

    /// Also runs when a handler panicked: the tunnel then resets the stream and forgets it.
    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let failure = if std::thread::panicking() {
            error!(
                "service {}: stream {}: the connection actor panicked; resetting the stream",
                self.service, self.stream
            );
            "the connection actor panicked"
        } else {
            "connection closed"
        };
        if !self.reported {
            self.report(FromConnection::Closed {
                stream: self.stream,
                failure: Some((ResetCode::Aborted, failure.to_owned())),
            });
            self.reset_socket();
        }
        // The descriptor closes with the actor, not when the tunnel lets go of its share of the
        // write half (after our report); and no direct write reaches it meanwhile.
        self.down.set_open(false);
        drop(self.down.take_writer());
    }
}

impl Connection {
    /// An event from the tunnel, taken from the queue by the lasting item (`watch.rs`).
    fn on_event(&mut self, msg: StreamEvent, ctx: &mut Context<Self>) {
        match msg {
            StreamEvent::Opened { nonce } => {
                if let Err(why) = Keying::opened(&mut self.keying, nonce) {
                    warn!("service {}: stream {}: {why}", self.service, self.stream);
                    return self.abort(ctx, ResetCode::Aborted, why.to_owned());
                }
                if self.read == ReadState::Unopened {
                    self.read = ReadState::Idle;
                }
                self.read_more(ctx);
            }
            StreamEvent::Grant(n)
                if !matches!(
                    self.read,
                    ReadState::Wanting | ReadState::Paced { spending: false }
                ) =>
            {
                self.take_unasked(n)
            }
            StreamEvent::Standing(n) => self.keep = n,
            StreamEvent::Grant(n) => {
                self.grant += n;
                self.read_more(ctx);
            }
            StreamEvent::Data(mut payload) => {
                self.down.touch();
                let wire = payload.len() as u64;
                if let Err((code, why)) = Keying::open(&mut self.keying, &mut payload) {
                    if code == ResetCode::Integrity {
                        crate::log_limited!(
                            warn,
                            "stream-integrity",
                            "service {}: stream {}: {why}; resetting the stream",
                            self.service,
                            self.stream
                        );
                    }
                    return self.abort(ctx, code, why);
                }
                self.out_wire += wire;
                if !payload.is_empty() {
                    self.out.push_back(payload.freeze());
                }
                self.refresh_direct();
                self.write_more(ctx);
            }
            StreamEvent::Fin => {
                self.peer_fin = true;
                self.refresh_direct();
                self.write_more(ctx);
            }
            StreamEvent::Abort => {
                self.reported = true;
                self.reset_socket();
                ctx.stop();
            }
        }
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<crate::Crash> for Connection {
    type Result = ();

    fn handle(&mut self, _: crate::Crash, _ctx: &mut Self::Context) {
        panic!(
            "fault injected into the connection of service {}, stream {}",
            self.service, self.stream
        );
    }
}

mod dial;
mod downstream;
mod upstream;
mod watch;
pub use dial::Target;
pub use downstream::Downstream;
pub use upstream::{Upstream, WayOut};

#[cfg(test)]
mod tests;
