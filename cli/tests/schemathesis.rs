//! Hostile input: `scripts/schemathesis.sh` runs schemathesis against a real server process
//! (every operation of `/openapi.json`, generated and mutated requests with the API key) and
//! fails on any 5xx answer or any answer that breaks the documented schema.

use std::process::Command;

#[test]
fn schemathesis_finds_no_server_errors_and_no_schema_violations() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/schemathesis.sh");
    let output = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_gyoza"))
        .arg("25")
        .output()
        .expect("bash runs the schemathesis script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("passed"),
        "schemathesis ran no test cases:\n{stdout}"
    );
}
