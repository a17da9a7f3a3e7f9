//! `diff`: compare a tree in the image with a directory on the host, bytes and
//! metadata, and list every difference.
//!
//! Compared for every path: presence, type, permission bits (with
//! setuid/setgid/sticky; not for symlinks), owner and group, size, mtime (with
//! nanoseconds), device numbers, symlink target, xattrs, file bytes, and which
//! paths are hard links of one another. Not compared: atime and ctime (reading
//! and copying change them), directory sizes (each filesystem counts its own),
//! inode numbers.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use btrfs_image::dump::escape_bytes;
use btrfs_image::Image;
use serde::Serialize;

use crate::{
    bad_name, dir_entries, join, meta, show_path, Error, InodeId, Kind, Limits, Meta, Result,
};

/// Fields to leave out of the comparison.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ignore {
    pub mode: bool,
    pub owner: bool,
    pub mtime: bool,
    /// Compare mtime to the second only (for sources that drop nanoseconds).
    pub nsec: bool,
    pub xattrs: bool,
    pub rdev: bool,
    pub links: bool,
    pub content: bool,
}

/// Names accepted by [`Ignore::parse`].
pub const IGNORE_NAMES: &[&str] = &[
    "mode", "owner", "mtime", "nsec", "xattrs", "rdev", "links", "content",
];

impl Ignore {
    /// A comma-separated list of [`IGNORE_NAMES`].
    pub fn parse(list: &str) -> Result<Ignore> {
        let mut i = Ignore::default();
        for w in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let slot = match w {
                "mode" => &mut i.mode,
                "owner" => &mut i.owner,
                "mtime" => &mut i.mtime,
                "nsec" => &mut i.nsec,
                "xattrs" | "xattr" => &mut i.xattrs,
                "rdev" => &mut i.rdev,
                "links" => &mut i.links,
                "content" => &mut i.content,
                other => {
                    return Err(Error::Usage(format!(
                        "--ignore: unknown field '{other}' (known: {})",
                        IGNORE_NAMES.join(", ")
                    )))
                }
            };
            *slot = true;
        }
        Ok(i)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DiffOptions {
    pub ignore: Ignore,
    pub limits: Limits,
}

/// One difference. `field` is `only-in-image`, `only-in-directory`, `type`,
/// `mode`, `uid`, `gid`, `size`, `mtime`, `rdev`, `target`, `xattr NAME`,
/// `content` or `hard-links`; `image` and `directory` say what each side has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub path: String,
    pub field: String,
    pub image: String,
    pub directory: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.field.as_str() {
            "only-in-image" => write!(f, "{}: only in the image ({})", self.path, self.image),
            "only-in-directory" => {
                write!(
                    f,
                    "{}: only in the directory ({})",
                    self.path, self.directory
                )
            }
            _ => write!(
                f,
                "{}: {}: image {}, directory {}",
                self.path, self.field, self.image, self.directory
            ),
        }
    }
}

fn host_kind(ft: std::fs::FileType) -> Kind {
    if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_char_device() {
        Kind::Chardev
    } else if ft.is_block_device() {
        Kind::Blockdev
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        Kind::Unknown
    }
}

fn host_xattrs(p: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let err = |e: rustix::io::Errno| Error::io(p.display(), e);
    let mut out = BTreeMap::new();
    let n = match rustix::fs::llistxattr_query(p) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(out),
        Err(e) => return Err(err(e)),
    };
    if n == 0 {
        return Ok(out);
    }
    let mut names = vec![0u8; n];
    let n = rustix::fs::llistxattr(p, &mut names[..]).map_err(err)?;
    names.truncate(n);
    for name in names.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let os = OsStr::from_bytes(name);
        let len = match rustix::fs::lgetxattr_query(p, os) {
            Ok(l) => l,
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(err(e)),
        };
        let mut v = vec![0u8; len];
        let l = rustix::fs::lgetxattr(p, os, &mut v[..]).map_err(err)?;
        v.truncate(l);
        out.insert(name.to_vec(), v);
    }
    Ok(out)
}

fn show_time(sec: i64, nsec: u32) -> String {
    format!(
        "{}.{nsec:09} ({sec}.{nsec:09})",
        btrfs_image::dump::format_date(sec as u64)
    )
}

struct Differ<'a> {
    img: &'a Image,
    opts: DiffOptions,
    out: Vec<Difference>,
    /// Non-directory paths present on both sides, with each side's inode.
    image_inodes: BTreeMap<Vec<u8>, InodeId>,
    host_inodes: BTreeMap<Vec<u8>, (u64, u64)>,
}

impl Differ<'_> {
    fn push(&mut self, rel: &[u8], field: &str, image: String, directory: String) {
        self.out.push(Difference {
            path: show_path(rel),
            field: field.to_string(),
            image,
            directory,
        });
    }

    /// Compare one path present on both sides; true when both are directories.
    fn node(&mut self, rel: &[u8], m: &Meta, host: &Path) -> Result<bool> {
        let md = std::fs::symlink_metadata(host).map_err(|e| Error::io(host.display(), e))?;
        let hk = host_kind(md.file_type());
        if hk != m.kind {
            self.push(rel, "type", m.kind.name().into(), hk.name().into());
            return Ok(false);
        }
        let ig = self.opts.ignore;
        let hperm = md.mode() & 0o7777;
        if !ig.mode && m.kind != Kind::Symlink && m.perm != hperm {
            self.push(
                rel,
                "mode",
                format!("{:04o}", m.perm),
                format!("{hperm:04o}"),
            );
        }
        if !ig.owner {
            if m.uid != md.uid() {
                self.push(rel, "uid", m.uid.to_string(), md.uid().to_string());
            }
            if m.gid != md.gid() {
                self.push(rel, "gid", m.gid.to_string(), md.gid().to_string());
            }
        }
        if m.kind == Kind::File && m.size != md.size() {
            self.push(rel, "size", m.size.to_string(), md.size().to_string());
        }
        if !ig.mtime {
            let (hs, hn) = (md.mtime(), md.mtime_nsec().clamp(0, 999_999_999) as u32);
            let same = m.mtime.sec == hs && (ig.nsec || m.mtime.nsec == hn);
            if !same {
                self.push(
                    rel,
                    "mtime",
                    show_time(m.mtime.sec, m.mtime.nsec),
                    show_time(hs, hn),
                );
            }
        }
        if !ig.rdev && matches!(m.kind, Kind::Chardev | Kind::Blockdev) {
            let h = (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()));
            if m.rdev != h {
                self.push(
                    rel,
                    "rdev",
                    format!("{}:{}", m.rdev.0, m.rdev.1),
                    format!("{}:{}", h.0, h.1),
                );
            }
        }
        if m.kind == Kind::Symlink {
            let t = self.img.readlink(m.id.subvol, m.id.ino)?;
            let ht = std::fs::read_link(host).map_err(|e| Error::io(host.display(), e))?;
            let ht = ht.as_os_str().as_bytes();
            if t != ht {
                self.push(rel, "target", escape_bytes(&t), escape_bytes(ht));
            }
        }
        if !ig.xattrs {
            let mine: BTreeMap<Vec<u8>, Vec<u8>> = self
                .img
                .xattrs(m.id.subvol, m.id.ino)?
                .into_iter()
                .map(|x| (x.name, x.value))
                .collect();
            let theirs = host_xattrs(host)?;
            let names: BTreeSet<&Vec<u8>> = mine.keys().chain(theirs.keys()).collect();
            for n in names {
                let (a, b) = (mine.get(n), theirs.get(n));
                if a != b {
                    let show = |v: Option<&Vec<u8>>| match v {
                        Some(v) => format!("\"{}\"", escape_bytes(v)),
                        None => "(none)".into(),
                    };
                    self.push(rel, &format!("xattr {}", escape_bytes(n)), show(a), show(b));
                }
            }
        }
        if m.kind == Kind::File && !ig.content && m.size == md.size() {
            self.content(rel, m, host)?;
        }
        if m.kind != Kind::Dir {
            self.image_inodes.insert(rel.to_vec(), m.id);
            self.host_inodes.insert(rel.to_vec(), (md.dev(), md.ino()));
        }
        Ok(m.kind == Kind::Dir)
    }

    fn content(&mut self, rel: &[u8], m: &Meta, host: &Path) -> Result<()> {
        let mut f = std::fs::File::open(host).map_err(|e| Error::io(host.display(), e))?;
        let mut buf = Vec::new();
        let mut first_diff: Option<(u64, u8, u8)> = None;
        let shown = show_path(rel);
        crate::cat::read_chunks(
            self.img,
            m.id,
            &shown,
            &self.opts.limits,
            &mut |off, data| {
                if first_diff.is_some() {
                    return Ok(());
                }
                buf.resize(data.len(), 0);
                f.read_exact(&mut buf)
                    .map_err(|e| Error::io(host.display(), e))?;
                if buf != data {
                    let i = data.iter().zip(&buf).position(|(a, b)| a != b).unwrap_or(0);
                    first_diff = Some((off + i as u64, data[i], buf[i]));
                }
                Ok(())
            },
        )?;
        if let Some((at, a, b)) = first_diff {
            self.push(
                rel,
                "content",
                format!("byte {at} is 0x{a:02x}"),
                format!("byte {at} is 0x{b:02x}"),
            );
        }
        Ok(())
    }

    /// Paths linked together on one side and not on the other.
    fn links(&mut self) {
        let mut img_groups: HashMap<InodeId, Vec<Vec<u8>>> = HashMap::new();
        for (p, id) in &self.image_inodes {
            img_groups.entry(*id).or_default().push(p.clone());
        }
        let mut host_groups: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
        for (p, id) in &self.host_inodes {
            host_groups.entry(*id).or_default().push(p.clone());
        }
        let mut found = Vec::new();
        for (p, id) in &self.image_inodes {
            let a = &img_groups[id];
            let b = &host_groups[&self.host_inodes[p]];
            // Report each mismatch once, at its first path.
            let first = a.iter().chain(b.iter()).min();
            if a != b && first == Some(p) {
                let show = |g: &Vec<Vec<u8>>| {
                    g.iter()
                        .map(|p| show_path(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                found.push((p.clone(), show(a), show(b)));
            }
        }
        for (p, a, b) in found {
            self.push(&p, "hard-links", format!("[{a}]"), format!("[{b}]"));
        }
    }
}

/// Compare the image's tree at `start` with the host directory (or file) `dir`.
/// Returns every difference found, in path order (hard-link differences last).
pub fn diff(
    img: &Image,
    start: InodeId,
    dir: &Path,
    opts: &DiffOptions,
) -> Result<Vec<Difference>> {
    let mut d = Differ {
        img,
        opts: *opts,
        out: Vec::new(),
        image_inodes: BTreeMap::new(),
        host_inodes: BTreeMap::new(),
    };
    let mut seen_dirs = std::collections::HashSet::new();
    let m = meta(img, start)?;
    if !d.node(b"", &m, dir)? {
        if !opts.ignore.links {
            d.links();
        }
        return Ok(d.out);
    }
    seen_dirs.insert(start);
    let mut stack: Vec<(InodeId, PathBuf, Vec<u8>, usize)> =
        vec![(start, dir.to_path_buf(), Vec::new(), 0)];
    while let Some((id, host, rel, depth)) = stack.pop() {
        let mut mine: BTreeMap<Vec<u8>, InodeId> = BTreeMap::new();
        for (name, cid) in dir_entries(img, id)? {
            if let Some(why) = bad_name(&name) {
                return Err(Error::Refused(format!(
                    "directory {} holds {why}: {:?}",
                    show_path(&rel),
                    escape_bytes(&name)
                )));
            }
            if mine.insert(name.clone(), cid).is_some() {
                return Err(Error::Refused(format!(
                    "directory {} holds the name {:?} twice",
                    show_path(&rel),
                    escape_bytes(&name)
                )));
            }
        }
        let mut theirs = BTreeSet::new();
        for e in std::fs::read_dir(&host).map_err(|e| Error::io(host.display(), e))? {
            let e = e.map_err(|e| Error::io(host.display(), e))?;
            theirs.insert(e.file_name().as_bytes().to_vec());
        }
        let names: BTreeSet<&Vec<u8>> = mine.keys().chain(theirs.iter()).collect();
        let mut subdirs = Vec::new();
        for name in names {
            let crel = join(&rel, name);
            let chost = host.join(OsStr::from_bytes(name));
            match (mine.get(name), theirs.contains(name)) {
                (Some(&cid), true) => {
                    let cm = meta(img, cid)?;
                    if d.node(&crel, &cm, &chost)? {
                        if !seen_dirs.insert(cid) {
                            return Err(Error::Refused(format!(
                                "{}: directory inode {} of subvolume {} is reached a second \
                                 time (a hard link to a directory, or a loop)",
                                show_path(&crel),
                                cid.ino,
                                cid.subvol
                            )));
                        }
                        if depth + 1 > opts.limits.max_depth {
                            return Err(Error::Refused(format!(
                                "{}: directories nest deeper than {}",
                                show_path(&crel),
                                opts.limits.max_depth
                            )));
                        }
                        subdirs.push((cid, chost, crel, depth + 1));
                    }
                }
                (Some(&cid), false) => {
                    let k = meta(img, cid)?.kind;
                    d.push(&crel, "only-in-image", k.name().into(), String::new());
                }
                (None, _) => {
                    let k = std::fs::symlink_metadata(&chost)
                        .map(|md| host_kind(md.file_type()).name())
                        .unwrap_or("unknown");
                    d.push(&crel, "only-in-directory", String::new(), k.into());
                }
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    if !opts.ignore.links {
        d.links();
    }
    Ok(d.out)
}
