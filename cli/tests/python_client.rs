//! A client written for the original Python server works against this one unchanged:
//! `compat/gyoza_client.py` follows the original `gyoza.client` documentation and
//! `compat/scenario.py` drives a real server process through it.

use std::process::Command;

use gyoza_e2e::Server;

#[test]
fn original_python_client_works_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(env!("CARGO_BIN_EXE_gyoza"), dir.path(), "compat-key", &[]);
    let url = server.url.clone();
    let compat = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat");
    let output = Command::new("python3")
        .arg("scenario.py")
        .arg(&url)
        .arg("compat-key")
        .current_dir(compat)
        .output()
        .expect("python3 is required for this test");
    drop(server);
    assert!(
        output.status.success(),
        "python scenario failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("all expectations held"));
}
