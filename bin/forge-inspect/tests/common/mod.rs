//! Shared by the forge-inspect tests: source trees, images built by the writer
//! library, fixtures, and byte patching of tree blocks for crafted images.
#![allow(dead_code)]

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use btrfs_image::btrfs_format::consts::*;
use btrfs_image::btrfs_format::{CsumType, Key};
use btrfs_image::Image;
use btrfs_writer::{MkfsConfig, Profile, RootdirOptions};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_forge-inspect"))
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

// Not every test file uses each.
#[allow(unused_imports)]
pub use forge_oracle::{bytes, fixture_bytes, testdata};

pub fn write(p: &Path, data: &[u8]) {
    std::fs::write(p, data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}

pub fn chmod(p: &Path, mode: u32) {
    rustix::fs::chmod(p, rustix::fs::Mode::from_raw_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// Set atime and mtime (not following symlinks).
pub fn set_time(p: &Path, sec: i64, nsec: i64) {
    let ts = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    let t = rustix::fs::Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &t,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
}

/// Every path under `root` (root included), children after parents.
pub fn all_paths(root: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            let mut kids: Vec<_> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            kids.sort();
            stack.extend(kids.into_iter().rev());
        }
        all.push(p);
    }
    all
}

/// Give everything distinct times with nanoseconds, children before parents.
pub fn set_times(root: &Path, base: i64) {
    let all = all_paths(root);
    for (i, p) in all.iter().enumerate().rev() {
        let i = i as i64;
        set_time(p, base + i * 97, (i * 104_729 + 7) % 1_000_000_000);
    }
}

/// A tree with every file type and attribute forge-inspect must carry:
/// inline, small, multi-extent and sparse files, empty files and directories,
/// symlinks (relative, absolute, dangling), hard links across directories,
/// a fifo and a socket, devices and foreign owners when root, xattrs,
/// setuid/sticky modes and a name that is not UTF-8.
pub fn make_tree(r: &Path) {
    write(&r.join("empty"), b"");
    write(&r.join("one"), b"1");
    write(&r.join("inline"), &bytes(1, 1500, true));
    write(&r.join("small"), &bytes(2, 5000, false));
    write(&r.join("text"), &bytes(3, 300_000, true));
    write(&r.join("big"), &bytes(4, 3 << 20, false));
    let f = std::fs::File::create(r.join("sparse")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&bytes(5, 70_000, false), 1 << 20).unwrap();
    f.write_all_at(&bytes(6, 4096, false), 5 << 20).unwrap();
    f.set_len(8 << 20).unwrap();
    std::fs::File::create(r.join("all_holes"))
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    std::fs::create_dir_all(r.join("dir/sub/deeper")).unwrap();
    std::fs::create_dir(r.join("emptydir")).unwrap();
    write(&r.join("dir/a"), b"a\n");
    write(&r.join("dir/sub/b"), &bytes(7, 10_000, true));
    write(&r.join("dir/sub/deeper/c"), b"c\n");
    std::os::unix::fs::symlink("one", r.join("link")).unwrap();
    std::os::unix::fs::symlink("../one", r.join("dir/uplink")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", r.join("abs_link")).unwrap();
    std::os::unix::fs::symlink("no/such/target", r.join("dangling")).unwrap();
    // Hard links: three names, two directories.
    write(&r.join("dir/linked"), b"linked\n");
    std::fs::hard_link(r.join("dir/linked"), r.join("hard1")).unwrap();
    std::fs::hard_link(r.join("dir/linked"), r.join("dir/sub/hard2")).unwrap();
    write(
        &r.join(std::ffi::OsStr::from_bytes(b"caf\xe9-latin1")),
        b"odd name\n",
    );
    write(&r.join("setuid"), b"#!/bin/sh\n");
    chmod(&r.join("setuid"), 0o4755);
    chmod(&r.join("emptydir"), 0o1777);
    write(&r.join("private"), b"secret\n");
    chmod(&r.join("private"), 0o600);
    set_xattr(&r.join("one"), "user.forge", b"value");
    set_xattr(&r.join("dir"), "user.dir", b"\x00\x01binary\xff");
    set_xattr(&r.join("big"), "user.empty", b"");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        r.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    drop(std::os::unix::net::UnixListener::bind(r.join("socket")).unwrap());
    if is_root() {
        for (name, ft, major, minor) in [
            ("null", rustix::fs::FileType::CharacterDevice, 1, 3),
            ("chr", rustix::fs::FileType::CharacterDevice, 240, 70000),
            ("blk", rustix::fs::FileType::BlockDevice, 259, 12345),
        ] {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                r.join(name),
                ft,
                rustix::fs::Mode::from_raw_mode(0o660),
                rustix::fs::makedev(major, minor),
            )
            .unwrap();
        }
        for (name, uid, gid) in [("small", 1234, 5678), ("dir/sub", 42, 43), ("link", 7, 8)] {
            rustix::fs::chownat(
                rustix::fs::CWD,
                r.join(name),
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .unwrap();
        }
    }
    chmod(r, 0o755);
    set_times(r, 1_500_000_000);
}

/// A reproducible configuration: fixed UUIDs and time.
pub fn config() -> MkfsConfig {
    MkfsConfig {
        fsid: Some(*b"forge-inspect-fs"),
        dev_uuid: Some(*b"forge-inspect-dv"),
        now: (1_700_000_000, 0),
        force: true,
        ..Default::default()
    }
}

/// Build an image of `src` at `img` with the writer library.
pub fn build(src: &Path, img: &Path) {
    build_with(src, img, &config(), |_| {});
}

pub fn build_with(
    src: &Path,
    img: &Path,
    cfg: &MkfsConfig,
    tweak: impl FnOnce(&mut RootdirOptions),
) {
    let mut opts = RootdirOptions::new(src);
    opts.threads = 1;
    tweak(&mut opts);
    btrfs_writer::make_rootdir_filesystem(img, cfg, &opts)
        .unwrap_or_else(|e| panic!("building {} from {}: {e}", img.display(), src.display()));
}

/// Single metadata copy and 4 KiB nodes: one place to patch, trees of many levels.
pub fn small_config() -> MkfsConfig {
    MkfsConfig {
        metadata_profile: Profile::Single,
        nodesize: 4096,
        ..config()
    }
}

/// `cp -a SRC/. DST` (DST created).
pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    let mut s = src.as_os_str().to_owned();
    s.push("/.");
    forge_oracle::run_ok(Command::new("cp").arg("-a").arg(s).arg(dst));
}

/// Where one leaf item lives in the image file: the physical offset of its
/// payload in each copy of its leaf, and of each leaf copy.
pub struct ItemAt {
    pub key: Key,
    pub leaf: u64,
    pub payload: Vec<usize>,
    pub blocks: Vec<usize>,
    pub size: usize,
}

/// Find the first item of tree `tree` for which `pred` holds.
pub fn find_item(img: &Image, tree: u64, pred: impl Fn(&Key, &[u8]) -> bool) -> ItemAt {
    let root = img.tree_root(tree).unwrap().unwrap();
    for it in img.iter(&root) {
        let it = it.unwrap();
        if pred(&it.key, it.data) {
            let tb = img.read_tree_block(it.leaf).unwrap();
            let li = tb.item(it.slot).unwrap();
            let blocks: Vec<usize> = img
                .chunk_map()
                .map(it.leaf, img.nodesize() as u64)
                .unwrap()
                .into_iter()
                .map(|p| p as usize)
                .collect();
            return ItemAt {
                key: it.key,
                leaf: it.leaf,
                payload: blocks.iter().map(|b| b + li.start).collect(),
                blocks,
                size: li.size,
            };
        }
    }
    panic!("no such item in tree {tree}");
}

/// Recompute the crc32c of the tree block at physical `at`.
pub fn fix_block_csum(buf: &mut [u8], at: usize, nodesize: usize) {
    let c = CsumType::Crc32c.compute(&buf[at + 32..at + nodesize]);
    buf[at..at + 4].copy_from_slice(&c[..4]);
}

/// Overwrite `new` at `offset` into the payload of `item` in every copy, and
/// fix the checksums of the leaf copies.
pub fn patch_item(buf: &mut [u8], item: &ItemAt, offset: usize, new: &[u8], nodesize: usize) {
    assert!(offset + new.len() <= item.size, "patch inside the item");
    for &p in &item.payload {
        buf[p + offset..p + offset + new.len()].copy_from_slice(new);
    }
    for &b in &item.blocks {
        fix_block_csum(buf, b, nodesize);
    }
}

/// Inode number of `path` in the top-level subvolume.
pub fn ino_of(img: &Image, path: &str) -> u64 {
    img.lookup(BTRFS_FS_TREE_OBJECTID, path.as_bytes())
        .unwrap()
        .1
}

/// The DIR_INDEX item in directory `dir_ino` naming `name`.
pub fn dir_index_item(img: &Image, dir_ino: u64, name: &[u8]) -> ItemAt {
    find_item(img, BTRFS_FS_TREE_OBJECTID, |k, d| {
        k.objectid == dir_ino
            && k.item_type == BTRFS_DIR_INDEX_KEY
            && btrfs_image::btrfs_format::items::parse_dir_items(d)
                .is_ok_and(|e| e.len() == 1 && e[0].name == name)
    })
}

/// Byte offsets inside a dir item payload (struct btrfs_dir_item).
pub const DIR_ITEM_LOCATION: usize = 0; // disk key: objectid u64, type u8, offset u64
pub const DIR_ITEM_DATA_LEN: usize = 25;
pub const DIR_ITEM_NAME_LEN: usize = 27;
pub const DIR_ITEM_NAME: usize = 30;
