//! One connection against a fake owner, over real sockets on [::1].

use super::*;
use crate::connection::{FrameReader, FrameWriter};
use crate::identity::Identity;
use crate::timeouts::Timeouts;
use crate::wire::Frame;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

/// An owner that holds nothing and remembers how the connection ended.
#[derive(Default)]
struct Fake {
    blob_calls: AtomicU64,
    ending: Mutex<Option<String>>,
    closed: Notify,
    uploads: UploadLog,
}

impl Handler for Fake {
    fn blob(&self, _: &Hash) -> Option<Body> {
        self.blob_calls.fetch_add(1, Ordering::Relaxed);
        None
    }
    fn on_peers(&self, _: &Arc<PeerConn>, _: Vec<PeerEntry>) {}
    fn on_bitfield(&self, _: &Arc<PeerConn>, _: Hash, _: u32, _: Bytes) -> Result<(), PeerError> {
        Ok(())
    }
    fn on_have(&self, _: &Arc<PeerConn>, _: Hash, _: u32) -> Result<(), PeerError> {
        Ok(())
    }
    fn on_room(&self, _: &Arc<PeerConn>, _: Frame) -> Result<(), PeerError> {
        Ok(())
    }
    fn on_transfer(&self, _: u64, _: u64) {}
    fn on_closed(&self, _: &Arc<PeerConn>, ending: &Result<(), PeerError>) {
        *lock(&self.ending) = Some(format!("{ending:?}"));
        self.closed.notify_one();
    }
    fn farewell(&self) -> Option<Frame> {
        None
    }
    fn limiter(&self) -> Option<&RateLimiter> {
        None
    }
    fn uploads(&self) -> &UploadLog {
        &self.uploads
    }
}

/// Accepts one connection on [::1], handshakes and runs it with `fake` as its owner.
async fn serve_one(fake: Arc<Fake>) -> SocketAddr {
    let listener = TcpListener::bind("[::1]:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.unwrap();
        let hs = handshake(stream, peer, Direction::Inbound, &local(9), Duration::from_secs(10)).await.unwrap();
        let (conn, outbox) = PeerConn::new(1, &hs, Arc::new(PeerStats::new(peer)), CancellationToken::new());
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        hs.start(Arc::new(conn), outbox, fake, &Timeouts::default(), permit).await;
    });
    addr
}

fn local(seed: u8) -> Local {
    Local {
        identity: Identity::from_secret([seed; 32]),
        keys: crate::noise::Keys::generate(),
        listen_port: 0,
        flags: 0,
    }
}

/// A client that has exchanged HELLOs.
async fn client(addr: SocketAddr) -> (FrameReader<OwnedReadHalf>, FrameWriter<OwnedWriteHalf>) {
    let s = TcpStream::connect(addr).await.unwrap();
    handshake(s, addr, Direction::Outbound, &local(1), Duration::from_secs(10)).await.unwrap().into_parts()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_asks_and_never_reads_is_stopped_by_back_pressure() {
    let fake = Arc::new(Fake::default());
    let addr = serve_one(fake.clone()).await;
    const ASKS: usize = 2_000_000;
    let (_r, mut w) = client(addr).await;
    let mut written = 0;
    let mut i = 0u32;
    // The node stops reading: a write then makes no progress for 3 s.
    while written < ASKS {
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(&i.to_be_bytes());
        i += 1;
        if w.write_frame_within(&Frame::Ask(Hash(h)), None, Some(Duration::from_secs(3))).await.is_err() {
            break;
        }
        written += 1;
    }
    let written = (written, ());
    // 2 M answers would be 74 MB of DONT_HAVE; only what fits in the socket
    // buffers and the ASK queue may be answered before the client reads.
    assert!(written.0 < ASKS, "the node kept reading ASKs it could not answer");
    let answered = fake.blob_calls.load(Ordering::Relaxed) as usize;
    assert!(answered < written.0, "{answered} answered of {} sent", written.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reject_from_the_peer_ends_the_connection_badly() {
    let fake = Arc::new(Fake::default());
    let addr = serve_one(fake.clone()).await;
    let closed = fake.closed.notified();
    let (_r, mut w) = client(addr).await;
    w.write_frame(&Frame::reject(crate::wire::RejectCode::PeerLimit, "full"), None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), closed).await.expect("the connection did not end");
    let ending = lock(&fake.ending).clone().unwrap();
    assert!(ending.contains("Rejected") && ending.contains("code: 2"), "{ending}");
}
