//! What a tunnel shares with its connections on their one thread, for the way up: the queue of
//! their reports, and the tunnel's way out (its socket's write half and its sealer), so that a
//! connection writes a DATA frame straight to the tunnel's socket when nothing is ahead of it.
//! The mirror of `downstream.rs`.
//!
//! **Upstream.** A connection is started by its tunnel on the tunnel's thread and lives there, so
//! the queue needs no lock and no envelope: a report is one push, and the tunnel's task is woken
//! only by the first report since its writer item last waited (later ones find a wake-up already
//! due). A message per report had cost two allocations (its envelope and the channel's node), a
//! channel push and a pop on every short exchange. The reports of all of a tunnel's connections
//! share the one queue, so each stream's reports keep their order (a FIN after the DATA before
//! it), as in a mailbox. What bounds the queue is what bounds the reports: a connection sends
//! DATA only against the credit its tunnel granted, and a handful of other reports over its life.
//! A tunnel that is gone drains nothing; the queue then goes with its last connection.
//!
//! **The direct write.** The usual way, a DATA frame is a report: it wakes the tunnel's task,
//! whose writer item queues it, seals it and writes it. On a short exchange that is one more
//! task poll on each node, between the connection's read and the tunnel's write (about 700 of
//! node A's 10.6 k instructions per 64 B exchange, callgrind). The direct way, the connection
//! seals the frame with the tunnel's sealer and writes it to the tunnel's socket itself, then
//! queues a quiet `Sent` report. The frame is used where it was read (the data thread's read
//! buffer) and its record sealed into the way out's reused scratch buffer, so a short exchange's
//! frame costs no allocation on the way up (two, and about 800 of node A's 9.9 k instructions,
//! when each frame and each record had a buffer of its own). The report is the tunnel's
//! accounting of the bytes, taken at its next poll, whatever wakes it: the reply's frame, a
//! heartbeat tick within a second, another report. The direct way is taken only when it cannot
//! reorder or hide anything:
//! - the tunnel lends its way out ([`Upstream::set_open`]): it is open, it has nothing queued
//!   (control frames, data frames, the rest of a direct write) and no write under way;
//! - no report waits in the queue (a stream's OPEN_OK, queued when its tunnel takes its
//!   `Dialed`, must go before its first DATA; and credit is accounted in order);
//! - the connection has taken every event of its tunnel and the tunnel has not let go of its
//!   stream (its caller's `may_pass`): a stream its tunnel removed has had its credit taken back,
//!   and a frame sent on it now could overrun the peer's tunnel window;
//! - the frame is a short exchange's, at most [`DIRECT_MAX`]: a bulk stream's 64 KiB frames, each
//!   its own system call this way, had cut one stream over a 50 ms path to about half
//!   (`tests/flow_control.rs`, the bench's long link); batched by the tunnel's writer they keep
//!   its speed;
//! - the thread's poller does not hold the cores saturated (`busy_poll::cores_saturated`): there
//!   the writer's one write for all the frames of its pass costs less than a system call each,
//!   and on busy cores the frame waits for the core anyway.
//!
//! Whatever the socket does not take at once stays here as the way out's rest, sealed, and the
//! report wakes the tunnel, whose writer sends the rest before anything else (the records must
//! reach the socket in the order they were sealed).

use std::cell::{Cell, Ref, RefCell, RefMut};
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::net::tcp::OwnedWriteHalf;

use super::{Downstream, FromConnection};
use crate::io::{take_frame, try_write_some};
use crate::lasting::WakingQueue;
use crate::protocol::HEADER_LEN;
use crate::record::Sealer;

/// The largest frame that goes straight to the socket: a short exchange's. A bulk stream's
/// frames (up to 64 KiB each) go the usual way, batched by the tunnel's writer.
const DIRECT_MAX: usize = 16 * 1024;

/// The scratch record's capacity kept between direct writes: one record of a frame of
/// [`DIRECT_MAX`] bytes, with room for its record header and tag.
const SCRATCH_MAX: usize = DIRECT_MAX + 64;

/// One end of what a tunnel shares with its connections: they report and write on it, the
/// tunnel takes their reports and writes through the same way out.
#[derive(Clone, Default)]
pub struct Upstream(Rc<Shared>);

#[derive(Default)]
struct Shared {
    /// The connections' reports, in order, until the tunnel's writer item takes them.
    reports: WakingQueue<FromConnection>,
    /// The tunnel's way out: its socket's write half and sealer.
    out: RefCell<WayOut>,
    /// The tunnel lends its way out now (the module's first condition).
    open: Cell<bool>,
}

/// The tunnel's way out to its peer.
#[derive(Default)]
pub struct WayOut {
    /// The tunnel socket's write half; `None` before the tunnel starts, while one of its write
    /// futures holds it, and once it stopped.
    pub writer: Option<OwnedWriteHalf>,
    /// Seals frames into records, on a sealed tunnel; `None`: frames go as they are.
    pub sealer: Option<Box<Sealer>>,
    /// What a direct write left unwritten, sealed: it goes before anything else.
    pub rest: Vec<Bytes>,
    /// Emptied lists of past writes, reused so that a write allocates none.
    spare: Vec<Vec<Bytes>>,
    /// A direct write's record is sealed here, reused, so that a short exchange's record costs
    /// no allocation (at most one [`DIRECT_MAX`] record's capacity is kept).
    scratch: BytesMut,
}

impl WayOut {
    /// An empty list for a write's frames or records.
    pub fn list(&mut self) -> Vec<Bytes> {
        self.spare.pop().unwrap_or_default()
    }

    /// Keeps an emptied list for the next write (two at most, and none that grew large).
    pub fn recycle(&mut self, mut list: Vec<Bytes>) {
        if self.spare.len() < 2 && list.capacity() <= 256 {
            list.clear();
            self.spare.push(list);
        }
    }

    /// Writes one frame straight to the socket, sealed into the scratch record on a sealed
    /// tunnel: `true` once all of it went, else what did not go is left as the rest.
    fn write_direct(&mut self, frame: &[u8]) -> bool {
        let record: &[u8] = match self.sealer.as_mut() {
            Some(sealer) => {
                self.scratch.clear();
                sealer.seal_into(frame, &mut self.scratch);
                &self.scratch
            }
            None => frame,
        };
        // Without a write half (none is lent then), all of it is the rest.
        let written = match self.writer.as_ref() {
            Some(writer) => try_write_some(writer, record).unwrap_or(0),
            None => 0,
        };
        let done = written == record.len();
        if !done {
            self.rest.push(Bytes::copy_from_slice(&record[written..]));
        }
        if self.scratch.capacity() > SCRATCH_MAX {
            self.scratch = BytesMut::new();
        }
        done
    }

    /// Seals `frames` into records if the tunnel is sealed (the list then comes back as the
    /// records'); frames go as they are otherwise.
    pub fn seal(&mut self, mut frames: Vec<Bytes>) -> Vec<Bytes> {
        if self.sealer.is_none() {
            return frames;
        }
        let mut records = self.list();
        if let Some(sealer) = self.sealer.as_mut() {
            sealer.seal(&mut frames, &mut records);
        }
        self.recycle(frames);
        records
    }
}

impl Upstream {
    pub fn new() -> Upstream {
        Upstream::default()
    }

    /// Queues `report`; wakes the tunnel if its writer item waits.
    pub fn send(&self, report: FromConnection) {
        self.0.reports.send(report);
    }

    /// A DATA frame of `stream`, in the thread's read buffer `frame`, whose connection shares
    /// `down` with the tunnel: written from there straight to the tunnel's socket if nothing is
    /// ahead of it (the module's conditions), its payload left in `down` for the tunnel to count,
    /// with a quiet `Sent` report; else taken out of the buffer and queued as a `Data` report,
    /// the usual way.
    pub fn send_data(&self, stream: u32, frame: &mut BytesMut, down: &Downstream) {
        let small = frame.len() <= DIRECT_MAX;
        let nothing_ahead = down.passable() && self.0.open.get() && self.0.reports.is_empty();
        if !(small && nothing_ahead) || crate::busy_poll::cores_saturated() {
            let frame = take_frame(frame).freeze();
            self.send(FromConnection::Data { stream, frame });
            return;
        }
        let payload = (frame.len() - HEADER_LEN) as u64;
        down.sent_direct(payload);
        let mut out = self.0.out.borrow_mut();
        let done = out.write_direct(frame);
        drop(out);
        let sent = FromConnection::Sent { stream };
        if done {
            self.0.reports.send_quiet(sent);
        } else {
            // Full (or failed: the tunnel's writer meets the error): the rest goes first, and
            // nothing passes it until the tunnel's writer has sent it.
            self.0.open.set(false);
            self.send(sent);
        }
    }

    /// Tunnel: whether it lends its way out now (the module's first condition).
    pub fn set_open(&self, open: bool) {
        debug_assert!(
            !open || self.0.out.borrow().rest.is_empty(),
            "the way out lent with a rest to send"
        );
        self.0.open.set(open);
    }

    /// Tunnel: its way out, for a write of its own.
    pub fn out(&self) -> RefMut<'_, WayOut> {
        self.0.out.borrow_mut()
    }

    /// Tunnel: its way out, to look at (`GET /config`).
    pub fn look(&self) -> Ref<'_, WayOut> {
        self.0.out.borrow()
    }

    /// Tunnel: it stopped. Its socket's write half and its keys go now, not with its last
    /// connection.
    pub fn close(&self) {
        self.0.open.set(false);
        *self.0.out.borrow_mut() = WayOut::default();
    }

    /// The oldest report not taken yet.
    pub fn take(&self) -> Option<FromConnection> {
        self.0.reports.take()
    }

    /// The taker found the queue empty: the next report wakes `task`.
    pub fn wait(&self, task: &Context<'_>) {
        self.0.reports.wait(task);
    }

    /// A queue whose reports go on to `tx` as they come (a test's stand-in for the tunnel).
    #[cfg(test)]
    pub fn forwarded_to(tx: tokio::sync::mpsc::UnboundedSender<FromConnection>) -> Upstream {
        let upstream = Upstream::new();
        let taker = upstream.clone();
        actix_rt::spawn(async move {
            loop {
                let report = std::future::poll_fn(|task| taker.poll_take(task)).await;
                if tx.send(report).is_err() {
                    break;
                }
            }
        });
        upstream
    }

    /// The next report, or `Pending` until one comes.
    pub fn poll_take(&self, task: &mut Context<'_>) -> Poll<FromConnection> {
        match self.take() {
            Some(report) => Poll::Ready(report),
            None => {
                self.wait(task);
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lasting::counting_waker;
    use crate::protocol::{Frame, FrameCodec};
    use bytes::BytesMut;
    use tokio::io::AsyncReadExt;
    use tokio_util::codec::Decoder;

    #[test]
    fn reports_come_out_in_order_and_only_the_first_into_an_empty_queue_wakes() {
        let (waker, count) = counting_waker();
        let mut task = Context::from_waker(&waker);
        let tunnel = Upstream::new();
        let connection = tunnel.clone();
        assert!(tunnel.poll_take(&mut task).is_pending());
        connection.send(FromConnection::Want { stream: 1 });
        connection.send(FromConnection::Fin { stream: 1 });
        assert_eq!(count.get(), 1, "one wake-up for both");
        assert!(matches!(
            tunnel.poll_take(&mut task),
            Poll::Ready(FromConnection::Want { stream: 1 })
        ));
        assert!(matches!(
            tunnel.take(),
            Some(FromConnection::Fin { stream: 1 })
        ));
        assert!(tunnel.take().is_none());
        // Nothing was waiting (the taker did not wait since): no wake-up, the report stays.
        connection.send(FromConnection::Closed {
            stream: 1,
            failure: None,
        });
        assert_eq!(count.get(), 1);
        assert!(tunnel.poll_take(&mut task).is_ready());
        assert!(tunnel.poll_take(&mut task).is_pending());
        connection.send(FromConnection::Want { stream: 3 });
        assert_eq!(count.get(), 2, "the taker waited again");
    }

    /// A DATA frame of `payload` for stream 5, encoded.
    fn data(payload: &[u8]) -> Bytes {
        let mut frame = BytesMut::new();
        Frame::Data {
            stream: 5,
            payload: BytesMut::from(payload),
        }
        .encode(&mut frame);
        frame.freeze()
    }

    /// The same, as a connection holds it in its thread's read buffer.
    fn data_mut(payload: &[u8]) -> BytesMut {
        BytesMut::from(&data(payload)[..])
    }

    /// A connection's share of a stream whose frames may pass: no event, not let go of.
    fn passable() -> Downstream {
        Downstream::new()
    }

    /// A connected pair on loopback: the way out's write half, and the peer's end.
    async fn socket_pair() -> (OwnedWriteHalf, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (ours.unwrap().into_split().1, theirs.unwrap().0)
    }

    /// A tunnel's end and a connection's of one upstream whose way out (a socket pair's write
    /// half) is lent, and the peer's end of the socket.
    async fn lent_way_out() -> (Upstream, Upstream, tokio::net::TcpStream) {
        let (writer, peer) = socket_pair().await;
        let tunnel = Upstream::new();
        let connection = tunnel.clone();
        tunnel.out().writer = Some(writer);
        tunnel.set_open(true);
        (tunnel, connection, peer)
    }

    /// What the peer's end has read by now, decoded into frames.
    async fn frames_read(peer: &mut tokio::net::TcpStream, want: usize) -> Vec<Frame> {
        frames_decoded(peer, want, FrameCodec).await
    }

    /// The first `want` frames the peer's end reads, decoded by `codec` (within 5 s each read).
    async fn frames_decoded<C>(
        peer: &mut tokio::net::TcpStream,
        want: usize,
        mut codec: C,
    ) -> Vec<Frame>
    where
        C: Decoder<Item = Frame, Error = crate::protocol::ProtocolError>,
    {
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        while frames.len() < want {
            let n =
                tokio::time::timeout(std::time::Duration::from_secs(5), peer.read_buf(&mut buf))
                    .await
                    .expect("the frame within 5 s")
                    .unwrap();
            assert!(n > 0, "the socket closed");
            while let Some(f) = codec.decode(&mut buf).expect("every frame decodes") {
                frames.push(f);
            }
        }
        frames
    }

    #[actix_rt::test]
    async fn a_frame_with_nothing_ahead_goes_straight_to_the_socket_and_its_report_quietly() {
        let (writer, mut peer) = socket_pair().await;
        let (waker, count) = counting_waker();
        let task = Context::from_waker(&waker);
        let tunnel = Upstream::new();
        let connection = tunnel.clone();
        tunnel.out().writer = Some(writer);
        tunnel.set_open(true);
        tunnel.wait(&task);

        let down = passable();
        connection.send_data(5, &mut data_mut(b"ping"), &down);
        let got = frames_read(&mut peer, 1).await;
        assert!(
            matches!(&got[..], [Frame::Data { stream: 5, payload }] if &payload[..] == b"ping")
        );
        assert_eq!(count.get(), 0, "the report is quiet");
        assert!(matches!(
            tunnel.take(),
            Some(FromConnection::Sent { stream: 5 })
        ));
        assert_eq!(
            down.take_unaccounted(),
            4,
            "the payload, left for the tunnel to count"
        );
        assert_eq!(down.take_unaccounted(), 0, "counted once");
    }

    #[actix_rt::test]
    async fn on_saturated_cores_a_short_frame_waits_for_the_tunnels_writer() {
        let (tunnel, connection, mut peer) = lent_way_out().await;
        let down = passable();

        let held = std::time::Instant::now() + std::time::Duration::from_secs(60);
        crate::busy_poll::saturate_for_tests(Some(held));
        connection.send_data(5, &mut data_mut(b"a"), &down);
        crate::busy_poll::saturate_for_tests(None);
        assert!(matches!(tunnel.take(), Some(FromConnection::Data { .. })));
        assert_eq!(down.take_unaccounted(), 0, "nothing went straight");

        // The cores free again: the next frame goes straight, the first the peer reads.
        connection.send_data(5, &mut data_mut(b"b"), &down);
        let got = frames_read(&mut peer, 1).await;
        assert!(matches!(&got[..], [Frame::Data { stream: 5, payload }] if &payload[..] == b"b"));
        assert!(matches!(
            tunnel.take(),
            Some(FromConnection::Sent { stream: 5 })
        ));
    }

    #[actix_rt::test]
    async fn a_frame_goes_the_usual_way_behind_a_report_a_closed_way_out_its_own_events_or_bulk() {
        let (writer, mut peer) = socket_pair().await;
        let tunnel = Upstream::new();
        let connection = tunnel.clone();
        tunnel.out().writer = Some(writer);
        let down = passable();

        // The way out is not lent (the tunnel has something queued, or is closing).
        connection.send_data(5, &mut data_mut(b"a"), &down);
        assert!(matches!(tunnel.take(), Some(FromConnection::Data { .. })));

        // A report waits: the frame must not pass it.
        tunnel.set_open(true);
        connection.send(FromConnection::Dialed { stream: 5 });
        connection.send_data(5, &mut data_mut(b"b"), &down);
        assert!(matches!(tunnel.take(), Some(FromConnection::Dialed { .. })));
        assert!(matches!(tunnel.take(), Some(FromConnection::Data { .. })));

        // The connection has an event of its tunnel to take first, or its tunnel let go of the
        // stream.
        let with_event = passable();
        with_event.send(crate::connection::StreamEvent::Fin);
        connection.send_data(5, &mut data_mut(b"c"), &with_event);
        assert!(matches!(tunnel.take(), Some(FromConnection::Data { .. })));
        let let_go = passable();
        let_go.release();
        connection.send_data(5, &mut data_mut(b"c"), &let_go);
        assert!(matches!(tunnel.take(), Some(FromConnection::Data { .. })));
        assert_eq!(down.take_unaccounted(), 0, "nothing went straight");

        // A bulk stream's frame, larger than a short exchange's.
        connection.send_data(5, &mut data_mut(&[1u8; DIRECT_MAX]), &down);
        assert!(matches!(tunnel.take(), Some(FromConnection::Data { .. })));

        // Nothing went to the socket; the next direct frame is the first the peer reads.
        connection.send_data(5, &mut data_mut(b"d"), &down);
        let got = frames_read(&mut peer, 1).await;
        assert!(matches!(&got[..], [Frame::Data { payload, .. }] if &payload[..] == b"d"));
    }

    #[actix_rt::test]
    async fn what_the_socket_does_not_take_stays_as_the_rest_and_the_report_wakes_the_tunnel() {
        let (writer, _peer) = socket_pair().await;
        let (waker, count) = counting_waker();
        let task = Context::from_waker(&waker);
        let tunnel = Upstream::new();
        let connection = tunnel.clone();
        tunnel.out().writer = Some(writer);
        tunnel.wait(&task);
        let down = passable();
        // The peer reads nothing: frames go straight until the socket's buffers are full (the
        // tunnel takes each quiet report between them, as its next poll would).
        let frame = data(&[7u8; 8 * 1024]);
        let mut direct = 0;
        loop {
            assert!(direct < 10_000, "the socket never filled");
            tunnel.set_open(true);
            connection.send_data(5, &mut BytesMut::from(&frame[..]), &down);
            direct += 1;
            assert!(matches!(
                tunnel.take(),
                Some(FromConnection::Sent { stream: 5 })
            ));
            assert!(tunnel.take().is_none());
            if !tunnel.look().rest.is_empty() {
                break;
            }
            assert_eq!(
                count.get(),
                0,
                "a frame that went whole is reported quietly"
            );
        }
        assert!(direct > 1, "the first frames went whole");
        assert_eq!(
            count.get(),
            1,
            "the report of the frame left over wakes the tunnel"
        );
        // Nothing passes the rest: the way out is no longer lent.
        let rest: usize = tunnel.look().rest.iter().map(Bytes::len).sum();
        connection.send_data(5, &mut BytesMut::from(&frame[..]), &down);
        assert!(matches!(tunnel.take(), Some(FromConnection::Data { .. })));
        assert_eq!(
            tunnel.look().rest.iter().map(Bytes::len).sum::<usize>(),
            rest
        );
    }

    /// On a sealed tunnel the direct frames go as records, and what the socket did not take
    /// stays as the rest: written before the writer's next records, every frame opens in order.
    #[actix_rt::test]
    async fn sealed_direct_frames_and_their_rest_open_in_order_with_the_writers_records() {
        use crate::record::{RekeyPolicy, SealedFrameCodec, SessionKeys, TransportCipher};
        let keys = || SessionKeys::derive(&[4; 32], b"t", &[2; 32], TransportCipher::Aes256Gcm);
        let (sealer, _) = keys().split(true, RekeyPolicy::default());
        let (_, opener) = keys().split(false, RekeyPolicy::default());
        let (writer, mut peer) = socket_pair().await;
        let tunnel = Upstream::new();
        let connection = tunnel.clone();
        tunnel.out().writer = Some(writer);
        tunnel.out().sealer = Some(Box::new(sealer));
        let down = passable();
        // The peer reads nothing until the socket is full.
        let mut sent = 0u32;
        while tunnel.look().rest.is_empty() {
            assert!(sent < 10_000, "the socket never filled");
            tunnel.set_open(true);
            let payload = vec![(sent % 251) as u8; 12 * 1024];
            connection.send_data(5, &mut data_mut(&payload), &down);
            sent += 1;
            while tunnel.take().is_some() {}
        }
        // The tunnel's writer: the rest first, then a frame of its own, sealed the usual way.
        let (wire, writer) = {
            let mut out = tunnel.out();
            let mut wire = std::mem::take(&mut out.rest);
            let mut frames = out.list();
            frames.push(data(b"after"));
            wire.extend(out.seal(frames));
            (wire, out.writer.take().expect("the write half"))
        };
        let sender = tokio::spawn(async move {
            let mut writer = writer;
            crate::io::write_all_vectored(&mut writer, wire)
                .await
                .map(|_| writer)
        });
        let got = frames_decoded(&mut peer, sent as usize + 1, SealedFrameCodec::new(opener)).await;
        sender.await.unwrap().expect("the rest written");
        for (i, frame) in got.iter().enumerate() {
            let Frame::Data { stream: 5, payload } = frame else {
                panic!("frame {i}: {frame:?}");
            };
            if i < sent as usize {
                assert_eq!(payload.len(), 12 * 1024);
                assert!(payload.iter().all(|b| *b == (i % 251) as u8), "frame {i}");
            } else {
                assert_eq!(&payload[..], b"after");
            }
        }
    }

    #[actix_rt::test]
    async fn a_closed_way_out_holds_no_socket() {
        let (tunnel, connection, mut peer) = lent_way_out().await;
        tunnel.close();
        connection.send_data(5, &mut data_mut(b"x"), &passable());
        assert!(matches!(tunnel.take(), Some(FromConnection::Data { .. })));
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), peer.read(&mut buf))
            .await
            .expect("the end within 5 s")
            .unwrap();
        assert_eq!(
            n, 0,
            "the write half went with the close: the peer reads the end"
        );
    }
}
