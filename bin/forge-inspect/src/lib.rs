//! forge-inspect: look inside a btrfs image without mounting it.
//!
//! `ls`, `cat`, `stat`, `extract`, `diff` against a directory, and the
//! `dump-tree` / `dump-super` dumps (those live in [`btrfs_image::dump`]). Every
//! command is a library call here so that tests (and the fuzz target, through
//! [`inspect_all`]) make the same calls as the binary.
//!
//! An image is untrusted input: names are checked before they become paths,
//! directories reached twice (hard links to directories, loops) are refused,
//! sizes are capped by [`Limits`], and nothing here panics on a hostile image.
use std::collections::HashSet;

use btrfs_image::btrfs_format::consts::*;
use btrfs_image::btrfs_format::InodeItem;
use btrfs_image::dump::escape_bytes;
use btrfs_image::Image;
use serde::Serialize;

pub mod cat;
pub mod diff;
pub mod extract;
mod fuzz;
pub mod ls;
pub mod stat;

pub use fuzz::inspect_all;

/// Errors of the inspect commands.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image could not be read (with where in it).
    #[error(transparent)]
    Image(#[from] btrfs_image::Error),
    /// A host file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The image asks for something unsafe or over a limit; nothing more is done.
    #[error("refused: {0}")]
    Refused(String),
    /// A path or option that does not name anything usable.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub(crate) fn io(path: impl std::fmt::Display, source: impl Into<std::io::Error>) -> Self {
        Error::Io {
            path: path.to_string(),
            source: source.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Bounds on the work and output one command may cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file (its `i_size`) that `cat`, `extract` and `diff` will read.
    pub max_file_size: u64,
    /// Deepest directory nesting followed.
    pub max_depth: usize,
}

/// Default `max_file_size`: this many times the image size...
pub const DEFAULT_SIZE_FACTOR: u64 = 64;
/// ...but never below this.
pub const DEFAULT_MIN_MAX_FILE_SIZE: u64 = 1 << 30;
/// Default nesting limit (Linux paths stop at 4096 bytes: 2048 one-byte names).
pub const DEFAULT_MAX_DEPTH: usize = 2048;

impl Limits {
    /// Defaults for an image of `image_len` bytes: files up to 64 times the
    /// image size (at least 1 GiB). A sparse file can legitimately be larger;
    /// the user then raises the limit.
    pub fn for_image(image_len: u64) -> Self {
        Limits {
            max_file_size: image_len
                .saturating_mul(DEFAULT_SIZE_FACTOR)
                .max(DEFAULT_MIN_MAX_FILE_SIZE),
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }

    pub(crate) fn check_size(&self, path: &str, size: u64) -> Result<()> {
        if size > self.max_file_size {
            return Err(Error::Refused(format!(
                "{path}: the image says this file holds {size} bytes, over the limit of {} \
                 (raise it with --max-file-size if the image is trusted)",
                self.max_file_size
            )));
        }
        Ok(())
    }
}

/// A file type, from an inode's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Chardev,
    Blockdev,
    Fifo,
    Socket,
    Unknown,
}

impl Kind {
    pub fn from_mode(mode: u32) -> Kind {
        match mode & S_IFMT {
            S_IFREG => Kind::File,
            S_IFDIR => Kind::Dir,
            S_IFLNK => Kind::Symlink,
            S_IFCHR => Kind::Chardev,
            S_IFBLK => Kind::Blockdev,
            S_IFIFO => Kind::Fifo,
            S_IFSOCK => Kind::Socket,
            _ => Kind::Unknown,
        }
    }

    /// The letter `ls -l` shows.
    pub fn letter(self) -> char {
        match self {
            Kind::File => '-',
            Kind::Dir => 'd',
            Kind::Symlink => 'l',
            Kind::Chardev => 'c',
            Kind::Blockdev => 'b',
            Kind::Fifo => 'p',
            Kind::Socket => 's',
            Kind::Unknown => '?',
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Chardev => "chardev",
            Kind::Blockdev => "blockdev",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::Unknown => "unknown",
        }
    }
}

/// A timestamp; on-disk seconds are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

impl Time {
    fn of(t: &btrfs_image::btrfs_format::Timespec) -> Time {
        Time {
            sec: t.sec.get() as i64,
            nsec: t.nsec.get(),
        }
    }
}

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{:09}",
            btrfs_image::dump::format_date(self.sec as u64),
            self.nsec
        )
    }
}

/// Where an inode lives: subvolume (tree id) and inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct InodeId {
    pub subvol: u64,
    pub ino: u64,
}

/// The attributes of one inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Meta {
    #[serde(flatten)]
    pub id: InodeId,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Permission bits and setuid/setgid/sticky (`mode & 0o7777`).
    pub perm: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nbytes: u64,
    /// (major, minor) of a device; (0, 0) otherwise.
    pub rdev: (u32, u32),
    pub flags: u64,
    pub generation: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub otime: Time,
}

/// (major, minor) of an on-disk `rdev` (the kernel's `MKDEV`: major << 20 | minor).
pub fn split_rdev(rdev: u64) -> (u32, u32) {
    (((rdev >> 20) & 0xfff) as u32, (rdev & 0xfffff) as u32)
}

impl Meta {
    pub fn from_inode(id: InodeId, ii: &InodeItem) -> Meta {
        let mode = ii.mode.get();
        let kind = Kind::from_mode(mode);
        Meta {
            id,
            kind,
            perm: mode & 0o7777,
            mode,
            nlink: ii.nlink.get(),
            uid: ii.uid.get(),
            gid: ii.gid.get(),
            size: ii.size.get(),
            nbytes: ii.nbytes.get(),
            rdev: if matches!(kind, Kind::Chardev | Kind::Blockdev) {
                split_rdev(ii.rdev.get())
            } else {
                (0, 0)
            },
            flags: ii.flags.get(),
            generation: ii.generation.get(),
            atime: Time::of(&ii.atime),
            mtime: Time::of(&ii.mtime),
            ctime: Time::of(&ii.ctime),
            otime: Time::of(&ii.otime),
        }
    }
}

/// The attributes of inode `id`.
pub fn meta(img: &Image, id: InodeId) -> Result<Meta> {
    Ok(Meta::from_inode(id, &img.inode(id.subvol, id.ino)?))
}

/// `mode` as `ls -l` shows it: `drwxr-xr-x`, with s/S/t/T.
pub fn mode_string(mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(Kind::from_mode(mode).letter());
    let bit = |m: u32, c: char| if mode & m != 0 { c } else { '-' };
    let special = |x: u32, sp: u32, on: char, off: char| match (mode & x != 0, mode & sp != 0) {
        (true, true) => on,
        (false, true) => off,
        (true, false) => 'x',
        (false, false) => '-',
    };
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(special(0o100, 0o4000, 's', 'S'));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(special(0o010, 0o2000, 's', 'S'));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(special(0o001, 0o1000, 't', 'T'));
    s
}

/// A path inside the image (components joined by `/`), printable.
pub fn show_path(p: &[u8]) -> String {
    if p.is_empty() {
        ".".into()
    } else {
        escape_bytes(p)
    }
}

/// Join `name` to the relative path `dir`.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    if !dir.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Why `name` cannot be a directory entry on a host, if it cannot.
pub fn bad_name(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("an empty name")
    } else if name == b"." || name == b".." {
        Some("a name that is '.' or '..'")
    } else if name.contains(&b'/') {
        Some("a name holding '/'")
    } else if name.contains(&0) {
        Some("a name holding a NUL byte")
    } else if name.len() > BTRFS_NAME_LEN {
        Some("a name longer than 255 bytes")
    } else {
        None
    }
}

/// Open the image at `path`.
pub fn open(path: &std::path::Path) -> Result<Image> {
    Ok(Image::open(path)?)
}

/// The subvolume to work in: `spec` is a subvolume id, or a path from the
/// top-level subvolume (5) to a subvolume; `None` is the default subvolume
/// (the one the kernel mounts).
pub fn select_subvol(img: &Image, spec: Option<&str>) -> Result<u64> {
    let Some(spec) = spec else {
        return Ok(img.default_subvol()?);
    };
    if let Ok(id) = spec.parse::<u64>() {
        img.subvol_root_dir(id)
            .map_err(|e| Error::Usage(format!("--subvol {spec}: {e}")))?;
        return Ok(id);
    }
    let (sv, ino) = img
        .lookup(BTRFS_FS_TREE_OBJECTID, spec.as_bytes())
        .map_err(|e| Error::Usage(format!("--subvol {spec}: {e}")))?;
    if ino != img.subvol_root_dir(sv)? {
        return Err(Error::Usage(format!(
            "--subvol {spec}: a directory of subvolume {sv}, not a subvolume"
        )));
    }
    Ok(sv)
}

/// The inode `path` names from the top of subvolume `subvol` (symlinks are not
/// followed; `..` goes up).
pub fn resolve(img: &Image, subvol: u64, path: &str) -> Result<InodeId> {
    let (subvol, ino) = img.lookup(subvol, path.as_bytes()).map_err(|e| match e {
        btrfs_image::Error::NotFound(m) => Error::Usage(m),
        e => e.into(),
    })?;
    Ok(InodeId { subvol, ino })
}

/// One entry met by [`walk`].
#[derive(Debug, Clone)]
pub struct Visit {
    /// Path relative to the walk's start (empty for the start itself).
    pub path: Vec<u8>,
    /// The entry's name (empty for the start).
    pub name: Vec<u8>,
    pub meta: Meta,
    /// Depth below the start (0 for the start).
    pub depth: usize,
}

/// How [`walk`] treats what it meets.
#[derive(Debug, Clone, Copy)]
pub struct WalkOptions {
    /// Refuse names that cannot exist on a host ([`bad_name`]) and names repeated
    /// in one directory; otherwise they are visited as they are.
    pub strict_names: bool,
    /// Go into subdirectories.
    pub recursive: bool,
    pub max_depth: usize,
}

/// The entries of directory `dir`, sorted by name, each with its inode id
/// (entering subvolumes).
pub fn dir_entries(img: &Image, dir: InodeId) -> Result<Vec<(Vec<u8>, InodeId)>> {
    let mut out = Vec::new();
    for e in img.read_dir(dir.subvol, dir.ino)? {
        let id = if e.is_subvolume() {
            let sv = e.location.objectid;
            InodeId {
                subvol: sv,
                ino: img.subvol_root_dir(sv)?,
            }
        } else {
            InodeId {
                subvol: dir.subvol,
                ino: e.location.objectid,
            }
        };
        out.push((e.name, id));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Visit `start` and (with `recursive`) everything below it, depth first in name
/// order, each directory just before its contents. A directory reached a second
/// time (a hard link to a directory, or a loop) is an error when recursing or
/// strict, so is nesting past `max_depth`. `visit` returns whether to go on.
pub fn walk(
    img: &Image,
    start: InodeId,
    opts: WalkOptions,
    visit: &mut dyn FnMut(&Visit) -> Result<bool>,
) -> Result<()> {
    struct Frame {
        entries: std::vec::IntoIter<(Vec<u8>, InodeId)>,
        path: Vec<u8>,
        depth: usize,
    }
    let check_dirs = opts.recursive || opts.strict_names;
    let mut seen_dirs: HashSet<InodeId> = HashSet::new();
    let first = Visit {
        path: Vec::new(),
        name: Vec::new(),
        meta: meta(img, start)?,
        depth: 0,
    };
    if !visit(&first)? || first.meta.kind != Kind::Dir {
        return Ok(());
    }
    seen_dirs.insert(start);
    let open = |dir: InodeId, path: Vec<u8>, depth: usize| -> Result<Frame> {
        let entries = dir_entries(img, dir)?;
        if opts.strict_names {
            for w in entries.windows(2) {
                if w[0].0 == w[1].0 {
                    return Err(Error::Refused(format!(
                        "directory {} holds the name {:?} twice",
                        show_path(&path),
                        escape_bytes(&w[0].0)
                    )));
                }
            }
        }
        Ok(Frame {
            entries: entries.into_iter(),
            path,
            depth,
        })
    };
    let mut stack = vec![open(start, Vec::new(), 0)?];
    while let Some(top) = stack.last_mut() {
        let Some((name, id)) = top.entries.next() else {
            stack.pop();
            continue;
        };
        let (path, depth) = (join(&top.path, &name), top.depth + 1);
        if opts.strict_names {
            if let Some(why) = bad_name(&name) {
                return Err(Error::Refused(format!(
                    "directory {} holds {why}: {:?}",
                    show_path(&top.path),
                    escape_bytes(&name)
                )));
            }
        }
        let v = Visit {
            path,
            name,
            meta: meta(img, id)?,
            depth,
        };
        let is_dir = v.meta.kind == Kind::Dir;
        if is_dir && check_dirs && !seen_dirs.insert(id) {
            return Err(Error::Refused(format!(
                "{}: directory inode {} of subvolume {} is reached a second time \
                 (a hard link to a directory, or a loop)",
                show_path(&v.path),
                id.ino,
                id.subvol
            )));
        }
        if is_dir && opts.recursive && depth > opts.max_depth {
            return Err(Error::Refused(format!(
                "{}: directories nest deeper than {}",
                show_path(&v.path),
                opts.max_depth
            )));
        }
        if !visit(&v)? {
            return Ok(());
        }
        if is_dir && opts.recursive {
            let f = open(id, v.path, depth)?;
            stack.push(f);
        }
    }
    Ok(())
}

/// Is this process root (so that owners and devices can be set)?
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_print_like_ls() {
        assert_eq!(mode_string(0o100644), "-rw-r--r--");
        assert_eq!(mode_string(0o104755), "-rwsr-xr-x");
        assert_eq!(mode_string(0o102644), "-rw-r-Sr--");
        assert_eq!(mode_string(0o041777), "drwxrwxrwt");
        assert_eq!(mode_string(0o041776), "drwxrwxrwT");
        assert_eq!(mode_string(0o120777), "lrwxrwxrwx");
        assert_eq!(mode_string(0o020660), "crw-rw----");
        assert_eq!(mode_string(0o170000), "?---------");
    }

    #[test]
    fn host_names_are_checked() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0b", &[b'x'; 256]] {
            assert!(bad_name(bad).is_some(), "{bad:?}");
        }
        for good in [&b"a"[..], b"...", b"a b", b"\xff\xfe", &[b'x'; 255]] {
            assert!(bad_name(good).is_none(), "{good:?}");
        }
    }

    #[test]
    fn devices_and_limits() {
        assert_eq!(split_rdev((240 << 20) | 70000), (240, 70000));
        assert_eq!(split_rdev(u64::MAX), (0xfff, 0xfffff));
        assert_eq!(Limits::for_image(0).max_file_size, 1 << 30);
        assert_eq!(Limits::for_image(1 << 30).max_file_size, 64 << 30);
        assert_eq!(Limits::for_image(u64::MAX).max_file_size, u64::MAX);
        assert!(Limits::for_image(0).check_size("f", 1 << 30).is_ok());
        assert!(matches!(
            Limits::for_image(0).check_size("f", 1 << 60),
            Err(Error::Refused(_))
        ));
        assert_eq!(show_path(b""), ".");
        assert_eq!(join(b"", b"a"), b"a");
        assert_eq!(join(b"a", b"b"), b"a/b");
    }

    #[test]
    fn ignore_lists() {
        let i = diff::Ignore::parse("mode, owner,nsec").unwrap();
        assert!(i.mode && i.owner && i.nsec && !i.mtime && !i.content);
        assert!(diff::Ignore::parse("colour").is_err());
        assert_eq!(diff::Ignore::parse("").unwrap(), diff::Ignore::default());
    }
}
