//! The CLI end to end: `gyoza up` (a server and a local worker in one process, on a real
//! Docker engine), `gyoza deploy` of an example op, `gyoza run … --follow` until its outputs.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gyoza_e2e::{docker_or_skip, gyoza_bin};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn up_then_run_follow_completes_an_example_op() {
    if !docker_or_skip("up_then_run_follow_completes_an_example_op") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let key = "up-test-key";
    let mut up = Command::new(gyoza_bin())
        .args(["up", "--port", &port, "--data-dir"])
        .arg(dir.path().join(".gyoza"))
        .args(["--worker-id", "up-worker"])
        .env("GYOZA_API_KEY", key)
        .env("GYOZA_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let gyoza = |args: &[&str]| {
        Command::new(gyoza_bin())
            .args(args)
            .env("GYOZA_SERVER_URL", &url)
            .env("GYOZA_API_KEY", key)
            .output()
            .unwrap()
    };
    // Wait for the local worker to register.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let workers = gyoza(&["workers", "list", "--json"]);
        if workers.status.success()
            && String::from_utf8_lossy(&workers.stdout).contains("up-worker")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the local worker never registered"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let deploy = dir.path().join("gyoza.yaml");
    std::fs::write(
        &deploy,
        "definitions:\n  - id: progress\n    version: 1.0.0\n    image: gyoza-example/progress:latest\n    inputs:\n      note: {type: string, default: hi}\n",
    )
    .unwrap();
    let deployed = gyoza(&["deploy", "-f", deploy.to_str().unwrap()]);
    assert!(
        deployed.status.success(),
        "{}",
        String::from_utf8_lossy(&deployed.stderr)
    );

    let run = gyoza(&["run", "progress", "--input", "note=from-cli", "--follow"]);
    let (out, err) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(run.status.success(), "run --follow failed: {out}{err}");
    let outputs: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("outputs not JSON ({e}): {out}"));
    assert_eq!(outputs["steps"], 4, "{outputs}");
    assert_eq!(outputs["echo"]["note"], "from-cli", "{outputs}");
    for event in ["STARTED", "PROGRESS", "COMPLETED"] {
        assert!(err.contains(event), "{event} not shown: {err}");
    }
    // Each line the container printed is one event, however fast it printed.
    assert_eq!(err.matches("warming up").count(), 1, "{err}");

    // Ctrl-C stops both.
    Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = up.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "gyoza up did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn deploy_build_builds_the_image_then_upserts_the_definition() {
    if !docker_or_skip("deploy_build_builds_the_image") {
        return;
    }
    let server = gyoza_e2e::Server::start();
    let dir = tempfile::tempdir().unwrap();
    let context = dir.path().join("op");
    std::fs::create_dir(&context).unwrap();
    std::fs::copy("/bin/busybox", context.join("busybox")).expect("busybox-static is installed");
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\", \"true\"]\n",
    )
    .unwrap();
    let tag = format!("gyoza-test/deploy-build:{}", std::process::id());
    let file = dir.path().join("gyoza.yaml");
    std::fs::write(
        &file,
        format!("definitions:\n  - id: built\n    version: 1.0.0\n    image: {tag}\n    build:\n      context: op\n"),
    )
    .unwrap();
    let output = Command::new(gyoza_bin())
        .args(["deploy", "--build", "--json", "-f"])
        .arg(&file)
        .env("GYOZA_SERVER_URL", &server.url)
        .env("GYOZA_API_KEY", gyoza_e2e::API_KEY)
        // The legacy builder needs no buildx plugin, which Debian's docker.io does not ship.
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let deployed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(deployed[0]["built"], true, "{deployed}");
    assert_eq!(deployed[0]["image"], tag.as_str());
    let inspect = Command::new("docker")
        .args(["image", "inspect", &tag])
        .output()
        .unwrap();
    assert!(inspect.status.success(), "the image was not built");
    let _ = Command::new("docker")
        .args(["image", "rm", "-f", &tag])
        .output();
}
