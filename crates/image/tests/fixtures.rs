//! Committed fixture images (testdata/*.img.zst) pin the layout without btrfs-progs:
//! `mkfs-6.2-rootdir` from `mkfs.btrfs --rootdir` (DUP metadata, 114 MiB) and
//! `kernel-compressed` written by the kernel with zstd/zlib/lzo, holes, prealloc,
//! reflinks, xattrs and a default subvolume. See testdata/make_image_fixtures.py.
mod common;

use std::sync::Arc;

use btrfs_image::btrfs_format::consts::*;
use btrfs_image::btrfs_format::Key;
use btrfs_image::{Error, FileExtentKind, Image, SuperblockStatus};
use common::*;

const MKFS: &str = "mkfs-6.2-rootdir";
const KERNEL: &str = "kernel-compressed";

fn expect_err<T>(r: Result<T, Error>) -> Error {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn text(name: &str) -> String {
    std::fs::read_to_string(testdata(name)).unwrap()
}

fn check_items(img: &Image, name: &str) {
    for (tree, want) in parse_items_file(&text(&format!("{name}.items.txt"))) {
        assert_eq!(count_items(img, tree), want, "items in tree {tree}");
    }
}

#[test]
fn mkfs_fixture_superblock_trees_and_files() {
    let img = Image::from_bytes(fixture_bytes(MKFS)).unwrap();
    assert_superblock_matches(&img, &text(&format!("{MKFS}.dump-super.txt")));
    check_items(&img, MKFS);
    assert_eq!(img.default_subvol().unwrap(), BTRFS_FS_TREE_OBJECTID);
    assert_manifest(&img, 5, &text(&format!("{MKFS}.manifest.txt")));

    // Hard link: both names reach one inode with nlink 2.
    let a = img.lookup(5, b"sub/a").unwrap();
    assert_eq!(img.lookup(5, b"/hardlink-to-sub-a").unwrap(), a);
    assert_eq!(img.inode(a.0, a.1).unwrap().nlink.get(), 2);
    assert_eq!(img.lookup(5, b"sub/deeper/../a").unwrap(), a);
    let one = img.lookup(5, b"one").unwrap();
    let x = img.xattrs(one.0, one.1).unwrap();
    assert!(
        x.iter()
            .any(|x| x.name == b"user.forge" && x.value == b"fixture"),
        "{x:?}"
    );

    // Partial reads agree with the whole file, across the sparse file's data.
    let sp = img.lookup(5, b"sparse").unwrap();
    let all = img.read_file_all(sp.0, sp.1, 1 << 20).unwrap();
    assert_eq!(all.len(), 1 << 20);
    for (off, len) in [
        (0u64, 10u64),
        (524_000, 3000),
        (530_000, 100_000),
        ((1 << 20) - 5, 100),
    ] {
        let got = img.read_file(sp.0, sp.1, off, len).unwrap();
        let end = (off + len).min(1 << 20) as usize;
        assert_eq!(got, &all[off as usize..end], "sparse @{off}+{len}");
    }
    assert!(img.read_file_all(sp.0, sp.1, 1000).is_err());

    // Missing names are NotFound, not panics.
    assert!(img.lookup(5, b"nope").unwrap_err().is_not_found());
    assert!(img
        .lookup(5, b"one/below-a-file")
        .unwrap_err()
        .is_not_found());
    assert!(img.inode(5, 999_999).unwrap_err().is_not_found());
    assert!(img.fs_root(12345).unwrap_err().is_not_found());
}

#[test]
fn mkfs_fixture_superblock_copies_and_mirror_open() {
    let bytes = Arc::new(fixture_bytes(MKFS));
    let img = Image::from_shared(bytes.clone(), 0).unwrap();
    let copies = img.superblock_copies();
    let gen = img.superblock().generation.get();
    assert_eq!(
        copies[0].status,
        SuperblockStatus::Valid { generation: gen }
    );
    assert_eq!(copies[1].offset, 64 << 20);
    assert_eq!(
        copies[1].status,
        SuperblockStatus::Valid { generation: gen }
    );
    assert_eq!(copies[2].status, SuperblockStatus::Absent);
    let m1 = Image::from_shared(bytes.clone(), 1).unwrap();
    assert_eq!(m1.superblock_mirror(), 1);
    assert_eq!(m1.superblock().root.get(), img.superblock().root.get());
    assert!(Image::from_shared(bytes, 2).is_err());
}

#[test]
fn dup_metadata_falls_back_to_the_second_copy() {
    let mut bytes = Arc::new(fixture_bytes(MKFS));
    let (root, phys) = {
        let img = Image::from_shared(bytes.clone(), 0).unwrap();
        let root = img.root_tree().bytenr;
        let copies = img.chunk_map().map(root, img.nodesize() as u64).unwrap();
        assert_eq!(copies.len(), 2, "mkfs metadata is DUP");
        (root, copies)
    };
    Arc::get_mut(&mut bytes).unwrap()[phys[0] as usize + 200] ^= 0xff;
    {
        let img = Image::from_shared(bytes.clone(), 0).unwrap();
        img.read_tree_block(root).unwrap();
        let e = expect_err(img.read_tree_block_mirror(root, 0, None, None));
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        img.read_tree_block_mirror(root, 1, None, None).unwrap();
        exercise(&img).unwrap();
    }
    Arc::get_mut(&mut bytes).unwrap()[phys[1] as usize + 300] ^= 0xff;
    match Image::from_shared(bytes, 0) {
        Ok(img) => {
            let e = expect_err(img.read_tree_block(root));
            let s = e.to_string();
            assert!(
                s.starts_with(&format!("tree block at logical {root}: copy 1")),
                "{s}"
            );
            assert!(s.contains("copy 2"), "{s}");
            assert!(matches!(e, Error::Corrupt { .. }));
        }
        Err(e) => panic!("the chunk tree is intact, open should work: {e}"),
    }
}

#[test]
fn corrupt_superblock_is_reported_with_location() {
    let mut b = fixture_bytes(MKFS);
    b[0x10000 + 0x100] ^= 1;
    let e = Image::from_bytes(b.clone()).unwrap_err();
    let s = e.to_string();
    assert!(
        s.starts_with("superblock copy 0 at physical 65536: crc32c checksum mismatch"),
        "{s}"
    );
    // The mirror at 64 MiB is still good.
    let img = Image::from_shared(Arc::new(b.clone()), 1).unwrap();
    assert!(matches!(
        img.superblock_copies()[0].status,
        SuperblockStatus::Invalid(_)
    ));
    b.truncate(0x10000 + 100);
    assert!(Image::from_bytes(b).is_err());
}

#[test]
fn kernel_fixture_superblock_trees_and_files() {
    let img = Image::from_bytes(fixture_bytes(KERNEL)).unwrap();
    assert_superblock_matches(&img, &text(&format!("{KERNEL}.dump-super.txt")));
    check_items(&img, KERNEL);
    assert_manifest(&img, 5, &text(&format!("{KERNEL}.manifest.txt")));
    assert_eq!(img.subvolumes().unwrap(), vec![5, 256]);
    assert_eq!(img.default_subvol().unwrap(), 256);

    // Crossing into and out of the subvolume.
    let inside = img.lookup(5, b"sv/inside").unwrap();
    assert_eq!(inside.0, 256);
    assert_eq!(img.lookup(256, b"inside").unwrap(), inside);
    assert_eq!(img.lookup(256, b"..").unwrap(), (5, 256));
    assert_eq!(
        img.lookup(256, b"../zstd/big").unwrap(),
        img.lookup(5, b"zstd/big").unwrap()
    );
    assert_eq!(img.lookup(5, b"sv").unwrap(), (256, 256));

    // Each directory's extents use its compression.
    for (dir, algo) in [
        ("zstd", BTRFS_COMPRESS_ZSTD),
        ("zlib", BTRFS_COMPRESS_ZLIB),
        ("lzo", BTRFS_COMPRESS_LZO),
    ] {
        for f in ["big", "small", "tail"] {
            let (sv, ino) = img.lookup(5, format!("{dir}/{f}").as_bytes()).unwrap();
            let ext = img.file_extents(sv, ino).unwrap();
            assert!(
                ext.iter().any(|e| e.compression == algo),
                "{dir}/{f}: {ext:?}"
            );
        }
        // Reads at odd offsets across extent boundaries agree with the whole file.
        let (sv, ino) = img.lookup(5, format!("{dir}/big").as_bytes()).unwrap();
        let all = img.read_file_all(sv, ino, 1 << 20).unwrap();
        for (off, len) in [
            (1u64, 131_071u64),
            (69_999, 5002),
            (131_000, 200_000),
            (250_000, 99),
        ] {
            let got = img.read_file(sv, ino, off, len).unwrap();
            let end = (off + len).min(all.len() as u64) as usize;
            assert!(got == all[off as usize..end], "{dir}/big @{off}+{len}");
        }
        assert!(all[70000..75000].iter().all(|&b| b == b'#'));
    }

    // Prealloc extents read as zeros around the written block.
    let (sv, ino) = img.lookup(5, b"plain/prealloc").unwrap();
    let ext = img.file_extents(sv, ino).unwrap();
    assert!(
        ext.iter()
            .any(|e| matches!(e.kind, FileExtentKind::Prealloc { .. })),
        "{ext:?}"
    );
    let data = img.read_file_all(sv, ino, 1 << 20).unwrap();
    assert!(data[..8192].iter().all(|&b| b == 0) && data[12288..].iter().all(|&b| b == 0));

    // xattrs, hard links, reflinks.
    let d = img.lookup(5, b"plain/data").unwrap();
    let mut x = img.xattrs(d.0, d.1).unwrap();
    x.sort_by(|a, b| a.name.cmp(&b.name));
    let pairs: Vec<(&[u8], &[u8])> = x.iter().map(|x| (&x.name[..], &x.value[..])).collect();
    assert_eq!(
        pairs,
        vec![
            (&b"user.colour"[..], &b"green"[..]),
            (&b"user.empty"[..], &b""[..])
        ]
    );
    assert_eq!(img.lookup(5, b"plain/data-hardlink").unwrap(), d);
    let r = img.lookup(5, b"plain/reflinked").unwrap();
    let z = img.lookup(5, b"zlib/big").unwrap();
    let disk = |(sv, ino): (u64, u64)| -> Vec<u64> {
        img.file_extents(sv, ino)
            .unwrap()
            .iter()
            .filter_map(|e| match e.kind {
                FileExtentKind::Regular { disk_bytenr, .. } => Some(disk_bytenr),
                _ => None,
            })
            .collect()
    };
    assert_eq!(disk(r), disk(z), "reflink shares extents");
}

#[test]
fn tree_search_and_ranges() {
    let img = Image::from_bytes(fixture_bytes(KERNEL)).unwrap();
    let fs = img.fs_root(5).unwrap();
    let all: Vec<Key> = img.iter(&fs).map(|r| r.unwrap().key).collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "strictly ascending");
    // Every key is found exactly, iter_from starts at it, find_le of key+1 returns it.
    for (i, k) in all.iter().enumerate() {
        assert_eq!(img.search(&fs, *k).unwrap().unwrap().key, *k);
        let from: Vec<Key> = img
            .iter_from(&fs, *k)
            .take(70)
            .map(|r| r.unwrap().key)
            .collect();
        assert_eq!(from, all[i..(i + 70).min(all.len())]);
        let next = Key::new(k.objectid, k.item_type, k.offset + 1);
        let le = *all.iter().rev().find(|x| **x <= next).unwrap();
        assert_eq!(img.find_le(&fs, next).unwrap().unwrap().key, le);
        if i > 0 && k.offset > 0 && all[i - 1] < Key::new(k.objectid, k.item_type, k.offset - 1) {
            let prev = Key::new(k.objectid, k.item_type, k.offset - 1);
            assert_eq!(img.find_le(&fs, prev).unwrap().unwrap().key, all[i - 1]);
        }
    }
    let lo = Key::new(257, 0, 0);
    let hi = Key::new(258, u8::MAX, u64::MAX);
    let r: Vec<Key> = img.range(&fs, lo, hi).map(|r| r.unwrap().key).collect();
    let want: Vec<Key> = all
        .iter()
        .copied()
        .filter(|k| *k >= lo && *k <= hi)
        .collect();
    assert_eq!(r, want);
    assert!(img.search(&fs, Key::new(1, 1, 1)).unwrap().is_none());
    assert!(img.find_le(&fs, Key::MIN).unwrap().is_none());
    // Blocks of every tree are reachable and verified.
    for id in [1, 2, 3, 4, 5, 7, 9, 10, 256] {
        let root = img.tree_root(id).unwrap().unwrap();
        let blocks: Vec<_> = img.tree_blocks(&root).map(|b| b.unwrap().bytenr).collect();
        assert!(!blocks.is_empty() && blocks[0] == root.bytenr);
    }
    assert!(img.tree_root(77).unwrap().is_none());
}

#[test]
fn chunk_map_covers_every_block_group() {
    let img = Image::from_bytes(fixture_bytes(MKFS)).unwrap();
    let bgs: Vec<Key> = img
        .iter(&img.tree_root(BTRFS_EXTENT_TREE_OBJECTID).unwrap().unwrap())
        .map(|r| r.unwrap().key)
        .filter(|k| k.item_type == BTRFS_BLOCK_GROUP_ITEM_KEY)
        .collect();
    assert!(!bgs.is_empty());
    for k in bgs {
        let c = img
            .chunk_map()
            .lookup(k.objectid)
            .expect("block group has a chunk");
        assert_eq!((c.logical, c.length), (k.objectid, k.offset));
    }
    // Reading across a chunk boundary is assembled, not refused.
    let chunks: Vec<_> = img.chunk_map().iter().cloned().collect();
    for w in chunks.windows(2) {
        if w[0].end() == w[1].logical {
            let r = img.read_logical(w[0].end() - 10, 20).unwrap();
            assert_eq!(r.len(), 20);
        }
    }
    assert!(img.read_logical(u64::MAX - 5, 100).is_err());
}

#[test]
fn open_errors_name_the_file_or_location() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.img");
    match Image::open(&missing) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("{other:?}"),
    }
    let empty = tmp.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let e = Image::open(&empty).unwrap_err().to_string();
    assert!(e.starts_with("superblock copy 0 at physical 65536:"), "{e}");
    let zeros = tmp.path().join("zeros.img");
    std::fs::File::create(&zeros)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let e = Image::open(&zeros).unwrap_err().to_string();
    assert!(e.contains("bad magic"), "{e}");
    // A real image through the mmap path.
    let p = tmp.path().join("mkfs.img");
    std::fs::write(&p, fixture_bytes(MKFS)).unwrap();
    let img = Image::open(&p).unwrap();
    assert_eq!(img.path(), Some(p.as_path()));
    exercise(&img).unwrap();
    assert!(Image::open_with_mirror(&p, 1).is_ok());
    assert!(Image::open_with_mirror(&p, 3).unwrap_err().is_not_found());
}

/// Rewrite the FS tree's root node (checksum fixed) and expect an error, not a hang.
#[test]
fn hostile_tree_pointers_are_rejected() {
    use btrfs_image::btrfs_format::{Header, KeyPtr};
    let mut bytes = Arc::new(fixture_bytes(KERNEL));
    let (root, phys, nodesize, csum, ptr0) = {
        let img = Image::from_shared(bytes.clone(), 0).unwrap();
        let root = img.fs_root(5).unwrap();
        assert!(root.level >= 1, "fixture FS tree has a node");
        let phys = img.chunk_map().map(root.bytenr, 4096).unwrap()[0] as usize;
        let tb = img.read_tree_block(root.bytenr).unwrap();
        let p0 = tb.key_ptr(0).unwrap();
        (root, phys, img.nodesize() as usize, img.csum_type(), p0)
    };
    let ptr_at = move |i: usize| phys + Header::SIZE + i * KeyPtr::SIZE;
    type Mutate = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Mutate)> = vec![
        // Slot 1 points back at the node itself (a cycle).
        (
            "level",
            Box::new(move |b: &mut Vec<u8>| {
                let at = ptr_at(1) + 17;
                b[at..at + 8].copy_from_slice(&root.bytenr.to_le_bytes());
                b[at + 8..at + 16].copy_from_slice(&root.generation.to_le_bytes());
            }),
        ),
        // Slot 1 points at slot 0's leaf (a DAG that would repeat items).
        (
            "first key",
            Box::new(move |b: &mut Vec<u8>| {
                let at = ptr_at(1) + 17;
                b[at..at + 8].copy_from_slice(&ptr0.blockptr.get().to_le_bytes());
                b[at + 8..at + 16].copy_from_slice(&ptr0.generation.get().to_le_bytes());
            }),
        ),
        // A stale generation in the pointer.
        (
            "generation",
            Box::new(move |b: &mut Vec<u8>| {
                let at = ptr_at(0) + 25;
                b[at..at + 8].copy_from_slice(&1u64.to_le_bytes());
            }),
        ),
        // The node claims a level above the maximum.
        (
            "level 9",
            Box::new(move |b: &mut Vec<u8>| b[phys + 100] = 9),
        ),
    ];
    for (want, mutate) in cases {
        let saved = bytes[phys..phys + nodesize].to_vec();
        {
            let b = Arc::get_mut(&mut bytes).unwrap();
            mutate(b);
            let c = csum.compute(&b[phys + 32..phys + nodesize]);
            b[phys..phys + csum.size()].copy_from_slice(&c[..csum.size()]);
        }
        {
            let img = Image::from_shared(bytes.clone(), 0).unwrap();
            let root = img.fs_root(5).unwrap();
            let err = img
                .iter(&root)
                .find_map(|r| r.err())
                .unwrap_or_else(|| panic!("{want}: iteration should fail"));
            assert!(err.to_string().contains(want), "{want}: {err}");
            assert!(img.tree_blocks(&root).any(|b| b.is_err()), "{want}");
            assert!(exercise(&img).is_err(), "{want}");
        }
        Arc::get_mut(&mut bytes).unwrap()[phys..phys + nodesize].copy_from_slice(&saved);
    }
}
