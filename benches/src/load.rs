//! The load generator: N keep-alive connections (or a new connection per
//! request), closed loop or open loop at a fixed rate, latencies in an HDR
//! histogram.
//!
//! Latency of an open-loop request is measured from the moment it was due,
//! not from when it was sent, so a stalled server shows up in the tail
//! instead of silently lowering the offered rate (coordinated omission).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, StatusCode};
use kakehashi_interfaces::envelope::{open_answer, EnvelopeContext};
use kakehashi_interfaces::{OrgId, QueryResponse, QueryStatus, ReplyKeyPair};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::client::{Conn, Protocol, Reply, Target};
use crate::setup::Codes;

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// `GET /v1/whoami`: TLS, admission and routing, nothing stored.
    Whoami,
    /// A permitted, auto-answered query: the full pipeline with a durable record.
    Query,
    /// A query under a flow that is not on the list: refused (and recorded).
    Refused,
    /// A new TCP + full TLS handshake (no resumption) for every `GET /v1/whoami`.
    Handshake,
}

impl Scenario {
    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Whoami => "whoami",
            Scenario::Query => "query",
            Scenario::Refused => "refused",
            Scenario::Handshake => "handshake",
        }
    }
}

/// Everything a query request needs: persons, reply keys, whom to ask.
pub struct QueryPlan {
    requester: OrgId,
    provider: OrgId,
    codes: Vec<String>,
    /// Generated before the run: making an X25519 key per request would put
    /// the client's own key generation into the measured loop.
    keys: Vec<(ReplyKeyPair, String)>,
    open_every: u64,
}

impl QueryPlan {
    /// A plan over `codes` with `key_pool` reply key pairs; every
    /// `open_every`-th answer is opened with its private key.
    pub fn new(codes: &Codes, key_pool: usize, open_every: u64) -> Result<QueryPlan> {
        if codes.requester_codes.is_empty() {
            bail!("no person codes: run setup first");
        }
        let keys = (0..key_pool.max(1))
            .map(|_| {
                let k = ReplyKeyPair::generate();
                let b64 = k.public().to_base64url();
                (k, b64)
            })
            .collect();
        Ok(QueryPlan {
            requester: OrgId::new(codes.requester.clone()).map_err(|e| anyhow!("{e}"))?,
            provider: OrgId::new(codes.provider.clone()).map_err(|e| anyhow!("{e}"))?,
            codes: codes.requester_codes.clone(),
            keys,
            open_every: open_every.max(1),
        })
    }
}

/// A request to send and how to judge its answer.
pub struct Workload {
    scenario: Scenario,
    plan: Option<QueryPlan>,
    opened: AtomicU64,
}

enum Verdict {
    Ok,
    /// Counted as an error (e.g. 429, 5xx); the run goes on.
    Unexpected(String),
    /// Proves the pipeline wrong (an envelope that does not open): the run fails.
    Fatal(String),
}

struct Req {
    method: Method,
    path: &'static str,
    body: Bytes,
    key: usize,
}

impl Workload {
    /// `whoami` and `handshake` need no plan; `query` and `refused` do.
    pub fn new(scenario: Scenario, plan: Option<QueryPlan>) -> Result<Workload> {
        if matches!(scenario, Scenario::Query | Scenario::Refused) && plan.is_none() {
            bail!(
                "the {} scenario needs person codes (setup)",
                scenario.name()
            );
        }
        Ok(Workload {
            scenario,
            plan,
            opened: AtomicU64::new(0),
        })
    }

    /// The scenario.
    pub fn scenario(&self) -> Scenario {
        self.scenario
    }

    /// Envelopes opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn request(&self, i: u64) -> Req {
        let get = |path| Req {
            method: Method::GET,
            path,
            body: Bytes::new(),
            key: 0,
        };
        let Some(plan) = &self.plan else {
            return get("/v1/whoami");
        };
        let flow = match self.scenario {
            Scenario::Query => "F-0120",
            Scenario::Refused => "F-9999",
            Scenario::Whoami | Scenario::Handshake => return get("/v1/whoami"),
        };
        // Spread requests over persons (Fibonacci hashing) so the database
        // sees scattered keys, as with many terminals, not one hot row.
        let person =
            &plan.codes[(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16) as usize % plan.codes.len()];
        let key = (i % plan.keys.len() as u64) as usize;
        let body = serde_json::json!({
            "flow_id": flow,
            "procedure": "premium-calculation",
            "provider": plan.provider.as_str(),
            "person": person,
            "items": ["local_tax.income"],
            "reply_key": plan.keys[key].1,
        })
        .to_string();
        Req {
            method: Method::POST,
            path: "/v1/queries",
            body: Bytes::from(body),
            key,
        }
    }

    fn check(&self, i: u64, req: &Req, reply: &Reply) -> Verdict {
        let unexpected = || {
            let body = String::from_utf8_lossy(&reply.body);
            Verdict::Unexpected(format!(
                "{} {}",
                reply.status,
                body.chars().take(160).collect::<String>()
            ))
        };
        match self.scenario {
            Scenario::Whoami | Scenario::Handshake => {
                if reply.status == StatusCode::OK {
                    Verdict::Ok
                } else {
                    unexpected()
                }
            }
            Scenario::Refused => {
                if reply.status == StatusCode::FORBIDDEN
                    && contains(&reply.body, b"not_on_flow_list")
                {
                    Verdict::Ok
                } else {
                    unexpected()
                }
            }
            Scenario::Query => {
                if reply.status != StatusCode::OK || !contains(&reply.body, b"\"provided\"") {
                    return unexpected();
                }
                match &self.plan {
                    Some(plan) if i.is_multiple_of(plan.open_every) => {
                        match self.open(plan, req, reply) {
                            Ok(()) => {
                                self.opened.fetch_add(1, Ordering::Relaxed);
                                Verdict::Ok
                            }
                            Err(e) => Verdict::Fatal(format!("request {i}: {e:#}")),
                        }
                    }
                    _ => Verdict::Ok,
                }
            }
        }
    }

    /// Opens the sealed answer with the query's private key and checks it
    /// carries the asked item: proof that the broker did the real work.
    fn open(&self, plan: &QueryPlan, req: &Req, reply: &Reply) -> Result<()> {
        let response: QueryResponse =
            serde_json::from_slice(&reply.body).context("the answer is not a QueryResponse")?;
        if response.status != QueryStatus::Provided {
            bail!("status {}", response.status);
        }
        let (keys, _) = &plan.keys[req.key];
        if response.permit.claims.reply_key_sha256 != keys.public().sha256_hex() {
            bail!("the permit names another reply key");
        }
        let envelope = response.envelope.as_ref().context("no envelope")?;
        let context = EnvelopeContext {
            query_id: response.query_id.clone(),
            requester: plan.requester.clone(),
            provider: plan.provider.clone(),
        };
        let payload = open_answer(keys, &context, envelope)
            .map_err(|e| anyhow!("the envelope does not open: {e}"))?;
        if !payload
            .items
            .keys()
            .any(|k| k.as_str() == "local_tax.income")
        {
            bail!("the opened answer lacks local_tax.income");
        }
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// How to drive the target.
#[derive(Clone)]
pub struct RunConfig {
    /// Where.
    pub target: Target,
    /// TLS client config (resumption disabled for `handshake`).
    pub tls: TlsConnector,
    /// HTTP version.
    pub protocol: Protocol,
    /// Connections (in `handshake`: concurrent connect-request-close loops).
    pub connections: usize,
    /// Requests in flight per h2 connection (1 for HTTP/1.1).
    pub streams: usize,
    /// Measure for this long (after the warm-up) …
    pub duration: Option<Duration>,
    /// … or send this many requests.
    pub count: Option<u64>,
    /// Unmeasured time at the start (duration mode).
    pub warmup: Duration,
    /// Open loop: this many requests per second in total; closed loop if `None`.
    pub rate: Option<f64>,
}

/// What one run measured.
pub struct Measured {
    /// Answers judged correct inside the measured window.
    pub ok: u64,
    /// Wrong answers and transport errors (whole run).
    pub errors: u64,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// Length of the measured window.
    pub window: Duration,
    /// Latency of correct answers, in microseconds.
    pub hist: Histogram<u64>,
}

struct Shared {
    workload: Arc<Workload>,
    config: RunConfig,
    start: Instant,
    record_from: Instant,
    end: Option<Instant>,
    issued: AtomicU64,
    stop: AtomicBool,
    fatal: Mutex<Option<String>>,
    workers: u64,
}

struct WorkerStats {
    ok: u64,
    errors: u64,
    samples: Vec<String>,
    hist: Histogram<u64>,
    last_done: Instant,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 10 min at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

/// Opens the connections, runs the workload and merges the workers' results.
/// Fails if an envelope does not open, or if no connection can be opened.
pub async fn run(workload: Arc<Workload>, config: RunConfig) -> Result<Measured> {
    if config.duration.is_none() && config.count.is_none() {
        bail!("give a duration or a count");
    }
    let handshake = workload.scenario() == Scenario::Handshake;
    let streams = if config.protocol == Protocol::Http2 && !handshake {
        config.streams.max(1)
    } else {
        1
    };

    // Connect everything before the clock starts: connection set-up is not
    // what the keep-alive scenarios measure.
    let mut senders: Vec<Option<Conn>> = Vec::new();
    if handshake {
        senders.resize_with(config.connections, || None);
    } else {
        let mut set = JoinSet::new();
        for _ in 0..config.connections {
            let (target, tls, protocol) =
                (config.target.clone(), config.tls.clone(), config.protocol);
            set.spawn(async move { Conn::connect(&target, &tls, protocol).await });
        }
        while let Some(joined) = set.join_next().await {
            let conn = joined.context("connect task")??;
            for _ in 1..streams {
                senders.push(conn.clone_stream());
            }
            senders.push(Some(conn));
        }
    }

    let start = Instant::now();
    let (record_from, end) = match config.duration {
        Some(d) => (start + config.warmup, Some(start + config.warmup + d)),
        None => (start, None),
    };
    let shared = Arc::new(Shared {
        workload,
        start,
        record_from,
        end,
        issued: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        fatal: Mutex::new(None),
        workers: senders.len() as u64,
        config,
    });
    let mut set = JoinSet::new();
    for (w, conn) in senders.into_iter().enumerate() {
        let shared = shared.clone();
        set.spawn(async move { worker(shared, w as u64, conn).await });
    }
    let mut total = WorkerStats {
        ok: 0,
        errors: 0,
        samples: Vec::new(),
        hist: histogram(),
        last_done: start,
    };
    while let Some(joined) = set.join_next().await {
        let stats = joined.context("worker task")?;
        total.ok += stats.ok;
        total.errors += stats.errors;
        for s in stats.samples {
            if total.samples.len() < 5 && !total.samples.contains(&s) {
                total.samples.push(s);
            }
        }
        total
            .hist
            .add(&stats.hist)
            .map_err(|e| anyhow!("merge histograms: {e}"))?;
        total.last_done = total.last_done.max(stats.last_done);
    }
    if let Some(fatal) = shared.fatal.lock().map_err(|_| anyhow!("poisoned"))?.take() {
        bail!("the run failed: {fatal}");
    }
    let window = match end {
        Some(end) => end - record_from,
        None => total.last_done - start,
    };
    Ok(Measured {
        ok: total.ok,
        errors: total.errors,
        error_samples: total.samples,
        window,
        hist: total.hist,
    })
}

async fn worker(shared: Arc<Shared>, w: u64, mut conn: Option<Conn>) -> WorkerStats {
    let cfg = &shared.config;
    let handshake = shared.workload.scenario() == Scenario::Handshake;
    let mut stats = WorkerStats {
        ok: 0,
        errors: 0,
        samples: Vec::new(),
        hist: histogram(),
        last_done: shared.start,
    };
    let mut slot = 0u64;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        // Open loop: this worker's k-th request is due at start + (k·W + w)/R.
        let due = match cfg.rate {
            Some(rate) => {
                let at = shared.start
                    + Duration::from_secs_f64((slot * shared.workers + w) as f64 / rate);
                slot += 1;
                if shared.end.is_some_and(|end| at >= end) {
                    break;
                }
                tokio::time::sleep_until(at).await;
                // Waiting for the server past the due time counts (that is the
                // coordinated-omission correction); the timer waking us up to a
                // millisecond late while idle does not.
                if stats.last_done <= at {
                    Instant::now()
                } else {
                    at
                }
            }
            None => {
                let now = Instant::now();
                if shared.end.is_some_and(|end| now >= end) {
                    break;
                }
                now
            }
        };
        let i = shared.issued.fetch_add(1, Ordering::Relaxed);
        if cfg.count.is_some_and(|c| i >= c) {
            break;
        }
        let req = shared.workload.request(i);
        let result = if handshake {
            match Conn::connect(&cfg.target, &cfg.tls, cfg.protocol).await {
                Ok(mut c) => c.send(req.method.clone(), req.path, req.body.clone()).await,
                Err(e) => Err(e),
            }
        } else {
            match conn.as_mut() {
                Some(c) => c.send(req.method.clone(), req.path, req.body.clone()).await,
                None => Err(anyhow!("no connection")),
            }
        };
        let done = Instant::now();
        stats.last_done = done;
        let measured = due >= shared.record_from && shared.end.is_none_or(|end| done <= end);
        let problem = match result {
            Ok(reply) => match shared.workload.check(i, &req, &reply) {
                Verdict::Ok => {
                    if measured {
                        stats.ok += 1;
                        let micros = u64::try_from((done - due).as_micros()).unwrap_or(u64::MAX);
                        stats.hist.saturating_record(micros.max(1));
                    }
                    None
                }
                Verdict::Unexpected(msg) => Some(msg),
                Verdict::Fatal(msg) => {
                    if let Ok(mut f) = shared.fatal.lock() {
                        f.get_or_insert(msg);
                    }
                    shared.stop.store(true, Ordering::Relaxed);
                    break;
                }
            },
            Err(e) => Some(format!("{e:#}")),
        };
        if let Some(msg) = problem {
            stats.errors += 1;
            if stats.samples.len() < 3 {
                stats.samples.push(msg);
            }
            // A keep-alive connection the server closed is replaced, after a
            // pause so a down server is not hammered.
            if !handshake && !conn.as_ref().is_some_and(Conn::is_open) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                conn = Conn::connect(&cfg.target, &cfg.tls, cfg.protocol)
                    .await
                    .ok();
            }
        }
    }
    stats
}
