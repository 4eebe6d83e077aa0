//! What each subcommand does, start to finish.

use std::time::Duration;

use crate::{auth, config::Settings, server::Server, shutdown, store};

/// Serves until SIGTERM/SIGINT, then shuts down gracefully.
pub async fn serve(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::bind(settings).await?;
    server.run(shutdown::signal()).await?;
    Ok(())
}

/// Applies migrations and exits.
pub async fn migrate(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    store::migrate(&settings.store).await?;
    tracing::info!("migrations applied");
    Ok(())
}

/// A signed token for `sub` with `roles`, valid for `ttl`: printed by
/// `user-service token`. Needs no runtime and starts nothing.
pub fn token(
    settings: &Settings,
    sub: &str,
    roles: &[String],
    ttl: Duration,
) -> Result<String, Box<dyn std::error::Error>> {
    if sub.is_empty() {
        return Err("--sub must not be empty".into());
    }
    if ttl.is_zero() {
        return Err("--ttl must be longer than 0s".into());
    }
    Ok(auth::mint(&settings.auth, sub, roles, ttl)?)
}
