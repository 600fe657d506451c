//! A TCP proxy the test controls, between its services and a shared server: cutting it
//! is an outage for those services alone, and the server itself is never stopped.

use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::servers::Server;

/// What the test wants of the proxy right now.
#[derive(Debug, Clone, Copy)]
struct Gate {
    open: bool,
    /// Bumped to drop the connections open so far.
    generation: u64,
}

/// Forwards every connection to its upstream until cut; stops when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    pub port: u16,
    upstream: Option<Server>,
    gate: Arc<watch::Sender<Gate>>,
    acceptor: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`
    /// (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        Self::listen(upstream.to_owned(), None).await
    }

    /// A proxy in front of one of the shared servers; [`TcpProxy::url`] reaches it.
    pub async fn to(server: Server) -> Self {
        Self::listen(server.address(), Some(server)).await
    }

    async fn listen(upstream: String, server: Option<Server>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|error| panic!("no free local port for a proxy: {error}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("the proxy's address: {error}"))
            .port();
        let gate = Arc::new(
            watch::channel(Gate {
                open: true,
                generation: 0,
            })
            .0,
        );
        let acceptor = tokio::spawn(forward(listener, upstream, Arc::clone(&gate)));
        Self {
            port,
            upstream: server,
            gate,
            acceptor,
        }
    }

    /// The server's URL through this proxy (a proxy made by [`TcpProxy::to`]).
    pub fn url(&self) -> String {
        match self.upstream {
            Some(server) => server.url_via(self.port),
            None => panic!("a proxy started on an address has no server URL"),
        }
    }

    /// Drops every open connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.gate.send_modify(|gate| gate.open = false);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.gate.send_modify(|gate| gate.open = true);
    }

    /// Drops every open connection, and goes on accepting new ones.
    pub fn drop_connections(&self) {
        self.gate.send_modify(|gate| gate.generation += 1);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.acceptor.abort();
    }
}

async fn forward(listener: TcpListener, upstream: String, gate: Arc<watch::Sender<Gate>>) {
    while let Ok((mut client, _)) = listener.accept().await {
        let Gate { open, generation } = *gate.borrow();
        if !open {
            // Refused: the connection is dropped at once.
            continue;
        }
        let mut changes = gate.subscribe();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(&upstream).await else {
                return;
            };
            tokio::select! {
                _ = copy_bidirectional(&mut client, &mut server) => {}
                _ = changes.wait_for(|gate| !gate.open || gate.generation != generation) => {}
            }
        });
    }
}
