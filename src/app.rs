//! What each subcommand does, start to finish.

use crate::{config::Settings, server::Server, shutdown, store};

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
