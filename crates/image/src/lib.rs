//! Read btrfs images offline: superblock, chunk map, B-tree search and iteration,
//! and file reads with decompression.
//!
//! Everything read from the image is treated as hostile: lengths, offsets, levels
//! and counts are checked before use, tree walks are bounded by level and key order,
//! and no allocation is sized by an unchecked on-disk number. Errors say where on
//! disk the problem is ([`Location`]).
//!
//! ```no_run
//! # fn main() -> btrfs_image::Result<()> {
//! let img = btrfs_image::Image::open(std::path::Path::new("disk.img"))?;
//! let sv = img.default_subvol()?;
//! let (sv, ino) = img.lookup(sv, b"etc/hostname")?;
//! let bytes = img.read_file_all(sv, ino, 1 << 20)?;
//! # Ok(()) }
//! ```
#![deny(unsafe_op_in_unsafe_fn)]

mod chunk;
mod compress;
pub mod dump;
mod error;
mod fs;
mod image;
pub mod lzo;
mod tree;

pub use btrfs_format;
pub use chunk::{ChunkMap, ChunkMapping, StripeMapping};
pub use compress::decompress;
pub use error::{Error, Location, Result};
pub use fs::{DirEntryOwned, FileExtentInfo, FileExtentKind, Xattr, MAX_READ, MAX_SYMLINK};
pub use image::{read_superblock, superblock_copies, Image, SuperblockCopy, SuperblockStatus};
pub use tree::{BlockRef, Root, TreeBlocks, TreeItem, TreeIter};

// An `Image` is shared across threads by the checker: keep it Send + Sync.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Image>();
};
