//! Serving within connection limits, on a real port: slow or idle clients are cut off,
//! excess requests are shed, and shutdown still drains what is in flight.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure here is the test's failure"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::Value;
use service_kit::http::{ConnectionLimits, serve_with_limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Requests to `/slow` wait for a permit of `release`; `entered` counts them.
#[derive(Clone)]
struct Gate {
    entered: Arc<AtomicUsize>,
    release: Arc<Semaphore>,
}

impl Gate {
    async fn until_entered(&self, count: usize) {
        let started = Instant::now();
        while self.entered.load(Ordering::SeqCst) < count {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "requests never arrived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn slow(State(gate): State<Gate>) -> &'static str {
    gate.entered.fetch_add(1, Ordering::SeqCst);
    gate.release.acquire().await.unwrap().forget();
    "slow"
}

struct Server {
    addr: SocketAddr,
    gate: Gate,
    shutdown: CancellationToken,
    served: JoinHandle<std::io::Result<()>>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn spawn(limits: ConnectionLimits) -> Server {
    let gate = Gate {
        entered: Arc::new(AtomicUsize::new(0)),
        release: Arc::new(Semaphore::new(0)),
    };
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/health/live", get(|| async { "ok" }))
        .route("/slow", get(slow))
        .with_state(gate.clone());
    let listener = service_kit::http::bind("127.0.0.1", 0).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let served = tokio::spawn(async move { serve_with_limits(listener, app, stop, &limits).await });
    Server {
        addr,
        gate,
        shutdown,
        served,
    }
}

fn limits(
    header_timeout_secs: u64,
    max_connections: usize,
    max_in_flight: usize,
) -> ConnectionLimits {
    ConnectionLimits {
        http_header_timeout_secs: header_timeout_secs,
        http_max_connections: max_connections,
        http_max_in_flight: max_in_flight,
    }
}

const GET_OK: &[u8] = b"GET /ok HTTP/1.1\r\nHost: test\r\n\r\n";

/// Reads one response whose body is `ok` (the `/ok` route).
async fn read_ok(stream: &mut TcpStream) {
    let mut received = Vec::new();
    let mut buffer = [0_u8; 1024];
    while !received.ends_with(b"\r\n\r\nok") {
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(read > 0, "closed before the response: {received:?}");
        received.extend_from_slice(&buffer[..read]);
    }
    assert!(received.starts_with(b"HTTP/1.1 200"));
}

/// How long the server took to close `stream`, reading within `patience`.
async fn closed_after(stream: &mut TcpStream, patience: Duration) -> Duration {
    let started = Instant::now();
    let mut buffer = [0_u8; 1024];
    loop {
        match tokio::time::timeout(patience, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection was still open after {patience:?}"),
        }
    }
}

#[tokio::test]
async fn a_connection_that_sends_half_a_header_is_closed_after_the_timeout() {
    let server = spawn(limits(1, 100, 100)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /ok HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    let waited = closed_after(&mut stream, Duration::from_secs(5)).await;
    assert!(
        waited >= Duration::from_millis(900),
        "closed too early: {waited:?}"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_timeout() {
    let server = spawn(limits(1, 100, 100)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let waited = closed_after(&mut stream, Duration::from_secs(5)).await;
    assert!(
        waited >= Duration::from_millis(900),
        "closed too early: {waited:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let server = spawn(limits(1, 100, 100)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(GET_OK).await.unwrap();
    read_ok(&mut stream).await;
    stream.write_all(GET_OK).await.unwrap();
    read_ok(&mut stream).await;
    let waited = closed_after(&mut stream, Duration::from_secs(5)).await;
    assert!(
        waited >= Duration::from_millis(900),
        "closed too early: {waited:?}"
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let server = spawn(limits(30, 2, 100)).await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    for stream in [&mut first, &mut second] {
        stream.write_all(GET_OK).await.unwrap();
        read_ok(stream).await;
    }
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third.write_all(GET_OK).await.unwrap();
    let mut buffer = [0_u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut buffer))
            .await
            .is_err(),
        "a third connection was served while two were open"
    );
    drop(first);
    tokio::time::timeout(Duration::from_secs(5), read_ok(&mut third))
        .await
        .unwrap();
}

#[tokio::test]
async fn requests_beyond_the_in_flight_limit_get_503_with_retry_after() {
    let server = spawn(limits(30, 100, 2)).await;
    let client = reqwest::Client::new();
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(client.get(server.url("/slow")).send()))
        .collect();
    server.gate.until_entered(2).await;

    let shed = client.get(server.url("/ok")).send().await.unwrap();
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    assert_eq!(shed.headers()["content-type"], "application/problem+json");
    let problem: Value = shed.json().await.unwrap();
    assert_eq!(problem["code"], "service_unavailable");

    let probe = client.get(server.url("/health/live")).send().await.unwrap();
    assert_eq!(probe.status(), 200, "health probes are never shed");

    server.gate.release.add_permits(2);
    for request in held {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    let after = client.get(server.url("/ok")).send().await.unwrap();
    assert_eq!(after.status(), 200);
}

#[tokio::test]
async fn shutdown_finishes_a_slow_request_in_flight_then_returns() {
    let server = spawn(ConnectionLimits::default()).await;
    let client = reqwest::Client::new();
    let in_flight = tokio::spawn(client.get(server.url("/slow")).send());
    server.gate.until_entered(1).await;

    server.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "still accepting connections after shutdown"
    );
    assert!(
        !server.served.is_finished(),
        "returned before the request finished"
    );

    server.gate.release.add_permits(1);
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "slow");
    tokio::time::timeout(Duration::from_secs(5), server.served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
