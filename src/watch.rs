//! Watching files for changes, the way deployments change them: an atomic rename, a Kubernetes
//! `..data` symlink swap, an editor that truncates and rewrites. All of these are seen by watching
//! the **folders** that hold the files, not the files (a watch on a file follows its old inode).
//!
//! Every create, write, rename or removal in a watched folder calls back; the caller debounces and
//! compares contents, so a touch that changes nothing costs a hash, not a reload. Reads (access
//! events) are ignored: the reload's own reads must not trigger another.

use std::path::{Path, PathBuf};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// Watches the folders of some files while it lives.
pub struct FolderWatch {
    _watcher: RecommendedWatcher,
}

impl FolderWatch {
    /// Calls `on_change` (on the watcher's own thread) for each change in the folders holding
    /// `files`.
    pub fn new(files: &[PathBuf], on_change: impl Fn() + Send + 'static) -> notify::Result<Self> {
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match event {
                    Ok(event) => !matches!(event.kind, EventKind::Access(_)),
                    // An overflowed queue may hide a change: look.
                    Err(_) => true,
                };
                if relevant {
                    on_change();
                }
            })?;
        let mut folders: Vec<PathBuf> = Vec::new();
        for file in files {
            let folder = match file.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                _ => Path::new(".").to_path_buf(),
            };
            if !folders.contains(&folder) {
                watcher.watch(&folder, RecursiveMode::NonRecursive)?;
                folders.push(folder);
            }
        }
        Ok(Self { _watcher: watcher })
    }
}
