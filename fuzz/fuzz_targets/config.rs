//! Arbitrary bytes as the TOML config file, loaded the way `--config PATH`
//! is (`Settings::load`), with an empty environment and no flags.
//!
//! Why: the file is operator input, often templated by deployment tooling;
//! any mistake in it must be a `ConfigError` (exit code 2 with the key
//! named), never a panic, whatever the TOML or the value types.
#![no_main]

use std::{collections::HashMap, path::PathBuf, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use user_service::config::{Settings, Sources};

/// One file per fuzzing process, rewritten for each input.
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!(
            "user-service-fuzz-config-{}.toml",
            std::process::id()
        ))
    })
}

fuzz_target!(|data: &[u8]| {
    // Settings::load reads the file as UTF-8; other bytes are a read error.
    if std::str::from_utf8(data).is_err() {
        return;
    }
    std::fs::write(path(), data).expect("write the config file");
    let _ = Settings::load(Sources {
        file: Some(path()),
        env: Some(HashMap::new()),
        overrides: vec![],
    });
});
