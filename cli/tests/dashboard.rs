//! The dashboard in a real browser: headless Chromium (Debian's package) loads the page from
//! a real server process, and the runs and workers the API knows appear on it. Screenshots
//! are saved under the target directory (`dashboard-runs.png`, `dashboard-workers.png`).
//!
//! Fails when Chromium is missing (scripts/setup.d/40-chromium.sh installs it); set
//! `GYOZA_TEST_SKIP_BROWSER=1` to leave it out knowingly.

use std::path::{Path, PathBuf};
use std::process::Command;

use gyoza_e2e::Server;
use serde_json::{Value, json};

const KEY: &str = "dashboard-key";

fn chromium(args: &[&str], url: &str, profile: &Path) -> String {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=15000",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium is installed (scripts/setup.d/40-chromium.sh)");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn screenshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_runs_and_workers() {
    if std::env::var("GYOZA_TEST_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("GYOZA_TEST_SKIP_BROWSER=1: dashboard test left out");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(env!("CARGO_BIN_EXE_gyoza"), dir.path(), KEY, &[]);
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        http.post(format!("{}{path}", server.url))
            .header("x-api-key", KEY)
            .json(&body)
            .send()
    };
    post(
        "/workers/heartbeat",
        json!({"worker_id": "dash-worker-7", "resources": {"cpu_cores": 6, "ram_mb": 12288}}),
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for image in ["busybox:one", "busybox:two", "busybox:three"] {
        let run: Value = post("/runs", json!({"image": image}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(run["id"].as_str().unwrap().to_owned());
    }
    post("/workers/dash-worker-7/claim", json!(null))
        .await
        .unwrap();

    let profile = tempfile::tempdir().unwrap();
    let runs_url = format!("{}/dashboard#key={KEY}", server.url);
    let dom = chromium(&["--dump-dom"], &runs_url, profile.path());
    assert!(
        dom.contains("runs-table"),
        "runs view did not render:\n{dom}"
    );
    for id in &ids {
        assert!(
            dom.contains(id.as_str()),
            "run {id} missing from the dashboard:\n{dom}"
        );
    }
    assert!(dom.contains("ASSIGNED") && dom.contains("PENDING"), "{dom}");

    let workers_url = format!("{}/dashboard#key={KEY}&view=workers", server.url);
    let dom = chromium(&["--dump-dom"], &workers_url, profile.path());
    assert!(
        dom.contains("workers-table") && dom.contains("dash-worker-7"),
        "{dom}"
    );
    assert!(dom.contains("12288"), "worker resources missing:\n{dom}");

    for (name, url) in [
        ("dashboard-runs.png", &runs_url),
        ("dashboard-workers.png", &workers_url),
    ] {
        let path = screenshot_path(name);
        let _ = std::fs::remove_file(&path);
        chromium(
            &[&format!("--screenshot={}", path.display())],
            url,
            profile.path(),
        );
        let png = std::fs::read(&path).expect("screenshot written");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name} is not a real screenshot"
        );
    }

    // Without a key the page asks for one and shows no data.
    let fresh = tempfile::tempdir().unwrap();
    let dom = chromium(
        &["--dump-dom"],
        &format!("{}/dashboard", server.url),
        fresh.path(),
    );
    assert!(!dom.contains(ids[0].as_str()), "data shown without a key");
}
