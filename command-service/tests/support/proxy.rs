//! A TCP proxy the test controls, to cut one service's link to the broker without
//! touching the shared broker.

use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub(crate) struct TcpProxy {
    pub port: u16,
    open: Arc<watch::Sender<bool>>,
}

impl TcpProxy {
    pub(crate) async fn start(upstream: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, _) = watch::channel(true);
        let open = Arc::new(open);
        let gate = Arc::clone(&open);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !*gate.borrow() {
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
        Self { port, open }
    }

    /// Drops every connection and refuses new ones.
    pub(crate) fn cut(&self) {
        self.open.send_replace(false);
    }

    pub(crate) fn restore(&self) {
        self.open.send_replace(true);
    }
}
