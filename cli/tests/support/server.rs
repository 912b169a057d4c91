//! A `gyoza server start` process for tests (shared by the test files that include it).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    #[allow(dead_code)] // not every including test uses every constructor
    /// Starts `gyoza server start` on a free port with `data_dir`, waiting until it listens.
    pub fn start(data_dir: &Path, key: &str) -> Self {
        Self::start_with(data_dir, key, &[])
    }

    /// As [`Server::start`], with more `gyoza server start` arguments.
    pub fn start_with(data_dir: &Path, key: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gyoza"))
            .args(["server", "start", "--port", "0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("GYOZA_API_KEY", key)
            .env("GYOZA_LOG_LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gyoza");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on ") {
                    let _ = tx.send(line[at + "listening on ".len()..].trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server logs its address within 30 s");
        Self { child, url }
    }

    #[allow(dead_code)] // not every including test signals the process
    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
