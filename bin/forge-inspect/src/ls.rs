//! `ls`: the entries of a directory (or one file), optionally long and recursive.
use btrfs_image::dump::escape_bytes;
use btrfs_image::Image;
use serde::Serialize;

use crate::{show_path, walk, InodeId, Kind, Meta, Result, WalkOptions};

/// One listed entry.
#[derive(Debug, Clone, Serialize)]
pub struct LsEntry {
    /// Path relative to the listed directory (names escaped: see
    /// [`btrfs_image::dump::escape_bytes`]).
    pub path: String,
    #[serde(flatten)]
    pub meta: Meta,
    /// Symlink target (escaped), with `long`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct LsOptions {
    /// Read symlink targets (for `-l` and `--json`).
    pub long: bool,
    pub recursive: bool,
    pub max_depth: usize,
}

/// Call `f` for each entry under `start` (or for `start` itself when it is not a
/// directory, shown as `shown_as`), in name order; recursive listings go depth
/// first, a directory just before its contents.
pub fn ls(
    img: &Image,
    start: InodeId,
    shown_as: &str,
    opts: LsOptions,
    f: &mut dyn FnMut(LsEntry) -> Result<()>,
) -> Result<()> {
    let wopts = WalkOptions {
        strict_names: false,
        recursive: opts.recursive,
        max_depth: opts.max_depth,
    };
    walk(img, start, wopts, &mut |v| {
        if v.depth == 0 && v.meta.kind == Kind::Dir {
            return Ok(true);
        }
        let target = if opts.long && v.meta.kind == Kind::Symlink {
            Some(escape_bytes(
                &img.readlink(v.meta.id.subvol, v.meta.id.ino)?,
            ))
        } else {
            None
        };
        let path = if v.depth == 0 {
            shown_as.to_string()
        } else {
            show_path(&v.path)
        };
        f(LsEntry {
            path,
            meta: v.meta.clone(),
            target,
        })?;
        Ok(true)
    })
}

/// All entries, collected (for `--json`).
pub fn ls_collect(
    img: &Image,
    start: InodeId,
    shown_as: &str,
    opts: LsOptions,
) -> Result<Vec<LsEntry>> {
    let mut out = Vec::new();
    ls(img, start, shown_as, opts, &mut |e| {
        out.push(e);
        Ok(())
    })?;
    Ok(out)
}

/// One `ls -l` line: mode, links, owner, group, size (or device numbers),
/// mtime with nanoseconds (UTC), path, and ` -> target` for symlinks.
pub fn format_long(e: &LsEntry) -> String {
    let m = &e.meta;
    let size = match m.kind {
        Kind::Chardev | Kind::Blockdev => format!("{}, {}", m.rdev.0, m.rdev.1),
        _ => m.size.to_string(),
    };
    let mut line = format!(
        "{} {:>3} {:>5} {:>5} {:>10} {} {}",
        crate::mode_string(m.mode),
        m.nlink,
        m.uid,
        m.gid,
        size,
        m.mtime,
        e.path
    );
    if let Some(t) = &e.target {
        line.push_str(" -> ");
        line.push_str(t);
    }
    line
}
