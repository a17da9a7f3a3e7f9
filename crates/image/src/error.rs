//! Errors that name where on disk something went wrong.
use std::path::PathBuf;

use btrfs_format::Key;

/// Where in the image a problem was found; `Display` reads like
/// "tree block at logical 30588928" or "item (257 INODE_ITEM 0) in tree 5".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A byte offset in the image file.
    Physical(u64),
    /// A logical (chunk-mapped) address.
    Logical(u64),
    /// The tree block whose logical address this is.
    TreeBlock(u64),
    /// Superblock copy `mirror` at its physical offset.
    Superblock { mirror: usize, offset: u64 },
    /// An item of a tree.
    Item { tree: u64, key: Key },
    /// An inode of a subvolume.
    Inode { subvol: u64, ino: u64 },
}

impl core::fmt::Display for Location {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Location::Physical(p) => write!(f, "physical {p}"),
            Location::Logical(l) => write!(f, "logical {l}"),
            Location::TreeBlock(l) => write!(f, "tree block at logical {l}"),
            Location::Superblock { mirror, offset } => {
                write!(f, "superblock copy {mirror} at physical {offset}")
            }
            Location::Item { tree, key } => write!(f, "item {key} in tree {tree}"),
            Location::Inode { subvol, ino } => write!(f, "inode {ino} in subvolume {subvol}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The image contradicts the format at `at`.
    #[error("{at}: {what}")]
    Corrupt { at: Location, what: String },
    /// Valid btrfs, but something this reader does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A name, inode or tree that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A request larger than the caller's (or our) limit.
    #[error("{what}: {size} bytes exceeds the limit of {limit}")]
    TooLarge { what: String, size: u64, limit: u64 },
}

impl Error {
    pub fn corrupt(at: Location, what: impl Into<String>) -> Self {
        Error::Corrupt {
            at,
            what: what.into(),
        }
    }

    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Turn a format decoding error into a corruption at `at`.
pub(crate) fn fmt_err(at: Location) -> impl FnOnce(btrfs_format::FormatError) -> Error {
    move |e| Error::corrupt(at, e.to_string())
}
