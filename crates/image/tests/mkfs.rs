//! Images made by `mkfs.btrfs` at test time, checked against btrfs-progs' own dumps.
//! Skips (loudly) where btrfs-progs is not installed.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use btrfs_image::btrfs_format::consts::*;
use btrfs_image::{Image, SuperblockStatus};
use common::*;

fn progs_available() -> bool {
    if have("mkfs.btrfs") && have("btrfs") {
        return true;
    }
    skip("mkfs.btrfs not found (install btrfs-progs)");
    false
}

fn mkfs(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let img = dir.join(name);
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(128 << 20).unwrap();
    drop(f);
    run(Command::new("mkfs.btrfs")
        .args(["-q", "-f"])
        .args(args)
        .arg(&img));
    img
}

/// Superblock fields and per-tree item counts agree with dump-super / dump-tree.
fn check_against_progs(img_path: &Path) -> Image {
    let img = Image::open(img_path).unwrap_or_else(|e| panic!("{}: {e}", img_path.display()));
    let dump = run(Command::new("btrfs")
        .args(["inspect-internal", "dump-super"])
        .arg(img_path));
    assert_superblock_matches(&img, &dump);
    let mut trees = vec![BTRFS_ROOT_TREE_OBJECTID, BTRFS_CHUNK_TREE_OBJECTID];
    for it in img.iter(&img.root_tree()) {
        let it = it.unwrap();
        if it.key.item_type == BTRFS_ROOT_ITEM_KEY && !trees.contains(&it.key.objectid) {
            trees.push(it.key.objectid);
        }
    }
    assert!(trees.contains(&BTRFS_EXTENT_TREE_OBJECTID) && trees.contains(&BTRFS_FS_TREE_OBJECTID));
    // mkfs writes every copy of every tree block, and the superblock mirror at 64 MiB.
    for &id in &trees {
        let root = img.tree_root(id).unwrap().unwrap();
        for b in img.tree_blocks(&root) {
            let b = b.unwrap();
            for m in 0..img.chunk_map().num_copies(b.bytenr).unwrap() {
                let level = Some(b.block.level());
                if let Err(e) = img.read_tree_block_mirror(b.bytenr, m, level, None) {
                    panic!("copy {m} of {}: {e}", b.bytenr);
                }
            }
        }
    }
    let copies = img.superblock_copies();
    assert!(matches!(copies[0].status, SuperblockStatus::Valid { .. }));
    assert!(matches!(copies[1].status, SuperblockStatus::Valid { .. }));
    assert_eq!(copies[2].status, SuperblockStatus::Absent);
    for id in trees {
        let out = run(Command::new("btrfs")
            .args(["inspect-internal", "dump-tree", "-t", &id.to_string()])
            .arg(img_path));
        assert_eq!(
            count_items(&img, id),
            count_dump_tree_items(&out),
            "{}: items of tree {id}",
            img_path.display()
        );
    }
    exercise(&img).unwrap();
    img
}

#[test]
fn empty_images_for_each_csum_nodesize_and_profile() {
    if !progs_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut cases: Vec<Vec<&str>> = Vec::new();
    for csum in ["crc32c", "xxhash", "sha256", "blake2"] {
        cases.push(vec!["--csum", csum]);
    }
    for n in ["4096", "16384", "65536"] {
        for m in ["single", "dup"] {
            cases.push(vec!["-n", n, "-m", m]);
        }
    }
    for (i, args) in cases.iter().enumerate() {
        let p = mkfs(tmp.path(), &format!("empty{i}.img"), args);
        let img = check_against_progs(&p);
        let want_dup = !args.contains(&"single");
        let meta = img
            .chunk_map()
            .iter()
            .find(|c| c.type_flags & BTRFS_BLOCK_GROUP_METADATA != 0)
            .expect("metadata chunk");
        assert_eq!(meta.stripes.len(), if want_dup { 2 } else { 1 }, "{args:?}");
        if let Some(c) = args.iter().position(|a| *a == "--csum") {
            assert_eq!(img.csum_type().name(), args[c + 1]);
        }
        let root = img.lookup(5, b"").unwrap();
        assert_eq!(root, (5, 256));
        assert!(img.read_dir(5, 256).unwrap().is_empty());
        std::fs::remove_file(&p).unwrap();
    }
}

/// Small deterministic pseudo-random bytes (xorshift), incompressible.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn make_tree(root: &Path, many: usize) {
    let w = |p: &str, d: &[u8]| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, d).unwrap();
    };
    w("empty", b"");
    w("one", b"1");
    w("inline-3000", &noise(3000, 1));
    w("random-200k", &noise(200 * 1024, 2));
    w("exactly-128k-plus-1", &noise(128 * 1024 + 1, 3));
    w("sub/a", b"hello from a\n");
    w("sub/deeper/b", &noise(9000, 4));
    std::fs::create_dir_all(root.join("emptydir")).unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(root.join("sparse")).unwrap();
        f.set_len(3 << 20).unwrap();
        f.seek(SeekFrom::Start(300 * 1024)).unwrap();
        f.write_all(&noise(5000, 5)).unwrap();
        f.seek(SeekFrom::Start((2 << 20) + 7)).unwrap();
        f.write_all(b"tail").unwrap();
    }
    std::os::unix::fs::symlink("random-200k", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/absolute/dangling/target", root.join("dangling")).unwrap();
    std::fs::hard_link(root.join("sub/a"), root.join("hardlink")).unwrap();
    for i in 0..many {
        w(
            &format!("many/file-{i:04}"),
            format!("file {i}\n").as_bytes(),
        );
    }
}

#[test]
fn rootdir_images_read_back_exactly() {
    if !progs_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    make_tree(&tree, 400);
    for args in [
        vec![],
        vec!["-n", "4096", "--csum", "xxhash"],
        vec!["-m", "single", "--csum", "sha256"],
    ] {
        let mut a: Vec<&str> = args.clone();
        let t = tree.to_str().unwrap();
        a.extend(["--rootdir", t]);
        let p = mkfs(tmp.path(), "rootdir.img", &a);
        let img = check_against_progs(&p);
        assert_matches_dir(&img, 5, &tree);
        let h = img.lookup(5, b"hardlink").unwrap();
        assert_eq!(h, img.lookup(5, b"sub/a").unwrap(), "{args:?}");
        assert_eq!(img.inode(h.0, h.1).unwrap().nlink.get(), 2);
        let fs = img.fs_root(5).unwrap();
        if args.contains(&"4096") {
            assert!(
                fs.level >= 1,
                "400 files in 4 KiB nodes need more than one leaf"
            );
        }
        // read_file windows agree with the file.
        let (sv, ino) = img.lookup(5, b"random-200k").unwrap();
        let want = noise(200 * 1024, 2);
        for (off, len) in [
            (0u64, 1u64),
            (4095, 2),
            (100_000, 50_000),
            (200 * 1024 - 1, 10),
        ] {
            let got = img.read_file(sv, ino, off, len).unwrap();
            let end = (off + len).min(want.len() as u64) as usize;
            assert_eq!(got, &want[off as usize..end]);
        }
        std::fs::remove_file(&p).unwrap();
    }
}
