//! The static file index: every servable file under the root, its validators, small files' bytes, kept fresh by a background walk.
//!
//! The index is built by walking the directory off the io cores (at start-up,
//! then every refresh interval), so an io core answering `/static/...` never
//! touches the disk for metadata, and not at all for files up to
//! `inline_max` bytes, whose bytes live in the index. It is read-mostly state
//! every core needs, so it is one lock-free `papaya` map shared by all cores
//! (one copy of each file per node, not per core). Larger files keep an open
//! descriptor, sent with splice by the connection's core.

use std::collections::HashSet;
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::conditional::Coding;
use super::StaticOptions;
use crate::http::date::render_imf_fixdate;

/// One stored form of a file: the original, or a precompressed sibling.
#[derive(Debug)]
pub struct Variant {
    pub len: u64,
    /// Strong validator, quoted: `"<len>-<mtime ns>"` in hex, plus the coding.
    pub etag: String,
    /// The bytes, for files up to `inline_max`.
    pub bytes: Option<Arc<[u8]>>,
    /// An open descriptor, for larger files.
    pub file: Option<Arc<File>>,
    /// `Content-Encoding` of a sibling; `None` for the original.
    pub coding: Option<Coding>,
    /// What identifies this version on disk: a change means a reload.
    stamp: (u64, i64, i64, u64),
}

/// A servable file.
#[derive(Debug)]
pub struct Entry {
    pub content_type: &'static str,
    /// Modification time in whole seconds, for `Last-Modified` and `If-(Un)Modified-Since`.
    pub mtime_secs: u64,
    pub last_modified: String,
    pub cache_control: String,
    pub identity: Variant,
    /// Fresh precompressed siblings, in [`Coding::ALL`] order.
    pub siblings: Vec<Variant>,
}

/// What a request path resolves to.
pub enum Lookup {
    File(Arc<Entry>),
    /// A directory named without its trailing slash.
    Directory,
    Missing,
}

/// Every servable file under one root, keyed by its path relative to the root.
pub struct Index {
    root: PathBuf,
    options: StaticOptions,
    files: papaya::HashMap<String, Arc<Entry>>,
    directories: papaya::HashSet<String>,
}

impl Index {
    /// Walks `options.dir` once; fails if it is not a readable directory.
    pub fn build(options: StaticOptions) -> std::io::Result<Arc<Self>> {
        let root = options.dir.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        let index = Arc::new(Self {
            root,
            options,
            files: papaya::HashMap::new(),
            directories: papaya::HashSet::new(),
        });
        index.refresh();
        Ok(index)
    }

    pub fn options(&self) -> &StaticOptions {
        &self.options
    }

    /// Looks up a decoded relative path (no leading slash).
    pub fn lookup(&self, relative: &str) -> Lookup {
        let files = self.files.pin();
        if let Some(entry) = files.get(relative) {
            return Lookup::File(Arc::clone(entry));
        }
        let directories = self.directories.pin();
        if relative.is_empty() || relative.ends_with('/') {
            let dir = relative.trim_end_matches('/');
            if directories.contains(dir) {
                let index_file = if dir.is_empty() {
                    self.options.index_file.clone()
                } else {
                    format!("{dir}/{}", self.options.index_file)
                };
                if let Some(entry) = files.get(&index_file) {
                    return Lookup::File(Arc::clone(entry));
                }
            }
            return Lookup::Missing;
        }
        if directories.contains(relative) {
            return Lookup::Directory;
        }
        Lookup::Missing
    }

    /// The configured 404 page, if any.
    pub fn not_found_page(&self) -> Option<Arc<Entry>> {
        let page = self.options.not_found_page.as_deref()?;
        self.files.pin().get(page).cloned()
    }

    /// Re-walks the directory: new and changed files are (re)loaded,
    /// vanished ones dropped. Runs off the io cores.
    pub fn refresh(&self) {
        let mut seen_files = Vec::new();
        let mut seen_dirs = vec![String::new()];
        self.walk(&self.root.clone(), "", &mut seen_files, &mut seen_dirs, 0);
        let seen_files: HashSet<String> = seen_files.into_iter().collect();
        let files = self.files.pin();
        files.retain(|k, _| seen_files.contains(k));
        let seen_dirs: HashSet<String> = seen_dirs.into_iter().collect();
        let directories = self.directories.pin();
        directories.retain(|d| seen_dirs.contains(d));
        for dir in seen_dirs {
            directories.insert(dir);
        }
    }

    fn walk(
        &self,
        dir: &Path,
        prefix: &str,
        seen_files: &mut Vec<String>,
        seen_dirs: &mut Vec<String>,
        depth: usize,
    ) {
        const MAX_DEPTH: usize = 32;
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for item in entries.flatten() {
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            // Dotfiles (.git, .env) are never served.
            if name.starts_with('.') {
                continue;
            }
            let path = item.path();
            let Some(metadata) = self.inside_root(&path) else {
                continue;
            };
            let relative = format!("{prefix}{name}");
            if metadata.is_dir() {
                if depth < MAX_DEPTH {
                    self.walk(
                        &path,
                        &format!("{relative}/"),
                        seen_files,
                        seen_dirs,
                        depth + 1,
                    );
                    seen_dirs.push(relative);
                }
            } else if metadata.is_file() && !is_sibling(dir, name) {
                self.load(&path, &relative, &metadata);
                seen_files.push(relative);
            }
        }
    }

    /// The metadata of `path` if it (or, for a symlink, its target) lies inside the root.
    fn inside_root(&self, path: &Path) -> Option<Metadata> {
        let link = std::fs::symlink_metadata(path).ok()?;
        if link.file_type().is_symlink() {
            let target = path.canonicalize().ok()?;
            if !target.starts_with(&self.root) {
                return None;
            }
        }
        std::fs::metadata(path).ok()
    }

    fn load(&self, path: &Path, relative: &str, metadata: &Metadata) {
        let files = self.files.pin();
        let stamp = stamp_of(metadata);
        let siblings_stamps: Vec<Option<(u64, i64, i64, u64)>> = Coding::ALL
            .iter()
            .map(|c| sibling_path(path, *c))
            .map(|p| std::fs::metadata(p).ok().map(|m| stamp_of(&m)))
            .collect();
        if let Some(existing) = files.get(relative) {
            let unchanged = existing.identity.stamp == stamp
                && Coding::ALL.iter().zip(&siblings_stamps).all(|(c, s)| {
                    let have = existing
                        .siblings
                        .iter()
                        .find(|v| v.coding == Some(*c))
                        .map(|v| v.stamp);
                    have == s.filter(|s| fresh(s, &stamp))
                });
            if unchanged {
                return;
            }
        }
        let Some(identity) = self.variant(path, metadata, None) else {
            return;
        };
        let mut siblings = Vec::new();
        for (coding, sibling_stamp) in Coding::ALL.iter().zip(&siblings_stamps) {
            // A sibling older than its original is stale: it must never win.
            let Some(s) = sibling_stamp.filter(|s| fresh(s, &stamp)) else {
                continue;
            };
            let sibling = sibling_path(path, *coding);
            // A sibling is served as the original's bytes: it must not lead out of the root either.
            let Some(meta) = self.inside_root(&sibling) else {
                continue;
            };
            if stamp_of(&meta) == s {
                if let Some(variant) = self.variant(&sibling, &meta, Some(*coding)) {
                    siblings.push(variant);
                }
            }
        }
        let mtime_secs = metadata.mtime().max(0) as u64;
        let entry = Entry {
            content_type: content_type(relative),
            mtime_secs,
            last_modified: String::from_utf8_lossy(&render_imf_fixdate(mtime_secs)).into_owned(),
            cache_control: self.options.cache_control_for(relative),
            identity,
            siblings,
        };
        files.insert(relative.to_owned(), Arc::new(entry));
    }

    fn variant(&self, path: &Path, metadata: &Metadata, coding: Option<Coding>) -> Option<Variant> {
        let stamp = stamp_of(metadata);
        let len = metadata.len();
        let mtime_ns = stamp.1 as u128 * 1_000_000_000 + stamp.2 as u128;
        let suffix = coding.map_or(String::new(), |c| format!("-{}", c.token()));
        let etag = format!("\"{len:x}-{mtime_ns:x}{suffix}\"");
        let (bytes, file) = if len <= self.options.inline_max {
            let bytes = std::fs::read(path).ok()?;
            // Changed while we read it: take it next time round.
            if bytes.len() as u64 != len {
                return None;
            }
            (Some(Arc::from(bytes)), None)
        } else {
            (None, Some(Arc::new(File::open(path).ok()?)))
        };
        Some(Variant {
            len,
            etag,
            bytes,
            file,
            coding,
            stamp,
        })
    }

    /// Starts the thread that re-walks the directory; it ends with the index.
    pub fn start_refresher(self: &Arc<Self>) -> std::io::Result<()> {
        let index: Weak<Self> = Arc::downgrade(self);
        let every = self.options.refresh;
        std::thread::Builder::new()
            .name("percore-static-refresh".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(index) = index.upgrade() else { return };
                index.refresh();
            })?;
        Ok(())
    }
}

/// `app.css.gz` beside `app.css` is a precompressed sibling, served only as
/// `app.css`; `data.tar.gz` with no `data.tar` is a file in its own right.
fn is_sibling(dir: &Path, name: &str) -> bool {
    Coding::ALL.iter().any(|coding| {
        name.strip_suffix(coding.suffix())
            .is_some_and(|original| !original.is_empty() && dir.join(original).is_file())
    })
}

fn stamp_of(metadata: &Metadata) -> (u64, i64, i64, u64) {
    (
        metadata.len(),
        metadata.mtime(),
        metadata.mtime_nsec(),
        metadata.ino(),
    )
}

/// A sibling is fresh if it was written no earlier than its original.
fn fresh(sibling: &(u64, i64, i64, u64), original: &(u64, i64, i64, u64)) -> bool {
    (sibling.1, sibling.2) >= (original.1, original.2)
}

fn sibling_path(path: &Path, coding: Coding) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(coding.suffix());
    PathBuf::from(name)
}

/// The media type for a file name, by extension.
pub fn content_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map_or("", |(_, e)| e)
        .to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

/// How often the directory is re-walked by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(1);
