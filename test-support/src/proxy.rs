//! A TCP proxy the test controls, between its services and a shared server: cutting it
//! is an outage for those services alone, and the server itself is never stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    /// Connections stay open but nothing crosses them, as with a broker that stalls or
    /// a half-open socket.
    stalled: bool,
}

/// Forwards every connection to its upstream until cut; stops when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    pub port: u16,
    upstream: Option<Server>,
    gate: Arc<watch::Sender<Gate>>,
    refused: Arc<AtomicUsize>,
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
                stalled: false,
            })
            .0,
        );
        let refused = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio::spawn(forward(
            listener,
            upstream,
            Arc::clone(&gate),
            Arc::clone(&refused),
        ));
        Self {
            port,
            upstream: server,
            gate,
            refused,
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

    /// Connections refused while cut: the attempts of whoever is behind the proxy.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }

    /// Accepts connections again (and ends a stall: the stalled connections are
    /// dropped, new ones forward again).
    pub fn restore(&self) {
        self.gate.send_modify(|gate| {
            gate.open = true;
            if gate.stalled {
                gate.stalled = false;
                gate.generation += 1;
            }
        });
    }

    /// Keeps every connection, open and new, but forwards nothing on it until
    /// [`TcpProxy::restore`]: the peer neither answers nor hangs up.
    pub fn stall(&self) {
        self.gate.send_modify(|gate| gate.stalled = true);
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

async fn forward(
    listener: TcpListener,
    upstream: String,
    gate: Arc<watch::Sender<Gate>>,
    refused: Arc<AtomicUsize>,
) {
    while let Ok((mut client, _)) = listener.accept().await {
        let Gate {
            open,
            generation,
            stalled,
        } = *gate.borrow();
        if !open {
            // Refused: the connection is dropped at once.
            refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut changes = gate.subscribe();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let ended = |gate: &Gate| !gate.open || gate.generation != generation;
            if stalled {
                // Held open, silent, until the stall ends.
                let _ = changes.wait_for(ended).await;
                return;
            }
            let Ok(mut server) = TcpStream::connect(&upstream).await else {
                return;
            };
            tokio::select! {
                _ = copy_bidirectional(&mut client, &mut server) => {}
                _ = changes.wait_for(|gate| ended(gate) || gate.stalled) => {}
            }
            if changes.borrow().stalled && !ended(&changes.borrow()) {
                let _ = changes.wait_for(ended).await;
            }
            drop((client, server));
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::TcpProxy;

    /// An upstream that echoes every connection.
    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut connection, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut reader, mut writer) = connection.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        address
    }

    /// Whether a round trip through this connection still works.
    async fn echoes(connection: &mut TcpStream) -> bool {
        let mut answer = [0_u8; 4];
        let round_trip = async {
            connection.write_all(b"ping").await?;
            connection.read_exact(&mut answer).await
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), round_trip).await,
            Ok(Ok(_))
        ) && &answer == b"ping"
    }

    /// Lets the proxy's tasks see a change of the gate.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    async fn connect(proxy: &TcpProxy) -> TcpStream {
        TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap()
    }

    #[tokio::test]
    async fn cut_drops_connections_and_refuses_new_ones_until_restored() {
        let proxy = TcpProxy::start(&echo_server().await).await;
        let mut open = connect(&proxy).await;
        assert!(echoes(&mut open).await);

        proxy.cut();
        settle().await;
        assert!(!echoes(&mut open).await, "an open connection is dropped");
        assert!(
            !echoes(&mut connect(&proxy).await).await,
            "a new one is refused"
        );

        proxy.restore();
        assert!(echoes(&mut connect(&proxy).await).await);
    }

    #[tokio::test]
    async fn dropping_connections_keeps_accepting_new_ones() {
        let proxy = TcpProxy::start(&echo_server().await).await;
        let mut open = connect(&proxy).await;
        assert!(echoes(&mut open).await);

        proxy.drop_connections();
        settle().await;
        assert!(!echoes(&mut open).await, "an open connection is dropped");
        assert!(echoes(&mut connect(&proxy).await).await);
    }
}
