//! Liveness and readiness, as gRPC health statuses and admin HTTP answers.
//!
//! - `""` (liveness): SERVING while the process runs. A failing store does
//!   not make us "dead": restarting would not fix the database.
//! - `user.v1.UserService` (readiness): SERVING only while the store answers
//!   and we are not shutting down. Load balancers use it to route.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use tonic_health::{
    pb::health_server::{Health as HealthApi, HealthServer},
    server::HealthReporter,
    ServingStatus,
};

use crate::{domain::StoreHealth, pb::SERVICE_NAME};

#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    inner: Arc<Inner>,
}

struct Inner {
    store_ok: AtomicBool,
    shutting_down: AtomicBool,
}

impl Health {
    /// Starts NOT_SERVING for readiness: nothing is ready until the first
    /// store check passes.
    pub async fn new() -> (Self, HealthServer<impl HealthApi>) {
        let (reporter, server) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
            .await;
        let health = Self {
            reporter,
            inner: Arc::new(Inner {
                store_ok: AtomicBool::new(false),
                shutting_down: AtomicBool::new(false),
            }),
        };
        (health, server)
    }

    pub fn is_ready(&self) -> bool {
        self.inner.store_ok.load(Ordering::SeqCst)
            && !self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Records a store check result and publishes the readiness it implies.
    pub async fn set_store_ok(&self, ok: bool) {
        let was = self.inner.store_ok.swap(ok, Ordering::SeqCst);
        if was != ok {
            if ok {
                tracing::info!("store reachable: ready");
            } else {
                tracing::warn!("store unreachable: not ready");
            }
        }
        self.publish().await;
    }

    /// The first step of shutdown: from now on we are not ready, for good.
    pub async fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.publish().await;
    }

    async fn publish(&self) {
        let status = if self.is_ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status(SERVICE_NAME, status).await;
    }

    /// Re-checks the store every `interval` until `stop` turns true.
    /// Readiness follows the store both ways, so an outage and its recovery
    /// need no restart.
    pub async fn monitor(
        self,
        store: Arc<dyn StoreHealth>,
        interval: Duration,
        timeout: Duration,
        stop: CancellationToken,
    ) {
        loop {
            let ok = match tokio::time::timeout(timeout, store.check()).await {
                Ok(Ok(())) => true,
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "store check failed");
                    false
                }
                Err(_) => {
                    tracing::debug!(?timeout, "store check timed out");
                    false
                }
            };
            self.set_store_ok(ok).await;
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}
