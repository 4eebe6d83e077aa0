//! `userctl` on its own, no server needed: what a user sees when the
//! address is wrong or the arguments are. (Calls against a real server are
//! in the server's integration tests, tests/it/client.rs.)

use std::process::Command;

#[test]
fn an_unreachable_server_is_a_clear_error_and_a_failing_exit_code() {
    // Port 1 on loopback: nothing listens there, the connect is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_userctl"))
        .args(["--addr", "http://127.0.0.1:1", "--timeout", "2s", "get"])
        .arg("0190b8a0-0000-7000-8000-000000000000")
        .output()
        .expect("run userctl");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

#[test]
fn a_token_that_cannot_be_sent_is_refused_without_quoting_it() {
    // A control character cannot travel in an HTTP/2 header value.
    let out = Command::new(env!("CARGO_BIN_EXE_userctl"))
        .args(["--addr", "http://127.0.0.1:1", "--timeout", "2s"])
        .args(["--token", "secret-token\u{1}value", "get", "x"])
        .output()
        .expect("run userctl");
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("cannot carry"), "{all}");
    assert!(!all.contains("secret-token"), "{all}");
}
