//! Entry point: parse flags, load settings, start telemetry, run, exit.

use std::process::ExitCode;

use clap::Parser;
use user_service::{
    app,
    cli::{Cli, Command},
    telemetry,
};

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
        let result = match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => app::serve(settings).await,
            Command::Migrate => app::migrate(settings).await,
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
