//! Scan: walk the source tree in sorted-name order, `lstat` everything, read
//! xattrs, group hard links, and number inodes deterministically.
//!
//! A directory's entries get consecutive inode numbers, then its
//! subdirectories are walked in order. Directories named by `--subvol` become
//! subvolumes with their own inode numbering.
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
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
    /// Counters for a progress display: the scan counts the entries it
    /// has seen (`scanned`). `make_rootdir_filesystem` sets this to
    /// `RootdirOptions::progress`, so that one set of counters covers the
    /// whole run.
    pub progress: std::sync::Arc<crate::data::Progress>,
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

fn time(sec: i64, nsec: i64, clamp: Option<i64>) -> Time {
    match clamp {
        Some(c) if sec > c => Time { sec: c, nsec: 0 },
        _ => Time {
            sec,
            nsec: nsec.clamp(0, 999_999_999) as u32,
        },
    }
}

/// Whether `O_NOATIME` is still asked for (see `openat_noatime`).
static NOATIME: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// `openat` with `O_NOATIME` where allowed: building an image leaves the
/// source's access times (of files and directories) as they were, and skips
/// their updates. Only the owner or root may ask; after the first refusal
/// the flag is no longer asked for.
fn openat_noatime<P: rustix::path::Arg + Copy>(
    dir: BorrowedFd<'_>,
    name: P,
    flags: rustix::fs::OFlags,
) -> rustix::io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    use std::sync::atomic::Ordering;
    if NOATIME.load(Ordering::Relaxed) {
        match rustix::fs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
            Err(rustix::io::Errno::PERM) => NOATIME.store(false, Ordering::Relaxed),
            r => return r,
        }
    }
    rustix::fs::openat(dir, name, flags, Mode::empty())
}

/// Open a source file for reading, or fail naming it. Files are read in
/// inode order, so the previous file's directory is usually this one's: each
/// thread keeps that directory open and looks up one name in it, not the
/// whole path.
pub fn open_source(path: &Path) -> Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    use std::cell::RefCell;
    thread_local! {
        static DIR: RefCell<Option<(OsString, OwnedFd)>> = const { RefCell::new(None) };
    }
    let open = || -> std::io::Result<std::fs::File> {
        // Split at the last '/' by bytes: `Path::parent` and `Path`'s `==`
        // walk components, which showed in profiles at one open per file.
        let bytes = path.as_os_str().as_bytes();
        let Some(slash) = bytes.iter().rposition(|&b| b == b'/') else {
            return std::fs::File::open(path);
        };
        let (parent, name) = (&bytes[..slash.max(1)], &bytes[slash + 1..]);
        if name.is_empty() {
            return std::fs::File::open(path);
        }
        let (parent, name) = (OsStr::from_bytes(parent), OsStr::from_bytes(name));
        DIR.with_borrow_mut(|cache| {
            let dir = match cache {
                Some((p, fd)) if p == parent => fd,
                _ => {
                    let fd = rustix::fs::open(
                        parent,
                        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    &cache.insert((parent.to_os_string(), fd)).1
                }
            };
            let fd = openat_noatime(dir.as_fd(), name, OFlags::RDONLY | OFlags::CLOEXEC)?;
            Ok(std::fs::File::from(fd))
        })
    };
    open().map_err(|e| Error::source(path, "cannot open", e))
}

/// What the scan keeps of one `statx`: the attributes it stores, and what
/// it needs to group hard links and recurse.
struct Lstat {
    stat: Stat,
    dev: u64,
    ino: u64,
    nlink: u32,
}

impl Lstat {
    fn is_dir(&self) -> bool {
        self.stat.mode & S_IFMT == S_IFDIR
    }
}

/// `lstat` of `name` in directory `dir` (`path` names it in errors): one
/// path component to look up instead of the whole path.
fn lstat_at(dir: BorrowedFd<'_>, name: &CStr, path: &Path, opts: &ScanOptions) -> Result<Lstat> {
    use rustix::fs::{AtFlags, StatxFlags};
    let x = rustix::fs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS | StatxFlags::BTIME,
    )
    .map_err(|e| Error::source(path, "cannot stat", e.into()))?;
    let c = opts.clamp;
    let t = |ts: rustix::fs::StatxTimestamp| time(ts.tv_sec, ts.tv_nsec as i64, c);
    let mode = x.stx_mode as u32;
    let is_dev = mode & S_IFMT == S_IFCHR || mode & S_IFMT == S_IFBLK;
    let stat = Stat {
        mode,
        uid: opts.uid.unwrap_or(x.stx_uid),
        gid: opts.gid.unwrap_or(x.stx_gid),
        rdev: if is_dev {
            ((x.stx_rdev_major as u64) << 20) | (x.stx_rdev_minor as u64 & 0xfffff)
        } else {
            0
        },
        size: x.stx_size,
        allocated: x.stx_blocks * 512,
        atime: t(x.stx_atime),
        mtime: t(x.stx_mtime),
        ctime: t(x.stx_ctime),
        // Birth time where the source filesystem records it.
        otime: if x.stx_mask & rustix::fs::StatxFlags::BTIME.bits() != 0 {
            t(x.stx_btime)
        } else {
            t(x.stx_ctime)
        },
    };
    Ok(Lstat {
        stat,
        dev: rustix::fs::makedev(x.stx_dev_major, x.stx_dev_minor),
        ino: x.stx_ino,
        nlink: x.stx_nlink,
    })
}

/// Whether the kernel has `listxattrat` (Linux 6.13); else paths are used.
static LISTXATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Every xattr of `name` in `dir`. The common case, none, costs one
/// `listxattrat`; a file that has some is read through its path.
fn read_xattrs_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    path: &Path,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use std::sync::atomic::Ordering;
    // New syscalls share one number on the architectures below (not on MIPS
    // or Alpha, whose tables are offset); elsewhere paths are used.
    const UNIFIED_TABLE: bool = cfg!(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "loongarch64",
        target_arch = "powerpc64",
        target_arch = "s390x"
    ));
    if UNIFIED_TABLE && LISTXATTRAT.load(Ordering::Relaxed) {
        const SYS_LISTXATTRAT: libc::c_long = 465;
        // SAFETY: a valid directory fd, a NUL-terminated name, and a null
        // buffer of size 0 (the call only reports the list's length).
        let r = unsafe {
            libc::syscall(
                SYS_LISTXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                std::ptr::null_mut::<libc::c_char>(),
                0usize,
            )
        };
        if r == 0 {
            return Ok(Vec::new());
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // ENOSYS: an older kernel. EPERM: a container's seccomp
                // filter that does not know the call (listxattr itself
                // does not fail so).
                Some(libc::ENOSYS | libc::EPERM) => LISTXATTRAT.store(false, Ordering::Relaxed),
                Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
                _ => {
                    return Err(Error::source(path, "cannot read extended attributes", e));
                }
            }
        }
    }
    read_xattrs(path)
}

/// Every xattr of `path` (not following a final symlink), sorted by name.
pub fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let err =
        |e: rustix::io::Errno| Error::source(path, "cannot read extended attributes", e.into());
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
        let cname = OsStr::from_bytes(name);
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

fn kind_at(dir: BorrowedFd<'_>, name: &CStr, path: &Path, mode: u32) -> Result<Kind> {
    Ok(match mode & S_IFMT {
        S_IFDIR => Kind::Dir {
            entries: Vec::new(),
        },
        S_IFREG => Kind::File,
        S_IFLNK => Kind::Symlink {
            target: rustix::fs::readlinkat(dir, name, Vec::new())
                .map_err(|e| Error::source(path, "cannot read symlink", e.into()))?
                .into_bytes(),
        },
        _ => Kind::Special,
    })
}

/// Open directory `name` in `dir` for listing and lookups relative to it.
fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr, path: &Path) -> Result<OwnedFd> {
    use rustix::fs::OFlags;
    openat_noatime(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
    )
    .map_err(|e| Error::source(path, "cannot read directory", e.into()))
}

/// The names in directory `fd`, sorted by bytes.
fn sorted_entries(fd: BorrowedFd<'_>, dir: &Path) -> Result<Vec<CString>> {
    let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 32 << 10];
    let mut rd = rustix::fs::RawDir::new(fd, &mut buf);
    let mut names = Vec::new();
    while let Some(e) = rd.next() {
        let e = e.map_err(|e| Error::source(dir, "cannot read directory", e.into()))?;
        let n = e.file_name();
        if n != c"." && n != c".." {
            names.push(n.to_owned());
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// One directory entry as read from the source, before numbering.
struct Raw {
    name: OsString,
    path: PathBuf,
    md: Lstat,
    kind: Kind,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The listing of a subdirectory.
    sub: Option<Result<Vec<Raw>>>,
}

/// Read directory `fd` (at `dir`) and everything below it, in parallel
/// (rayon), with lookups relative to each directory; entries sorted by name.
/// Numbering happens afterwards, in one deterministic pass.
fn read_listing(fd: BorrowedFd<'_>, dir: &Path, opts: &ScanOptions) -> Result<Vec<Raw>> {
    use rayon::prelude::*;
    let names = sorted_entries(fd, dir)?;
    names
        .into_par_iter()
        .map(|cname| {
            let name = OsString::from_vec(cname.as_bytes().to_vec());
            let path = dir.join(&name);
            if name.as_bytes().len() > BTRFS_NAME_LEN {
                return Err(Error::InvalidOption(format!(
                    "{}: name is {} bytes long; btrfs allows {BTRFS_NAME_LEN}",
                    path.display(),
                    name.as_bytes().len()
                )));
            }
            let md = lstat_at(fd, &cname, &path, opts)?;
            opts.progress
                .scanned
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let kind = kind_at(fd, &cname, &path, md.stat.mode)?;
            let xattrs = read_xattrs_at(fd, &cname, &path)?;
            let sub = md.is_dir().then(|| {
                let sub_fd = open_dir_at(fd, &cname, &path)?;
                read_listing(sub_fd.as_fd(), &path, opts)
            });
            Ok(Raw {
                name,
                path,
                md,
                kind,
                xattrs,
                sub,
            })
        })
        .collect()
}

/// Walk `root` and build the inode graph.
pub fn scan(root: &Path, opts: &ScanOptions) -> Result<Scan> {
    let root_md = std::fs::symlink_metadata(root)
        .map_err(|e| Error::source(root, "cannot access --rootdir", e))?;
    if !root_md.is_dir() {
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
            Err(e) => return Err(Error::source(&p, "--subvol directory", e)),
        }
    }
    if opts.subvols.iter().filter(|s| s.default).count() > 1 {
        return Err(Error::InvalidOption(
            "only one --subvol can be the default".into(),
        ));
    }
    let root_c = CString::new(root.as_os_str().as_bytes()).map_err(|_| {
        Error::InvalidOption(format!("--rootdir {}: NUL in the path", root.display()))
    })?;
    let md = lstat_at(rustix::fs::CWD, &root_c, root, opts)?;
    let root_fd = open_dir_at(rustix::fs::CWD, &root_c, root)?;
    let listing = read_listing(root_fd.as_fd(), root, opts)?;
    drop(root_fd);
    let mut subvols = vec![Subvol {
        id: BTRFS_FS_TREE_OBJECTID,
        rel: PathBuf::new(),
        readonly: false,
        parent: None,
        nodes: vec![Node {
            ino: BTRFS_FIRST_FREE_OBJECTID,
            path: root.to_path_buf(),
            stat: md.stat,
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
                kind,
                xattrs,
                sub,
            } = raw;
            let stat = md.stat.clone();
            let index = 2 + i as u64;
            let child_rel = rel.join(&name);
            let nb = name.as_bytes().to_vec();
            let ft = ft_from_mode(md.stat.mode);
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
            let key = (md.dev, md.ino);
            if !md.is_dir() && md.nlink > 1 {
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
            if !md.is_dir() && md.nlink > 1 {
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

    /// Lookups relative to a directory see what path lookups see: the same
    /// attributes, symlink targets and xattrs (through `listxattrat`, and
    /// through paths where the kernel lacks it), and the same errors.
    #[test]
    fn relative_lookups_match_paths() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir(r.join("dir")).unwrap();
        std::fs::write(r.join("dir/f"), b"data").unwrap();
        std::os::unix::fs::symlink("../some/target", r.join("dir/l")).unwrap();
        let has_xattrs = rustix::fs::setxattr(
            r.join("dir/f").as_path(),
            "user.k",
            b"v",
            rustix::fs::XattrFlags::empty(),
        )
        .is_ok();
        for listxattrat in [true, false] {
            LISTXATTRAT.store(listxattrat, std::sync::atomic::Ordering::Relaxed);
            let s = scan(r, &ScanOptions::default()).unwrap();
            let nodes = &s.subvols[0].nodes;
            for n in nodes {
                let md = std::fs::symlink_metadata(&n.path).unwrap();
                assert_eq!(
                    (
                        n.stat.mode,
                        n.stat.size,
                        n.stat.uid,
                        n.stat.mtime.sec,
                        n.stat.mtime.nsec
                    ),
                    (
                        md.mode(),
                        md.size(),
                        md.uid(),
                        md.mtime(),
                        md.mtime_nsec() as u32
                    ),
                    "{}",
                    n.path.display()
                );
            }
            let f = nodes.iter().find(|n| n.path.ends_with("dir/f")).unwrap();
            if has_xattrs {
                assert_eq!(f.xattrs, vec![(b"user.k".to_vec(), b"v".to_vec())]);
            }
            let l = nodes.iter().find(|n| n.path.ends_with("dir/l")).unwrap();
            assert!(matches!(&l.kind, Kind::Symlink { target } if target == b"../some/target"));
        }
        LISTXATTRAT.store(true, std::sync::atomic::Ordering::Relaxed);
        let e = scan(&r.join("missing"), &ScanOptions::default()).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        // A file in place of --rootdir.
        let e = scan(&r.join("dir/f"), &ScanOptions::default()).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    /// `open_source` opens the file its path names, whichever directory it
    /// opened last (its cached one), however the path is spelled; and a
    /// missing file is an error naming it.
    #[test]
    fn open_source_follows_each_path() {
        use std::io::Read;
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for dir in ["a", "a/b", "ab"] {
            std::fs::create_dir(r.join(dir)).unwrap();
            std::fs::write(r.join(dir).join("f"), dir).unwrap();
        }
        std::fs::write(r.join("f"), "top").unwrap();
        let doubled = PathBuf::from(format!("{}//a/b//f", r.display()));
        let cases = [
            (r.join("a/f"), "a"),
            (r.join("ab/f"), "ab"),
            (r.join("a/b/f"), "a/b"),
            (r.join("a/f"), "a"),
            (doubled, "a/b"),
            (r.join("f"), "top"),
            (r.join("a/b/../f"), "a"),
        ];
        for (path, want) in cases {
            let mut got = String::new();
            open_source(&path)
                .unwrap()
                .read_to_string(&mut got)
                .unwrap();
            assert_eq!(got, want, "{}", path.display());
        }
        let e = open_source(&r.join("a/missing")).unwrap_err();
        assert!(e.to_string().contains("a/missing"), "{e}");
    }

    /// Reading a source file, or listing a source directory, leaves its
    /// access time alone, even where the mount's `relatime` would update it
    /// (an access time older than the modification time).
    #[test]
    fn reading_sources_keeps_their_access_times() {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("g"), b"").unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"data").unwrap();
        let old = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 1_000_000,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 2_000_000_000,
                tv_nsec: 0,
            },
        };
        for p in [&f, &sub] {
            rustix::fs::utimensat(rustix::fs::CWD, p, &old, rustix::fs::AtFlags::empty()).unwrap();
        }
        let mut got = Vec::new();
        open_source(&f).unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got, b"data");
        let s = scan(d.path(), &ScanOptions::default()).unwrap();
        assert_eq!(s.subvols[0].nodes.len(), 4);
        for p in [&sub, &f] {
            assert_eq!(
                std::fs::metadata(p).unwrap().atime(),
                1_000_000,
                "{}",
                p.display()
            );
        }
    }
}
