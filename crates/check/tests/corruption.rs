//! The corruption suite: damage small images in many distinct ways; for every one
//! the checker must report the right kind of finding and exit non-zero, and
//! `btrfs check --readonly --check-data-csum` must agree that the image is damaged.
mod common;

use btrfs_check::{check_bytes, Kind, Options};
use btrfs_image::btrfs_format::consts::*;
use btrfs_image::btrfs_format::CsumType;
use common::*;

type Damage = fn(&mut Img);

struct Case {
    name: &'static str,
    base: Base,
    damage: Damage,
    expect: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Base {
    /// 16K nodes, DUP metadata, default features (block-group-tree on).
    A,
    /// 4K nodes and 400 more files: trees above one leaf.
    B,
    /// The kernel-written fixture with compressed extents.
    Kernel,
}

fn ino(img: &Img, path: &str) -> u64 {
    img.image().lookup(5, path.as_bytes()).unwrap().1
}

fn fs_item(img: &Img, path: &str, t: u8) -> ItemLoc {
    let i = ino(img, path);
    img.find(5, |k| k.objectid == i && k.item_type == t)
}

fn dir_entry(img: &Img, dir: &str, name: &str, t: u8) -> ItemLoc {
    let d = ino(img, dir);
    let locs = img.find_all(5, |k| k.objectid == d && k.item_type == t);
    for l in locs {
        let p = read_payload(img, l);
        if p.len() >= 30
            && &p[30..30 + u16::from_le_bytes([p[27], p[28]]) as usize] == name.as_bytes()
        {
            return l;
        }
    }
    panic!("no {t} entry {name} in {dir}")
}

fn read_payload(img: &Img, l: ItemLoc) -> Vec<u8> {
    let c = img.copies(l.leaf, img.nodesize() as u64)[0];
    img.bytes[c + l.off..c + l.off + l.size].to_vec()
}

fn data_extents(img: &Img) -> Vec<ItemLoc> {
    let loc = img.find_all(BTRFS_EXTENT_TREE_OBJECTID, |k| {
        k.item_type == BTRFS_EXTENT_ITEM_KEY
    });
    loc.into_iter()
        .filter(|l| le64(&read_payload(img, *l), 16) & BTRFS_EXTENT_FLAG_DATA != 0)
        .collect()
}

fn disk_bytenr_of(img: &Img, path: &str) -> u64 {
    let l = fs_item(img, path, BTRFS_EXTENT_DATA_KEY);
    le64(&read_payload(img, l), 21)
}

fn bg_tree(img: &Img) -> u64 {
    let sb = img.image().superblock().compat_ro_flags.get();
    if sb & BTRFS_FEATURE_COMPAT_RO_BLOCK_GROUP_TREE != 0 {
        BTRFS_BLOCK_GROUP_TREE_OBJECTID
    } else {
        BTRFS_EXTENT_TREE_OBJECTID
    }
}

fn cases() -> Vec<Case> {
    use Base::*;
    vec![
        Case {
            name: "bit flipped in a leaf",
            base: A,
            expect: Kind::TreeBlockChecksum,
            damage: |img| {
                let l = fs_item(img, "ten_k", INODE);
                img.patch_block(l.leaf, false, |b| b[2000] ^= 0x10);
            },
        },
        Case {
            name: "bit flipped in a node",
            base: B,
            expect: Kind::TreeBlockChecksum,
            damage: |img| {
                let (n, _) = img
                    .blocks(5)
                    .into_iter()
                    .find(|b| b.1 > 0)
                    .expect("fs tree has a node");
                img.patch_block(n, false, |b| b[150] ^= 0x01);
            },
        },
        Case {
            name: "wrong checksum on an extent tree leaf",
            base: A,
            expect: Kind::TreeBlockChecksum,
            damage: |img| {
                let (b, _) = img.blocks(BTRFS_EXTENT_TREE_OBJECTID)[0];
                img.patch_block(b, false, |b| b[0] ^= 0xff);
            },
        },
        Case {
            name: "bit flipped in a data sector",
            base: A,
            expect: Kind::DataChecksum,
            damage: |img| {
                let d = disk_bytenr_of(img, "dir/hundred_k");
                let p = img.copies(d + 8192, 4096)[0];
                img.bytes[p + 77] ^= 0x04;
            },
        },
        Case {
            name: "bit flipped in a compressed extent",
            base: Kernel,
            expect: Kind::DataChecksum,
            damage: |img| {
                let l = img
                    .find_all(5, |k| k.item_type == BTRFS_EXTENT_DATA_KEY)
                    .into_iter()
                    .find(|l| {
                        let p = read_payload(img, *l);
                        p.len() == 53
                            && p[16] != 0
                            && p[20] == BTRFS_FILE_EXTENT_REG
                            && le64(&p, 21) != 0
                    })
                    .expect("a compressed extent");
                let d = le64(&read_payload(img, l), 21);
                let p = img.copies(d, 4096)[0];
                img.bytes[p + 100] ^= 0x20;
            },
        },
        Case {
            name: "keys out of order in a leaf",
            base: A,
            expect: Kind::KeyOrder,
            damage: |img| {
                let l = fs_item(img, "ten_k", INODE);
                img.rebuild_leaf(l.leaf, |items| {
                    let i = items.len() / 2;
                    let k = items[i].0;
                    items[i].0 = items[i + 1].0;
                    items[i + 1].0 = k;
                });
            },
        },
        Case {
            name: "wrong reference count",
            base: A,
            expect: Kind::ExtentRefCount,
            damage: |img| {
                let l = data_extents(img)[0];
                img.patch_item(l, |p| {
                    let r = le64(p, 0);
                    put64(p, 0, r + 1)
                });
            },
        },
        Case {
            name: "missing backref",
            base: A,
            expect: Kind::BackrefMissing,
            damage: |img| {
                let l = data_extents(img)
                    .into_iter()
                    .find(|l| read_payload(img, *l).get(24) == Some(&BTRFS_EXTENT_DATA_REF_KEY))
                    .unwrap();
                img.patch_item(l, |p| {
                    let o = le64(p, 33);
                    put64(p, 33, o + 1000)
                });
            },
        },
        Case {
            name: "file extent pointing past the end",
            base: A,
            expect: Kind::FileExtentInvalid,
            damage: |img| {
                let end = img.image().superblock().total_bytes.get();
                let l = fs_item(img, "sector", BTRFS_EXTENT_DATA_KEY);
                img.patch_item(l, |p| put64(p, 21, end + (64 << 20)));
            },
        },
        Case {
            name: "overlapping extent items",
            base: A,
            expect: Kind::ExtentOverlap,
            damage: |img| {
                let ex = data_extents(img);
                let (a, b) = ex
                    .windows(2)
                    .map(|w| (w[0], w[1]))
                    .find(|(a, b)| a.leaf == b.leaf)
                    .unwrap();
                img.rebuild_leaf(a.leaf, |items| {
                    let i = items.iter().position(|it| it.0 == a.key).unwrap();
                    items[i].0.offset = b.key.objectid - a.key.objectid + 4096;
                });
            },
        },
        Case {
            name: "wrong nlink",
            base: A,
            expect: Kind::InodeNlink,
            damage: |img| {
                let l = fs_item(img, "ten_k", INODE);
                img.patch_item(l, |p| put32(p, 40, 3));
            },
        },
        Case {
            name: "wrong directory size",
            base: A,
            expect: Kind::InodeSize,
            damage: |img| {
                let l = fs_item(img, "dir", INODE);
                img.patch_item(l, |p| {
                    let s = le64(p, 16);
                    put64(p, 16, s + 2)
                });
            },
        },
        Case {
            name: "wrong nbytes",
            base: A,
            expect: Kind::InodeNbytes,
            damage: |img| {
                let l = fs_item(img, "ten_k", INODE);
                img.patch_item(l, |p| {
                    let s = le64(p, 24);
                    put64(p, 24, s + 4096)
                });
            },
        },
        Case {
            name: "dir item without its index",
            base: A,
            expect: Kind::DirEntryMissing,
            damage: |img| {
                let d = ino(img, "many");
                let l = img
                    .find_not_first(5, |k| k.objectid == d && k.item_type == BTRFS_DIR_INDEX_KEY);
                img.rebuild_leaf(l.leaf, |items| items.retain(|it| it.0 != l.key));
            },
        },
        Case {
            name: "missing checksums",
            base: A,
            expect: Kind::CsumMissing,
            damage: |img| {
                let cs = img.csum().size();
                let l = img
                    .find_all(BTRFS_CSUM_TREE_OBJECTID, |_| true)
                    .into_iter()
                    .max_by_key(|l| l.size)
                    .unwrap();
                img.rebuild_leaf(l.leaf, |items| {
                    let it = items.iter_mut().find(|it| it.0 == l.key).unwrap();
                    let n = it.1.len();
                    it.1.truncate(n - 4 * cs);
                });
            },
        },
        Case {
            name: "free space tree mismatch",
            base: A,
            expect: Kind::FreeSpaceMismatch,
            damage: |img| {
                let l = img.find(BTRFS_FREE_SPACE_TREE_OBJECTID, |k| {
                    k.item_type == BTRFS_FREE_SPACE_EXTENT_KEY && k.offset > 8192
                });
                img.rebuild_leaf(l.leaf, |items| {
                    let it = items.iter_mut().find(|it| it.0 == l.key).unwrap();
                    it.0.offset -= 4096;
                });
            },
        },
        Case {
            name: "wrong block group used",
            base: A,
            expect: Kind::BlockGroupUsed,
            damage: |img| {
                let t = bg_tree(img);
                let l = img.find(t, |k| k.item_type == BTRFS_BLOCK_GROUP_ITEM_KEY);
                img.patch_item(l, |p| {
                    let u = le64(p, 0);
                    put64(p, 0, u + 4096)
                });
            },
        },
        Case {
            name: "cycle between tree blocks",
            base: B,
            expect: Kind::TreeCycle,
            damage: |img| {
                let (n, _) = img.blocks(5).into_iter().find(|b| b.1 > 0).unwrap();
                img.patch_block(n, true, |b| {
                    let slot1 = 101 + 33;
                    let own_gen = le64(b, 80);
                    put64(b, slot1 + 17, n);
                    put64(b, slot1 + 25, own_gen);
                });
            },
        },
        Case {
            name: "block reached twice",
            base: B,
            expect: Kind::BlockReachedTwice,
            damage: |img| {
                let (n, _) = img.blocks(5).into_iter().find(|b| b.1 > 0).unwrap();
                img.patch_block(n, true, |b| {
                    // Slot 2 points where slot 1 does.
                    let (s1, s2) = (101 + 33, 101 + 66);
                    let ptr = le64(b, s1 + 17);
                    let gen = le64(b, s1 + 25);
                    put64(b, s2 + 17, ptr);
                    put64(b, s2 + 25, gen);
                });
            },
        },
        Case {
            name: "truncated image",
            base: A,
            expect: Kind::ImageTruncated,
            damage: |img| {
                let n = img.bytes.len() / 2;
                img.bytes.truncate(n);
            },
        },
        Case {
            name: "primary superblock checksum",
            base: A,
            expect: Kind::SuperblockInvalid,
            damage: |img| {
                img.bytes[65536 + 300] ^= 0x40;
            },
        },
        Case {
            name: "wrong superblock bytes_used",
            base: A,
            expect: Kind::SuperBytesUsed,
            damage: |img| {
                img.patch_super(|sb| {
                    let u = le64(sb, 120);
                    put64(sb, 120, u + 65536)
                });
            },
        },
        Case {
            name: "wrong device bytes_used",
            base: A,
            expect: Kind::DevItem,
            damage: |img| {
                let l = img.find(BTRFS_CHUNK_TREE_OBJECTID, |k| {
                    k.item_type == BTRFS_DEV_ITEM_KEY
                });
                img.patch_item(l, |p| {
                    let u = le64(p, 16);
                    put64(p, 16, u + (1 << 20))
                });
            },
        },
        Case {
            name: "missing dev extent",
            base: A,
            expect: Kind::DevExtent,
            damage: |img| {
                let l = img.find_not_first(BTRFS_DEV_TREE_OBJECTID, |k| {
                    k.item_type == BTRFS_DEV_EXTENT_KEY
                });
                img.rebuild_leaf(l.leaf, |items| items.retain(|it| it.0 != l.key));
            },
        },
        Case {
            name: "wrong file type in a dir index",
            base: A,
            expect: Kind::FileType,
            damage: |img| {
                let l = dir_entry(img, "", "tiny", BTRFS_DIR_INDEX_KEY);
                img.patch_item(l, |p| p[29] = BTRFS_FT_SYMLINK);
            },
        },
        Case {
            name: "name that does not match its hash",
            base: A,
            expect: Kind::NameHash,
            damage: |img| {
                let l = dir_entry(img, "", "tiny", BTRFS_DIR_ITEM_KEY);
                img.patch_item(l, |p| p[30] = b'T');
            },
        },
        Case {
            name: "wrong bytenr in a block header",
            base: A,
            expect: Kind::TreeBlockHeader,
            damage: |img| {
                let l = fs_item(img, "ten_k", INODE);
                img.patch_block(l.leaf, true, |b| {
                    let v = le64(b, 48);
                    put64(b, 48, v + 4096)
                });
            },
        },
        Case {
            name: "generation from the future",
            base: A,
            expect: Kind::TreeBlockHeader,
            damage: |img| {
                let (b, _) = img.blocks(BTRFS_CSUM_TREE_OBJECTID)[0];
                img.patch_block(b, true, |b| {
                    let v = le64(b, 80);
                    put64(b, 80, v + 100)
                });
            },
        },
        Case {
            name: "foreign fsid in a block header",
            base: A,
            expect: Kind::TreeBlockHeader,
            damage: |img| {
                let l = fs_item(img, "ten_k", INODE);
                img.patch_block(l.leaf, true, |b| b[40] ^= 0x01);
            },
        },
        Case {
            name: "item offset out of place",
            base: A,
            expect: Kind::ItemOffset,
            damage: |img| {
                let l = fs_item(img, "ten_k", INODE);
                img.patch_block(l.leaf, true, |b| {
                    let h = 101 + 3 * 25 + 17;
                    let v = u32::from_le_bytes(b[h..h + 4].try_into().unwrap());
                    put32(b, h, v + 3)
                });
            },
        },
        Case {
            name: "dir index with trailing bytes",
            base: A,
            expect: Kind::ItemSize,
            damage: |img| {
                let l = dir_entry(img, "", "tiny", BTRFS_DIR_INDEX_KEY);
                img.rebuild_leaf(l.leaf, |items| {
                    items.iter_mut().find(|it| it.0 == l.key).unwrap().1.push(0)
                });
            },
        },
        Case {
            name: "unlinked inode without orphan item",
            base: A,
            expect: Kind::Orphan,
            damage: |img| {
                let l = fs_item(img, "tiny", INODE);
                img.patch_item(l, |p| put32(p, 40, 0));
            },
        },
        Case {
            name: "data extent nothing references",
            base: A,
            expect: Kind::ExtentUnreferenced,
            damage: |img| {
                let l = fs_item(img, "sector", BTRFS_EXTENT_DATA_KEY);
                img.patch_item(l, |p| {
                    put64(p, 21, 0);
                    put64(p, 29, 0)
                });
            },
        },
        Case {
            name: "directory entry pointing at no inode",
            base: A,
            expect: Kind::DirEntryDangling,
            damage: |img| {
                let l = dir_entry(img, "", "tiny", BTRFS_DIR_ITEM_KEY);
                img.patch_item(l, |p| put64(p, 0, 99_999));
            },
        },
        Case {
            name: "free space info count",
            base: A,
            expect: Kind::FreeSpaceInfo,
            damage: |img| {
                let l = img.find(BTRFS_FREE_SPACE_TREE_OBJECTID, |k| {
                    k.item_type == BTRFS_FREE_SPACE_INFO_KEY
                });
                img.patch_item(l, |p| {
                    let c = u32::from_le_bytes(p[0..4].try_into().unwrap());
                    put32(p, 0, c + 1)
                });
            },
        },
        Case {
            name: "inline extent ram_bytes",
            base: A,
            expect: Kind::FileExtentInvalid,
            damage: |img| {
                let l = fs_item(img, "inline", BTRFS_EXTENT_DATA_KEY);
                img.patch_item(l, |p| {
                    let r = le64(p, 8);
                    put64(p, 8, r + 1)
                });
            },
        },
        Case {
            name: "root item level wrong",
            base: A,
            expect: Kind::TreeBlockHeader,
            damage: |img| {
                let l = img.find(BTRFS_ROOT_TREE_OBJECTID, |k| {
                    k.objectid == BTRFS_CSUM_TREE_OBJECTID && k.item_type == BTRFS_ROOT_ITEM_KEY
                });
                img.patch_item(l, |p| p[238] = 1);
            },
        },
        Case {
            name: "tree block without extent item",
            base: A,
            expect: Kind::ExtentItemMissing,
            damage: |img| {
                let (b, _) = img.blocks(BTRFS_CSUM_TREE_OBJECTID)[0];
                let l = img.find(BTRFS_EXTENT_TREE_OBJECTID, |k| {
                    k.objectid == b && k.item_type == BTRFS_METADATA_ITEM_KEY
                });
                assert!(l.slot > 0, "metadata item is first in its leaf");
                img.rebuild_leaf(l.leaf, |items| items.retain(|it| it.0 != l.key));
            },
        },
        Case {
            name: "dir index pointing at another inode",
            base: A,
            expect: Kind::DirEntryMismatch,
            damage: |img| {
                let other = ino(img, "sector");
                let l = dir_entry(img, "", "tiny", BTRFS_DIR_INDEX_KEY);
                img.patch_item(l, move |p| put64(p, 0, other));
            },
        },
    ]
}

#[test]
fn every_damage_is_found_and_btrfs_check_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let a = Img::load(&writer_image(
        dir.path(),
        "a",
        &config(CsumType::Crc32c, 16384, true),
        20,
        false,
    ));
    let b = Img::load(&writer_image(
        dir.path(),
        "b",
        &config(CsumType::Crc32c, 4096, true),
        400,
        false,
    ));
    let k = Img {
        bytes: fixture_bytes("kernel-compressed"),
    };
    let progs = forge_oracle::require_btrfs_progs();
    let opts = Options::default();
    // The bases are clean.
    for (name, img) in [("A", &a), ("B", &b), ("kernel", &k)] {
        let r = check_bytes(img.bytes.clone(), &opts);
        assert!(
            r.findings.is_empty(),
            "base {name} is not clean:\n{}",
            show(&r)
        );
    }
    let cases = cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut names = std::collections::HashSet::new();
    let mut failures = Vec::new();
    for c in &cases {
        assert!(names.insert(c.name), "duplicate case {}", c.name);
        let mut img = match c.base {
            Base::A => a.clone(),
            Base::B => b.clone(),
            Base::Kernel => k.clone(),
        };
        (c.damage)(&mut img);
        let r = check_bytes(img.bytes.clone(), &opts);
        if !r.has(c.expect) || r.exit_code() == 0 {
            failures.push(format!(
                "{}: expected {} (exit != 0), got exit {}:\n{}",
                c.name,
                c.expect,
                r.exit_code(),
                show(&r)
            ));
        }
        if progs {
            let p = dir.path().join("damaged.img");
            img.write(&p);
            let o = std::process::Command::new("btrfs")
                .args(["check", "--readonly", "--check-data-csum"])
                .arg(&p)
                .output()
                .unwrap();
            if o.status.success() {
                failures.push(format!(
                    "{}: btrfs check accepted the damaged image:\n{}{}",
                    c.name,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
            let _ = std::fs::remove_file(&p);
        }
        eprintln!(
            "damage {:45} -> {}",
            c.name,
            kinds(&r)
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn forge_fsck_is_path_independent() {
    // check_path and check_bytes agree on a damaged image.
    let dir = tempfile::tempdir().unwrap();
    let p = writer_image(
        dir.path(),
        "p",
        &config(CsumType::Crc32c, 16384, true),
        5,
        false,
    );
    let mut img = Img::load(&p);
    let l = fs_item(&img, "ten_k", INODE);
    img.patch_item(l, |p| put32(p, 40, 7));
    img.write(&p);
    let a = btrfs_check::check_path(&p, &Options::default()).unwrap();
    let b = check_bytes(img.bytes.clone(), &Options::default());
    assert_eq!(kinds(&a), kinds(&b));
    assert!(a.has(Kind::InodeNlink));
}

/// Damage that `btrfs check` does not look for (it reads the first good copy),
/// but that leaves the image with one copy fewer than it claims: found anyway.
#[test]
fn damage_to_the_second_dup_copy_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let base = Img::load(&writer_image(
        dir.path(),
        "dup",
        &config(CsumType::Crc32c, 16384, true),
        5,
        false,
    ));
    let l = fs_item(&base, "ten_k", INODE);
    let ns = base.nodesize();
    let copies = base.copies(l.leaf, ns as u64);
    assert_eq!(copies.len(), 2, "DUP metadata");
    // A flipped bit in copy 2 only.
    let mut img = base.clone();
    img.bytes[copies[1] + 3000] ^= 0x80;
    let r = check_bytes(img.bytes.clone(), &Options::default());
    assert!(r.has(Kind::TreeBlockChecksum), "{}", show(&r));
    assert!(
        r.findings.iter().all(|f| f.message.contains("copy 2")),
        "{}",
        show(&r)
    );
    // Copy 2 holds an older, valid version of the block (generation differs).
    let mut img = base.clone();
    let c = copies[1];
    let g = le64(&img.bytes[c..], 80);
    put64(&mut img.bytes[c..], 80, g - 1);
    img.fix_block_csum(c);
    let r = check_bytes(img.bytes.clone(), &Options::default());
    assert!(r.has(Kind::TreeBlockHeader), "{}", show(&r));
    assert_eq!(r.exit_code(), 4);
}
