//! dump-super, dump-tree, ls -lR and stat of fixed images, pinned with insta:
//! a tiny tree made by the writer library with fixed UUIDs, times and owners,
//! and the committed mkfs.btrfs 6.2 fixture.
mod common;

use std::path::Path;

use btrfs_image::btrfs_format::consts::*;
use btrfs_image::Image;
use common::*;
use forge_inspect::ls::{format_long, ls, LsOptions};
use forge_inspect::InodeId;

fn tiny_tree(r: &Path) {
    std::fs::create_dir(r.join("docs")).unwrap();
    write(&r.join("docs/readme"), &bytes(1, 100, true));
    write(&r.join("docs/big"), &bytes(2, 20_000, false));
    std::fs::hard_link(r.join("docs/readme"), r.join("docs/again")).unwrap();
    std::os::unix::fs::symlink("docs/readme", r.join("link")).unwrap();
    write(&r.join("empty"), b"");
    use std::os::unix::ffi::OsStrExt;
    write(&r.join(std::ffi::OsStr::from_bytes(b"n\xffme")), b"odd\n");
    set_xattr(&r.join("docs/readme"), "user.k", b"v");
    for p in all_paths(r) {
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            chmod(&p, 0o755);
        } else if md.is_file() {
            chmod(&p, 0o644);
        }
    }
    set_times(r, 1_600_000_000);
}

fn dump(f: impl FnOnce(&mut Vec<u8>) -> btrfs_image::Result<()>) -> String {
    let mut out = Vec::new();
    f(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn listing(img: &Image) -> String {
    let start = InodeId {
        subvol: 5,
        ino: 256,
    };
    let opts = LsOptions {
        long: true,
        recursive: true,
        max_depth: 64,
    };
    let mut s = String::new();
    ls(img, start, ".", opts, &mut |e| {
        s.push_str(&format_long(&e));
        s.push('\n');
        Ok(())
    })
    .unwrap();
    s
}

fn super_dump(img: &Image) -> String {
    let off = btrfs_sb_offset(0) as usize;
    btrfs_image::dump::dump_superblock(&img.bytes()[off..off + 4096], off as u64).unwrap()
}

#[test]
fn tiny_image_dumps() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    tiny_tree(&src);
    let img_path = t.path().join("tiny.img");
    build_with(&src, &img_path, &config(), |o| {
        o.scan.clamp = Some(1_700_000_000);
        o.scan.uid = Some(0);
        o.scan.gid = Some(0);
    });
    let img = Image::open(&img_path).unwrap();
    insta::assert_snapshot!("tiny_dump_super", super_dump(&img));
    insta::assert_snapshot!("tiny_dump_tree", dump(|w| img.dump_all_trees(w)));
    insta::assert_snapshot!("tiny_ls", listing(&img));
    let readme = img.lookup(5, b"docs/readme").unwrap();
    let s = forge_inspect::stat::stat(
        &img,
        InodeId {
            subvol: readme.0,
            ino: readme.1,
        },
        "docs/readme",
    )
    .unwrap();
    insta::assert_snapshot!("tiny_stat", forge_inspect::stat::format_stat(&s));
    // The binary prints the same dumps.
    let o = bin().arg("dump-tree").arg(&img_path).output().unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        dump(|w| img.dump_all_trees(w))
    );
    let o = bin()
        .args(["dump-tree", "-t", "fs"])
        .arg(&img_path)
        .output()
        .unwrap();
    let fs = String::from_utf8(o.stdout).unwrap();
    assert!(fs.starts_with("fs tree\nleaf "), "{fs}");
    let root = img.tree_root(5).unwrap().unwrap();
    let o = bin()
        .args(["dump-tree", "-b", &root.bytenr.to_string()])
        .arg(&img_path)
        .output()
        .unwrap();
    assert_eq!(
        format!("fs tree\n{}", String::from_utf8(o.stdout).unwrap()),
        fs
    );
    let o = bin().arg("dump-super").arg(&img_path).output().unwrap();
    assert_eq!(String::from_utf8(o.stdout).unwrap(), super_dump(&img));
}

#[test]
fn mkfs_fixture_dumps() {
    let img = Image::from_bytes(fixture_bytes("mkfs-6.2-rootdir")).unwrap();
    insta::assert_snapshot!("mkfs_dump_super", super_dump(&img));
    insta::assert_snapshot!("mkfs_dump_tree", dump(|w| img.dump_all_trees(w)));
    insta::assert_snapshot!("mkfs_ls", listing(&img));
}

/// An empty filesystem with fixed UUIDs and time, as `forge-mkfs -U ...
/// --device-uuid ... -L pinned` with SOURCE_DATE_EPOCH makes it: every tree
/// mkfs creates, the chunk layout and the superblock, pinned.
#[test]
fn empty_image_dumps() {
    let t = tempfile::tempdir().unwrap();
    let img_path = t.path().join("empty.img");
    let mut cfg = config();
    cfg.byte_count = Some(256 << 20);
    cfg.label = "pinned".into();
    btrfs_writer::make_empty_filesystem(&img_path, &cfg).unwrap();
    let img = Image::open(&img_path).unwrap();
    insta::assert_snapshot!("empty_dump_super", super_dump(&img));
    insta::assert_snapshot!("empty_dump_tree", dump(|w| img.dump_all_trees(w)));
}
