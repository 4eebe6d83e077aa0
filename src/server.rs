//! Composes the service: store, domain, gRPC services, admin listener,
//! health and the shutdown sequence. `main` only calls [`Server::bind`]
//! and [`Server::run`]; tests do the same on port 0.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use futures_util::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use rand_core::{OsRng, RngCore};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::server::TcpIncoming;

use crate::{
    admin,
    auth::{Auth, AuthError},
    config::Settings,
    domain::{PasswordHasher, UserService, UserServiceLimits},
    domain::{StoreError, StoreHealth, UserStore},
    grpc::middleware::{self, StackOptions},
    grpc::{max_age::Aged, UserGrpc},
    health::Health,
    pb,
    store::{self, InstrumentedStore},
    telemetry,
    tls::{self, ServerTls, TlsError, TlsHandle},
};

/// See `Server::bind_with_store`.
const STORE_BOUND_SLACK: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("gRPC server failed: {0}")]
    Grpc(String),
}

/// A bound, not yet running server. Binding first means the ports are
/// known (and owned) before anything is served: tests bind port 0 and read
/// the real addresses back.
pub struct Server {
    settings: Settings,
    store: Arc<dyn UserStore>,
    auth: Auth,
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
    tls: Option<ServerTls>,
    /// The process's Prometheus recorder, installed first thing in `bind`:
    /// every metric handle (store, call layers) is taken after it exists.
    metrics: Option<&'static PrometheusHandle>,
}

impl Server {
    pub async fn bind(settings: Settings) -> Result<Self, ServerError> {
        let store = store::open(&settings.store).await?;
        Self::bind_with_store(settings, store).await
    }

    /// Like [`Server::bind`] with a store opened by the caller (tests share
    /// one store between servers this way).
    pub async fn bind_with_store(
        settings: Settings,
        store: Arc<dyn UserStore>,
    ) -> Result<Self, ServerError> {
        // The one place the recorder is installed: before the first metric
        // handle is taken (a handle taken earlier would be a no-op forever).
        let metrics = telemetry::metrics::install();
        // A healthy database hands out a connection within acquire_timeout
        // and ends any statement at statement_timeout; a store operation
        // slower than both (plus slack for the network and a transaction's
        // few round trips) is talking to a database that hangs.
        let bound =
            settings.store.acquire_timeout + settings.store.statement_timeout + STORE_BOUND_SLACK;
        let store = InstrumentedStore::wrap(store, bound);
        let auth = Auth::from_settings(&settings.auth).await?;
        // Before binding: unusable certificate files stop startup.
        let tls = ServerTls::load(&settings.tls).await?;
        let grpc_listener = bind("gRPC", settings.grpc.addr).await?;
        let admin_listener = bind("admin", settings.admin.addr).await?;
        Ok(Self {
            settings,
            store,
            auth,
            grpc_listener,
            admin_listener,
            tls,
            metrics,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .unwrap_or(self.settings.grpc.addr)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.settings.admin.addr)
    }

    /// Serves until `shutdown` resolves, then runs the shutdown sequence:
    /// readiness NOT_SERVING → keep serving for `shutdown.drain_delay` →
    /// stop accepting, drain in-flight calls for up to `shutdown.timeout` →
    /// cancel what is left → return.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server {
            settings,
            store,
            auth,
            grpc_listener,
            admin_listener,
            tls,
            metrics,
        } = self;
        let grpc_addr = grpc_listener.local_addr().unwrap_or(settings.grpc.addr);
        let admin_addr = admin_listener.local_addr().unwrap_or(settings.admin.addr);

        let (health, health_service) = Health::new().await;
        // Three one-way phases drive the sequence: `draining` (stop
        // accepting; endless streams end), `aborting` (the timeout passed:
        // every stream ends), `stopped` (background tasks end).
        let draining = CancellationToken::new();
        let aborting = CancellationToken::new();
        let stopped = CancellationToken::new();
        // Every background task runs on this tracker and ends at `stopped`;
        // the sequence waits for all of them before returning.
        let background = TaskTracker::new();

        let tls_mode = match &tls {
            None => "off",
            Some(tls) if tls.mutual() => "mutual",
            Some(_) => "on",
        };
        let tls_handle = tls.as_ref().map(ServerTls::handle);
        if let Some(handle) = metrics {
            background.spawn(telemetry::metrics::upkeep(handle, stopped.clone()));
        }
        background.spawn(health.clone().monitor(
            store.clone() as Arc<dyn StoreHealth>,
            settings.health.check_interval,
            settings.health.check_timeout,
            stopped.clone(),
        ));
        if let Some(refresh) = auth.refresh_task(stopped.clone()) {
            background.spawn(refresh);
        }
        if let Some(tls) = tls {
            background.spawn(tls.reload_until(stopped.clone()));
        }

        // Readiness and the admin port see only the store's operational face.
        let admin_store: Arc<dyn StoreHealth> = store.clone();
        let users = UserService::new(
            store,
            PasswordHasher::new(
                settings.limits.password_hash_concurrency,
                settings.limits.password_hash_queue,
            ),
            UserServiceLimits {
                list_batch: settings.limits.list_batch,
                bulk_max_items: settings.limits.bulk_max_items,
            },
        );
        let grpc = UserGrpc::new(users, draining.clone(), aborting.clone());
        let grpc_task = spawn_grpc(
            &settings,
            grpc_listener,
            tls_handle,
            grpc,
            health_service,
            &auth,
            draining.clone(),
        )?;
        background.spawn(serve_admin(
            admin_listener,
            admin::router(health.clone(), admin_store, metrics),
            stopped.clone(),
        ));
        tracing::info!(%grpc_addr, %admin_addr, store = %settings.store.url, tls = tls_mode, "serving");

        let mut grpc_task = grpc_task;
        tokio::select! {
            () = shutdown => {}
            result = &mut grpc_task => {
                // The server ended without being asked to: a fatal error.
                stopped.cancel();
                background.close();
                background.wait().await;
                return match result {
                    Ok(Ok(())) => Err(ServerError::Grpc("server stopped unexpectedly".into())),
                    Ok(Err(err)) => Err(err),
                    Err(join) => Err(ServerError::Grpc(join.to_string())),
                };
            }
        }

        let drain_delay = settings.shutdown.drain_delay;
        tracing::info!(?drain_delay, "shutting down: not ready, still serving");
        health.begin_shutdown().await;
        tokio::time::sleep(drain_delay).await;

        let timeout = settings.shutdown.timeout;
        tracing::info!(
            ?timeout,
            "draining: no new connections, finishing in-flight calls"
        );
        draining.cancel();
        match tokio::time::timeout(timeout, &mut grpc_task).await {
            Ok(Ok(Ok(()))) => tracing::info!("all calls finished"),
            Ok(Ok(Err(err))) => tracing::error!(error = %err, "gRPC server failed while draining"),
            Ok(Err(join)) => tracing::error!(error = %join, "gRPC server task failed"),
            Err(_) => {
                tracing::warn!(
                    ?timeout,
                    "shutdown timeout reached: cancelling open streams"
                );
                aborting.cancel();
                // Streams end on the abort signal; give their final
                // status a moment to reach the clients, then stop waiting.
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut grpc_task).await;
                grpc_task.abort();
            }
        }
        stopped.cancel();
        background.close();
        background.wait().await;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { what, addr, source })
}

fn spawn_grpc(
    settings: &Settings,
    listener: TcpListener,
    tls: Option<TlsHandle>,
    users: UserGrpc,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    auth: &Auth,
    draining: CancellationToken,
) -> Result<JoinHandle<Result<(), ServerError>>, ServerError> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // The google.rpc error details (BadRequest, ...) our statuses
            // carry: without them grpcurl prints "google.rpc.BadRequest is
            // not recognized" instead of the decoded field violations.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    // Built only when served (`grpc.reflection`). grpcurl asks v1 first;
    // Postman and evans still speak v1alpha.
    let enabled = settings.grpc.reflection;
    let reflection_v1 = enabled
        .then(|| reflection().build_v1())
        .transpose()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let reflection_v1alpha = enabled
        .then(|| reflection().build_v1alpha())
        .transpose()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;

    let g = &settings.grpc;
    // tonic applies one max age to every connection; jitter it per process
    // so replicas started together do not all recycle connections at once.
    let max_age = jitter(g.max_connection_age, 0.1);
    // Socket options must be set on the incoming stream: the builder's
    // tcp_* settings are ignored by serve_with_incoming.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(g.keepalive_interval));

    // No `Server::timeout`: the deadline is the stack's (it answers
    // DEADLINE_EXCEEDED where tonic would say CANCELLED).
    let router = tonic::transport::Server::builder()
        // Metrics, the server span, the `finished call` log line, the
        // deadline and authentication for every service, built in one place.
        .layer(middleware::stack(
            StackOptions {
                trace_health_checks: settings.telemetry.trace_health_checks,
                default_timeout: g.default_timeout,
                max_message_size: g.max_message_size,
                max_concurrent_requests: g.max_concurrent_requests,
            },
            auth.layer(),
        ))
        .max_concurrent_streams(g.max_concurrent_streams)
        .http2_max_header_list_size(g.max_metadata_size)
        // GOAWAY at the age; the grace is enforced by `max_age::Aged`
        // below (tonic's own grace would replace the GOAWAY, see there).
        .max_connection_age(max_age)
        .http2_keepalive_interval(Some(g.keepalive_interval))
        .http2_keepalive_timeout(Some(g.keepalive_timeout))
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(users.into_server(g.max_message_size));

    let stop = draining.cancelled_owned();
    // Connections handed to tonic (after the TLS handshake, with TLS): the
    // rate shows clients reconnecting, e.g. after `grpc.max_connection_age`.
    let accepted = metrics::counter!(telemetry::metrics::GRPC_CONNECTIONS_ACCEPTED);
    accepted.increment(0);
    // Every connection is closed for good this long after it was accepted.
    let lifetime = max_age.saturating_add(g.max_connection_age_grace);
    Ok(tokio::spawn(async move {
        let served = match tls {
            None => {
                router
                    .serve_with_incoming_shutdown(
                        incoming
                            .inspect(counting(accepted))
                            .map(move |io| io.map(|io| Aged::new(io, lifetime))),
                        stop,
                    )
                    .await
            }
            Some(tls) => {
                router
                    .serve_with_incoming_shutdown(
                        tls::incoming(incoming, tls)
                            .inspect(counting(accepted))
                            .map(move |io| io.map(|io| Aged::new(io, lifetime))),
                        stop,
                    )
                    .await
            }
        };
        served.map_err(|e| ServerError::Grpc(e.to_string()))
    }))
}

/// The admin listener, until `stopped`.
async fn serve_admin(listener: TcpListener, app: axum::Router, stopped: CancellationToken) {
    if let Err(err) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped.cancelled_owned())
        .await
    {
        tracing::error!(error = %err, "admin listener failed");
    }
}

/// Counts the connections an incoming stream yields.
fn counting<T, E>(accepted: metrics::Counter) -> impl FnMut(&Result<T, E>) {
    move |item| {
        if item.is_ok() {
            accepted.increment(1);
        }
    }
}

/// `base` scaled by a random factor in [1 - spread, 1 + spread].
///
/// Not a retry delay, so not `user_service_api::backoff`: it spreads one
/// configured duration (`grpc.max_connection_age`) once per process at
/// startup; nothing is retried and nothing grows.
fn jitter(base: Duration, spread: f64) -> Duration {
    let unit = f64::from(OsRng.next_u32()) / f64::from(u32::MAX); // 0..=1
    base.mul_f64(1.0 - spread + 2.0 * spread * unit)
}
