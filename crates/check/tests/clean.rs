//! Clean images must report nothing: ours (every checksum, with and without the
//! block group tree, 4K and 64K nodes, a subvolume), the committed fixtures, and
//! `mkfs.btrfs` images, which carry exactly one real flaw (stale free space tree
//! entries of the temporary chunks mkfs removed).
mod common;

use std::process::Command;

use btrfs_check::{check_bytes, check_path, Kind, Options};
use btrfs_image::btrfs_format::CsumType;
use common::*;

#[test]
fn our_images_are_clean() {
    let dir = tempfile::tempdir().unwrap();
    for csum in CsumType::ALL {
        for bgt in [true, false] {
            for nodesize in [4096u32, 65536] {
                let name = format!("{}-{bgt}-{nodesize}", csum.name());
                let cfg = config(csum, nodesize, bgt);
                let p = writer_image(dir.path(), &name, &cfg, 30, nodesize == 4096);
                let r = check_path(&p, &Options::default()).unwrap();
                assert!(r.findings.is_empty(), "{name}:\n{}", show(&r));
                assert_eq!(r.exit_code(), 0);
                assert!(
                    r.stats.data_bytes_verified > 1 << 20,
                    "{name}: data was read"
                );
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

#[test]
fn our_images_with_older_features_are_clean() {
    // Non-skinny extent items, explicit holes, no free space tree.
    let dir = tempfile::tempdir().unwrap();
    for (i, f) in [
        "^skinny-metadata",
        "^no-holes,^block-group-tree",
        "^free-space-tree,^block-group-tree,^skinny-metadata",
    ]
    .into_iter()
    .enumerate()
    {
        let mut cfg = config(CsumType::Crc32c, 4096, true);
        cfg.features.apply(f).unwrap();
        let p = writer_image(dir.path(), &format!("old{i}"), &cfg, 40, true);
        let r = check_path(&p, &Options::default()).unwrap();
        assert!(r.findings.is_empty(), "-O {f}:\n{}", show(&r));
    }
}

#[test]
fn our_empty_images_are_clean() {
    let dir = tempfile::tempdir().unwrap();
    for (i, single) in [false, true].into_iter().enumerate() {
        let mut cfg = config(CsumType::Xxhash64, 16384, i == 0);
        cfg.byte_count = Some(300 << 20);
        cfg.force = true;
        if single {
            cfg.metadata_profile = btrfs_writer::Profile::Single;
        }
        let p = dir.path().join(format!("empty{i}.img"));
        btrfs_writer::make_empty_filesystem(&p, &cfg).unwrap();
        let r = check_path(&p, &Options::default()).unwrap();
        assert!(r.findings.is_empty(), "empty {i}:\n{}", show(&r));
    }
}

#[test]
fn committed_fixtures() {
    let r = check_bytes(fixture_bytes("kernel-compressed"), &Options::default());
    assert!(r.findings.is_empty(), "kernel-compressed:\n{}", show(&r));
    assert!(r.stats.compressed_extents > 5);
    let r = check_bytes(fixture_bytes("mkfs-6.2-rootdir"), &Options::default());
    assert!(!r.findings.is_empty());
    assert!(
        r.findings.iter().all(|f| f.kind == Kind::FreeSpaceStale),
        "mkfs-6.2-rootdir:\n{}",
        show(&r)
    );
    assert_eq!(r.exit_code(), 4);
}

#[test]
fn mkfs_btrfs_images_carry_only_the_stale_free_space_entries() {
    if !forge_oracle::require_btrfs_progs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src, 50, false);
    for csum in CsumType::ALL {
        for rootdir in [false, true] {
            let p = dir
                .path()
                .join(format!("mkfs-{}-{rootdir}.img", csum.name()));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(300 << 20)
                .unwrap();
            let mut c = Command::new("mkfs.btrfs");
            c.args(["-q", "-f", "--csum", csum.name()]);
            if csum == CsumType::Sha256 {
                // Older on-disk features too: non-skinny extent items, explicit holes.
                c.args(["-O", "^skinny-metadata,^no-holes", "-n", "4096"]);
            }
            if rootdir {
                c.arg("--rootdir").arg(&src);
            }
            forge_oracle::run_ok(c.arg(&p));
            let r = check_path(&p, &Options::default()).unwrap();
            let what = format!("mkfs.btrfs --csum {} rootdir={rootdir}", csum.name());
            assert!(
                r.has(Kind::FreeSpaceStale),
                "{what}: stale entries not found:\n{}",
                show(&r)
            );
            assert!(
                r.findings.iter().all(|f| f.kind == Kind::FreeSpaceStale),
                "{what}:\n{}",
                show(&r)
            );
            let _ = std::fs::remove_file(&p);
        }
    }
}

#[test]
fn metadata_only_reads_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let p = writer_image(
        dir.path(),
        "m",
        &config(CsumType::Crc32c, 16384, true),
        5,
        false,
    );
    let mut img = Img::load(&p);
    // Damage data only: metadata-only must not see it, the full check must.
    let i = img.image().lookup(5, b"dir/hundred_k").unwrap().1;
    let l = img.find(5, |k| {
        k.objectid == i && k.item_type == btrfs_image::btrfs_format::BTRFS_EXTENT_DATA_KEY
    });
    let c = img.copies(l.leaf, img.nodesize() as u64)[0];
    let d = le64(&img.bytes[c + l.off..], 21);
    let phys = img.copies(d, 4096)[0];
    img.bytes[phys] ^= 1;
    img.write(&p);
    let opts = Options {
        metadata_only: true,
        ..Options::default()
    };
    let r = check_path(&p, &opts).unwrap();
    assert!(r.findings.is_empty(), "{}", show(&r));
    assert_eq!(r.stats.data_bytes_verified, 0);
    let r = check_path(&p, &Options::default()).unwrap();
    assert!(r.has(Kind::DataChecksum));
    let f = r
        .findings
        .iter()
        .find(|f| f.kind == Kind::DataChecksum)
        .unwrap();
    assert_eq!(f.path.as_deref(), Some("/dir/hundred_k"), "{f}");
    assert_eq!(f.ino, Some(i));
}
