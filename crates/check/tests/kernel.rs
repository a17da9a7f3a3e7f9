//! Images the kernel wrote must be clean: an image made by the writer is mounted,
//! takes a few thousand random create/write/truncate/rename/link/unlink/setxattr
//! operations (plus subvolumes, a snapshot, reflinks, preallocation and
//! compression), is unmounted, and must report nothing. Needs root and loop
//! devices (skips loudly otherwise).
mod common;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use btrfs_check::{check_path, Options};
use btrfs_image::btrfs_format::CsumType;
use common::*;
use forge_oracle::Mount;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn random_ops(root: &Path, seed: u64, n: usize) {
    let mut rng = Rng(seed | 1);
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs: Vec<PathBuf> = vec![root.to_path_buf()];
    for i in 0..n {
        let op = rng.below(100);
        let dir = dirs[rng.below(dirs.len() as u64) as usize].clone();
        match op {
            0..=19 => {
                let p = dir.join(format!("f{i}"));
                let size = match rng.below(4) {
                    0 => rng.below(3000),
                    1 => rng.below(20_000),
                    2 => rng.below(300_000),
                    _ => rng.below(2_000_000),
                } as usize;
                let text = rng.below(2) == 0;
                std::fs::write(&p, bytes(rng.next(), size, text)).unwrap();
                files.push(p);
            }
            20..=29 if !files.is_empty() => {
                let p = &files[rng.below(files.len() as u64) as usize];
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(p) {
                    let off = rng.below(1_000_000);
                    let len = rng.below(70_000) as usize + 1;
                    let _ = f.write_all_at(&bytes(rng.next(), len, false), off);
                }
            }
            30..=37 if !files.is_empty() => {
                let p = &files[rng.below(files.len() as u64) as usize];
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(p) {
                    let _ = f.set_len(rng.below(500_000));
                }
            }
            38..=45 if !files.is_empty() => {
                let k = rng.below(files.len() as u64) as usize;
                let to = dir.join(format!("r{i}"));
                if std::fs::rename(&files[k], &to).is_ok() {
                    files[k] = to;
                }
            }
            46..=52 if !files.is_empty() => {
                let k = rng.below(files.len() as u64) as usize;
                let to = dir.join(format!("l{i}"));
                if std::fs::hard_link(&files[k], &to).is_ok() {
                    files.push(to);
                }
            }
            53..=62 if !files.is_empty() => {
                let k = rng.below(files.len() as u64) as usize;
                let p = files.swap_remove(k);
                let _ = std::fs::remove_file(&p);
            }
            63..=70 if !files.is_empty() => {
                let p = &files[rng.below(files.len() as u64) as usize];
                let name = format!("user.k{}", rng.below(20));
                let v = bytes(rng.next(), rng.below(300) as usize, true);
                let _ = rustix::fs::setxattr(p, name.as_str(), &v, rustix::fs::XattrFlags::empty());
            }
            71..=76 => {
                let p = dir.join(format!("d{i}"));
                if std::fs::create_dir(&p).is_ok() {
                    dirs.push(p);
                }
            }
            77..=80 if !files.is_empty() => {
                let p = &files[rng.below(files.len() as u64) as usize];
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(p) {
                    let mode = if rng.below(2) == 0 {
                        rustix::fs::FallocateFlags::KEEP_SIZE
                    } else {
                        rustix::fs::FallocateFlags::empty()
                    };
                    let _ =
                        rustix::fs::fallocate(&f, mode, rng.below(400_000), rng.below(300_000) + 1);
                }
            }
            81..=84 if !files.is_empty() => {
                let src = &files[rng.below(files.len() as u64) as usize];
                let to = dir.join(format!("c{i}"));
                if Command::new("cp")
                    .arg("--reflink=always")
                    .arg(src)
                    .arg(&to)
                    .status()
                    .is_ok_and(|s| s.success())
                {
                    files.push(to);
                }
            }
            85..=87 => {
                let p = dir.join(format!("s{i}"));
                let _ = std::os::unix::fs::symlink(format!("target-{}", rng.below(1000)), &p);
            }
            88..=89 if dirs.len() > 1 => {
                // Remove an empty directory, when it is one.
                let k = 1 + rng.below(dirs.len() as u64 - 1) as usize;
                if std::fs::remove_dir(&dirs[k]).is_ok() {
                    dirs.swap_remove(k);
                }
            }
            _ => {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("log"))
                    .unwrap();
                let _ = writeln!(f, "op {i} {}", rng.next());
            }
        }
    }
}

#[test]
fn kernel_written_images_are_clean() {
    if !forge_oracle::require_kernel() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (csum, nodesize, opts, pass) in [
        (CsumType::Crc32c, 16384u32, "compress=zstd", 0),
        (CsumType::Xxhash64, 4096, "", 1),
    ] {
        let mut cfg = config(csum, nodesize, true);
        cfg.byte_count = Some(1 << 30);
        let img = writer_image(dir.path(), &format!("k-{nodesize}"), &cfg, 100, true);
        {
            let m = Mount::new(&img, opts);
            if pass == 1 {
                // Quota tree and qgroup items.
                forge_oracle::run_ok(
                    Command::new("btrfs")
                        .args(["quota", "enable"])
                        .arg(m.path()),
                );
            }
            random_ops(m.path(), 0x5eed + nodesize as u64, 1500);
            forge_oracle::run_ok(
                Command::new("btrfs")
                    .args(["subvolume", "snapshot"])
                    .arg(m.path().join("vol"))
                    .arg(m.path().join("snap")),
            );
            forge_oracle::run_ok(
                Command::new("btrfs")
                    .args(["subvolume", "create"])
                    .arg(m.path().join("fresh")),
            );
            let _ = Command::new("sync").status();
            random_ops(&m.path().join("vol"), 0xabc + nodesize as u64, 700);
            random_ops(&m.path().join("snap"), 0xdef + nodesize as u64, 700);
            random_ops(&m.path().join("fresh"), 0x123 + nodesize as u64, 300);
            // A snapshot of the top level (with subvolumes inside it), left
            // unchanged while the original changes: its subtrees stay shared, and
            // its entries naming nested subvolumes have no ROOT_REF (as the
            // kernel makes them).
            let _ = Command::new("sync").status();
            forge_oracle::run_ok(
                Command::new("btrfs")
                    .args(["subvolume", "snapshot"])
                    .arg(m.path())
                    .arg(m.path().join("top-snap")),
            );
            random_ops(m.path(), 0x999 + nodesize as u64, 300);
            if pass == 0 {
                // Relocation rewrites every block group: full backrefs, moved extents.
                let _ = Command::new("sync").status();
                forge_oracle::run_ok(
                    Command::new("btrfs")
                        .args(["balance", "start", "--full-balance"])
                        .arg(m.path()),
                );
                random_ops(&m.path().join("snap"), 0x777, 200);
                // Many references to one extent: keyed (not inline) backrefs.
                let src = m.path().join("shared-src");
                std::fs::write(&src, bytes(4242, 300_000, false)).unwrap();
                std::fs::create_dir(m.path().join("clones")).unwrap();
                for i in 0..80 {
                    forge_oracle::run_ok(
                        Command::new("cp")
                            .arg("--reflink=always")
                            .arg(&src)
                            .arg(m.path().join(format!("clones/c{i}"))),
                    );
                }
                // Fragment free space: many small files, every other one deleted
                // (the free space tree switches to bitmaps).
                std::fs::create_dir(m.path().join("frag")).unwrap();
                for i in 0..6000 {
                    std::fs::write(m.path().join(format!("frag/{i}")), bytes(i, 4096, false))
                        .unwrap();
                }
                let _ = Command::new("sync").status();
                for i in (0..6000).step_by(2) {
                    std::fs::remove_file(m.path().join(format!("frag/{i}"))).unwrap();
                }
            }
            m.unmount();
        }
        let r = check_path(&img, &Options::default()).unwrap();
        assert!(
            r.findings.is_empty(),
            "kernel-written image ({csum}, {nodesize}):\n{}",
            show(&r)
        );
        eprintln!("kernel image ({csum}, {nodesize}): {:?}", r.stats);
        if pass == 0 {
            // The image exercised what it was meant to.
            let i = btrfs_image::Image::open(&img).unwrap();
            let count = |tree: u64, t: u8| {
                let root = i.tree_root(tree).unwrap().unwrap();
                i.iter(&root)
                    .filter(|it| it.as_ref().is_ok_and(|it| it.key.item_type == t))
                    .count()
            };
            use btrfs_image::btrfs_format::consts::*;
            let keyed = count(BTRFS_EXTENT_TREE_OBJECTID, BTRFS_EXTENT_DATA_REF_KEY);
            let shared = count(BTRFS_EXTENT_TREE_OBJECTID, BTRFS_SHARED_DATA_REF_KEY)
                + count(BTRFS_EXTENT_TREE_OBJECTID, BTRFS_SHARED_BLOCK_REF_KEY);
            let bitmaps = count(BTRFS_FREE_SPACE_TREE_OBJECTID, BTRFS_FREE_SPACE_BITMAP_KEY);
            eprintln!("pass 0: {keyed} keyed data refs, {shared} keyed shared refs, {bitmaps} free space bitmaps");
            assert!(keyed > 0, "keyed backrefs were made");
            assert!(bitmaps > 0, "free space bitmaps were made");
        }
        assert!(r.stats.trees >= 10);
        forge_oracle::btrfs_check(&img, true);
        let _ = std::fs::remove_file(&img);
    }
}

/// An image copied right after fsyncs, before any commit: it carries a log tree
/// (log root in the superblock), whose blocks the extent tree does not record.
#[test]
fn image_with_a_log_tree_is_clean() {
    if !forge_oracle::require_kernel() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("log.img");
    let cfg = btrfs_writer::MkfsConfig {
        byte_count: Some(512 << 20),
        force: true,
        ..Default::default()
    };
    btrfs_writer::make_empty_filesystem(&img, &cfg).unwrap();
    let copy = dir.path().join("log-copy.img");
    {
        let m = Mount::new(&img, "commit=300");
        for i in 0..40u64 {
            std::fs::write(
                m.path().join(format!("f{i}")),
                bytes(i, 5000 + i as usize * 3000, false),
            )
            .unwrap();
        }
        forge_oracle::run_ok(Command::new("sync").arg("-f").arg(m.path()));
        for i in (0..40u64).step_by(2) {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(m.path().join(format!("f{i}")))
                .unwrap();
            f.write_all_at(&bytes(100 + i, 7000, false), 1000).unwrap();
            f.sync_all().unwrap();
        }
        // The loop device writes through the page cache of the image file:
        // copying it now captures the fsynced (logged, uncommitted) state.
        forge_oracle::run_ok(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(&img)
                .arg(&copy),
        );
        m.unmount();
    }
    let sb = btrfs_image::Image::open(&copy)
        .unwrap()
        .superblock()
        .log_root
        .get();
    if sb == 0 {
        eprintln!(
            "\n*** SKIPPED: the kernel committed instead of logging; no log tree to check ***\n"
        );
        return;
    }
    let r = check_path(&copy, &Options::default()).unwrap();
    assert!(
        r.findings.is_empty(),
        "image with a log tree:\n{}",
        show(&r)
    );
    forge_oracle::btrfs_check(&copy, true);
}

/// An image copied while an unlinked file is still open: an orphan item and an
/// inode with no links, both legitimate.
#[test]
fn image_with_an_orphan_is_clean() {
    if !forge_oracle::require_kernel() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("orphan.img");
    let cfg = btrfs_writer::MkfsConfig {
        byte_count: Some(512 << 20),
        force: true,
        ..Default::default()
    };
    btrfs_writer::make_empty_filesystem(&img, &cfg).unwrap();
    let copy = dir.path().join("orphan-copy.img");
    {
        let m = Mount::new(&img, "");
        let p = m.path().join("held");
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&bytes(5, 100_000, false)).unwrap();
        f.sync_all().unwrap();
        std::fs::remove_file(&p).unwrap();
        forge_oracle::run_ok(Command::new("sync").arg("-f").arg(m.path()));
        forge_oracle::run_ok(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(&img)
                .arg(&copy),
        );
        drop(f);
        m.unmount();
    }
    let i = btrfs_image::Image::open(&copy).unwrap();
    let root = i.tree_root(5).unwrap().unwrap();
    let orphans = i
        .iter(&root)
        .filter(|it| {
            it.as_ref().is_ok_and(|it| {
                it.key.item_type == btrfs_image::btrfs_format::BTRFS_ORPHAN_ITEM_KEY
            })
        })
        .count();
    if orphans == 0 {
        eprintln!("\n*** SKIPPED: no orphan item was written; nothing to check ***\n");
        return;
    }
    let r = check_path(&copy, &Options::default()).unwrap();
    assert!(r.findings.is_empty(), "image with an orphan:\n{}", show(&r));
    forge_oracle::btrfs_check(&copy, true);
}

/// `mkfs.btrfs` images (mixed block groups; 64K nodes with DUP data) after the
/// kernel wrote to them, nested snapshots included: nothing but mkfs's own stale
/// free space entries.
#[test]
fn kernel_writes_on_mkfs_btrfs_images() {
    if !forge_oracle::require_kernel() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (i, opts) in [
        &["--mixed"][..],
        &["-n", "65536", "-d", "dup", "--csum", "sha256"][..],
    ]
    .into_iter()
    .enumerate()
    {
        let img = dir.path().join(format!("mkfs{i}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(700 << 20)
            .unwrap();
        forge_oracle::run_ok(
            Command::new("mkfs.btrfs")
                .args(["-q", "-f"])
                .args(opts)
                .arg(&img),
        );
        {
            let m = Mount::new(&img, "");
            random_ops(m.path(), 0x4321 + i as u64, 800);
            forge_oracle::run_ok(
                Command::new("btrfs")
                    .args(["subvolume", "create"])
                    .arg(m.path().join("sv")),
            );
            random_ops(&m.path().join("sv"), 0x55 + i as u64, 300);
            let _ = Command::new("sync").status();
            forge_oracle::run_ok(
                Command::new("btrfs")
                    .args(["subvolume", "snapshot"])
                    .arg(m.path())
                    .arg(m.path().join("top-snap")),
            );
            random_ops(m.path(), 0x66 + i as u64, 300);
            m.unmount();
        }
        let r = check_path(&img, &Options::default()).unwrap();
        assert!(
            r.findings
                .iter()
                .all(|f| f.kind == btrfs_check::Kind::FreeSpaceStale),
            "mkfs.btrfs {opts:?} after kernel writes:\n{}",
            show(&r)
        );
        let _ = std::fs::remove_file(&img);
    }
}

/// A subvolume deleted while its drop is in progress (copied at commits while
/// the cleaner runs): the part left of drop_progress is freed already and must
/// not be counted, the rest is still allocated and must be.
#[test]
fn image_with_a_partly_dropped_subvolume_is_clean() {
    if !forge_oracle::require_kernel() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("drop.img");
    let cfg = btrfs_writer::MkfsConfig {
        byte_count: Some(2 << 30),
        nodesize: 4096,
        force: true,
        ..Default::default()
    };
    btrfs_writer::make_empty_filesystem(&img, &cfg).unwrap();
    let mut copies = Vec::new();
    {
        let m = Mount::new(&img, "commit=1");
        let sv = m.path().join("sv");
        forge_oracle::run_ok(Command::new("btrfs").args(["subvolume", "create"]).arg(&sv));
        for i in 0..40_000u64 {
            std::fs::write(
                sv.join(format!("f{i:05}")),
                bytes(i, 100 + (i % 3000) as usize, false),
            )
            .unwrap();
        }
        let _ = Command::new("sync").status();
        forge_oracle::run_ok(Command::new("btrfs").args(["subvolume", "delete"]).arg(&sv));
        for i in 0..8 {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let _ = Command::new("sync").status();
            let c = dir.path().join(format!("drop-{i}.img"));
            forge_oracle::run_ok(Command::new("cp").arg("--sparse=always").arg(&img).arg(&c));
            copies.push(c);
        }
        m.unmount();
    }
    let mut checked = 0;
    for c in &copies {
        let Ok(i) = btrfs_image::Image::open(c) else {
            continue;
        };
        let Ok(Some((_, ri))) = i.root_item(256) else {
            continue;
        };
        let dp = btrfs_image::btrfs_format::Key::from(ri.drop_progress);
        if ri.refs.get() != 0 || dp == btrfs_image::btrfs_format::Key::MIN {
            continue;
        }
        let r = check_path(c, &Options::default()).unwrap();
        assert_eq!(
            r.errors(),
            0,
            "partly dropped subvolume (drop_progress {dp}):\n{}",
            show(&r)
        );
        checked += 1;
    }
    if checked == 0 {
        eprintln!("\n*** SKIPPED: no copy caught the deletion in progress ***\n");
    }
}

/// Copies taken while a balance runs carry relocation trees (TREE_RELOC roots,
/// full backrefs, the data relocation tree at work): no errors.
#[test]
fn image_with_relocation_trees_is_clean() {
    if !forge_oracle::require_kernel() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("reloc.img");
    let cfg = btrfs_writer::MkfsConfig {
        byte_count: Some(2 << 30),
        nodesize: 4096,
        force: true,
        ..Default::default()
    };
    btrfs_writer::make_empty_filesystem(&img, &cfg).unwrap();
    let mut copies = Vec::new();
    {
        let m = Mount::new(&img, "commit=1");
        let d = m.path().join("d");
        std::fs::create_dir(&d).unwrap();
        for i in 0..15_000u64 {
            std::fs::write(
                d.join(format!("f{i:05}")),
                bytes(i, 100 + (i % 9000) as usize, false),
            )
            .unwrap();
        }
        forge_oracle::run_ok(
            Command::new("btrfs")
                .args(["subvolume", "snapshot"])
                .arg(m.path())
                .arg(m.path().join("snap")),
        );
        let _ = Command::new("sync").status();
        let mut bal = Command::new("btrfs")
            .args(["balance", "start", "--full-balance"])
            .arg(m.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for i in 0..10 {
            std::thread::sleep(std::time::Duration::from_millis(400));
            let _ = Command::new("sync").status();
            let c = dir.path().join(format!("reloc-{i}.img"));
            forge_oracle::run_ok(Command::new("cp").arg("--sparse=always").arg(&img).arg(&c));
            copies.push(c);
        }
        let _ = bal.wait();
        m.unmount();
    }
    let mut checked = 0;
    for c in &copies {
        let Ok(i) = btrfs_image::Image::open(c) else {
            continue;
        };
        let rt = i.root_tree();
        let relocs = i
            .iter(&rt)
            .filter(|it| {
                it.as_ref().is_ok_and(|it| {
                    it.key.objectid == btrfs_image::btrfs_format::BTRFS_TREE_RELOC_OBJECTID
                })
            })
            .count();
        if relocs == 0 {
            continue;
        }
        let r = check_path(c, &Options::default()).unwrap();
        assert_eq!(
            r.errors(),
            0,
            "image with {relocs} relocation trees:\n{}",
            show(&r)
        );
        checked += 1;
    }
    let r = check_path(&img, &Options::default()).unwrap();
    assert!(r.findings.is_empty(), "after the balance:\n{}", show(&r));
    if checked == 0 {
        eprintln!("\n*** SKIPPED: no copy caught the relocation trees ***\n");
    }
}
