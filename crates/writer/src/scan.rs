//! Scan: walk the source tree in sorted-name order, `lstat` everything, read
//! xattrs, group hard links, and number inodes deterministically.
//!
//! A directory's entries get consecutive inode numbers, then its
//! subdirectories are walked in order. Directories named by `--subvol` become
//! subvolumes with their own inode numbering.
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use btrfs_format::*;

use crate::{Error, Result};

/// A timestamp with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

/// The attributes of one inode, after `--uid`/`--gid` and epoch clamping.
#[derive(Debug, Clone, Default)]
pub struct Stat {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device number in the kernel's internal encoding (major << 20 | minor).
    pub rdev: u64,
    pub size: u64,
    /// Bytes the source allocates (st_blocks * 512): tells sparse files apart.
    pub allocated: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub otime: Time,
}

/// Where a directory entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// An inode of the same subvolume (index into `Subvol::nodes`).
    Node(usize),
    /// The root directory of another subvolume (index into `Scan::subvols`).
    Subvol(usize),
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub index: u64,
    pub target: Target,
    pub file_type: u8,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Dir { entries: Vec<DirEntry> },
    File,
    Symlink { target: Vec<u8> },
    Special,
}

/// One name of an inode: (parent directory inode number, dir index, name).
#[derive(Debug, Clone)]
pub struct Link {
    pub parent: u64,
    pub index: u64,
    pub name: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub ino: u64,
    /// Source path (first name seen), for reading data and for error messages.
    pub path: PathBuf,
    pub stat: Stat,
    pub kind: Kind,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Names within the tree (empty for a subvolume root directory).
    pub links: Vec<Link>,
}

#[derive(Debug, Clone)]
pub struct Subvol {
    /// Tree id: 5 for the top level, 256.. for `--subvol` directories.
    pub id: u64,
    /// Path relative to the root directory (empty for the top level).
    pub rel: PathBuf,
    pub readonly: bool,
    /// Where it is linked: (parent subvolume index, parent dir ino, dir index, name).
    pub parent: Option<(usize, u64, u64, Vec<u8>)>,
    /// nodes[0] is the root directory, inode 256.
    pub nodes: Vec<Node>,
}

/// A `--subvol` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubvolSpec {
    pub rel: PathBuf,
    pub readonly: bool,
    pub default: bool,
}

impl SubvolSpec {
    /// Parse `[rw|ro|default|default-ro:]SUBDIR` as `mkfs.btrfs` 6.19 does.
    pub fn parse(s: &str) -> Result<Self> {
        let (flags, path) = match s.split_once(':') {
            Some((f @ ("rw" | "ro" | "default" | "default-ro"), p)) => (f, p),
            _ => ("rw", s),
        };
        let rel = PathBuf::from(path.trim_start_matches("./").trim_end_matches('/'));
        if rel.as_os_str().is_empty()
            || rel.is_absolute()
            || rel.components().any(|c| {
                matches!(
                    c,
                    std::path::Component::ParentDir | std::path::Component::CurDir
                )
            })
        {
            return Err(Error::InvalidOption(format!(
                "--subvol {s}: give a directory relative to --rootdir, without '..'"
            )));
        }
        Ok(SubvolSpec {
            rel,
            readonly: flags == "ro" || flags == "default-ro",
            default: flags.starts_with("default"),
        })
    }
}

/// How to scan.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    pub subvols: Vec<SubvolSpec>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Clamp every time newer than this (SOURCE_DATE_EPOCH).
    pub clamp: Option<i64>,
}

/// The scanned tree.
#[derive(Debug, Clone)]
pub struct Scan {
    pub subvols: Vec<Subvol>,
    /// Index of the default subvolume, if one was asked for.
    pub default_subvol: Option<usize>,
}

impl Scan {
    pub fn node_count(&self) -> usize {
        self.subvols.iter().map(|s| s.nodes.len()).sum()
    }
}

fn source_err(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::io(path, std::io::Error::new(e.kind(), format!("{what}: {e}")))
}

fn time(sec: i64, nsec: i64, clamp: Option<i64>) -> Time {
    match clamp {
        Some(c) if sec > c => Time { sec: c, nsec: 0 },
        _ => Time {
            sec,
            nsec: nsec.clamp(0, 999_999_999) as u32,
        },
    }
}

fn stat_of(path: &Path, md: &std::fs::Metadata, opts: &ScanOptions) -> Stat {
    let c = opts.clamp;
    let otime = md
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| time(d.as_secs() as i64, d.subsec_nanos() as i64, c))
        .unwrap_or_else(|| time(md.ctime(), md.ctime_nsec(), c));
    let dev = md.rdev();
    let rdev = ((rustix::fs::major(dev) as u64) << 20) | (rustix::fs::minor(dev) as u64 & 0xfffff);
    let _ = path;
    Stat {
        mode: md.mode(),
        uid: opts.uid.unwrap_or(md.uid()),
        gid: opts.gid.unwrap_or(md.gid()),
        rdev: if md.mode() & S_IFMT == S_IFCHR || md.mode() & S_IFMT == S_IFBLK {
            rdev
        } else {
            0
        },
        size: md.size(),
        allocated: md.blocks() * 512,
        atime: time(md.atime(), md.atime_nsec(), c),
        mtime: time(md.mtime(), md.mtime_nsec(), c),
        ctime: time(md.ctime(), md.ctime_nsec(), c),
        otime,
    }
}

/// Every xattr of `path` (not following a final symlink), sorted by name.
pub fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let err = |e: rustix::io::Errno| source_err(path, "cannot read extended attributes", e.into());
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(err(e)),
    };
    if size == 0 {
        return Ok(Vec::new());
    }
    let mut names = vec![0u8; size];
    let n = rustix::fs::llistxattr(path, &mut names[..]).map_err(err)?;
    names.truncate(n);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::OsStr::from_bytes(name);
        let len = match rustix::fs::lgetxattr_query(path, cname) {
            Ok(l) => l,
            Err(rustix::io::Errno::NODATA) => continue, // removed meanwhile
            Err(e) => return Err(err(e)),
        };
        let mut v = vec![0u8; len];
        let got = rustix::fs::lgetxattr(path, cname, &mut v[..]).map_err(err)?;
        v.truncate(got);
        out.push((name.to_vec(), v));
    }
    out.sort();
    Ok(out)
}

fn kind_of(path: &Path, md: &std::fs::Metadata) -> Result<Kind> {
    Ok(match md.mode() & S_IFMT {
        S_IFDIR => Kind::Dir {
            entries: Vec::new(),
        },
        S_IFREG => Kind::File,
        S_IFLNK => Kind::Symlink {
            target: std::fs::read_link(path)
                .map_err(|e| source_err(path, "cannot read symlink", e))?
                .into_os_string()
                .into_vec(),
        },
        _ => Kind::Special,
    })
}

fn sorted_entries(dir: &Path) -> Result<Vec<OsString>> {
    let rd = std::fs::read_dir(dir).map_err(|e| source_err(dir, "cannot read directory", e))?;
    let mut names = Vec::new();
    for e in rd {
        let e = e.map_err(|e| source_err(dir, "cannot read directory", e))?;
        names.push(e.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// One directory entry as read from the source, before numbering.
struct Raw {
    name: OsString,
    path: PathBuf,
    md: std::fs::Metadata,
    stat: Stat,
    kind: Kind,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The listing of a subdirectory.
    sub: Option<Result<Vec<Raw>>>,
}

/// Read a directory and everything below it, in parallel (rayon); entries
/// sorted by name. Numbering happens afterwards, in one deterministic pass.
fn read_listing(dir: &Path, opts: &ScanOptions) -> Result<Vec<Raw>> {
    use rayon::prelude::*;
    let names = sorted_entries(dir)?;
    names
        .into_par_iter()
        .map(|name| {
            let path = dir.join(&name);
            if name.as_bytes().len() > BTRFS_NAME_LEN {
                return Err(Error::InvalidOption(format!(
                    "{}: name is {} bytes long; btrfs allows {BTRFS_NAME_LEN}",
                    path.display(),
                    name.as_bytes().len()
                )));
            }
            let md = std::fs::symlink_metadata(&path)
                .map_err(|e| source_err(&path, "cannot stat", e))?;
            let kind = kind_of(&path, &md)?;
            let xattrs = read_xattrs(&path)?;
            let stat = stat_of(&path, &md, opts);
            let sub = md.is_dir().then(|| read_listing(&path, opts));
            Ok(Raw {
                name,
                path,
                md,
                stat,
                kind,
                xattrs,
                sub,
            })
        })
        .collect()
}

/// Walk `root` and build the inode graph.
pub fn scan(root: &Path, opts: &ScanOptions) -> Result<Scan> {
    let md = std::fs::symlink_metadata(root)
        .map_err(|e| source_err(root, "cannot access --rootdir", e))?;
    if !md.is_dir() {
        return Err(Error::InvalidOption(format!(
            "--rootdir {}: not a directory",
            root.display()
        )));
    }
    for s in &opts.subvols {
        let p = root.join(&s.rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::InvalidOption(format!(
                    "--subvol {}: {} is not a directory",
                    s.rel.display(),
                    p.display()
                )))
            }
            Err(e) => return Err(source_err(&p, "--subvol directory", e)),
        }
    }
    if opts.subvols.iter().filter(|s| s.default).count() > 1 {
        return Err(Error::InvalidOption(
            "only one --subvol can be the default".into(),
        ));
    }
    let listing = read_listing(root, opts)?;
    let mut subvols = vec![Subvol {
        id: BTRFS_FS_TREE_OBJECTID,
        rel: PathBuf::new(),
        readonly: false,
        parent: None,
        nodes: vec![Node {
            ino: BTRFS_FIRST_FREE_OBJECTID,
            path: root.to_path_buf(),
            stat: stat_of(root, &md, opts),
            kind: Kind::Dir {
                entries: Vec::new(),
            },
            xattrs: read_xattrs(root)?,
            links: Vec::new(),
        }],
    }];
    // Hard links: (st_dev, st_ino) -> node index, per subvolume.
    let mut seen: Vec<HashMap<(u64, u64), usize>> = vec![HashMap::new()];
    // Work list: (subvol index, dir node index, relative path, its listing).
    let mut stack: Vec<(usize, usize, PathBuf, Vec<Raw>)> = vec![(0, 0, PathBuf::new(), listing)];
    while let Some((sv, dir_idx, rel, raws)) = stack.pop() {
        let dir_ino = subvols[sv].nodes[dir_idx].ino;
        let mut entries = Vec::new();
        let mut subdirs = Vec::new();
        for (i, raw) in raws.into_iter().enumerate() {
            let Raw {
                name,
                path,
                md,
                stat,
                kind,
                xattrs,
                sub,
            } = raw;
            let index = 2 + i as u64;
            let child_rel = rel.join(&name);
            let nb = name.as_bytes().to_vec();
            let ft = ft_from_mode(md.mode());
            if md.is_dir() {
                if let Some(spec) = opts.subvols.iter().find(|s| s.rel == child_rel) {
                    let new = subvols.len();
                    subvols.push(Subvol {
                        id: BTRFS_FIRST_FREE_OBJECTID + new as u64 - 1,
                        rel: child_rel.clone(),
                        readonly: spec.readonly,
                        parent: Some((sv, dir_ino, index, nb.clone())),
                        nodes: vec![Node {
                            ino: BTRFS_FIRST_FREE_OBJECTID,
                            path,
                            stat,
                            kind,
                            xattrs,
                            links: Vec::new(),
                        }],
                    });
                    seen.push(HashMap::new());
                    entries.push(DirEntry {
                        name: nb,
                        index,
                        target: Target::Subvol(new),
                        file_type: BTRFS_FT_DIR,
                    });
                    subdirs.push((new, 0, child_rel, sub.unwrap_or(Ok(Vec::new()))?));
                    continue;
                }
            }
            let link = Link {
                parent: dir_ino,
                index,
                name: nb.clone(),
            };
            let key = (md.dev(), md.ino());
            if !md.is_dir() && md.nlink() > 1 {
                if let Some(&idx) = seen[sv].get(&key) {
                    subvols[sv].nodes[idx].links.push(link);
                    entries.push(DirEntry {
                        name: nb,
                        index,
                        target: Target::Node(idx),
                        file_type: ft,
                    });
                    continue;
                }
            }
            let nodes = &mut subvols[sv].nodes;
            let idx = nodes.len();
            let ino = BTRFS_FIRST_FREE_OBJECTID + idx as u64;
            nodes.push(Node {
                ino,
                path,
                stat,
                kind,
                xattrs,
                links: vec![link],
            });
            if !md.is_dir() && md.nlink() > 1 {
                seen[sv].insert(key, idx);
            }
            if let Some(sub) = sub {
                subdirs.push((sv, idx, child_rel, sub?));
            }
            entries.push(DirEntry {
                name: nb,
                index,
                target: Target::Node(idx),
                file_type: ft,
            });
        }
        if let Kind::Dir { entries: e } = &mut subvols[sv].nodes[dir_idx].kind {
            *e = entries;
        }
        // Walk subdirectories in name order (the stack pops the last first).
        stack.extend(subdirs.into_iter().rev());
    }
    let default_subvol = opts
        .subvols
        .iter()
        .find(|s| s.default)
        .and_then(|s| subvols.iter().position(|v| v.rel == s.rel));
    Ok(Scan {
        subvols,
        default_subvol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subvol_spec_forms() {
        let s = SubvolSpec::parse("default-ro:a/b").unwrap();
        assert_eq!(
            (s.rel.as_path(), s.readonly, s.default),
            (Path::new("a/b"), true, true)
        );
        let s = SubvolSpec::parse("x").unwrap();
        assert!(!s.readonly && !s.default);
        let s = SubvolSpec::parse("ro:x/").unwrap();
        assert_eq!(s.rel, Path::new("x"));
        assert!(s.readonly);
        assert!(SubvolSpec::parse("../x").is_err());
        assert!(SubvolSpec::parse("/abs").is_err());
    }

    #[test]
    fn numbering_follows_sorted_names_and_links_share_inodes() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir(r.join("b")).unwrap();
        std::fs::write(r.join("b/z"), b"z").unwrap();
        std::fs::write(r.join("a"), b"a").unwrap();
        std::fs::hard_link(r.join("a"), r.join("b/y")).unwrap();
        std::fs::write(r.join("c"), b"c").unwrap();
        let s = scan(r, &ScanOptions::default()).unwrap();
        let nodes = &s.subvols[0].nodes;
        let names: Vec<_> = nodes
            .iter()
            .map(|n| n.path.strip_prefix(r).unwrap().to_path_buf())
            .collect();
        assert_eq!(names, ["", "a", "b", "c", "b/z"].map(PathBuf::from));
        assert_eq!(nodes[1].links.len(), 2, "a and b/y are one inode");
        assert_eq!(nodes[1].links[1].parent, nodes[2].ino);
    }
}
