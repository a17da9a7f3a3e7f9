//! Data written through the writeback thread leaves the page cache once it
//! is on disk, when asked (`set_drop_behind`, as the rootdir import does):
//! an image of any size keeps only the last `DROP_BEHIND` bytes (64 MiB) of
//! its data cached, and reads back intact. Without the request, the data
//! stays cached.
use std::process::Command;

use btrfs_writer::compress::Compression;
use btrfs_writer::output::Output;
use btrfs_writer::{make_rootdir_filesystem, MkfsConfig, RootdirOptions};

const MIB: u64 = 1 << 20;

/// Bytes of `path` in the page cache, from util-linux `fincore`.
fn cached_bytes(path: &std::path::Path) -> Option<u64> {
    let o = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

/// A directory on a disk filesystem (tmpfs pages cannot be dropped), where
/// `fincore` works; None (said loudly) where the checks cannot run.
fn disk_dir() -> Option<tempfile::TempDir> {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    if rustix::fs::statfs(dir.path()).unwrap().f_type == 0x0102_1994 {
        eprintln!(
            "SKIPPED: {} is on tmpfs, whose pages stay cached",
            dir.path().display()
        );
        return None;
    }
    if cached_bytes(&std::env::current_exe().unwrap()).is_none() {
        eprintln!("SKIPPED: util-linux fincore is not installed");
        return None;
    }
    Some(dir)
}

/// Write 256 MiB in 1 MiB ranges through the writeback thread, flush, and
/// return the bytes still cached (None: the check cannot run here).
fn write_and_measure(drop_behind: bool) -> Option<u64> {
    let dir = disk_dir()?;
    let path = dir.path().join("img");
    let total = 256 * MIB;
    let out = Output::create(&path, Some(total + MIB), false).unwrap();
    out.set_drop_behind(drop_behind);
    let piece = |i: u64| vec![(i % 251) as u8 + 1; MIB as usize];
    for i in 0..total / MIB {
        out.write_at(&piece(i), MIB + i * MIB).unwrap();
        out.start_writeback(MIB + i * MIB, MIB);
    }
    out.sync().unwrap();
    let cached = cached_bytes(&path).expect("fincore on the image");
    drop(out);
    let got = std::fs::read(&path).unwrap();
    for i in 0..total / MIB {
        let at = (MIB + i * MIB) as usize;
        assert!(
            got[at..at + MIB as usize] == piece(i)[..],
            "MiB {i} reads back wrong"
        );
    }
    Some(cached)
}

#[test]
fn written_data_leaves_the_page_cache() {
    let Some(cached) = write_and_measure(true) else {
        return;
    };
    // What is left: the last 64 MiB, and pages at the edges of ranges.
    assert!(
        cached <= 68 * MIB,
        "{} MiB of 256 MiB written still cached",
        cached / MIB
    );
}

#[test]
fn written_data_stays_cached_unless_asked() {
    let Some(cached) = write_and_measure(false) else {
        return;
    };
    assert!(
        cached >= 200 * MIB,
        "only {} MiB of 256 MiB written still cached",
        cached / MIB
    );
}

/// The rootdir import drops what it writes, stored raw or compressed: of a
/// 160 MiB tree of incompressible files only the last 64 MiB of data, and
/// the metadata written after it, stay cached.
#[test]
fn the_import_leaves_little_of_its_image_cached() {
    let Some(dir) = disk_dir() else {
        return;
    };
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..20 {
        let data = forge_oracle::bytes(i, 8 * MIB as usize, false);
        std::fs::write(src.join(format!("f{i:02}")), data).unwrap();
    }
    for compress in [false, true] {
        let img = dir.path().join("img");
        let cfg = MkfsConfig {
            now: (1_700_000_000, 0),
            force: true,
            ..Default::default()
        };
        let mut opts = RootdirOptions::new(&src);
        if compress {
            opts.compression = Compression::parse("zstd", false).unwrap();
        }
        make_rootdir_filesystem(&img, &cfg, &opts).unwrap();
        let cached = cached_bytes(&img).expect("fincore on the image");
        assert!(
            cached <= 80 * MIB,
            "compress {compress}: {} MiB of the image still cached after writing 160 MiB of data",
            cached / MIB
        );
        std::fs::remove_file(&img).unwrap();
    }
}
