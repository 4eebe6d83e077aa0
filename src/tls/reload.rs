//! Reloading: the files re-read on an interval, a new config swapped in
//! for the next handshakes when their content changed and is valid.

use tokio_util::sync::CancellationToken;

use super::{
    files::{build, read},
    ServerTls, TlsError, LOG_TARGET,
};

impl ServerTls {
    /// Re-reads the files every `reload_interval` until `stop` is
    /// cancelled. The server runs it as one of its background tasks.
    pub async fn reload_until(mut self, stop: CancellationToken) {
        {
            let mut ticker = tokio::time::interval(self.reload_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate and the files were just read.
            ticker.tick().await;
            // A broken file is reported once, not on every tick while it
            // stays broken.
            let mut last_warning: Option<String> = None;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                match self.reload().await {
                    Ok(changed) => {
                        if changed {
                            metrics::counter!("user_service_tls_reloads_total", "result" => "success")
                                .increment(1);
                            tracing::info!(
                                target: LOG_TARGET,
                                cert_file = %self.files.cert.display(),
                                "TLS files changed: new connections use the new certificate"
                            );
                        }
                        last_warning = None;
                    }
                    Err(err) => {
                        let message = err.to_string();
                        if last_warning.as_deref() != Some(message.as_str()) {
                            metrics::counter!("user_service_tls_reloads_total", "result" => "failure")
                                .increment(1);
                            tracing::warn!(
                                target: LOG_TARGET,
                                error = %message,
                                "TLS files changed but cannot be used: still serving the previous certificate"
                            );
                            last_warning = Some(message);
                        }
                    }
                }
            }
        }
    }

    /// Swaps in the files' content if it changed and is valid; returns
    /// whether it swapped.
    async fn reload(&mut self) -> Result<bool, TlsError> {
        let material = read(&self.files).await?;
        if material == self.loaded {
            return Ok(false);
        }
        let config = build(&material, &self.files, &self.provider)?;
        self.current.send_replace(config);
        self.loaded = material;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{
        test_support::{self_signed, settings, write},
        ServerTls,
    };

    #[tokio::test]
    async fn reload_swaps_valid_files_and_keeps_the_old_config_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        write(dir.path(), &cert, &key);
        let mut tls = ServerTls::load(&settings(dir.path()))
            .await
            .unwrap()
            .unwrap();
        let handle = tls.handle();
        let first = Arc::clone(&handle.config.borrow());
        assert!(!tls.reload().await.unwrap(), "unchanged files reloaded");

        // A certificate whose key is the old one: refused, old one kept.
        let (other_cert, other_key) = self_signed();
        write(dir.path(), &other_cert, &key);
        assert!(tls.reload().await.is_err());
        assert!(Arc::ptr_eq(&first, &handle.config.borrow()));
        // A truncated file: the same.
        write(dir.path(), &other_cert[..40], &other_key);
        assert!(tls.reload().await.is_err());
        assert!(Arc::ptr_eq(&first, &handle.config.borrow()));
        // The pair complete: swapped, for the next handshake.
        write(dir.path(), &other_cert, &other_key);
        assert!(tls.reload().await.unwrap());
        assert!(!Arc::ptr_eq(&first, &handle.config.borrow()));
        assert_eq!(handle.config.borrow().alpn_protocols, vec![b"h2".to_vec()]);
    }
}
