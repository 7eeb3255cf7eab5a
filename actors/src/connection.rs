//! The connection actor: one downstream TCP connection, either accepted by a local service's
//! listener or dialled to a remote service's `addr`, carried as one stream of a tunnel.
//!
//! It reads its socket only against credit granted by its tunnel, asked for once the socket is
//! readable and handed back when it runs dry, and reports bytes back to the tunnel only once they
//! are written to its socket, so a slow client slows exactly its own stream. Reads are
//! non-blocking and happen in the handlers; waiting for readability and writing run as futures of
//! this actor that own the socket half meanwhile. The actor never blocks and never buffers beyond
//! the stream window.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use log::{debug, error, info, warn};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::cipher::Keystream;
use crate::io::{try_read_data_frame, write_all_vectored, Chunk};
use crate::protocol::{HEADER_LEN, MAX_DATA};
use crate::tunnel::{FromConnection, Tunnel};

/// Tunnel -> connection.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum StreamEvent {
    /// The far end reached its target: data may flow.
    Opened,
    /// Credit to read this many more bytes from the socket.
    Grant(u64),
    /// Bytes from the far end, to be written to the socket (decrypted here, in place).
    Data(BytesMut),
    /// The far end will send no more: shut down our write side once the queue is written.
    Fin,
    /// The stream is gone (reset, refused, tunnel closed): drop the socket now.
    Abort,
}

/// The two keystreams of a keyed stream: (to the tunnel, from the tunnel).
pub type Ciphers = (Keystream, Keystream);

pub struct Connection {
    tunnel: Addr<Tunnel>,
    service: String,
    stream: u32,
    /// The remote end's target, dialled when the actor starts.
    target: Option<(SocketAddr, Duration)>,
    peer: Option<SocketAddr>,
    reader: Option<OwnedReadHalf>,
    writer: Option<OwnedWriteHalf>,
    /// A readability watch is under way.
    watching: bool,
    /// Credit was asked for (the socket has data) and not handed back since.
    wanting: bool,
    writing: bool,
    opened: bool,
    grant: u64,
    read_done: bool,
    peer_fin: bool,
    write_done: bool,
    out: VecDeque<Bytes>,
    ciphers: Option<Ciphers>,
    idle_timeout: Option<Duration>,
    last_active: Instant,
    reported: bool,
}

impl Connection {
    fn new(
        stream: u32,
        tunnel: Addr<Tunnel>,
        service: String,
        ciphers: Option<Ciphers>,
        idle_timeout: Option<Duration>,
    ) -> Connection {
        Connection {
            tunnel,
            service,
            stream,
            target: None,
            peer: None,
            reader: None,
            writer: None,
            watching: false,
            wanting: false,
            writing: false,
            opened: false,
            grant: 0,
            read_done: false,
            peer_fin: false,
            write_done: false,
            out: VecDeque::new(),
            ciphers,
            idle_timeout,
            last_active: Instant::now(),
            reported: false,
        }
    }

    /// A client accepted by a local service, carried as stream `stream`.
    pub fn accepted(
        stream: u32,
        sock: TcpStream,
        tunnel: Addr<Tunnel>,
        service: String,
        ciphers: Option<Ciphers>,
        idle_timeout: Option<Duration>,
    ) -> Connection {
        let mut c = Connection::new(stream, tunnel, service, ciphers, idle_timeout);
        c.peer = sock.peer_addr().ok();
        c.attach(sock);
        c
    }

    /// The remote end of stream `stream`, to be dialled to `target`.
    pub fn dialing(
        stream: u32,
        target: SocketAddr,
        connect_timeout: Duration,
        tunnel: Addr<Tunnel>,
        service: String,
        ciphers: Option<Ciphers>,
        idle_timeout: Option<Duration>,
    ) -> Connection {
        let mut c = Connection::new(stream, tunnel, service, ciphers, idle_timeout);
        c.target = Some((target, connect_timeout));
        c
    }

    fn attach(&mut self, sock: TcpStream) {
        // Latency over coalescing: we already write whole chunks.
        let _ = sock.set_nodelay(true);
        let (r, w) = sock.into_split();
        self.reader = Some(r);
        self.writer = Some(w);
    }

    fn report(&mut self, msg: FromConnection) {
        self.tunnel.do_send(msg);
    }

    /// Reads what the socket has ready, against the grant. When the socket runs dry the unused
    /// grant goes back to the tunnel and the actor waits for readability before asking again: an
    /// idle connection holds no credit and no buffer.
    fn read_more(&mut self, ctx: &mut Context<Self>) {
        if self.watching || self.read_done || !self.opened {
            return;
        }
        let stream = self.stream;
        while self.grant > 0 {
            let max = self.grant.min(MAX_DATA as u64) as usize;
            let Some(reader) = self.reader.as_ref() else {
                return;
            };
            match try_read_data_frame(reader, stream, max) {
                Ok(Chunk::Frame { frame, drained }) => {
                    self.send_frame(stream, frame);
                    if drained {
                        self.hand_back(stream);
                    }
                }
                Ok(Chunk::Eof) => {
                    self.read_done = true;
                    self.report(FromConnection::Fin { stream });
                    self.finish_if_done(ctx);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.hand_back(stream),
                Err(e) => {
                    self.abort(ctx, format!("read failed: {e}"));
                    return;
                }
            }
        }
        if !self.wanting {
            self.watch(ctx);
        }
    }

    /// The socket ran dry: give the unused grant back and stop wanting.
    fn hand_back(&mut self, stream: u32) {
        let unused = std::mem::take(&mut self.grant);
        if unused > 0 {
            self.report(FromConnection::Return {
                stream,
                bytes: unused,
            });
        }
        self.wanting = false;
    }

    /// Waits until the socket is readable, then asks the tunnel for credit.
    fn watch(&mut self, ctx: &mut Context<Self>) {
        let stream = self.stream;
        let Some(reader) = self.reader.take() else {
            return;
        };
        self.watching = true;
        ctx.spawn(
            async move {
                let ready = reader.readable().await;
                (reader, ready)
            }
            .into_actor(self)
            .map(move |(reader, ready), act, ctx| {
                act.reader = Some(reader);
                act.watching = false;
                match ready {
                    Ok(()) => {
                        act.wanting = true;
                        act.report(FromConnection::Want { stream });
                    }
                    Err(e) => act.abort(ctx, format!("read failed: {e}")),
                }
            }),
        );
    }

    fn send_frame(&mut self, stream: u32, mut frame: BytesMut) {
        let n = (frame.len() - HEADER_LEN) as u64;
        self.grant = self.grant.saturating_sub(n);
        self.last_active = Instant::now();
        if let Some((tx, _)) = self.ciphers.as_mut() {
            tx.apply(&mut frame[HEADER_LEN..]);
        }
        self.report(FromConnection::Data {
            stream,
            frame: frame.freeze(),
        });
    }

    fn write_more(&mut self, ctx: &mut Context<Self>) {
        if self.writing || self.write_done {
            return;
        }
        let Some(mut writer) = self.writer.take() else {
            return;
        };
        if self.out.is_empty() {
            if self.peer_fin {
                // Dropping the write half shuts down our side: the half-close travels on.
                drop(writer);
                self.write_done = true;
                self.finish_if_done(ctx);
            } else {
                self.writer = Some(writer);
            }
            return;
        }
        let batch: Vec<Bytes> = self.out.drain(..).collect();
        let bytes: u64 = batch.iter().map(|b| b.len() as u64).sum();
        self.writing = true;
        ctx.spawn(
            async move {
                let result = write_all_vectored(&mut writer, batch).await;
                (writer, result)
            }
            .into_actor(self)
            .map(move |(writer, result), act, ctx| {
                act.writing = false;
                act.writer = Some(writer);
                match result {
                    Ok(()) => {
                        act.last_active = Instant::now();
                        let stream = act.stream;
                        act.report(FromConnection::Consumed { stream, bytes });
                        act.write_more(ctx);
                    }
                    Err(e) => act.abort(ctx, format!("write failed: {e}")),
                }
            }),
        );
    }

    fn finish_if_done(&mut self, ctx: &mut Context<Self>) {
        if self.read_done && self.write_done && !self.writing {
            self.report(FromConnection::Closed {
                stream: self.stream,
                failure: None,
            });
            self.reported = true;
            ctx.stop();
        }
    }

    /// Ends the stream abnormally: the tunnel resets it (or refuses it if not yet open).
    fn abort(&mut self, ctx: &mut Context<Self>, why: String) {
        debug!(
            "service {}: stream {} ({:?}): {why}",
            self.service, self.stream, self.peer
        );
        if !self.reported {
            self.report(FromConnection::Closed {
                stream: self.stream,
                failure: Some(why),
            });
        }
        self.reported = true;
        ctx.stop();
    }

    fn dial(&mut self, target: SocketAddr, timeout: Duration, ctx: &mut Context<Self>) {
        ctx.spawn(
            async move { tokio::time::timeout(timeout, TcpStream::connect(target)).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    let error = match result {
                        Ok(Ok(sock)) => {
                            act.attach(sock);
                            act.opened = true;
                            let stream = act.stream;
                            act.report(FromConnection::Dialed { stream });
                            act.read_more(ctx);
                            return;
                        }
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("no answer within {} ms", timeout.as_millis()),
                    };
                    warn!(
                        "service {}: cannot reach {target}: {error}; refusing the stream",
                        act.service
                    );
                    act.abort(ctx, format!("cannot reach the service: {error}"));
                }),
        );
    }
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some((target, timeout)) = self.target.take() {
            self.dial(target, timeout, ctx);
        }
        if let Some(idle) = self.idle_timeout {
            let period = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
            ctx.run_interval(period, move |act, ctx| {
                if act.last_active.elapsed() >= idle {
                    info!(
                        "service {}: connection {:?} idle for {} ms; closing",
                        act.service,
                        act.peer,
                        idle.as_millis()
                    );
                    act.abort(ctx, "idle timeout".to_owned());
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
                failure: Some(failure.to_owned()),
            });
        }
    }
}

impl Handler<StreamEvent> for Connection {
    type Result = ();

    fn handle(&mut self, msg: StreamEvent, ctx: &mut Self::Context) {
        match msg {
            StreamEvent::Opened => {
                self.opened = true;
                self.read_more(ctx);
            }
            // Credit that crossed our hand-back in flight: return it too.
            StreamEvent::Grant(n) if !self.wanting => self.report(FromConnection::Return {
                stream: self.stream,
                bytes: n,
            }),
            StreamEvent::Grant(n) => {
                self.grant += n;
                self.read_more(ctx);
            }
            StreamEvent::Data(mut payload) => {
                self.last_active = Instant::now();
                if let Some((_, rx)) = self.ciphers.as_mut() {
                    rx.apply(&mut payload);
                }
                self.out.push_back(payload.freeze());
                self.write_more(ctx);
            }
            StreamEvent::Fin => {
                self.peer_fin = true;
                self.write_more(ctx);
            }
            StreamEvent::Abort => {
                self.reported = true;
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
