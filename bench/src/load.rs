//! HTTP load on the command service over plain HTTP/1.1 keep-alive connections, one
//! per client: a closed loop (each client waits for its answer) and an open loop (a
//! fixed arrival rate, latency counted from when a request was due, with lag probes
//! against the query service).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use crate::stats::{Sample, micros};

const CREDIT_BODY: &[u8] = br#"{"amount": "1.00"}"#;

/// A service a load is sent to, and the bearer token it sends.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    authorization: HeaderValue,
}

impl Target {
    pub(crate) fn new(addr: SocketAddr, token: &str) -> anyhow::Result<Self> {
        let authorization = HeaderValue::try_from(format!("Bearer {token}"))
            .context("the token is not a valid header value")?;
        Ok(Self {
            addr,
            authorization,
        })
    }
}

/// One HTTP/1.1 connection.
#[derive(Debug)]
pub(crate) struct Conn {
    sender: SendRequest<Full<Bytes>>,
    authorization: HeaderValue,
}

impl Conn {
    pub(crate) async fn open(target: &Target) -> anyhow::Result<Self> {
        let addr = target.addr;
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake failed")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            authorization: target.authorization.clone(),
        })
    }

    pub(crate) async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "127.0.0.1")
            .header(header::AUTHORIZATION, self.authorization.clone());
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(body.unwrap_or_default()))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

impl Conn {
    /// `POST path`, failing unless the answer has `status`; returns the answer's body.
    pub(crate) async fn post_expecting(
        &mut self,
        path: &str,
        body: Option<Bytes>,
        status: u16,
    ) -> anyhow::Result<Bytes> {
        let (answered, reply) = self.request(Method::POST, path, body).await?;
        if answered != status {
            bail!(
                "POST {path}: HTTP {answered}: {}",
                String::from_utf8_lossy(&reply)
            );
        }
        Ok(reply)
    }

    /// Opens account `id` with `initial_balance` MAD and activates it.
    pub(crate) async fn open_account(
        &mut self,
        id: &str,
        initial_balance: &str,
    ) -> anyhow::Result<()> {
        let open = format!(
            r#"{{"id": "{id}", "initial_balance": "{initial_balance}", "currency": "MAD"}}"#
        );
        self.post_expecting("/accounts", Some(Bytes::from(open)), 201)
            .await?;
        self.post_expecting(&format!("/accounts/{id}/activate"), None, 200)
            .await?;
        Ok(())
    }
}

/// The accounts a load picks from, uniformly at random.
#[derive(Debug, Clone)]
pub(crate) struct Accounts {
    ids: Arc<Vec<String>>,
    credit_paths: Arc<Vec<String>>,
}

impl Accounts {
    /// The seeded accounts numbered `first..first + count` (see `pg::account_id`).
    pub(crate) fn seeded(first: u64, count: u64) -> anyhow::Result<Self> {
        Self::new((first..first + count).map(crate::pg::account_id).collect())
    }

    pub(crate) fn new(ids: Vec<String>) -> anyhow::Result<Self> {
        if ids.is_empty() {
            bail!("no accounts to load");
        }
        let credit_paths = ids
            .iter()
            .map(|id| format!("/accounts/{id}/credit"))
            .collect();
        Ok(Self {
            ids: Arc::new(ids),
            credit_paths: Arc::new(credit_paths),
        })
    }

    /// The accounts' ids.
    pub(crate) fn ids(&self) -> &[String] {
        &self.ids
    }

    fn pick(&self, rng: &mut StdRng) -> usize {
        rng.random_range(0..self.ids.len())
    }
}

/// Credits by `clients` closed-loop clients; requests started within the window after
/// `warmup` count. Non-200 answers are errors.
pub(crate) async fn closed_loop(
    target: &Target,
    accounts: &Accounts,
    clients: usize,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Sample> {
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        connections.push(Conn::open(target).await?);
    }
    let start = Instant::now();
    let window_start = start + warmup;
    let end = window_start + measure;
    let body = Bytes::from_static(CREDIT_BODY);
    let mut workers = JoinSet::new();
    for mut conn in connections {
        let target = target.clone();
        let accounts = accounts.clone();
        let body = body.clone();
        workers.spawn(async move {
            let mut rng = StdRng::from_os_rng();
            let mut latencies = Vec::with_capacity(8192);
            let mut errors = 0usize;
            let mut first_error: Option<String> = None;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let path = &accounts.credit_paths[accounts.pick(&mut rng)];
                let outcome = conn.request(Method::POST, path, Some(body.clone())).await;
                let counted = began >= window_start;
                match outcome {
                    Ok((200, _)) => {
                        if counted {
                            latencies.push(micros(began.elapsed()));
                        }
                    }
                    Ok((status, body)) => {
                        if counted {
                            errors += 1;
                            first_error.get_or_insert_with(|| {
                                format!("HTTP {status}: {}", String::from_utf8_lossy(&body))
                            });
                        }
                    }
                    Err(error) => {
                        if counted {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{error:#}"));
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        match Conn::open(&target).await {
                            Ok(fresh) => conn = fresh,
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                }
            }
            (latencies, errors, first_error)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    while let Some(joined) = workers.join_next().await {
        let (mine, my_errors, my_first) = joined.context("load worker panicked")?;
        latencies.extend(mine);
        errors += my_errors;
        if first_error.is_none() {
            first_error = my_first;
        }
    }
    let mut sample = Sample::from_latencies(latencies, measure, errors);
    sample.note = first_error.map(|e| format!("first error: {}", truncate(&e, 160)));
    Ok(sample)
}

/// `GET path` by one closed-loop client; requests started within the window after
/// `warmup` count. Non-200 answers are errors.
pub(crate) async fn one_client_get(
    target: &Target,
    path: &str,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Sample> {
    let mut conn = Conn::open(target).await?;
    let window_start = Instant::now() + warmup;
    let end = window_start + measure;
    let mut latencies = Vec::with_capacity(8192);
    let mut errors = 0;
    let mut first_error = None;
    loop {
        let began = Instant::now();
        if began >= end {
            break;
        }
        let (status, body) = conn.request(Method::GET, path, None).await?;
        if began < window_start {
            continue;
        }
        if status == 200 {
            latencies.push(micros(began.elapsed()));
        } else {
            errors += 1;
            first_error.get_or_insert_with(|| {
                format!("HTTP {status}: {}", String::from_utf8_lossy(&body))
            });
        }
    }
    let mut sample = Sample::from_latencies(latencies, measure, errors);
    sample.note = first_error.map(|e| format!("first error: {}", truncate(&e, 160)));
    Ok(sample)
}

/// Where and how often to check that acknowledged commands became visible.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub query_base: String,
    pub client: reqwest::Client,
    /// Probe one command in this many.
    pub every: usize,
    /// Longest wait for visibility before a probe counts as timed out.
    pub timeout: Duration,
}

/// What an open-loop run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct OpenLoop {
    /// Acknowledgement latency from when each request was due.
    pub ack: Sample,
    /// Commands acknowledged per second, from the first arrival to the last answer.
    pub achieved_rate: f64,
    /// Acknowledged → visible in the query service, µs, sorted.
    pub lags_us: Vec<u64>,
    pub probes_timed_out: usize,
}

struct Job {
    due: Instant,
    index: usize,
}

/// Credits arriving at `rate` per second for `duration`, served by `connections`
/// connections; requests wait in line when all are busy.
pub(crate) async fn open_loop(
    target: &Target,
    accounts: &Accounts,
    rate: f64,
    duration: Duration,
    connections: usize,
    probe: Option<Probe>,
) -> anyhow::Result<OpenLoop> {
    if !(rate.is_finite() && rate > 0.0) {
        bail!("invalid arrival rate {rate}");
    }
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Conn::open(target).await?);
    }
    let (jobs, queue) = mpsc::channel::<Job>(1 << 20);
    let queue = Arc::new(Mutex::new(queue));
    let lags = Arc::new(std::sync::Mutex::new((Vec::<u64>::new(), 0usize)));
    let probes = Arc::new(Mutex::new(JoinSet::new()));
    let body = Bytes::from_static(CREDIT_BODY);
    let mut workers = JoinSet::new();
    for mut conn in conns {
        let target = target.clone();
        let queue = queue.clone();
        let accounts = accounts.clone();
        let body = body.clone();
        let probe = probe.clone();
        let lags = lags.clone();
        let probes = probes.clone();
        workers.spawn(async move {
            let mut rng = StdRng::from_os_rng();
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut last_answer: Option<Instant> = None;
            loop {
                let job = queue.lock().await.recv().await;
                let Some(job) = job else { break };
                let account = accounts.pick(&mut rng);
                let path = &accounts.credit_paths[account];
                match conn.request(Method::POST, path, Some(body.clone())).await {
                    Ok((200, answer)) => {
                        let acked = Instant::now();
                        last_answer = Some(acked);
                        latencies.push(micros(acked.duration_since(job.due)));
                        if let Some(probe) = &probe
                            && job.index % probe.every.max(1) == 0
                            && let Some(version) = serde_json::from_slice::<Value>(&answer)
                                .ok()
                                .and_then(|v| v["version"].as_u64())
                        {
                            let probe = probe.clone();
                            let id = accounts.ids[account].clone();
                            let lags = lags.clone();
                            probes.lock().await.spawn(async move {
                                let lag = visible_after(&probe, &id, version, acked).await;
                                if let Ok(mut lags) = lags.lock() {
                                    match lag {
                                        Some(lag) => lags.0.push(micros(lag)),
                                        None => lags.1 += 1,
                                    }
                                }
                            });
                        }
                    }
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        if let Ok(fresh) = Conn::open(&target).await {
                            conn = fresh;
                        }
                    }
                }
            }
            (latencies, errors, last_answer)
        });
    }
    let start = Instant::now();
    let end = start + duration;
    let mut index = 0usize;
    loop {
        let due = start + Duration::from_secs_f64(index as f64 / rate);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        if jobs.send(Job { due, index }).await.is_err() {
            break;
        }
        index += 1;
    }
    drop(jobs);
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut last_answer = start;
    while let Some(joined) = workers.join_next().await {
        let (mine, my_errors, my_last) = joined.context("load worker panicked")?;
        latencies.extend(mine);
        errors += my_errors;
        last_answer = last_answer.max(my_last.unwrap_or(start));
    }
    let answered = latencies.len();
    let mut pending = std::mem::take(&mut *probes.lock().await);
    while pending.join_next().await.is_some() {}
    let (mut lags_us, probes_timed_out) = lags
        .lock()
        .map(|l| l.clone())
        .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
    lags_us.sort_unstable();
    Ok(OpenLoop {
        achieved_rate: answered as f64
            / last_answer
                .duration_since(start)
                .max(duration)
                .as_secs_f64(),
        ack: Sample::from_latencies(latencies, duration, errors),
        lags_us,
        probes_timed_out,
    })
}

/// Waits until the query service shows `account` at `version` or later; the time
/// from `acked` to then, or `None` past the probe's timeout.
async fn visible_after(
    probe: &Probe,
    account: &str,
    version: u64,
    acked: Instant,
) -> Option<Duration> {
    let url = format!(
        "{}/accounts/{account}?min_version={version}&wait_ms={}",
        probe.query_base,
        probe.timeout.as_millis().min(10_000)
    );
    while acked.elapsed() < probe.timeout {
        if let Ok(response) = probe.client.get(&url).send().await {
            let ok = response.status().as_u16() == 200;
            if let Ok(body) = response.json::<Value>().await
                && ok
                && body["version"].as_u64().is_some_and(|v| v >= version)
            {
                return Some(acked.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}
