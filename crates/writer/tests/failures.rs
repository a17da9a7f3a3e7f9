//! Bad input during the pipeline: a clear error naming the path, and no valid
//! superblock left behind.
use std::path::Path;

use btrfs_writer::data::{self, DataOptions, Progress};
use btrfs_writer::layout::Layout;
use btrfs_writer::output::Output;
use btrfs_writer::scan::{scan, ScanOptions};
use btrfs_writer::{make_rootdir_filesystem, MkfsConfig, RootdirOptions};

fn opts() -> DataOptions {
    DataOptions {
        sectorsize: 4096,
        csum: btrfs_format::CsumType::Crc32c,
        inline_limit: 2048,
        compression: None,
        dedupe: false,
        chunk_max: 1 << 30,
        data_flags: btrfs_format::BTRFS_BLOCK_GROUP_DATA,
        data_stripes: 1,
        memory: 1 << 20,
        data_end_max: None,
    }
}

/// Write the data of `tree` into `img` (64 MiB) on a pool of `threads`; the
/// error text when it fails.
fn write_data(
    tree: &btrfs_writer::scan::Scan,
    img: &Path,
    o: &DataOptions,
    threads: usize,
) -> Option<String> {
    let mut layout = Layout::default();
    layout.push_chunk(btrfs_format::BTRFS_BLOCK_GROUP_SYSTEM, 4 << 20, 1);
    let mut open = |_: &Layout, _: u64| Output::create(img, Some(64 << 20), false);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    data::write_all(&pool, tree, &mut layout, &mut open, o, &Progress::default())
        .err()
        .map(|e| e.to_string())
}

/// The file changes between the scan and the read: shrinks, grows (by one
/// byte is enough), vanishes. Sizes cover inline files, files of up to a
/// sector, one-range and many-range files, and a file that ends in a hole
/// (its last read stops before the end).
#[test]
fn files_changing_during_the_import() {
    for (what, change, want) in [
        // A read that ends early, or the size checked after a read.
        (
            "shrinks",
            0,
            &["shrank while being read", "changed size while being read"][..],
        ),
        ("grows", 1, &["changed size while being read"]),
        ("vanishes", 2, &["cannot open"]),
    ] {
        for (size, hole) in [
            (1000u64, false),
            (3000, false),
            (9000, false),
            (300_000, false),
            (300_000, true),
        ] {
            for compressed in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let src = dir.path().join("src");
                std::fs::create_dir(&src).unwrap();
                let victim = src.join("victim");
                let f = std::fs::File::create(&victim).unwrap();
                let data = if hole { 100_000 } else { size };
                std::io::Write::write_all(&mut &f, &vec![7u8; data as usize]).unwrap();
                f.set_len(size).unwrap();
                std::fs::write(src.join("other"), vec![1u8; 10_000]).unwrap();
                let tree = scan(&src, &ScanOptions::default()).unwrap();
                match change {
                    0 => f.set_len(size / 2).unwrap(),
                    1 => f.set_len(size + 1).unwrap(),
                    _ => std::fs::remove_file(&victim).unwrap(),
                }
                drop(f);
                check_changed(&tree, &dir, compressed, what, want, size, hole);
            }
        }
    }
}

/// Write `tree` after its file changed; the error must name it and say
/// one of `want`, and leave no filesystem.
fn check_changed(
    tree: &btrfs_writer::scan::Scan,
    dir: &tempfile::TempDir,
    compressed: bool,
    what: &str,
    want: &[&str],
    size: u64,
    hole: bool,
) {
    let case = format!("{what} (size {size}, hole {hole}, compressed {compressed})");
    let img = dir.path().join("x.img");
    let mut o = opts();
    if compressed {
        o.compression = btrfs_writer::compress::Compression::parse("zstd", true).unwrap();
    }
    let err = write_data(tree, &img, &o, 2).unwrap_or_else(|| panic!("{case}: no error"));
    assert!(
        err.contains("victim") && want.iter().any(|w| err.contains(w)),
        "{case}: {err}"
    );
    assert!(!forge_oracle::looks_like_btrfs(&img));
}

/// With several bad files, the error names the first in file order, whatever
/// the thread count, compression or timing (files before a failure are still
/// finished; only later ones are skipped).
#[test]
fn the_first_bad_file_in_order_is_reported() {
    for compressed in [false, true] {
        for threads in [1, 2] {
            for round in 0..3 {
                let dir = tempfile::tempdir().unwrap();
                let src = dir.path().join("src");
                std::fs::create_dir(&src).unwrap();
                // Many good files around two that shrink after the scan.
                for i in 0..200 {
                    std::fs::write(src.join(format!("f{i:03}")), vec![i as u8; 9000 + i * 700])
                        .unwrap();
                }
                let tree = scan(&src, &ScanOptions::default()).unwrap();
                for victim in ["f150", "f040"] {
                    std::fs::File::options()
                        .write(true)
                        .open(src.join(victim))
                        .unwrap()
                        .set_len(100)
                        .unwrap();
                }
                let img = dir.path().join("x.img");
                let mut o = opts();
                if compressed {
                    o.compression =
                        btrfs_writer::compress::Compression::parse("zstd", false).unwrap();
                }
                let err = write_data(&tree, &img, &o, threads).expect("no error");
                assert!(
                    err.contains("f040") && err.contains("shrank"),
                    "compressed {compressed}, -j{threads}, round {round}: {err}"
                );
            }
        }
    }
}

/// Files that go inline are read alongside the pipeline and after it (and,
/// compressed, files of up to a sector before it), but a failure among them
/// is still reported in file order against a failure of another file.
#[test]
fn inline_and_data_failures_are_reported_in_file_order() {
    for (first, second, want) in [
        ("a_small", "b_big", "a_small"),
        ("a_big", "b_small", "a_big"),
        ("a_small", "b_sector", "a_small"),
        ("a_sector", "b_small", "a_sector"),
        ("a_sector", "b_big", "a_sector"),
        ("a_big", "b_sector", "a_big"),
    ] {
        for compressed in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let src = dir.path().join("src");
            std::fs::create_dir(&src).unwrap();
            for name in [first, second] {
                let len = match &name[2..] {
                    "small" => 1000,
                    "sector" => 3000,
                    _ => 300_000,
                };
                std::fs::write(src.join(name), vec![5u8; len]).unwrap();
            }
            for i in 0..50 {
                std::fs::write(src.join(format!("c{i:02}")), vec![i as u8; 500 + i * 900]).unwrap();
            }
            let tree = scan(&src, &ScanOptions::default()).unwrap();
            std::fs::remove_file(src.join(first)).unwrap();
            std::fs::remove_file(src.join(second)).unwrap();
            let img = dir.path().join("x.img");
            let mut o = opts();
            if compressed {
                o.compression = btrfs_writer::compress::Compression::parse("zstd", false).unwrap();
            }
            let err = write_data(&tree, &img, &o, 2).expect("no error");
            assert!(
                err.contains(want) && err.contains("cannot open"),
                "{first} before {second}, compressed {compressed}: {err}"
            );
            assert!(!forge_oracle::looks_like_btrfs(&img));
        }
    }
}

/// The error a build that must fail gave, as text.
fn refused(what: &str, r: btrfs_writer::Result<btrfs_writer::MkfsReport>) -> String {
    match r {
        Ok(_) => panic!("{what}: built, but should have been refused"),
        Err(e) => e.to_string(),
    }
}

/// A tmpfs of a given size on a fresh directory, unmounted when dropped: a
/// small disk to fill.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs");
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// A full disk is a clear error (space is reserved with fallocate: the data
/// chunks up front, the metadata chunk before any tree block is written),
/// not a SIGBUS or a half-written image. Two trees: one whose data does not
/// fit, and one whose data fits but whose metadata (thousands of inline
/// files, twice over with DUP) does not.
#[test]
fn disk_full_is_a_clear_error() {
    if !forge_oracle::require_kernel() {
        return;
    }
    let mnt = Tmpfs::mount("24m");
    let big = tempfile::tempdir().unwrap();
    std::fs::write(big.path().join("big"), vec![3u8; 40 << 20]).unwrap();
    let many = tempfile::tempdir().unwrap();
    std::fs::write(many.path().join("data"), vec![5u8; 4 << 20]).unwrap();
    for i in 0..8000 {
        std::fs::write(
            many.path().join(format!("f{i:05}")),
            forge_oracle::bytes(i, 1800, false),
        )
        .unwrap();
    }
    let noise = tempfile::tempdir().unwrap();
    std::fs::write(
        noise.path().join("blob"),
        forge_oracle::bytes(3, 40 << 20, false),
    )
    .unwrap();
    let zstd = btrfs_writer::compress::Compression::parse("zstd", false).unwrap();
    for (what, src, compression) in [
        ("data", big.path(), None),
        ("metadata", many.path(), None),
        // Reserved as it is written: the disk fills up mid-way.
        ("compressed data", noise.path(), zstd),
    ] {
        let img = mnt.path().join("full.img");
        let cfg = MkfsConfig {
            now: (1_700_000_000, 0),
            ..Default::default()
        };
        let mut o = RootdirOptions::new(src);
        o.compression = compression;
        let err = refused(what, make_rootdir_filesystem(&img, &cfg, &o));
        assert!(
            err.contains("full.img") && err.contains("not enough free disk space"),
            "{what}: {err}"
        );
        assert!(!forge_oracle::looks_like_btrfs(&img), "{what}");
        std::fs::remove_file(&img).unwrap();
    }
}

/// Space for compressed data is reserved as it is written, not for the
/// worst case its chunks are laid out for (nothing compresses): a tree that
/// only fits the disk once compressed is built, and `btrfs check` accepts
/// it; the same tree uncompressed is refused with the clear error.
#[test]
fn compressed_tree_fits_where_its_raw_size_would_not() {
    if !forge_oracle::require_kernel() || !forge_oracle::require_btrfs_progs() {
        return;
    }
    let mnt = Tmpfs::mount("24m");
    let src = tempfile::tempdir().unwrap();
    for i in 0..10u64 {
        std::fs::write(
            src.path().join(format!("log{i}")),
            forge_oracle::bytes(i, 4 << 20, true),
        )
        .unwrap();
    }
    let img = mnt.path().join("fits.img");
    let cfg = MkfsConfig {
        now: (1_700_000_000, 0),
        ..Default::default()
    };
    let mut o = RootdirOptions::new(src.path());
    o.shrink = true;
    let raw = refused("uncompressed", make_rootdir_filesystem(&img, &cfg, &o));
    assert!(
        raw.contains("not enough free disk space"),
        "uncompressed: {raw}"
    );
    std::fs::remove_file(&img).unwrap();
    o.compression = btrfs_writer::compress::Compression::parse("zstd", false).unwrap();
    let report = make_rootdir_filesystem(&img, &cfg, &o).expect("compressed, it fits");
    let data = report.data.expect("data stats");
    assert!(
        data.bytes_on_disk < 8 << 20,
        "{} bytes on disk",
        data.bytes_on_disk
    );
    forge_oracle::btrfs_check(&img, true);
    no_blocks_past(&img, report.layout.physical_end());
    // Without --shrink the image runs on past its last chunk: nothing
    // reserved ahead of the data is left there either.
    let roomy = Tmpfs::mount("256m");
    let img = roomy.path().join("roomy.img");
    o.shrink = false;
    let report = make_rootdir_filesystem(&img, &cfg, &o).expect("roomy");
    assert!(report.layout.device_size > report.layout.physical_end());
    forge_oracle::btrfs_check(&img, true);
    no_blocks_past(&img, report.layout.physical_end());
}

/// `img` holds no more disk blocks than its chunks (`[0, end)`, reserved
/// whole) and the superblock copies past them: nothing reserved ahead of the
/// data is left behind. (Blocks, not `SEEK_DATA`: tmpfs shows space reserved
/// and never written as a hole.)
fn no_blocks_past(img: &Path, end: u64) {
    let md = std::fs::metadata(img).unwrap();
    let allocated = std::os::unix::fs::MetadataExt::blocks(&md) * 512;
    let copies = (1..btrfs_format::BTRFS_SUPER_MIRROR_MAX)
        .map(btrfs_format::btrfs_sb_offset)
        .filter(|&c| c >= end && c < md.len())
        .count() as u64;
    assert!(
        allocated <= end + copies * 4096,
        "{}: {allocated} bytes allocated, its chunks end at {end}",
        img.display()
    );
}

/// `-b` smaller than the tree: compressed data is given the room `-b`
/// leaves, so a tree that fits only once compressed is built (`btrfs check`
/// accepts it, the kernel reads it back and takes writes and deletes);
/// uncompressed it is refused up front, a `-b` too small for the usual
/// metadata slack still leaves the kernel unallocated space, and
/// incompressible data that does not fit is a clear error with no
/// superblock written.
#[test]
fn byte_count_fits_compressed_data() {
    if !forge_oracle::require_kernel() || !forge_oracle::require_btrfs_progs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    for i in 0..25u64 {
        std::fs::write(
            logs.join(format!("log{i:02}")),
            forge_oracle::bytes(i, 4 << 20, true),
        )
        .unwrap();
    }
    let noise = dir.path().join("noise");
    std::fs::create_dir(&noise).unwrap();
    std::fs::write(noise.join("blob"), forge_oracle::bytes(7, 40 << 20, false)).unwrap();
    let img = dir.path().join("b.img");
    let cfg = |mib: u64| MkfsConfig {
        now: (1_700_000_000, 0),
        byte_count: Some(mib << 20),
        ..Default::default()
    };
    let zstd = |src: &Path| {
        let mut o = RootdirOptions::new(src);
        o.compression = btrfs_writer::compress::Compression::parse("zstd", false).unwrap();
        o
    };
    let err = refused(
        "uncompressed",
        make_rootdir_filesystem(&img, &cfg(64), &RootdirOptions::new(&logs)),
    );
    assert!(err.contains("-b gives"), "uncompressed: {err}");
    assert!(!forge_oracle::looks_like_btrfs(&img));

    make_rootdir_filesystem(&img, &cfg(64), &zstd(&logs)).expect("compressed, it fits");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 << 20);
    forge_oracle::btrfs_check(&img, true);
    let m = forge_oracle::Mount::new(&img, "");
    for i in [0u64, 13, 24] {
        let got = std::fs::read(m.path().join(format!("log{i:02}"))).unwrap();
        assert!(got == forge_oracle::bytes(i, 4 << 20, true), "log{i:02}");
    }
    forge_oracle::churn(m.path(), 8);
    m.unmount();
    forge_oracle::btrfs_check(&img, true);

    // A -b that holds the data but not the usual 16 MiB of metadata slack
    // (twice, DUP): the metadata chunk takes at most half of what is left,
    // and the rest stays unallocated for the kernel.
    std::fs::remove_file(&img).unwrap();
    make_rootdir_filesystem(&img, &cfg(32), &zstd(&logs)).expect("-b 32M");
    forge_oracle::btrfs_check(&img, true);
    let sb = forge_oracle::dump_super(&img);
    let field = |f: &str| -> u64 {
        forge_oracle::super_field(&sb, f)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{f} in dump-super"))
    };
    let (total, used) = (field("dev_item.total_bytes"), field("dev_item.bytes_used"));
    assert_eq!(total, 32 << 20);
    assert!(total - used >= 4 << 20, "{used} of {total} bytes in chunks");

    std::fs::remove_file(&img).unwrap();
    let err = refused(
        "noise",
        make_rootdir_filesystem(&img, &cfg(32), &zstd(&noise)),
    );
    assert!(
        err.contains("does not fit the space -b leaves"),
        "noise: {err}"
    );
    assert!(!forge_oracle::looks_like_btrfs(&img));
}
