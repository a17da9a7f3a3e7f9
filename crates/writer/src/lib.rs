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

    /// An I/O error on a source path, saying what failed ("cannot open").
    pub(crate) fn source(path: &std::path::Path, what: &str, e: std::io::Error) -> Self {
        Error::io(path, std::io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

/// Phase timings on stderr when FORGE_MKFS_TIMING is set (for profiling):
/// each mark prints the time since the previous one; `sub` indents the
/// phases inside a phase.
pub(crate) struct Timing {
    /// Wall clock and process CPU time at the last mark.
    last: Option<(std::time::Instant, std::time::Duration)>,
    sub: bool,
}

/// CPU time of the whole process (all threads): a phase whose CPU time is
/// well under its wall time times the thread count leaves cores idle.
fn process_cpu() -> std::time::Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

impl Timing {
    pub(crate) fn new(sub: bool) -> Self {
        Timing {
            last: std::env::var_os("FORGE_MKFS_TIMING")
                .map(|_| (std::time::Instant::now(), process_cpu())),
            sub,
        }
    }

    pub(crate) fn mark(&mut self, what: &str) {
        if let Some((t, c)) = self.last {
            let indent = if self.sub { "  " } else { "" };
            // Resident and peak memory so far, as the kernel counts them.
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let kib = |field: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            eprintln!(
                "timing: {indent}{what}: {:.3}s (cpu {:.3}s, rss {} MiB, peak {} MiB)",
                t.elapsed().as_secs_f64(),
                (process_cpu().saturating_sub(c)).as_secs_f64(),
                kib("VmRSS:") >> 10,
                kib("VmHWM:") >> 10
            );
            self.last = Some((std::time::Instant::now(), process_cpu()));
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
