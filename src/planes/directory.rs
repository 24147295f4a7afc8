//! The directory source: plane manifests and Secrets in `--planes-dir`, polled.
//!
//! Polling rather than inotify because Kubernetes updates mounted ConfigMaps and
//! Secrets by swapping a `..data` symlink, which inotify on the files themselves
//! misses; reading a handful of small files every [`POLL_INTERVAL`] catches every kind
//! of change (edit, rename, symlink swap) within the 2 s the gateway promises.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::manifest::{self, Object};
use super::registry::{PlaneSource, Snapshot};

pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

pub struct DirectorySource {
    dir: PathBuf,
}

impl DirectorySource {
    pub fn new(dir: impl Into<PathBuf>) -> DirectorySource {
        DirectorySource { dir: dir.into() }
    }
}

/// The manifest files of a directory and their contents, by file name.
type Contents = BTreeMap<PathBuf, Vec<u8>>;

fn is_manifest(path: &Path) -> Option<bool> {
    let name = path.file_name()?.to_str()?;
    // `..data` and `..2024_…` are Kubernetes' volume bookkeeping; dotfiles are editors' swap files.
    if name.starts_with('.') {
        return None;
    }
    match path.extension()?.to_str()? {
        "yaml" | "yml" => Some(false),
        "json" => Some(true),
        _ => None,
    }
}

fn read_dir(dir: &Path) -> std::io::Result<Contents> {
    let mut contents = Contents::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if is_manifest(&path).is_none() || !path.is_file() {
            continue;
        }
        match std::fs::read(&path) {
            Ok(bytes) => {
                contents.insert(path, bytes);
            }
            // Removed between listing and reading: the next poll sees the new state.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(contents)
}

/// Parses every file; a broken file is reported and skipped, the rest still count.
pub fn load(contents: &Contents) -> (Snapshot, Vec<String>) {
    let mut planes = Vec::new();
    let mut secrets = Vec::new();
    let mut problems = Vec::new();
    for (path, bytes) in contents {
        let is_json = is_manifest(path) == Some(true);
        let parsed = std::str::from_utf8(bytes)
            .map_err(|_| "not UTF-8 text".to_string())
            .and_then(|text| manifest::parse_file(text, is_json));
        match parsed {
            Err(e) => problems.push(format!("{}: {e}; the file is skipped", path.display())),
            Ok(objects) => {
                for object in objects {
                    match object {
                        Object::Plane(p) => planes.push(*p),
                        Object::Secret(s) => secrets.push(*s),
                        Object::Other { kind, name } => {
                            tracing::debug!(file = %path.display(), kind, name, "ignoring a kind the registry does not use");
                        }
                    }
                }
            }
        }
    }
    let snapshot = Snapshot::resolve(&planes, &secrets);
    for entry in &snapshot.entries {
        if let Err(problem) = &entry.client_ca {
            problems.push(format!(
                "{} {} (planeID {}): {problem}; its agents are refused",
                entry.kind, entry.cr, entry.key.plane_id
            ));
        }
    }
    (snapshot, problems)
}

impl PlaneSource for DirectorySource {
    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    fn run(
        self: Box<Self>,
        publish: watch::Sender<Option<Arc<Snapshot>>>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut last: Option<Contents> = None;
            let mut last_error: Option<String> = None;
            loop {
                let dir = self.dir.clone();
                let read = tokio::task::spawn_blocking(move || read_dir(&dir))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                match read {
                    Err(e) => {
                        let message = e.to_string();
                        if last_error.as_ref() != Some(&message) {
                            tracing::error!(dir = %self.dir.display(), error = %message,
                                "cannot read the planes directory; keeping the planes loaded before");
                            last_error = Some(message);
                        }
                    }
                    Ok(contents) if last.as_ref() != Some(&contents) => {
                        last_error = None;
                        let (snapshot, problems) = load(&contents);
                        for problem in &problems {
                            tracing::warn!("{problem}");
                        }
                        tracing::info!(
                            dir = %self.dir.display(),
                            files = contents.len(),
                            planes = snapshot.entries.len(),
                            "planes loaded"
                        );
                        last = Some(contents);
                        if publish.send(Some(Arc::new(snapshot))).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                }
                tokio::select! {
                    _ = tokio::time::sleep(POLL_INTERVAL) => {}
                    _ = publish.closed() => return,
                }
            }
        })
    }
}
