//! Metrics, traces and logs as an operator sees them: a real Prometheus
//! scraping `/metrics`, an OTLP/gRPC receiver built on the official
//! protos receiving the spans, and JSON log lines carrying the trace id.
//!
//! Traces and logs need the process-global subscriber and tracer provider
//! of the real binary, so those tests run it as a child process.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::{any_value::Value as AnyValue, KeyValue},
    trace::v1::{span::SpanKind, status::StatusCode, Span},
};
use tokio::{net::TcpListener, process::Command};
use tonic::{metadata::MetadataValue, transport::server::TcpIncoming, Code, Request};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use user_service::pb::{
    user_service_client::UserServiceClient, GetUserRequest, ListUsersRequest, WatchUsersRequest,
};

use crate::helpers::{
    connect, create_request, http_get, spawn_app, spawn_child, unused_addr, ChildApp,
};

// ---------------------------------------------------------------- metrics

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let rest = rest.strip_suffix('}')?;
                    let labels = rest
                        .split("\",")
                        .filter(|kv| !kv.is_empty())
                        .filter_map(|kv| {
                            let (k, v) = kv.split_once("=\"")?;
                            Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
                        })
                        .collect();
                    (name, labels)
                }
                None => (series, HashMap::new()),
            };
            Some(Sample {
                name: name.to_owned(),
                labels,
                value,
            })
        })
        .collect()
}

/// The value of the series `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

async fn scrape(admin: SocketAddr) -> (String, Vec<Sample>) {
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let samples = parse_exposition(&body);
    (body, samples)
}

fn unary(method: &'static str) -> [(&'static str, &'static str); 3] {
    [
        ("grpc_type", "unary"),
        ("grpc_service", "user.v1.UserService"),
        ("grpc_method", method),
    ]
}

#[tokio::test]
async fn metrics_follow_go_grpc_prometheus_and_count_stream_messages() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let (_, before) = scrape(app.admin_addr).await;
    let get =
        |s: &[Sample], name: &str, labels: &[(&str, &str)]| value(s, name, labels).unwrap_or(0.0);

    client.create_user(create_request("metrics")).await.unwrap();
    let missing = client
        .get_user(GetUserRequest {
            user_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let listed = client
        .list_users(ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .collect::<Vec<_>>()
        .await
        .len();
    assert!(listed >= 1);
    // A stream the client abandons counts as Canceled.
    let mut watch = client
        .watch_users(WatchUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    drop(tokio::time::timeout(Duration::from_millis(100), watch.next()).await);
    drop(watch);

    let handled = |code: &'static str, method: &'static str, kind: &'static str| {
        [
            ("grpc_type", kind),
            ("grpc_service", "user.v1.UserService"),
            ("grpc_method", method),
            ("grpc_code", code),
        ]
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (body, after) = loop {
        let (body, after) = scrape(app.admin_addr).await;
        let canceled = handled("Canceled", "WatchUsers", "server_stream");
        if get(&after, "grpc_server_handled_total", &canceled)
            > get(&before, "grpc_server_handled_total", &canceled)
        {
            break (body, after);
        }
        assert!(Instant::now() < deadline, "no Canceled WatchUsers:\n{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let delta = |name: &str, labels: &[(&str, &str)]| {
        get(&after, name, labels) - get(&before, name, labels)
    };

    assert!(delta("grpc_server_started_total", &unary("CreateUser")) >= 1.0);
    assert!(
        delta(
            "grpc_server_handled_total",
            &handled("OK", "CreateUser", "unary")
        ) >= 1.0
    );
    assert!(
        delta(
            "grpc_server_handled_total",
            &handled("NotFound", "GetUser", "unary")
        ) >= 1.0
    );
    assert!(delta("grpc_server_msg_received_total", &unary("CreateUser")) >= 1.0);
    assert!(delta("grpc_server_msg_sent_total", &unary("CreateUser")) >= 1.0);
    let list = [
        ("grpc_type", "server_stream"),
        ("grpc_service", "user.v1.UserService"),
        ("grpc_method", "ListUsers"),
    ];
    assert!(
        delta("grpc_server_msg_sent_total", &list) >= listed as f64,
        "every streamed user is a message sent"
    );
    assert!(delta("grpc_server_msg_received_total", &list) >= 1.0);

    // Pre-created at zero: every method and code exists before any call.
    for (method, kind) in [
        ("BulkCreateUsers", "client_stream"),
        ("UserUpdates", "bidi_stream"),
    ] {
        assert!(
            value(
                &after,
                "grpc_server_handled_total",
                &handled("DataLoss", method, kind)
            )
            .is_some(),
            "{method}:\n{body}"
        );
    }
    assert!(value(
        &after,
        "grpc_server_started_total",
        &[
            ("grpc_service", "grpc.health.v1.Health"),
            ("grpc_method", "Watch"),
            ("grpc_type", "server_stream")
        ]
    )
    .is_some());

    // A real histogram: buckets from .005 to 10 and +Inf, no grpc_code.
    assert!(
        body.contains("# TYPE grpc_server_handling_seconds histogram"),
        "{body}"
    );
    let buckets: Vec<&Sample> = after
        .iter()
        .filter(|s| {
            s.name == "grpc_server_handling_seconds_bucket"
                && s.labels.get("grpc_method").map(String::as_str) == Some("CreateUser")
        })
        .collect();
    let les: Vec<&str> = buckets.iter().map(|s| s.labels["le"].as_str()).collect();
    assert_eq!(
        les,
        ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"]
    );
    assert!(buckets.iter().all(|s| !s.labels.contains_key("grpc_code")));
    assert!(
        !body.contains("grpc_server_handling_seconds{"),
        "not a summary"
    );

    // Store latency by operation and outcome.
    assert!(
        value(
            &after,
            "user_service_store_operation_duration_seconds_count",
            &[("operation", "get"), ("outcome", "not_found")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{body}"
    );
    assert!(body.contains(
        "user_service_store_operation_duration_seconds_bucket{operation=\"create\",outcome=\"ok\""
    ));

    // Process and build metrics.
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            value(&after, name, &[]).is_some_and(|v| v > 0.0),
            "{name}:\n{body}"
        );
    }
    assert_eq!(
        value(
            &after,
            "user_service_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    // The log writer never blocks a call; what it had to drop is counted.
    assert_eq!(
        value(&after, "user_service_log_lines_dropped_total", &[]),
        Some(0.0),
        "{body}"
    );
    app.stop().await;
}

// ------------------------------------------------------------- Prometheus

fn url_encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs an instant query; returns the result vector (empty while the
/// series does not exist yet).
async fn prom_query(prom: SocketAddr, query: &str) -> Vec<serde_json::Value> {
    let (status, body) =
        http_get(prom, &format!("/api/v1/query?query={}", url_encode(query))).await;
    if status != 200 {
        return Vec::new();
    }
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    json["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn result_value(result: &serde_json::Value) -> f64 {
    result["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The address Prometheus listens on, from its `msg="Listening on"
/// address=...` log line (it names the port it got for port 0).
async fn prometheus_addr(
    log: &std::path::Path,
    prometheus: &mut tokio::process::Child,
) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text
            .lines()
            .filter(|l| l.contains("msg=\"Listening on\""))
            .find_map(|l| {
                l.split_once(" address=")?
                    .1
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            });
        if let Some(addr) = found {
            return addr;
        }
        if let Ok(Some(exit)) = prometheus.try_wait() {
            panic!("prometheus exited ({exit}) before listening:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never listened:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_grpc_series() {
    let binary = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
    let found = std::process::Command::new(&binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "the `prometheus` binary is required for this test (Debian: apt-get install prometheus; or set PROMETHEUS_BIN)"
    );

    let app = spawn_app().await;
    let mut client = app.client.clone();
    for _ in 0..3 {
        client.create_user(create_request("prom")).await.unwrap();
    }
    let missing = client
        .get_user(GetUserRequest {
            user_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: user-service\n    static_configs:\n      - targets: ['{}']\n",
            app.admin_addr
        ),
    )
    .unwrap();
    // Our own Prometheus on port 0 of the loopback: one already running on
    // this machine (on :9090 or anywhere else) is neither needed nor touched.
    let log_path = dir.path().join("prometheus.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // kill_on_drop: a failing assertion below still stops this child (and
    // only this child, by its PID).
    let mut prometheus = Command::new(&binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    let prom_addr = prometheus_addr(&log_path, &mut prometheus).await;

    let handled = r#"grpc_server_handled_total{job="user-service",grpc_type="unary",grpc_service="user.v1.UserService",grpc_method="GetUser",grpc_code="NotFound"}"#;
    let created = r#"grpc_server_handled_total{job="user-service",grpc_type="unary",grpc_service="user.v1.UserService",grpc_method="CreateUser",grpc_code="OK"}"#;
    let buckets = r#"grpc_server_handling_seconds_bucket{job="user-service",grpc_type="unary",grpc_service="user.v1.UserService",grpc_method="CreateUser"}"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let not_found = prom_query(prom_addr, handled).await;
        let ok = prom_query(prom_addr, created).await;
        let buckets = prom_query(prom_addr, buckets).await;
        let ready = not_found.first().is_some_and(|r| result_value(r) >= 1.0)
            && ok.first().is_some_and(|r| result_value(r) >= 3.0)
            && buckets.len() == 12;
        if ready {
            let inf = buckets
                .iter()
                .find(|r| r["metric"]["le"] == "+Inf")
                .expect("+Inf bucket");
            assert!(result_value(inf) >= 3.0, "{inf}");
            assert!(buckets
                .iter()
                .all(|r| r["metric"].get("grpc_code").is_none()));
            break;
        }
        if Instant::now() > deadline {
            let log =
                std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
            let targets = http_get(prom_addr, "/api/v1/targets").await.1;
            panic!(
                "Prometheus never returned the series.\nNotFound: {not_found:?}\nOK: {ok:?}\nbuckets: {}\ntargets: {targets}\nlog:\n{log}",
                buckets.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The quantile dashboards compute works on what was scraped.
    let p99 = prom_query(
        prom_addr,
        r#"histogram_quantile(0.99, sum by (le) (grpc_server_handling_seconds_bucket{grpc_method="CreateUser"}))"#,
    )
    .await;
    assert!(
        p99.first().is_some_and(|r| result_value(r) > 0.0),
        "{p99:?}"
    );
    // Stop and reap the process this test started.
    prometheus.kill().await.expect("stop our prometheus");
    app.stop().await;
}

// ------------------------------------------------------- traces and logs

type Received = Arc<Mutex<Vec<(Vec<KeyValue>, Span)>>>;

/// An OTLP/gRPC trace receiver: keeps every span with its resource,
/// answering each export after `delay` (a slow collector).
#[derive(Clone, Default)]
struct Collector {
    spans: Received,
    delay: Duration,
    /// An `api-key` header every export must carry, as hosted collectors
    /// ask.
    api_key: Option<&'static str>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        tokio::time::sleep(self.delay).await;
        if let Some(key) = self.api_key {
            if request.metadata().get("api-key").is_none_or(|v| v != key) {
                return Err(tonic::Status::unauthenticated("api-key"));
            }
        }
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push((resource.clone(), span));
                }
            }
        }
        drop(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn start_collector() -> (SocketAddr, Received) {
    start_slow_collector(Duration::ZERO).await
}

async fn start_slow_collector(delay: Duration) -> (SocketAddr, Received) {
    serve_collector(Collector {
        delay,
        ..Collector::default()
    })
    .await
}

async fn serve_collector(collector: Collector) -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = Arc::clone(&collector.spans);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    (addr, spans)
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key) {
        Some(AnyValue::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The binary with its JSON log at `info`, exporting spans to
/// `otlp_endpoint` every 100 ms.
async fn start_binary(otlp_endpoint: &str) -> ChildApp {
    start_binary_with(otlp_endpoint, &[]).await
}

async fn start_binary_with(otlp_endpoint: &str, extra: &[(&str, &str)]) -> ChildApp {
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test",
        ),
        ("USER_SERVICE__LOG__LEVEL", "info"),
        ("USER_SERVICE__SHUTDOWN__DRAIN_DELAY", "100ms"),
        ("USER_SERVICE__SHUTDOWN__TIMEOUT", "2s"),
    ];
    env.extend_from_slice(extra);
    spawn_child(&env).await
}

/// The span pipeline's counters on `/metrics`: (ended, exported, failed).
async fn span_counts(admin: SocketAddr) -> (f64, f64, f64) {
    let (body, samples) = scrape(admin).await;
    let get = |name, labels: &[(&str, &str)]| {
        value(&samples, name, labels).unwrap_or_else(|| panic!("{name} {labels:?}:\n{body}"))
    };
    (
        get("user_service_spans_ended_total", &[]),
        get("user_service_spans_exported_total", &[("outcome", "ok")]),
        get("user_service_spans_exported_total", &[("outcome", "error")]),
    )
}

/// Polls [`span_counts`] until `done` holds (or panics after 20 s).
async fn span_counts_until(
    admin: SocketAddr,
    done: impl Fn((f64, f64, f64)) -> bool,
) -> (f64, f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counts = span_counts(admin).await;
        if done(counts) {
            return counts;
        }
        assert!(Instant::now() < deadline, "span counts stuck at {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn with_traceparent<T>(message: T, trace_id: &str, parent_id: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("00-{trace_id}-{parent_id}-01").parse().unwrap();
    request.metadata_mut().insert("traceparent", value);
    request
        .metadata_mut()
        .insert("tracestate", "test=1".parse().unwrap());
    request
}

#[tokio::test]
async fn spans_continue_the_callers_trace_and_logs_carry_its_id() {
    let (collector, received) = start_collector().await;
    let mut binary = start_binary(&format!("http://{collector}")).await;
    let channel = connect(binary.grpc_addr).await;
    let mut client = UserServiceClient::new(channel.clone());
    let admin = binary.admin_addr;

    let new_id = || uuid::Uuid::now_v7().simple().to_string();
    let (get_trace, create_trace) = (new_id(), new_id());
    let parent = &new_id()[16..];

    let missing = uuid::Uuid::now_v7().to_string();
    let status = client
        .get_user(with_traceparent(
            GetUserRequest { user_id: missing },
            &get_trace,
            parent,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let mut create = create_request("traced");
    let password = "tr4ced-secret-passw0rd".to_owned();
    create.password = password.clone();
    client
        .create_user(with_traceparent(create, &create_trace, parent))
        .await
        .unwrap();
    // Probes are not traced by default.
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(http_get(admin, "/livez").await.0, 200);

    // Spans arrive within a few batch delays.
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = received.lock().unwrap().clone();
        let has = |trace: &str, name: &str| {
            spans
                .iter()
                .any(|(_, s)| hex(&s.trace_id) == trace && s.name == name)
        };
        if has(&get_trace, "user.v1.UserService/GetUser")
            && has(&create_trace, "user.v1.UserService/CreateUser")
            && has(&create_trace, "UserStore/create")
        {
            break spans;
        }
        let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
        assert!(Instant::now() < deadline, "spans missing; got {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let (resource, get) = spans
        .iter()
        .find(|(_, s)| hex(&s.trace_id) == get_trace && s.name == "user.v1.UserService/GetUser")
        .unwrap();
    assert_eq!(attr_str(resource, "service.name"), Some("user-service"));
    assert_eq!(
        attr_str(resource, "deployment.environment.name"),
        Some("test")
    );
    assert_eq!(
        hex(&get.parent_span_id),
        parent,
        "continues the caller's span"
    );
    assert_eq!(get.kind, SpanKind::Server as i32);
    assert_eq!(attr_str(&get.attributes, "rpc.system"), Some("grpc"));
    assert_eq!(attr_str(&get.attributes, "rpc.system.name"), Some("grpc"));
    assert_eq!(
        attr_str(&get.attributes, "rpc.service"),
        Some("user.v1.UserService")
    );
    assert_eq!(attr_str(&get.attributes, "rpc.method"), Some("GetUser"));
    assert_eq!(
        attr_str(&get.attributes, "network.peer.address"),
        Some("127.0.0.1")
    );
    assert_eq!(
        attr(&get.attributes, "rpc.grpc.status_code"),
        Some(&AnyValue::IntValue(Code::NotFound as i64))
    );
    assert_eq!(
        attr_str(&get.attributes, "rpc.response.status_code"),
        Some("NOT_FOUND")
    );
    // NOT_FOUND is the client's problem: no error status on the server.
    let code = get.status.as_ref().map_or(0, |s| s.code);
    assert_ne!(code, StatusCode::Error as i32);
    assert_eq!(get.trace_state, "test=1");

    let (_, create) = spans
        .iter()
        .find(|(_, s)| {
            hex(&s.trace_id) == create_trace && s.name == "user.v1.UserService/CreateUser"
        })
        .unwrap();
    let (_, store) = spans
        .iter()
        .find(|(_, s)| hex(&s.trace_id) == create_trace && s.name == "UserStore/create")
        .unwrap();
    assert_eq!(
        store.parent_span_id, create.span_id,
        "store call is a child span"
    );

    // The pipeline's counters agree with what the collector received.
    let (ended, exported, failed) = span_counts_until(admin, |(ended, exported, _)| {
        exported >= ended && ended > 0.0
    })
    .await;
    let received_now = received.lock().unwrap().len() as f64;
    assert_eq!((ended, exported, failed), (received_now, received_now, 0.0));

    // Only our spans: no transport internals, no health probes.
    for (_, span) in &spans {
        assert!(
            span.name.starts_with("user.v1.UserService/") || span.name.starts_with("UserStore/"),
            "unexpected span {:?}",
            span.name
        );
    }

    let exit = binary.terminate(Duration::from_secs(15)).await;
    assert!(exit.success(), "{exit:?}");
    let lines = binary.log_lines();

    // Logs: every line is JSON; the finished-call line carries the trace.
    let logs: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let finished = logs
        .iter()
        .find(|l| l["message"] == "finished call" && l["grpc.method"] == "GetUser")
        .expect("a finished call line for GetUser");
    assert_eq!(finished["trace_id"], get_trace.as_str());
    assert_eq!(finished["span_id"], hex(&get.span_id).as_str());
    assert_eq!(finished["grpc.service"], "user.v1.UserService");
    assert_eq!(finished["grpc.code"], "NotFound");
    assert_eq!(finished["level"], "INFO");
    assert!(finished["grpc.time_ms"].is_f64());
    assert!(finished["peer.address"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));
    let created = logs
        .iter()
        .find(|l| l["message"] == "finished call" && l["grpc.method"] == "CreateUser")
        .expect("a finished call line for CreateUser");
    assert_eq!(created["trace_id"], create_trace.as_str());
    assert!(
        !lines.iter().any(|l| l.contains(&password)),
        "a password reached the log"
    );
}

#[tokio::test]
async fn an_unreachable_collector_neither_blocks_startup_nor_shutdown() {
    // Nothing listens on this port (and nothing can while `nowhere` lives).
    let nowhere = unused_addr();
    let started = Instant::now();
    let mut binary = start_binary(&format!("http://{}", nowhere.addr)).await;
    assert!(started.elapsed() < Duration::from_secs(15));
    let mut client = UserServiceClient::new(connect(binary.grpc_addr).await);
    client.create_user(create_request("nowhere")).await.unwrap();
    // The lost spans are counted: the call's and its store call's.
    let (ended, exported, failed) =
        span_counts_until(binary.admin_addr, |(_, _, failed)| failed >= 2.0).await;
    assert_eq!((exported, failed), (0.0, ended), "{ended}");
    let stopping = Instant::now();
    let exit = binary.terminate(Duration::from_secs(15)).await;
    assert!(exit.success(), "{exit:?}");
    let lines = binary.log_lines();
    // drain 100ms + flush budget 5s, with room for a slow machine.
    assert!(
        stopping.elapsed() < Duration::from_secs(12),
        "{:?}",
        stopping.elapsed()
    );
    assert!(lines.iter().any(|l| l.contains("\"finished call\"")));
}

#[tokio::test]
async fn spans_the_export_queue_drops_are_counted() {
    // A collector slower than the calls and a queue of 4: most spans of a
    // burst find the queue full.
    let (collector, received) = start_slow_collector(Duration::from_millis(300)).await;
    let binary = start_binary_with(
        &format!("http://{collector}"),
        &[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "4"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4"),
        ],
    )
    .await;
    let client = UserServiceClient::new(connect(binary.grpc_addr).await);
    let calls = 200;
    futures_util::stream::iter(0..calls)
        .map(|_| {
            let mut client = client.clone();
            async move {
                let missing = uuid::Uuid::now_v7().to_string();
                let status = client
                    .get_user(GetUserRequest { user_id: missing })
                    .await
                    .unwrap_err();
                assert_eq!(status.code(), Code::NotFound);
            }
        })
        .buffer_unordered(50)
        .collect::<Vec<()>>()
        .await;
    // Every call's span ended; once the queue has drained, what the
    // collector got is what was exported, and the rest was dropped.
    let (ended, exported, failed) = span_counts_until(binary.admin_addr, |(ended, exported, _)| {
        ended >= f64::from(calls) && exported > 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, exported_later, _) = span_counts(binary.admin_addr).await;
    assert!(ended >= f64::from(calls), "{ended}");
    assert_eq!(failed, 0.0);
    let delivered = received.lock().unwrap().len() as f64;
    assert_eq!(exported_later, delivered);
    let dropped = ended - exported_later;
    assert!(
        dropped > ended / 2.0,
        "ended {ended}, exported {exported} then {exported_later}: the queue of 4 should have dropped most"
    );
}

#[tokio::test]
async fn export_headers_from_the_environment_reach_the_collector_and_never_the_log() {
    let (collector, received) = serve_collector(Collector {
        api_key: Some("s=cret"),
        ..Collector::default()
    })
    .await;
    let endpoint = format!("http://{collector}");
    // The binary with these export headers, after one CreateUser (two spans).
    let created_with = |headers: &'static str, name: &'static str| {
        let endpoint = endpoint.clone();
        async move {
            let binary =
                start_binary_with(&endpoint, &[("OTEL_EXPORTER_OTLP_HEADERS", headers)]).await;
            let mut client = UserServiceClient::new(connect(binary.grpc_addr).await);
            client.create_user(create_request(name)).await.unwrap();
            binary
        }
    };
    // Percent-encoded, as OTEL_EXPORTER_OTLP_HEADERS values are.
    let binary = created_with("api-key=s%3Dcret", "keyed").await;
    let (ended, exported, failed) =
        span_counts_until(binary.admin_addr, |(_, exported, _)| exported >= 2.0).await;
    assert_eq!((exported, failed), (ended, 0.0));
    assert!(!received.lock().unwrap().is_empty());

    // The wrong key: the collector refuses, the spans count as failed, and
    // the warning says so without the key.
    let wrong = created_with("api-key=wr0ng-k3y", "unkeyed").await;
    span_counts_until(wrong.admin_addr, |(_, _, failed)| failed >= 2.0).await;
    // The warning follows the count; the log writer may lag a little.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wrong
        .log_lines()
        .iter()
        .any(|l| l.contains("cannot export spans"))
    {
        assert!(Instant::now() < deadline, "{:?}", wrong.log_lines());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = wrong.log_lines();
    assert!(!lines.iter().any(|l| l.contains("wr0ng-k3y")), "{lines:?}");

    // A malformed list turns export off, and the warning names the key,
    // not its value.
    let bad = start_binary_with(
        &endpoint,
        &[("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%ZZcr3t")],
    )
    .await;
    let lines = bad.log_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cannot build the OTLP trace exporter") && l.contains("api-key")),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains("cr3t")), "{lines:?}");
}

// ------------------------------------------------------------------- logs

/// A log pipe nobody drains (a stuck log shipper) never holds up a call:
/// past the writer's buffer, lines are dropped whole and counted, and the
/// log resumes once the pipe drains. Every line is either written, whole,
/// or counted in `user_service_log_lines_dropped_total`.
#[tokio::test]
async fn a_stalled_log_pipe_never_blocks_a_call_and_each_line_is_written_or_counted() {
    // More call lines than the writer holds (some 2 MiB, ~7000 lines).
    const CALLS: usize = 12_000;
    const CLIENTS: usize = 16;
    let mut app = spawn_child(&[("USER_SERVICE__LOG__LEVEL", "info")]).await;
    let channel = connect(app.grpc_addr).await;
    let missing = "0190c6c2-7f2a-7cc1-9b1e-3a4f5e6d7c8b";
    app.pause_stdout();

    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let mut client = UserServiceClient::new(channel.clone());
        clients.spawn(async move {
            for _ in 0..CALLS / CLIENTS {
                let mut request = Request::new(GetUserRequest {
                    user_id: missing.to_owned(),
                });
                // A call held up by the log would miss it.
                request.set_timeout(Duration::from_secs(5));
                let status = client.get_user(request).await.unwrap_err();
                assert_eq!(status.code(), Code::NotFound, "{status:?}");
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let dropped = app
        .metric("user_service_log_lines_dropped_total")
        .await
        .unwrap_or(0.0);
    assert!(dropped > 0.0, "nothing dropped: the pipe never filled");

    // Drained again, the log takes new lines (a few more may be dropped
    // while the backlog goes out, so ask until one arrives).
    app.resume_stdout();
    let mut client = UserServiceClient::new(channel.clone());
    let lines_of = |app: &ChildApp, method: &str| {
        app.log_json()
            .iter()
            .filter(|l| l["message"] == "finished call" && l["grpc.method"] == method)
            .count()
    };
    let mut lists = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines_of(&app, "ListUsers") == 0 {
        assert!(Instant::now() < deadline, "no line after the pipe drained");
        let mut stream = client
            .list_users(ListUsersRequest::default())
            .await
            .unwrap()
            .into_inner();
        while stream.next().await.is_some() {}
        lists += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dropped = app
        .metric("user_service_log_lines_dropped_total")
        .await
        .unwrap_or(0.0) as usize;
    app.terminate(Duration::from_secs(15)).await;

    // No line was cut: every one is a JSON object.
    let lines = app.log_lines();
    for line in &lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a whole JSON line: {line}"
        );
    }
    let written = lines_of(&app, "GetUser") + lines_of(&app, "ListUsers");
    assert_eq!(
        written + dropped,
        CALLS + lists,
        "written {written}, dropped {dropped}"
    );
}
