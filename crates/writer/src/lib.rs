//! Write btrfs images: chunk layout, allocator, bulk B-tree builder, commit.
//!
//! Everything is planned in memory and written with positional writes; the
//! superblock goes last, so an interrupted run never leaves a valid filesystem.

pub mod btree;
pub mod commit;
pub mod compress;
pub mod config;
pub mod data;
pub mod fstree;
pub mod layout;
pub mod mkfs;
pub mod output;
mod pipeline;
pub mod rootdir;
pub mod scan;
pub mod summary;

pub use config::{Features, MkfsConfig, Profile};
pub use mkfs::{make_empty_filesystem, MkfsReport};
pub use rootdir::{make_rootdir_filesystem, RootdirOptions};

use std::path::PathBuf;

/// Errors from planning or writing an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cause is part of the message, not a `source()`: a chain printed
    /// with `{:#}` would otherwise say it twice.
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{0}")]
    InvalidOption(String),
    #[error(
        "image size {size} bytes ({}) is too small: the minimum is {min} bytes ({})",
        summary::human(*size),
        summary::human(*min)
    )]
    TooSmall { size: u64, min: u64 },
    #[error("{path}: {what}; use -f to overwrite it")]
    ExistingFilesystem { path: PathBuf, what: String },
    #[error("{0}")]
    NoSpace(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
