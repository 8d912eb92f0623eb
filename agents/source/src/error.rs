//! The error type of this crate: every variant names the path it is about.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = SourceError> = std::result::Result<T, E>;

/// Why a directory or file could not be read or watched.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The directory itself could not be listed (missing, not a directory, no permission).
    #[error("cannot read directory {}: {source}", path.display())]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file (or the target of a symlink) could not be read.
    #[error("cannot read file {}: {source}", path.display())]
    ReadFile {
        /// The file as named in the watched directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid UTF-8 text.
    #[error("file {} is not valid UTF-8", path.display())]
    NotUtf8 {
        /// The offending file.
        path: PathBuf,
    },
    /// A directory entry's name is not valid UTF-8 (ConfigMap keys always are).
    #[error("directory {} holds an entry whose name is not valid UTF-8: {name:?}", dir.display())]
    NotUtf8Name {
        /// The directory.
        dir: PathBuf,
        /// The raw name, lossily shown.
        name: String,
    },
    /// The path given to [`crate::watch_file`] is not a regular file.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file system watch could not be set up.
    #[error("cannot watch {}: {source}", path.display())]
    Watch {
        /// The watched directory.
        path: PathBuf,
        /// The underlying notify error.
        #[source]
        source: notify::Error,
    },
    /// A watch was started outside a tokio runtime.
    #[error("cannot watch {}: not called inside a tokio runtime", path.display())]
    NoRuntime {
        /// The path that was to be watched.
        path: PathBuf,
    },
}

impl SourceError {
    /// A short, stable label for metrics (`reason="..."`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            SourceError::ReadDir { .. } => "read_dir",
            SourceError::ReadFile { .. } => "read_file",
            SourceError::NotUtf8 { .. } => "not_utf8",
            SourceError::NotUtf8Name { .. } => "not_utf8_name",
            SourceError::NotAFile { .. } => "not_a_file",
            SourceError::Watch { .. } => "watch",
            SourceError::NoRuntime { .. } => "no_runtime",
        }
    }

    /// The path this error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            SourceError::ReadDir { path, .. }
            | SourceError::ReadFile { path, .. }
            | SourceError::NotUtf8 { path }
            | SourceError::NotAFile { path }
            | SourceError::Watch { path, .. }
            | SourceError::NoRuntime { path } => path,
            SourceError::NotUtf8Name { dir, .. } => dir,
        }
    }
}
