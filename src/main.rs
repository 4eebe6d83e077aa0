//! Entry point: parse flags, load settings, start telemetry, run, exit.

use std::process::ExitCode;

use clap::Parser;
use user_service::{
    app,
    cli::{Cli, Command},
    telemetry,
};

/// mimalloc instead of glibc malloc: fewer cycles per call on the hot path
/// (span data, OTLP batches, log lines), numbers in BENCHMARKS.md. Only the
/// server binary sets it; the library and its tests keep the system one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match cli.settings() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("user-service: {err}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", settings.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    // Before telemetry starts: stdout must carry the token and nothing else.
    if let Some(Command::Token { sub, roles, ttl }) = &cli.command {
        return match app::token(&settings, sub, roles, *ttl) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("user-service: {err}");
                ExitCode::FAILURE
            }
        };
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("user-service: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let telemetry = telemetry::init(&settings.log, &settings.telemetry);
        let result = match cli.command.clone().unwrap_or(Command::Serve) {
            Command::Serve => app::serve(settings).await,
            Command::Migrate => app::migrate(settings).await,
            // Handled above, without a runtime.
            Command::Token { .. } => Ok(()),
        };
        if let Err(err) = &result {
            tracing::error!(error = %err, "exiting");
        }
        // After the server has drained: flush the spans of the last calls,
        // then the log lines still queued.
        telemetry.shutdown(telemetry::FLUSH_TIMEOUT).await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("user-service: {err}");
            ExitCode::FAILURE
        }
    }
}
