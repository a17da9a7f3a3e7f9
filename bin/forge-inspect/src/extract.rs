//! `extract`: copy a tree out of an image onto the host, safely.
//!
//! Every file is created relative to a directory descriptor this extract opened
//! itself, with `O_NOFOLLOW`/`O_EXCL` (`*at` calls that never follow a final
//! symlink), so nothing is written outside the destination and no symlink that
//! the extract created is ever followed. Names are checked first ([`crate::bad_name`]),
//! a directory reached twice is refused ([`crate::walk`]), each file's size is
//! capped by [`Limits::max_file_size`] and the total data written by
//! `max_total` (by default the space free on the destination's filesystem).
//! Holes stay holes: only the ranges extents hold are written.
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use btrfs_image::dump::escape_bytes;
use btrfs_image::{FileExtentKind, Image};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags, CWD};
use rustix::io::Errno;
use serde::Serialize;

use crate::cat::CHUNK;
use crate::{show_path, walk, Error, InodeId, Kind, Limits, Meta, Result, WalkOptions};

/// What to restore besides names, types and bytes.
#[derive(Debug, Clone, Copy)]
pub struct ExtractOptions {
    /// Set owners (needs root; otherwise files belong to the caller).
    pub owners: bool,
    /// Create device nodes (needs root; otherwise they are skipped with a warning).
    pub devices: bool,
    pub xattrs: bool,
    pub limits: Limits,
    /// Most bytes of file data to write in all; `None`: the space available on
    /// the destination's filesystem when the extract starts.
    pub max_total: Option<u64>,
}

impl ExtractOptions {
    /// Everything the caller's privileges allow.
    pub fn new(limits: Limits) -> Self {
        let root = crate::is_root();
        ExtractOptions {
            owners: root,
            devices: root,
            xattrs: true,
            limits,
            max_total: None,
        }
    }
}

/// What an extract did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExtractReport {
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub specials: u64,
    /// Bytes of file data written (holes not counted).
    pub bytes_written: u64,
    /// What could not be restored (devices when not root, xattrs the
    /// destination does not support).
    pub warnings: Vec<String>,
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn name_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => &[],
    }
}

struct Extractor<'a> {
    img: &'a Image,
    opts: ExtractOptions,
    dest: &'a Path,
    root: OwnedFd,
    budget: u64,
    report: ExtractReport,
    /// First path of every non-directory inode with more than one link.
    links: HashMap<InodeId, Vec<u8>>,
    /// Directories created, in creation order, for their metadata at the end.
    dirs: Vec<(Vec<u8>, Meta)>,
    /// Open directories on the current path: [0] is the destination.
    fds: Vec<OwnedFd>,
    max_open: usize,
}

impl Extractor<'_> {
    fn host(&self, rel: &[u8]) -> String {
        if rel.is_empty() {
            self.dest.display().to_string()
        } else {
            format!("{}/{}", self.dest.display(), escape_bytes(rel))
        }
    }

    fn err(&self, rel: &[u8], e: Errno) -> Error {
        if e == Errno::EXIST {
            return Error::Refused(format!(
                "{}: already exists; the image names it twice",
                self.host(rel)
            ));
        }
        Error::io(self.host(rel), e)
    }

    /// Open directory `rel` below the destination, one component at a time,
    /// never following a symlink.
    fn open_beneath(&self, rel: &[u8]) -> Result<OwnedFd> {
        let mut cur = rustix::fs::openat(&self.root, ".", dir_flags(), Mode::empty())
            .map_err(|e| self.err(b"", e))?;
        if rel.is_empty() {
            return Ok(cur);
        }
        for comp in rel.split(|&b| b == b'/') {
            cur = rustix::fs::openat(&cur, OsStr::from_bytes(comp), dir_flags(), Mode::empty())
                .map_err(|e| self.err(rel, e))?;
        }
        Ok(cur)
    }

    fn warn(&mut self, w: String) {
        self.report.warnings.push(w);
    }

    fn take_budget(&mut self, rel: &[u8], n: u64) -> Result<()> {
        if n > self.budget {
            return Err(Error::Refused(format!(
                "{}: writing it would pass the limit on data written ({} bytes in all{}); \
                 stopping instead of filling the disk",
                self.host(rel),
                self.report.bytes_written.saturating_add(self.budget),
                if self.opts.max_total.is_some() {
                    ", --max-total"
                } else {
                    ": the space free on the destination"
                }
            )));
        }
        self.budget -= n;
        self.report.bytes_written += n;
        Ok(())
    }

    fn timestamps(m: &Meta) -> Timestamps {
        let ts = |t: crate::Time| Timespec {
            tv_sec: t.sec,
            tv_nsec: t.nsec.min(999_999_999) as _,
        };
        Timestamps {
            last_access: ts(m.atime),
            last_modification: ts(m.mtime),
        }
    }

    fn owner(
        &mut self,
        rel: &[u8],
        m: &Meta,
    ) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
        // -1 means "leave unchanged" to chown: never pass it on.
        if m.uid == u32::MAX || m.gid == u32::MAX {
            self.warn(format!(
                "{}: owner {}:{} not set",
                self.host(rel),
                m.uid,
                m.gid
            ));
        }
        (
            (m.uid != u32::MAX).then(|| rustix::fs::Uid::from_raw_unchecked(m.uid)),
            (m.gid != u32::MAX).then(|| rustix::fs::Gid::from_raw_unchecked(m.gid)),
        )
    }

    /// Set xattrs through `fd`, or (for symlinks and special files, which are
    /// not opened) through /proc/self/fd/PARENT/NAME without following it.
    fn set_xattrs(
        &mut self,
        rel: &[u8],
        id: InodeId,
        fd: Option<BorrowedFd<'_>>,
        parent: Option<BorrowedFd<'_>>,
    ) -> Result<()> {
        if !self.opts.xattrs {
            return Ok(());
        }
        for x in self.img.xattrs(id.subvol, id.ino)? {
            let name = OsStr::from_bytes(&x.name);
            if x.name.is_empty() || x.name.contains(&0) {
                self.warn(format!(
                    "{}: xattr with an invalid name {:?} skipped",
                    self.host(rel),
                    escape_bytes(&x.name)
                ));
                continue;
            }
            let res = match (fd, parent) {
                (Some(fd), _) => rustix::fs::fsetxattr(fd, name, &x.value, XattrFlags::empty()),
                (None, Some(p)) => {
                    use std::os::fd::AsRawFd;
                    let mut proc = format!("/proc/self/fd/{}/", p.as_raw_fd()).into_bytes();
                    proc.extend_from_slice(name_of(rel));
                    rustix::fs::lsetxattr(
                        OsStr::from_bytes(&proc),
                        name,
                        &x.value,
                        XattrFlags::empty(),
                    )
                }
                (None, None) => Ok(()),
            };
            match res {
                Ok(()) => {}
                Err(
                    e @ (Errno::NOTSUP | Errno::PERM | Errno::ACCESS | Errno::INVAL | Errno::NOENT),
                ) => {
                    self.warn(format!(
                        "{}: xattr {} not set: {e}",
                        self.host(rel),
                        escape_bytes(&x.name)
                    ));
                }
                Err(e) => return Err(self.err(rel, e)),
            }
        }
        Ok(())
    }

    /// Owner, xattrs, mode and times of an open file or directory.
    fn finish_fd(&mut self, rel: &[u8], fd: BorrowedFd<'_>, m: &Meta) -> Result<()> {
        if self.opts.owners {
            let (u, g) = self.owner(rel, m);
            rustix::fs::fchown(fd, u, g).map_err(|e| self.err(rel, e))?;
        }
        self.set_xattrs(rel, m.id, Some(fd), None)?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(m.perm)).map_err(|e| self.err(rel, e))?;
        rustix::fs::futimens(fd, &Self::timestamps(m)).map_err(|e| self.err(rel, e))?;
        Ok(())
    }

    /// Owner, xattrs, mode (not for symlinks) and times of an entry of `parent`
    /// that is not opened (symlinks, devices, fifos, sockets).
    fn finish_at(&mut self, rel: &[u8], parent: BorrowedFd<'_>, m: &Meta) -> Result<()> {
        let name = OsStr::from_bytes(name_of(rel));
        if self.opts.owners {
            let (u, g) = self.owner(rel, m);
            rustix::fs::chownat(parent, name, u, g, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| self.err(rel, e))?;
        }
        self.set_xattrs(rel, m.id, None, Some(parent))?;
        if m.kind != Kind::Symlink {
            // Not a symlink (we made it): chmodat cannot be redirected.
            rustix::fs::chmodat(parent, name, Mode::from_raw_mode(m.perm), AtFlags::empty())
                .map_err(|e| self.err(rel, e))?;
        }
        rustix::fs::utimensat(
            parent,
            name,
            &Self::timestamps(m),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.err(rel, e))?;
        Ok(())
    }

    fn write_file(&mut self, rel: &[u8], parent: BorrowedFd<'_>, m: &Meta) -> Result<()> {
        self.opts.limits.check_size(&show_path(rel), m.size)?;
        let name = OsStr::from_bytes(name_of(rel));
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.err(rel, e))?;
        let file = std::fs::File::from(fd);
        let id = m.id;
        for fe in self.img.file_extents(id.subvol, id.ino)? {
            let has_data = match &fe.kind {
                FileExtentKind::Inline { .. } => true,
                FileExtentKind::Regular { disk_bytenr, .. } => *disk_bytenr != 0,
                FileExtentKind::Prealloc { .. } => false,
            };
            if !has_data {
                continue;
            }
            let start = fe.file_offset.min(m.size);
            let end = fe.file_offset.saturating_add(fe.len()).min(m.size);
            let mut off = start;
            while off < end {
                let n = CHUNK.min(end - off);
                self.take_budget(rel, n)?;
                let data = self.img.read_file(id.subvol, id.ino, off, n)?;
                file.write_all_at(&data, off)
                    .map_err(|e| Error::io(self.host(rel), e))?;
                off += n;
            }
        }
        file.set_len(m.size)
            .map_err(|e| Error::io(self.host(rel), e))?;
        self.finish_fd(rel, file.as_fd(), m)?;
        self.report.files += 1;
        Ok(())
    }

    fn entry(&mut self, rel: &[u8], depth: usize, m: &Meta) -> Result<()> {
        // fds[depth - 1] is this entry's directory (a pre-order walk).
        self.fds.truncate(depth);
        let parent_fd = self
            .fds
            .last()
            .ok_or_else(|| Error::Refused(format!("{}: no parent directory", self.host(rel))))?
            .try_clone()
            .map_err(|e| Error::io(self.host(rel), e))?;
        let parent = parent_fd.as_fd();
        let name = OsStr::from_bytes(name_of(rel));
        if m.kind == Kind::Dir {
            rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
                .map_err(|e| self.err(rel, e))?;
            if self.fds.len() >= self.max_open {
                return Err(Error::Refused(format!(
                    "{}: directories nest deeper than {} (open file limit)",
                    self.host(rel),
                    self.max_open
                )));
            }
            let fd = rustix::fs::openat(parent, name, dir_flags(), Mode::empty())
                .map_err(|e| self.err(rel, e))?;
            self.fds.push(fd);
            self.dirs.push((rel.to_vec(), m.clone()));
            self.report.dirs += 1;
            return Ok(());
        }
        if let Some(first) = self.links.get(&m.id).cloned() {
            let from = self.open_beneath(parent_of(&first))?;
            rustix::fs::linkat(
                &from,
                OsStr::from_bytes(name_of(&first)),
                parent,
                name,
                AtFlags::empty(),
            )
            .map_err(|e| self.err(rel, e))?;
            self.report.hardlinks += 1;
            return Ok(());
        }
        match m.kind {
            Kind::File => self.write_file(rel, parent, m)?,
            Kind::Symlink => {
                let target = self.img.readlink(m.id.subvol, m.id.ino)?;
                if target.is_empty() || target.contains(&0) {
                    return Err(Error::Refused(format!(
                        "{}: symlink target {:?} is empty or holds a NUL byte",
                        self.host(rel),
                        escape_bytes(&target)
                    )));
                }
                rustix::fs::symlinkat(OsStr::from_bytes(&target), parent, name)
                    .map_err(|e| self.err(rel, e))?;
                self.finish_at(rel, parent, m)?;
                self.report.symlinks += 1;
            }
            Kind::Chardev | Kind::Blockdev | Kind::Fifo | Kind::Socket => {
                let (ft, dev) = match m.kind {
                    Kind::Chardev => (FileType::CharacterDevice, m.rdev),
                    Kind::Blockdev => (FileType::BlockDevice, m.rdev),
                    Kind::Fifo => (FileType::Fifo, (0, 0)),
                    _ => (FileType::Socket, (0, 0)),
                };
                if matches!(m.kind, Kind::Chardev | Kind::Blockdev) && !self.opts.devices {
                    self.warn(format!(
                        "{}: {} {}:{} skipped (creating devices needs root)",
                        self.host(rel),
                        m.kind.name(),
                        dev.0,
                        dev.1
                    ));
                    return Ok(());
                }
                rustix::fs::mknodat(
                    parent,
                    name,
                    ft,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(dev.0, dev.1),
                )
                .map_err(|e| self.err(rel, e))?;
                self.finish_at(rel, parent, m)?;
                self.report.specials += 1;
            }
            Kind::Dir => unreachable!("handled above"),
            Kind::Unknown => {
                return Err(Error::Refused(format!(
                    "{}: inode {} has unknown file type (mode {:o})",
                    self.host(rel),
                    m.id.ino,
                    m.mode
                )))
            }
        }
        if m.nlink > 1 {
            self.links.insert(m.id, rel.to_vec());
        }
        Ok(())
    }
}

/// Raise the soft open-file limit to the hard one; returns the soft limit.
fn open_file_limit() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
    getrlimit(Resource::Nofile)
        .current
        .unwrap_or(1 << 20)
        .min(1 << 20) as usize
}

/// Extract `start` into `dest`: a directory's contents go into `dest` (created
/// if missing; it must be empty) and `dest` takes the directory's metadata; a
/// single file goes into `dest` under the name `file_name`.
pub fn extract(
    img: &Image,
    start: InodeId,
    file_name: &[u8],
    dest: &Path,
    opts: &ExtractOptions,
) -> Result<ExtractReport> {
    match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            rustix::fs::mkdir(dest, Mode::from_raw_mode(0o700))
                .map_err(|e| Error::io(dest.display(), e))?;
        }
        Err(e) => return Err(Error::io(dest.display(), e)),
        Ok(md) if !md.is_dir() => {
            return Err(Error::Usage(format!(
                "{}: exists and is not a directory",
                dest.display()
            )))
        }
        Ok(_) => {
            let mut rd = std::fs::read_dir(dest).map_err(|e| Error::io(dest.display(), e))?;
            if rd.next().is_some() {
                return Err(Error::Usage(format!(
                    "{}: not empty; extract into a new or empty directory",
                    dest.display()
                )));
            }
        }
    }
    let root = rustix::fs::openat(
        CWD,
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(dest.display(), e))?;
    let budget = match opts.max_total {
        Some(b) => b,
        None => {
            let s = rustix::fs::fstatvfs(&root).map_err(|e| Error::io(dest.display(), e))?;
            s.f_bavail.saturating_mul(s.f_frsize)
        }
    };
    let first = root.try_clone().map_err(|e| Error::io(dest.display(), e))?;
    let mut x = Extractor {
        img,
        opts: *opts,
        dest,
        root,
        budget,
        report: ExtractReport::default(),
        links: HashMap::new(),
        dirs: Vec::new(),
        fds: vec![first],
        max_open: open_file_limit().saturating_sub(32).max(16),
    };
    let m = crate::meta(img, start)?;
    if m.kind != Kind::Dir {
        if crate::bad_name(file_name).is_some() {
            return Err(Error::Usage(format!(
                "cannot name the extracted file {:?}",
                escape_bytes(file_name)
            )));
        }
        x.entry(file_name, 1, &m)?;
        return Ok(x.report);
    }
    let wopts = WalkOptions {
        strict_names: true,
        recursive: true,
        max_depth: opts.limits.max_depth,
    };
    walk(img, start, wopts, &mut |v| {
        if v.depth > 0 {
            x.entry(&v.path, v.depth, &v.meta)?;
        }
        Ok(true)
    })?;
    x.fds.clear();
    // Directory metadata last, deepest first, so that writing into a directory
    // does not change its times and a read-only mode does not stop the extract.
    let dirs = std::mem::take(&mut x.dirs);
    for (rel, m) in dirs.iter().rev() {
        let fd = x.open_beneath(rel)?;
        x.finish_fd(rel, fd.as_fd(), m)?;
    }
    let fd = x.open_beneath(b"")?;
    x.finish_fd(b"", fd.as_fd(), &m)?;
    Ok(x.report)
}
