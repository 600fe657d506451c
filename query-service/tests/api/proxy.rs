//! A TCP proxy the test controls, to cut the query service's link to the broker
//! without touching the shared broker.

#![expect(
    clippy::unwrap_used,
    reason = "test harness: a failure here is the test's failure"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub(crate) struct TcpProxy {
    pub port: u16,
    open: Arc<watch::Sender<bool>>,
    refused: Arc<AtomicUsize>,
}

impl TcpProxy {
    pub(crate) async fn start(upstream: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(watch::channel(true).0);
        let gate = Arc::clone(&open);
        let refused = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&refused);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*gate.borrow() {
                    counter.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let mut closed = gate.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = closed.wait_for(|open| !open) => {}
                    }
                });
            }
        });
        Self {
            port,
            open,
            refused,
        }
    }

    /// Drops every connection and refuses new ones.
    pub(crate) fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Connections refused while cut: the attempts of whoever is behind the proxy.
    pub(crate) fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }

    pub(crate) fn restore(&self) {
        self.open.send_replace(true);
    }
}
