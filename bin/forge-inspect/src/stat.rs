//! `stat`: every field of an inode, its names, its extents with their disk
//! addresses and compression, and its xattrs.
use std::fmt::Write as _;

use btrfs_image::btrfs_format::consts::*;
use btrfs_image::btrfs_format::items::{parse_inode_extrefs, parse_inode_refs};
use btrfs_image::btrfs_format::Key;
use btrfs_image::dump::{compression_name, escape_bytes, inode_flags_str};
use btrfs_image::{FileExtentKind, Image};
use serde::Serialize;

use crate::{meta, InodeId, Kind, Meta, Result};

/// One name of the inode (INODE_REF / INODE_EXTREF).
#[derive(Debug, Clone, Serialize)]
pub struct NameRef {
    pub parent: u64,
    pub index: u64,
    pub name: String,
}

/// One EXTENT_DATA item.
#[derive(Debug, Clone, Serialize)]
pub struct ExtentEntry {
    pub file_offset: u64,
    /// Bytes of the file it covers.
    pub length: u64,
    /// inline, regular, prealloc or hole.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub compression: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_bytenr: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_num_bytes: Option<u64>,
    /// Offset into the (decompressed) extent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extent_offset: Option<u64>,
    pub ram_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inline_size: Option<usize>,
    /// Byte offsets in the image file of each copy of the extent.
    pub physical: Vec<u64>,
    /// Why the disk address does not map, if it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapping_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct XattrEntry {
    pub name: String,
    /// The value, escaped like names.
    pub value: String,
    pub size: usize,
}

/// Everything `stat` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatInfo {
    pub path: String,
    #[serde(flatten)]
    pub meta: Meta,
    pub flag_names: String,
    pub names: Vec<NameRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub extents: Vec<ExtentEntry>,
    pub xattrs: Vec<XattrEntry>,
}

/// Collect the stat of inode `id`.
pub fn stat(img: &Image, id: InodeId, shown: &str) -> Result<StatInfo> {
    let m = meta(img, id)?;
    let root = img.fs_root(id.subvol)?;
    let mut names = Vec::new();
    for it in img.range(
        &root,
        Key::new(id.ino, BTRFS_INODE_REF_KEY, 0),
        Key::new(id.ino, BTRFS_INODE_EXTREF_KEY, u64::MAX),
    ) {
        let it = it?;
        let at = btrfs_image::Location::Item {
            tree: id.subvol,
            key: it.key,
        };
        let parsed = if it.key.item_type == BTRFS_INODE_REF_KEY {
            parse_inode_refs(it.key.offset, it.data)
        } else {
            parse_inode_extrefs(it.data)
        }
        .map_err(|e| btrfs_image::Error::corrupt(at, e.to_string()))?;
        for n in parsed {
            names.push(NameRef {
                parent: n.parent,
                index: n.index,
                name: escape_bytes(n.name),
            });
        }
    }
    let target = if m.kind == Kind::Symlink {
        Some(escape_bytes(&img.readlink(id.subvol, id.ino)?))
    } else {
        None
    };
    let mut extents = Vec::new();
    for fe in img.file_extents(id.subvol, id.ino)? {
        let length = fe.len();
        let (kind, disk, extent_offset, inline_size) = match &fe.kind {
            FileExtentKind::Inline { data } => ("inline", None, None, Some(data.len())),
            FileExtentKind::Regular {
                disk_bytenr: 0,
                offset,
                ..
            } => ("hole", None, Some(*offset), None),
            FileExtentKind::Regular {
                disk_bytenr,
                disk_num_bytes,
                offset,
                ..
            } => (
                "regular",
                Some((*disk_bytenr, *disk_num_bytes)),
                Some(*offset),
                None,
            ),
            FileExtentKind::Prealloc {
                disk_bytenr,
                disk_num_bytes,
                offset,
                ..
            } => (
                "prealloc",
                Some((*disk_bytenr, *disk_num_bytes)),
                Some(*offset),
                None,
            ),
        };
        let (physical, mapping_error) = match disk {
            Some((b, n)) => match img.chunk_map().map(b, n) {
                Ok(p) => (p, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            },
            None => (Vec::new(), None),
        };
        extents.push(ExtentEntry {
            file_offset: fe.file_offset,
            length,
            kind,
            compression: compression_name(fe.compression),
            disk_bytenr: disk.map(|d| d.0),
            disk_num_bytes: disk.map(|d| d.1),
            extent_offset,
            ram_bytes: fe.ram_bytes,
            inline_size,
            physical,
            mapping_error,
        });
    }
    let xattrs = img
        .xattrs(id.subvol, id.ino)?
        .into_iter()
        .map(|x| XattrEntry {
            name: escape_bytes(&x.name),
            size: x.value.len(),
            value: escape_bytes(&x.value),
        })
        .collect();
    Ok(StatInfo {
        path: shown.to_string(),
        flag_names: inode_flags_str(m.flags),
        meta: m,
        names,
        target,
        extents,
        xattrs,
    })
}

/// The text form of [`stat`].
pub fn format_stat(s: &StatInfo) -> String {
    let m = &s.meta;
    let mut o = String::new();
    let _ = writeln!(o, "  File: {}", s.path);
    if let Some(t) = &s.target {
        let _ = writeln!(o, "Target: {t}");
    }
    let _ = writeln!(
        o,
        "  Type: {}  Inode: {}  Subvolume: {}  Generation: {}",
        m.kind.name(),
        m.id.ino,
        m.id.subvol,
        m.generation
    );
    let _ = writeln!(
        o,
        "  Size: {}  Nbytes: {}  Links: {}",
        m.size, m.nbytes, m.nlink
    );
    let _ = writeln!(
        o,
        "  Mode: {:04o} ({})  Uid: {}  Gid: {}",
        m.perm,
        crate::mode_string(m.mode),
        m.uid,
        m.gid
    );
    let _ = writeln!(
        o,
        "  Rdev: {},{}  Flags: {}",
        m.rdev.0, m.rdev.1, s.flag_names
    );
    for (n, t) in [
        ("Atime", m.atime),
        ("Mtime", m.mtime),
        ("Ctime", m.ctime),
        ("Otime", m.otime),
    ] {
        let _ = writeln!(o, " {n}: {t} ({}.{:09})", t.sec, t.nsec);
    }
    for n in &s.names {
        let _ = writeln!(
            o,
            "  Name: {} (parent {} index {})",
            n.name, n.parent, n.index
        );
    }
    for e in &s.extents {
        let _ = write!(
            o,
            "Extent: offset {} length {} {}",
            e.file_offset, e.length, e.kind
        );
        if let (Some(b), Some(n)) = (e.disk_bytenr, e.disk_num_bytes) {
            let _ = write!(o, " disk_bytenr {b} disk_num_bytes {n}");
        }
        if let Some(off) = e.extent_offset {
            let _ = write!(o, " extent_offset {off}");
        }
        if let Some(n) = e.inline_size {
            let _ = write!(o, " inline_size {n}");
        }
        let _ = write!(
            o,
            " ram_bytes {} compression {}",
            e.ram_bytes, e.compression
        );
        if !e.physical.is_empty() {
            let p: Vec<String> = e.physical.iter().map(|p| p.to_string()).collect();
            let _ = write!(o, " physical {}", p.join(","));
        }
        if let Some(err) = &e.mapping_error {
            let _ = write!(o, " UNMAPPED ({err})");
        }
        o.push('\n');
    }
    for x in &s.xattrs {
        let _ = writeln!(o, " Xattr: {} = \"{}\" ({} bytes)", x.name, x.value, x.size);
    }
    o
}
