//! One connection against a fake owner, over real sockets on [::1].

use super::*;
use crate::timeouts::Timeouts;
use crate::wire::{Frame, Hello};
use std::io::{Read, Write};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

/// An owner that holds nothing and remembers how the connection ended.
#[derive(Default)]
struct Fake {
    blob_calls: AtomicU64,
    ending: Mutex<Option<String>>,
    closed: Notify,
}

impl Handler for Fake {
    fn blob(&self, _: &Hash) -> Option<Body> {
        self.blob_calls.fetch_add(1, Ordering::Relaxed);
        None
    }
    fn on_peers(&self, _: &Arc<PeerConn>, _: Vec<SocketAddr>) {}
    fn on_bitfield(&self, _: &Arc<PeerConn>, _: Hash, _: Bytes) -> Result<(), PeerError> {
        Ok(())
    }
    fn on_have(&self, _: &Arc<PeerConn>, _: Hash, _: u32) -> Result<(), PeerError> {
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
}

/// Accepts one connection on [::1], handshakes and runs it with `fake` as its owner.
async fn serve_one(fake: Arc<Fake>) -> SocketAddr {
    let listener = TcpListener::bind("[::1]:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.unwrap();
        let ours = Hello { node_id: NodeId([9; 32]), listen_port: 0 };
        let hs = handshake(stream, peer, Direction::Inbound, ours, Duration::from_secs(10)).await.unwrap();
        let (conn, outbox) = PeerConn::new(1, &hs, Arc::new(PeerStats::new(peer)), CancellationToken::new());
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        hs.start(Arc::new(conn), outbox, fake, &Timeouts::default(), permit).await;
    });
    addr
}

/// A blocking client that has exchanged HELLOs.
fn client(addr: SocketAddr) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&Frame::Hello(Hello { node_id: NodeId([1; 32]), listen_port: 0 }).to_bytes()).unwrap();
    let mut hello = [0u8; 4 + 1 + crate::wire::HELLO_LEN];
    s.read_exact(&mut hello).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_asks_and_never_reads_is_stopped_by_back_pressure() {
    let fake = Arc::new(Fake::default());
    let addr = serve_one(fake.clone()).await;
    const ASKS: usize = 2_000_000;
    let written = tokio::task::spawn_blocking(move || {
        let mut s = client(addr);
        s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
        let batch: Vec<u8> = (0..1000u32)
            .flat_map(|i| {
                let mut h = [0u8; 32];
                h[..4].copy_from_slice(&i.to_be_bytes());
                Frame::Ask(Hash(h)).to_bytes().to_vec()
            })
            .collect();
        let mut written = 0;
        while written < ASKS && s.write_all(&batch).is_ok() {
            written += 1000;
        }
        (written, s)
    })
    .await
    .unwrap();
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
    let mut s = tokio::task::spawn_blocking(move || client(addr)).await.unwrap();
    s.write_all(&Frame::reject(crate::wire::RejectCode::PeerLimit, "full").to_bytes()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), closed).await.expect("the connection did not end");
    let ending = lock(&fake.ending).clone().unwrap();
    assert!(ending.contains("Rejected") && ending.contains("code: 2"), "{ending}");
}
