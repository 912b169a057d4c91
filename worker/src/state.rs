//! The worker's state directory: what one worker keeps across its restarts.
//!
//! ```text
//! <state-dir>/            0700, created on start
//!   lock                  flock(LOCK_EX) held for the process's life: one worker per directory
//!   worker-id             the default worker id, <hostname>-<8 hex>, made once
//!   instance              the instance token sent with every heartbeat, made once
//!   outbox/               results not yet decided by the server (see [`crate::outbox`])
//!   runs/                 per-run directories (the default --work-dir)
//! ```
//!
//! The directory is `--state-dir` (`GYOZA_WORKER_STATE_DIR`), else
//! `$XDG_STATE_HOME/gyoza-worker`, else `$HOME/.local/state/gyoza-worker`. The same directory
//! means the same worker: the same default id and the same instance token after a restart,
//! so that the server takes a restarted worker back at once, while two directories on one
//! host are two workers with two ids. A second process on a directory in use exits at once.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::WorkerError;

/// An open state directory, locked for this process.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    /// Holds the `flock`; closing it (at exit, even by SIGKILL) releases the lock.
    _lock: File,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> WorkerError {
    move |source| WorkerError::Io { context, source }
}

/// The default state directory from the environment's `XDG_STATE_HOME` and `HOME`.
pub fn default_dir(xdg_state_home: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    let set = |v: Option<&str>| v.filter(|v| !v.trim().is_empty()).map(PathBuf::from);
    set(xdg_state_home)
        .map(|d| d.join("gyoza-worker"))
        .or_else(|| set(home).map(|h| h.join(".local/state/gyoza-worker")))
}

impl StateDir {
    /// Creates (0700) and locks `path`; a directory another live worker holds is refused.
    pub fn open(path: &Path) -> Result<Self, WorkerError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io(format!(
                "cannot create the state directory {}",
                path.display()
            )))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io(
            format!(
                "cannot make the state directory {} owner-only",
                path.display()
            ),
        ))?;
        let lock_path = path.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(format!("cannot open {}", lock_path.display())))?;
        // SAFETY: flock on a file descriptor this function owns; no memory is involved.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(WorkerError::Config(format!(
                    "another gyoza worker is running on the state directory {} (it holds {}): \
                     stop it, or give this worker a directory of its own (--state-dir or \
                     GYOZA_WORKER_STATE_DIR)",
                    path.display(),
                    lock_path.display()
                )));
            }
            return Err(io(format!("cannot lock {}", lock_path.display()))(e));
        }
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The default worker id: kept in `worker-id`, made once as `<hostname>-<8 hex>`.
    pub fn worker_id(&self, host_name: &str) -> Result<String, WorkerError> {
        self.kept("worker-id", || {
            Ok(format!("{host_name}-{}", random_hex(4)?))
        })
    }

    /// The instance token: kept in `instance`, made once (32 hex).
    pub fn instance(&self) -> Result<String, WorkerError> {
        self.kept("instance", || random_hex(16))
    }

    /// The content of file `name`, made by `make` and written durably the first time.
    fn kept(
        &self,
        name: &str,
        make: impl FnOnce() -> Result<String, WorkerError>,
    ) -> Result<String, WorkerError> {
        let path = self.path.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("cannot read {}", path.display()))(e)),
        }
        let value = make()?;
        write_durably(&self.path, name, value.as_bytes())
            .map_err(io(format!("cannot write {}", path.display())))?;
        Ok(value)
    }
}

/// Writes `bytes` to `dir/name` so that a crash leaves the old file or the new one, never a
/// part: a temporary file, fsynced, renamed over the name, and the directory fsynced.
pub fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let temp = dir.join(format!(".{name}.tmp"));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// `bytes` random bytes from the kernel, as lowercase hex.
fn random_hex(bytes: usize) -> Result<String, WorkerError> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(io("cannot read /dev/urandom".into()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_dir_follows_xdg_then_home() {
        assert_eq!(
            default_dir(Some("/x/state"), Some("/home/u")),
            Some(PathBuf::from("/x/state/gyoza-worker"))
        );
        assert_eq!(
            default_dir(Some(""), Some("/home/u")),
            Some(PathBuf::from("/home/u/.local/state/gyoza-worker"))
        );
        assert_eq!(default_dir(None, None), None);
    }

    #[test]
    fn one_process_per_directory_and_the_same_id_and_token_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let first = StateDir::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // A second open (another file description, as another process would have) is refused.
        let err = StateDir::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("another gyoza worker") && err.contains(&path.display().to_string()),
            "{err}"
        );
        let id = first.worker_id("host").unwrap();
        assert!(
            id.starts_with("host-") && id.len() == "host-".len() + 8,
            "{id}"
        );
        let token = first.instance().unwrap();
        assert_eq!(token.len(), 32);
        drop(first);
        let again = StateDir::open(&path).unwrap();
        assert_eq!(
            again.worker_id("host").unwrap(),
            id,
            "same directory, same id"
        );
        assert_eq!(again.instance().unwrap(), token);
        let other = StateDir::open(&dir.path().join("other")).unwrap();
        assert_ne!(
            other.worker_id("host").unwrap(),
            id,
            "two directories, two ids"
        );
        assert_ne!(other.instance().unwrap(), token);
    }
}
