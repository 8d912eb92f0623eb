//! One consistent read of a watched directory or file, plus its content hash.
//!
//! A directory is read as a ConfigMap volume is meant to be read: the top-level entries whose names do not
//! start with `.` (the kubelet's `..data` and timestamped directories are hidden that way), following symlinks,
//! keeping regular files only. Because the kubelet swaps `..data` while we might be reading, the target of
//! `..data` is checked before and after the read, and the read is retried if it moved, so a snapshot never mixes
//! two ConfigMap versions.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Result, SourceError};

/// The name of the kubelet's symlink to the current timestamped data directory.
pub const DATA_LINK: &str = "..data";

/// How many times a read is retried when the kubelet swapped `..data` during it.
const CONSISTENT_READ_ATTEMPTS: usize = 10;

/// The full content of a directory at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSnapshot {
    /// The directory that was read.
    pub dir: PathBuf,
    /// File name (ConfigMap key) to UTF-8 content.
    pub files: BTreeMap<String, String>,
    /// Hex SHA-256 over the sorted (key, content) pairs; equal content gives an equal hash.
    pub hash: String,
}

/// The content of one file at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSnapshot {
    /// The file that was read.
    pub path: PathBuf,
    /// Its UTF-8 content.
    pub content: String,
    /// Hex SHA-256 of the content.
    pub hash: String,
}

/// Reads every top-level regular file of `dir` whose name does not start with `.`, following symlinks.
///
/// A symlink whose target vanished (the kubelet removes a deleted key's link just after swapping `..data`) and
/// an entry that disappears while being read are skipped: the watch re-reads after the update settles. A file
/// that is not UTF-8 is an error naming it.
pub fn read_dir_snapshot(dir: &Path) -> Result<DirSnapshot> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let before = data_target(dir);
        let read = read_dir_once(dir);
        let after = data_target(dir);
        // `..data` moved under us: what we read may mix two versions (or failed because the old one vanished).
        if before != after && attempt < CONSISTENT_READ_ATTEMPTS {
            continue;
        }
        let files = read?;
        let hash = hash_files(&files);
        return Ok(DirSnapshot {
            dir: dir.to_path_buf(),
            files,
            hash,
        });
    }
}

/// Reads one file (following symlinks) as UTF-8.
pub fn read_file_snapshot(path: &Path) -> Result<FileSnapshot> {
    let meta = fs::metadata(path).map_err(|source| SourceError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(SourceError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let bytes = fs::read(path).map_err(|source| SourceError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let content = String::from_utf8(bytes).map_err(|_| SourceError::NotUtf8 {
        path: path.to_path_buf(),
    })?;
    let hash = hex_sha256(content.as_bytes());
    Ok(FileSnapshot {
        path: path.to_path_buf(),
        content,
        hash,
    })
}

/// Hex SHA-256 over sorted (key, content) pairs, each part length-prefixed so that no two different maps hash
/// alike.
pub fn hash_files(files: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (key, content) in files {
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key.as_bytes());
        hasher.update((content.len() as u64).to_be_bytes());
        hasher.update(content.as_bytes());
    }
    hex(&hasher.finalize())
}

/// Hex SHA-256 of some bytes.
pub fn hex_sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing into a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Where `..data` points now, if it exists.
fn data_target(dir: &Path) -> Option<PathBuf> {
    fs::read_link(dir.join(DATA_LINK)).ok()
}

fn read_dir_once(dir: &Path) -> Result<BTreeMap<String, String>> {
    let read_dir_err = |source| SourceError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(read_dir_err)? {
        let entry = entry.map_err(read_dir_err)?;
        let raw_name = entry.file_name();
        let Some(name) = raw_name.to_str() else {
            return Err(SourceError::NotUtf8Name {
                dir: dir.to_path_buf(),
                name: raw_name.to_string_lossy().into_owned(),
            });
        };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            // Dangling symlink or entry removed since the listing: mid-update, skip it.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                tracing::debug!(path = %path.display(), "skipping entry that vanished or dangles");
                continue;
            }
            Err(source) => return Err(SourceError::ReadFile { path, source }),
        };
        if !meta.is_file() {
            continue;
        }
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(source) => return Err(SourceError::ReadFile { path, source }),
        };
        let content = String::from_utf8(bytes).map_err(|_| SourceError::NotUtf8 { path })?;
        files.insert(name.to_owned(), content);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hash_is_stable_and_content_sensitive() {
        let a = hash_files(&map(&[("a", "1"), ("b", "2")]));
        assert_eq!(a, hash_files(&map(&[("b", "2"), ("a", "1")])));
        assert_eq!(a.len(), 64);
        assert_ne!(a, hash_files(&map(&[("a", "1"), ("b", "3")])));
        // Moving bytes between key and content must change the hash.
        assert_ne!(
            hash_files(&map(&[("ab", "c")])),
            hash_files(&map(&[("a", "bc")]))
        );
        assert_ne!(hash_files(&map(&[])), hash_files(&map(&[("", "")])));
    }

    #[test]
    fn hex_sha256_of_empty_input_is_the_known_digest() {
        assert_eq!(
            hex_sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
