//! [`inspect_all`]: every read-only command over a whole image, bounded, for
//! fuzzing and robustness tests.
use std::io::Write;

use btrfs_image::btrfs_format::consts::*;
use btrfs_image::Image;

use crate::{cat, ls, stat, walk, InodeId, Kind, Limits, WalkOptions};

/// A sink that takes at most `left` bytes, then fails (ending a runaway dump).
struct Capped {
    left: usize,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.left {
            self.left = 0;
            return Err(std::io::Error::other("output limit reached"));
        }
        self.left -= buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes of dump output produced at most.
const DUMP_LIMIT: usize = 64 << 20;
/// Entries visited at most per subvolume, and files read at most in all.
const MAX_ENTRIES: usize = 20_000;
const MAX_FILES_READ: usize = 2_000;
/// Bytes of a file read at most.
const FILE_READ_LIMIT: u64 = 1 << 20;

/// Open `image_bytes` as an image and run everything forge-inspect can do that
/// only reads: dump-super of every copy, dump-tree of every tree, `ls -lR`,
/// `stat` of every entry and `cat` of the start of every file, in every
/// subvolume, with limits on output, entries and bytes read. Errors end the
/// part of the work they hit and are otherwise ignored; returns how many
/// things were visited. Never panics, never hangs (the point for a fuzzer).
pub fn inspect_all(image_bytes: Vec<u8>) -> usize {
    let mut n = 0usize;
    for mirror in 0..BTRFS_SUPER_MIRROR_MAX {
        let off = btrfs_sb_offset(mirror) as usize;
        if let Some(raw) = image_bytes.get(off..off.saturating_add(BTRFS_SUPER_INFO_SIZE)) {
            if let Ok(s) = btrfs_image::dump::dump_superblock(raw, off as u64) {
                n += s.len();
            }
        }
    }
    let Ok(img) = Image::from_bytes(image_bytes) else {
        return n;
    };
    let _ = img.dump_all_trees(&mut Capped { left: DUMP_LIMIT });
    // A block at every root named by the superblock, by itself.
    let _ = img.dump_block(
        img.superblock().root.get(),
        &mut Capped { left: DUMP_LIMIT },
    );
    let limits = Limits {
        max_file_size: FILE_READ_LIMIT,
        ..Limits::for_image(img.bytes().len() as u64)
    };
    let subvols = img.subvolumes().unwrap_or_default();
    let mut files_read = 0usize;
    for sv in subvols.into_iter().take(64) {
        let Ok(top) = img.subvol_root_dir(sv) else {
            continue;
        };
        let start = InodeId {
            subvol: sv,
            ino: top,
        };
        let lopts = ls::LsOptions {
            long: true,
            recursive: true,
            max_depth: 64,
        };
        let mut entries = 0usize;
        let _ = ls::ls(&img, start, ".", lopts, &mut |e| {
            n += ls::format_long(&e).len();
            entries += 1;
            if entries > MAX_ENTRIES {
                return Err(crate::Error::Refused("entry limit".into()));
            }
            Ok(())
        });
        let wopts = WalkOptions {
            strict_names: false,
            recursive: true,
            max_depth: 64,
        };
        let mut visited = 0usize;
        let _ = walk(&img, start, wopts, &mut |v| {
            visited += 1;
            if visited > MAX_ENTRIES {
                return Ok(false);
            }
            if let Ok(s) = stat::stat(&img, v.meta.id, ".") {
                n += stat::format_stat(&s).len();
                n += serde_json::to_string(&s).map(|j| j.len()).unwrap_or(0);
            }
            if v.meta.kind == Kind::File && files_read < MAX_FILES_READ {
                files_read += 1;
                // Whole files when small, else the first part through read_file.
                let _ = cat::cat(
                    &img,
                    v.meta.id,
                    ".",
                    &limits,
                    &mut Capped { left: usize::MAX },
                );
                if let Ok(d) = img.read_file(v.meta.id.subvol, v.meta.id.ino, 0, FILE_READ_LIMIT) {
                    n += d.len();
                }
            }
            Ok(true)
        });
    }
    n
}
