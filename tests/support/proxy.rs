#![allow(dead_code)]
//! A fault-injecting TCP proxy between the gateway and PostgreSQL: cut every connection,
//! black-hole traffic, add latency, or cut a connection right after it carried a COMMIT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Faults {
    /// While set, no byte moves and no new connection reaches the server.
    blackhole: AtomicBool,
    /// Woken when the black hole ends.
    resumed: Notify,
    latency_ms: AtomicU64,
    /// Cut a connection right after forwarding a message that contains COMMIT.
    cut_after_commit: AtomicBool,
    /// Cancelled to cut every open connection; replaced afterwards.
    generation: std::sync::Mutex<CancellationToken>,
}

/// A running proxy; dropping it stops it.
pub struct FaultProxy {
    pub addr: SocketAddr,
    faults: Arc<Faults>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Proxies 127.0.0.1:<new port> to `target`.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let faults = Arc::new(Faults::default());
        let stop = CancellationToken::new();
        let (f, s) = (faults.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok((c, _)) => c, Err(_) => continue },
                    () = s.cancelled() => return,
                };
                let cut = f.generation.lock().unwrap().clone();
                tokio::spawn(relay(client, target, f.clone(), cut, s.clone()));
            }
        });
        FaultProxy { addr, faults, stop }
    }

    /// A URL like `base` (a postgres:// URL of the real server) but through the proxy.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.addr.port()
        )
    }

    /// Closes every open connection (both sides).
    pub fn cut_all(&self) {
        let mut generation = self.faults.generation.lock().unwrap();
        generation.cancel();
        *generation = CancellationToken::new();
    }

    /// Starts or ends a black hole: bytes are held, connections hang.
    pub fn blackhole(&self, on: bool) {
        self.faults.blackhole.store(on, Ordering::SeqCst);
        if !on {
            self.faults.resumed.notify_waiters();
        }
    }

    pub fn latency(&self, delay: Duration) {
        self.faults
            .latency_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn cut_after_commit(&self, on: bool) {
        self.faults.cut_after_commit.store(on, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut_all();
    }
}

async fn wait_open(faults: &Faults) {
    while faults.blackhole.load(Ordering::SeqCst) {
        let resumed = faults.resumed.notified();
        if !faults.blackhole.load(Ordering::SeqCst) {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), resumed).await;
    }
}

async fn relay(
    client: TcpStream,
    target: SocketAddr,
    faults: Arc<Faults>,
    cut: CancellationToken,
    stop: CancellationToken,
) {
    let work = async {
        wait_open(&faults).await;
        let Ok(server) = TcpStream::connect(target).await else {
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let upstream = pump(client_read, server_write, &faults, true);
        let downstream = pump(server_read, client_write, &faults, false);
        // Either direction ending (or a COMMIT cut) closes both.
        tokio::select! {
            () = upstream => {},
            () = downstream => {},
        }
    };
    tokio::select! {
        () = work => {},
        () = cut.cancelled() => {},
        () = stop.cancelled() => {},
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: &Faults,
    to_server: bool,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        wait_open(faults).await;
        let delay = faults.latency_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
        if to_server
            && faults.cut_after_commit.load(Ordering::SeqCst)
            && buffer[..n].windows(6).any(|w| w == b"COMMIT")
        {
            // The server has the COMMIT; its answer will never reach the gateway.
            let _ = to.flush().await;
            return;
        }
    }
}
