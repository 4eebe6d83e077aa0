//! Layered configuration: precedence, validation, and the binary's
//! behaviour on bad configuration.

use std::{collections::HashMap, io::Write, process::Command, time::Duration};

use user_service::config::{ConfigError, LogFormat, Settings, Sources};

fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn load(
    file: Option<&tempfile::NamedTempFile>,
    env_vars: &[(&str, &str)],
    overrides: Vec<(&'static str, String)>,
) -> Result<Settings, ConfigError> {
    Settings::load(Sources {
        file: file.map(|f| f.path()),
        env: env(env_vars),
        overrides,
    })
}

#[test]
fn defaults_are_sensible() {
    let s = load(None, &[], vec![]).unwrap();
    assert_eq!(s.grpc.addr.to_string(), "0.0.0.0:50051");
    assert_eq!(s.admin.addr.to_string(), "0.0.0.0:8080");
    assert_eq!(s.store.url.expose(), "memory://");
    assert_eq!(s.shutdown.drain_delay, Duration::from_secs(5));
    assert_eq!(s.shutdown.timeout, Duration::from_secs(20));
    assert_eq!(s.log.level, "info");
    assert_eq!(s.log.format, LogFormat::Text);
}

#[test]
fn file_overrides_defaults_env_overrides_file_flags_override_env() {
    let file = toml_file(
        r#"
        [grpc]
        addr = "127.0.0.1:6000"
        [admin]
        addr = "127.0.0.1:6001"
        [shutdown]
        drain_delay = "250ms"
        timeout = "1m"
        [log]
        level = "debug"
        "#,
    );
    let s = load(Some(&file), &[], vec![]).unwrap();
    assert_eq!(s.grpc.addr.to_string(), "127.0.0.1:6000");
    assert_eq!(s.shutdown.drain_delay, Duration::from_millis(250));
    assert_eq!(s.shutdown.timeout, Duration::from_secs(60));

    let env_vars = [
        ("USER_SERVICE__GRPC__ADDR", "127.0.0.1:7000"),
        ("USER_SERVICE__SHUTDOWN__DRAIN_DELAY", "2s"),
        ("USER_SERVICE__LOG__FORMAT", "json"),
        ("USER_SERVICE__LIMITS__BULK_MAX_ITEMS", "7"),
        ("UNRELATED", "ignored"),
    ];
    let s = load(Some(&file), &env_vars, vec![]).unwrap();
    assert_eq!(s.grpc.addr.to_string(), "127.0.0.1:7000", "env beats file");
    assert_eq!(
        s.admin.addr.to_string(),
        "127.0.0.1:6001",
        "file beats defaults"
    );
    assert_eq!(s.shutdown.drain_delay, Duration::from_secs(2));
    assert_eq!(s.log.format, LogFormat::Json);
    assert_eq!(s.limits.bulk_max_items, 7);
    assert_eq!(s.log.level, "debug");

    let s = load(
        Some(&file),
        &env_vars,
        vec![
            ("grpc.addr", "127.0.0.1:8000".into()),
            ("log.level", "warn".into()),
        ],
    )
    .unwrap();
    assert_eq!(s.grpc.addr.to_string(), "127.0.0.1:8000", "flags beat env");
    assert_eq!(s.log.level, "warn");
}

fn error_text(result: Result<Settings, ConfigError>) -> String {
    result.expect_err("should be rejected").to_string()
}

#[test]
fn bad_values_name_the_key_and_what_was_expected() {
    let text = error_text(load(
        None,
        &[("USER_SERVICE__SHUTDOWN__DRAIN_DELAY", "soon")],
        vec![],
    ));
    assert!(
        text.contains("shutdown.drain_delay") && text.contains("250ms"),
        "{text}"
    );

    let text = error_text(load(
        None,
        &[("USER_SERVICE__STORE__URL", "mysql://x")],
        vec![],
    ));
    assert!(
        text.contains("store.url") && text.contains("postgres://"),
        "{text}"
    );

    let text = error_text(load(
        None,
        &[],
        vec![("grpc.addr", "localhost:nope".into())],
    ));
    assert!(text.contains("grpc.addr"), "{text}");

    let text = error_text(load(None, &[("USER_SERVICE__LOG__FORMAT", "xml")], vec![]));
    assert!(
        text.contains("log.format") && text.contains("json"),
        "{text}"
    );

    let text = error_text(load(
        None,
        &[("USER_SERVICE__LIMITS__BULK_MAX_ITEMS", "0")],
        vec![],
    ));
    assert!(text.contains("limits.bulk_max_items"), "{text}");

    let text = error_text(load(
        None,
        &[("USER_SERVICE__SHUTDOWN__TIMEOUT", "0s")],
        vec![],
    ));
    assert!(text.contains("shutdown.timeout"), "{text}");
}

#[test]
fn unknown_keys_in_the_file_are_errors_naming_the_file_and_key() {
    let file = toml_file("[grpc]\nadress = \"127.0.0.1:1\"\n");
    let text = error_text(load(Some(&file), &[], vec![]));
    assert!(text.contains(&file.path().display().to_string()), "{text}");
    assert!(text.contains("adress"), "{text}");

    let file = toml_file("[nosuchsection]\nx = 1\n");
    let text = error_text(load(Some(&file), &[], vec![]));
    assert!(text.contains("nosuchsection"), "{text}");

    let file = toml_file("[grpc\n");
    let text = error_text(load(Some(&file), &[], vec![]));
    assert!(text.contains("config file"), "{text}");
}

#[test]
fn unknown_environment_keys_are_errors() {
    let text = error_text(load(None, &[("USER_SERVICE__GRPC__ADRESS", "x")], vec![]));
    assert!(text.contains("adress"), "{text}");
}

fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_user-service"));
    // Start from a clean slate: no inherited USER_SERVICE__* or RUST_LOG.
    for (key, _) in std::env::vars() {
        if key.starts_with("USER_SERVICE__") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn assert_one_clear_line(output: &std::process::Output, needle: &str) {
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(needle), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn the_binary_exits_with_one_line_on_bad_configuration() {
    let missing = binary()
        .args(["--config", "/definitely/missing.toml"])
        .output()
        .unwrap();
    assert_one_clear_line(&missing, "/definitely/missing.toml");

    let file = toml_file("[shutdown]\ntimeout = \"forever\"\n");
    let bad_value = binary().arg("--config").arg(file.path()).output().unwrap();
    assert_one_clear_line(&bad_value, "shutdown.timeout");

    let bad_env = binary()
        .env("USER_SERVICE__STORE__URL", "redis://cache")
        .output()
        .unwrap();
    assert_one_clear_line(&bad_env, "store.url");
}

#[test]
fn print_config_shows_the_effective_settings_with_secrets_redacted() {
    let output = binary()
        .args(["--print-config", "--grpc-addr", "127.0.0.1:9999"])
        .env(
            "USER_SERVICE__STORE__URL",
            "postgres://app:hunter2secret@db:5432/users",
        )
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("127.0.0.1:9999"), "{stdout}");
    assert!(
        stdout.contains("postgres://app:***@db:5432/users"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2secret"));
    // What it prints is itself a valid config file.
    let file = toml_file(&stdout);
    let reloaded = load(Some(&file), &[], vec![]).unwrap();
    assert_eq!(reloaded.grpc.addr.to_string(), "127.0.0.1:9999");
}

#[test]
fn help_documents_flags_and_the_environment_scheme() {
    let output = binary().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--config",
        "--grpc-addr",
        "--store-url",
        "--print-config",
        "USER_SERVICE__",
        "migrate",
    ] {
        assert!(help.contains(needle), "{needle} missing from --help");
    }
}

#[test]
fn the_example_config_lists_every_key_with_its_default() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let example = Settings::load(Sources {
        file: Some(&path),
        env: env(&[]),
        overrides: vec![],
    })
    .unwrap();
    let mut defaults = Settings::default();
    // The defaults that depend on the machine's CPUs; the file pins 2.
    defaults.limits.password_hash_concurrency = 2;
    defaults.limits.password_hash_queue = 16;
    assert_eq!(example.to_redacted_toml(), defaults.to_redacted_toml());
    // Every key of the defaults appears in the file (commented or not).
    let text = std::fs::read_to_string(&path).unwrap();
    let rendered = Settings::default().to_redacted_toml();
    for line in rendered.lines().filter(|l| l.contains(" = ")) {
        let key = line.split(" = ").next().unwrap();
        assert!(
            text.contains(&format!("{key} = ")),
            "{key} is not documented in config/example.toml"
        );
    }
}

#[test]
fn rust_log_is_a_layer_of_log_level_validated_and_shown() {
    // Above USER_SERVICE__LOG__LEVEL, below --log-level.
    let s = load(
        None,
        &[("USER_SERVICE__LOG__LEVEL", "warn"), ("RUST_LOG", "debug")],
        vec![],
    )
    .unwrap();
    assert_eq!(s.log.level, "debug");
    let s = load(
        None,
        &[("RUST_LOG", "debug")],
        vec![("log.level", "error".into())],
    )
    .unwrap();
    assert_eq!(s.log.level, "error");

    // --print-config shows the level that applies.
    let output = binary()
        .args(["--print-config"])
        .env("RUST_LOG", "user_service=trace,info")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(r#"level = "user_service=trace,info""#),
        "{stdout}"
    );

    // A bad filter stops startup instead of logging at some other level.
    let bad = binary()
        .env("RUST_LOG", "user_service=loud")
        .output()
        .unwrap();
    assert_one_clear_line(&bad, "log.level");
}

#[test]
fn log_format_flag_offers_its_values() {
    let output = binary().args(["--log-format", "yaml"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("text") && stderr.contains("json"),
        "{stderr}"
    );
}
