//! A snapshot of a directory tree (everything a filesystem image must keep)
//! and a comparison that lists every difference.
use std::collections::{BTreeMap, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::Digest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 'f' file, 'd' dir, 'l' symlink, 'c'/'b' devices, 'p' fifo, 's' socket.
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Files and symlinks only.
    pub size: u64,
    pub rdev: (u32, u32),
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub target: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub sha256: Option<[u8; 32]>,
    /// 512-byte blocks allocated, and number of data runs (files).
    pub blocks: u64,
    pub data_runs: u64,
    /// First path (in sorted order) of this inode's hard-link group.
    pub link_group: Option<PathBuf>,
    pub nlink: u64,
    /// Birth time (btrfs otime), where the filesystem reports one.
    pub btime: Option<(u64, u32)>,
}

pub type Manifest = BTreeMap<PathBuf, Entry>;

fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(n) = rustix::fs::llistxattr_query(p) else {
        return out;
    };
    let mut names = vec![0u8; n];
    let Ok(n) = rustix::fs::llistxattr(p, &mut names[..]) else {
        return out;
    };
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let os = std::ffi::OsStr::from_bytes(name);
        let Ok(len) = rustix::fs::lgetxattr_query(p, os) else {
            continue;
        };
        let mut v = vec![0u8; len];
        if let Ok(l) = rustix::fs::lgetxattr(p, os, &mut v[..]) {
            v.truncate(l);
            out.insert(name.to_vec(), v);
        }
    }
    out
}

fn data_runs(p: &Path, size: u64) -> u64 {
    let Ok(f) = std::fs::File::open(p) else {
        return 0;
    };
    let mut pos = 0;
    let mut runs = 0;
    while pos < size {
        let Ok(s) = rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(pos)) else {
            break;
        };
        let Ok(e) = rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(s)) else {
            break;
        };
        runs += 1;
        pos = e.max(s + 1);
    }
    runs
}

/// Snapshot `root` (paths relative to it; the root itself is "").
pub fn manifest(root: &Path) -> Manifest {
    let mut out = Manifest::new();
    let mut groups: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        // Read first, stat after: a read may update atime (relatime), and the
        // image must match what a later reader (the importer) sees.
        let pre = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let content = pre
            .is_file()
            .then(|| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())));
        let mut names: Vec<_> = if pre.is_dir() {
            std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect()
        } else {
            Vec::new()
        };
        let target = pre.file_type().is_symlink().then(|| {
            std::fs::read_link(&p)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec()
        });
        let md = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_file() {
            'f'
        } else if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else if ft.is_fifo() {
            'p'
        } else {
            's'
        };
        names.sort_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
        for n in names {
            stack.push(rel.join(n));
        }
        let link_group = (kind != 'd' && md.nlink() > 1).then(|| {
            groups
                .entry((md.dev(), md.ino()))
                .or_insert_with(|| rel.clone())
                .clone()
        });
        let sha256 = content.map(|bytes| sha2::Sha256::digest(&bytes).into());
        out.insert(
            rel.clone(),
            Entry {
                kind,
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                size: if kind == 'f' || kind == 'l' {
                    md.size()
                } else {
                    0
                },
                rdev: (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev())),
                atime: (md.atime(), md.atime_nsec()),
                mtime: (md.mtime(), md.mtime_nsec()),
                ctime: (md.ctime(), md.ctime_nsec()),
                target,
                xattrs: xattrs(&p),
                sha256,
                blocks: md.blocks(),
                data_runs: if kind == 'f' {
                    data_runs(&p, md.size())
                } else {
                    0
                },
                link_group,
                nlink: if kind == 'd' { 0 } else { md.nlink() },
                btime: md
                    .created()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| (d.as_secs(), d.subsec_nanos())),
            },
        );
    }
    // Link groups are named by their first path in sorted order.
    let mut first: HashMap<PathBuf, PathBuf> = HashMap::new();
    for (path, e) in &out {
        if let Some(g) = &e.link_group {
            first.entry(g.clone()).or_insert_with(|| path.clone());
        }
    }
    for e in out.values_mut() {
        if let Some(g) = &e.link_group {
            e.link_group = Some(first[g].clone());
        }
    }
    out
}

/// What to compare besides the always-compared fields.
#[derive(Debug, Clone, Copy)]
pub struct Compare {
    pub atime: bool,
    pub ctime: bool,
    /// Image blocks may exceed the source's by one sector per data run.
    pub sparse_blocks: bool,
}

/// Every difference between `want` (the source) and `got` (the image), in words.
pub fn diff(want: &Manifest, got: &Manifest, how: Compare) -> Vec<String> {
    let mut d = Vec::new();
    for (p, w) in want {
        let Some(g) = got.get(p) else {
            d.push(format!("{}: missing", p.display()));
            continue;
        };
        let mut field = |name: &str, a: String, b: String| {
            if a != b {
                d.push(format!("{}: {name} {a} != {b}", p.display()));
            }
        };
        field("type", w.kind.to_string(), g.kind.to_string());
        field("mode", format!("{:o}", w.mode), format!("{:o}", g.mode));
        field("uid", w.uid.to_string(), g.uid.to_string());
        field("gid", w.gid.to_string(), g.gid.to_string());
        field("size", w.size.to_string(), g.size.to_string());
        field("rdev", format!("{:?}", w.rdev), format!("{:?}", g.rdev));
        field("mtime", format!("{:?}", w.mtime), format!("{:?}", g.mtime));
        if how.atime {
            field("atime", format!("{:?}", w.atime), format!("{:?}", g.atime));
        }
        if how.ctime {
            field("ctime", format!("{:?}", w.ctime), format!("{:?}", g.ctime));
        }
        field(
            "target",
            format!("{:?}", w.target),
            format!("{:?}", g.target),
        );
        field(
            "xattrs",
            format!("{:?}", w.xattrs),
            format!("{:?}", g.xattrs),
        );
        field(
            "content",
            format!("{:?}", w.sha256),
            format!("{:?}", g.sha256),
        );
        field(
            "hard links",
            format!("{:?}", w.link_group),
            format!("{:?}", g.link_group),
        );
        field("nlink", w.nlink.to_string(), g.nlink.to_string());
        if w.btime.is_some() && g.btime.is_some() {
            field("otime", format!("{:?}", w.btime), format!("{:?}", g.btime));
        }
        if how.sparse_blocks && w.kind == 'f' && g.blocks > w.blocks + 8 * w.data_runs.max(1) {
            d.push(format!(
                "{}: uses {} blocks, source {} ({} data runs)",
                p.display(),
                g.blocks,
                w.blocks,
                w.data_runs
            ));
        }
    }
    for p in got.keys().filter(|p| !want.contains_key(*p)) {
        d.push(format!("{}: extra", p.display()));
    }
    d
}
