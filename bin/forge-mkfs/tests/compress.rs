//! Compression and deduplication, judged by the kernel and btrfs-progs.
use std::path::Path;
use std::process::Command;

use forge_oracle::manifest::{diff, manifest, Compare};
use forge_oracle::{self as oracle, Mount};

fn mkfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_forge-mkfs"))
}

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// Text, binary-ish, incompressible, mixed, small and sparse files.
fn make_tree(r: &Path) {
    let mut next = rng(1);
    let words: Vec<String> = (0..400)
        .map(|i| format!("w{}x{}", i, next() % 997))
        .collect();
    let mut text = String::new();
    while text.len() < 3 << 20 {
        text.push_str(&words[(next() % 400) as usize]);
        text.push(if next().is_multiple_of(11) { '\n' } else { ' ' });
    }
    std::fs::write(r.join("text"), &text).unwrap();
    let random: Vec<u8> = (0..(2 << 20) / 8)
        .flat_map(|_| next().to_le_bytes())
        .collect();
    std::fs::write(r.join("random"), &random).unwrap();
    // Starts incompressible, then compresses: the kernel's rule keeps it raw.
    let mut mixed = random[..256 << 10].to_vec();
    mixed.extend(text.as_bytes()[..1 << 20].iter());
    std::fs::write(r.join("random_then_text"), &mixed).unwrap();
    // Starts compressible, then does not: ranges fall back one by one.
    let mut mixed = text.as_bytes()[..256 << 10].to_vec();
    mixed.extend(&random[..1 << 20]);
    std::fs::write(r.join("text_then_random"), &mixed).unwrap();
    std::fs::write(r.join("small_text"), "small text file ".repeat(100)).unwrap();
    // Over --max-inline (2048) but within a sector: inline only compressed.
    // (Repetitive, so that every algorithm and level gets it there.)
    let lines = "a line of text that repeats\n".repeat(200);
    std::fs::write(r.join("sector_text"), &lines.as_bytes()[..3000]).unwrap();
    std::fs::write(r.join("sector_exact"), &lines.as_bytes()[..4096]).unwrap();
    std::fs::write(r.join("sector_random"), &random[..3000]).unwrap();
    std::fs::write(r.join("tiny"), b"x").unwrap();
    std::fs::write(r.join("odd_size"), &text.as_bytes()[..(1 << 20) + 123]).unwrap();
    let f = std::fs::File::create(r.join("sparse")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&text.as_bytes()[..300_000], 5 << 20)
        .unwrap();
    f.set_len(20 << 20).unwrap();
    std::fs::create_dir(r.join("dups")).unwrap();
    for i in 0..5 {
        std::fs::write(r.join(format!("dups/text{i}")), &text).unwrap();
        std::fs::write(r.join(format!("dups/random{i}")), &random).unwrap();
    }
    std::fs::write(r.join("dups/same_size_other"), {
        let mut t = text.clone().into_bytes();
        t[1000] ^= 1;
        t
    })
    .unwrap();
}

fn used_bytes(img: &Path) -> u64 {
    let d = oracle::dump_super(img);
    oracle::super_field(&d, "bytes_used")
        .unwrap()
        .parse()
        .unwrap()
}

fn incompat(img: &Path) -> u64 {
    let d = oracle::dump_super(img);
    u64::from_str_radix(
        oracle::super_field(&d, "incompat_flags")
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap()
}

/// Every algorithm and level reads back exactly through the kernel, scrubs
/// clean and passes btrfs check; a read-write mount then overwrites
/// compressed files and btrfs check still passes.
#[test]
fn every_algorithm_reads_back_exactly() {
    if !oracle::require_kernel() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src);
    let want = manifest(&src);
    let plain = dir.path().join("plain.img");
    oracle::run_ok(mkfs().args(["-q", "--rootdir"]).arg(&src).arg(&plain));
    let plain_used = used_bytes(&plain);
    for spec in [
        "--compress=zstd:1",
        "--compress=zstd:3",
        "--compress=zstd:15",
        "--compress=zlib:1",
        "--compress=zlib:6",
        "--compress=zlib:9",
        "--compress=lzo",
        "--compress-force=zstd",
        "--compress-force=zlib:3",
        "--compress-force=lzo",
    ] {
        eprintln!("checking {spec}");
        let img = dir.path().join("c.img");
        oracle::run_ok(
            mkfs()
                .args(["-q", "-f", spec, "--rootdir"])
                .arg(&src)
                .arg(&img),
        );
        oracle::btrfs_check(&img, true);
        let used = used_bytes(&img);
        assert!(
            used < plain_used * 3 / 4,
            "{spec}: {used} bytes used vs {plain_used} uncompressed"
        );
        let inc = incompat(&img);
        let want_bit = if spec.contains("zstd") {
            1 << 4
        } else if spec.contains("lzo") {
            1 << 3
        } else {
            0
        };
        assert_eq!(
            inc & (1 << 4 | 1 << 3),
            want_bit,
            "{spec}: incompat {inc:#x}"
        );
        let m = Mount::new(&img, "ro");
        let d = diff(
            &want,
            &manifest(m.path()),
            Compare {
                atime: false,
                ctime: true,
                sparse_blocks: false,
            },
        );
        assert!(d.is_empty(), "{spec}:\n{}", d.join("\n"));
        // Inode flags as the kernel sees them: compressed files say so.
        let attrs = oracle::run_ok(Command::new("lsattr").arg(m.path().join("text")));
        assert!(
            attrs.split_whitespace().next().unwrap().contains('c'),
            "{spec}: {attrs}"
        );
        if !spec.contains("force") {
            let attrs =
                oracle::run_ok(Command::new("lsattr").arg(m.path().join("random_then_text")));
            assert!(
                attrs.split_whitespace().next().unwrap().contains('m'),
                "{spec}: NOCOMPRESS expected: {attrs}"
            );
        }
        // Files of one sector or less go inline when compression brings
        // them to --max-inline, as the kernel stores them (FIEMAP says so).
        let frag = |name: &str| {
            let out = oracle::run_ok(Command::new("filefrag").arg("-v").arg(m.path().join(name)));
            out.lines()
                .find(|l| l.trim_start().starts_with("0:"))
                .unwrap_or_else(|| panic!("{spec}: filefrag {name}: {out}"))
                .to_string()
        };
        for name in ["sector_text", "sector_exact"] {
            let f = frag(name);
            assert!(
                f.contains("inline") && f.contains("encoded"),
                "{spec}: {name}: {f}"
            );
        }
        let f = frag("sector_random");
        assert!(
            !f.contains("inline") && !f.contains("encoded"),
            "{spec}: sector_random: {f}"
        );
        // Files whose only range did not compress are NOCOMPRESS, inline
        // ("tiny", one byte) or not, unless compression is forced.
        for name in ["sector_random", "tiny"] {
            let attrs = oracle::run_ok(Command::new("lsattr").arg(m.path().join(name)));
            let flags = attrs.split_whitespace().next().unwrap();
            assert_eq!(
                flags.contains('m'),
                !spec.contains("force"),
                "{spec}: {attrs}"
            );
        }
        m.scrub(true);
        m.unmount();
        // Overwrite compressed files in place on a read-write mount.
        let m = Mount::new(&img, "");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.path().join("text"))
            .unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"overwritten in the middle", 1 << 20)
            .unwrap();
        drop(f);
        std::fs::write(m.path().join("odd_size"), b"replaced").unwrap();
        oracle::churn(m.path(), 20);
        m.unmount();
        oracle::btrfs_check(&img, true);
    }
}

/// With --dedupe, duplicate files share extents, read back exactly, and a
/// rewrite of one copy leaves the others intact.
#[test]
fn dedupe_shares_extents() {
    if !oracle::require_kernel() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src);
    let want = manifest(&src);
    for extra in [&[][..], &["--compress=zstd"][..]] {
        let plain = dir.path().join("plain.img");
        oracle::run_ok(
            mkfs()
                .args(["-q", "-f"])
                .args(extra)
                .arg("--rootdir")
                .arg(&src)
                .arg(&plain),
        );
        let img = dir.path().join("d.img");
        oracle::run_ok(
            mkfs()
                .args(["-q", "-f", "--dedupe"])
                .args(extra)
                .arg("--rootdir")
                .arg(&src)
                .arg(&img),
        );
        oracle::btrfs_check(&img, true);
        // Four extra copies of 2 MiB of incompressible data are stored once:
        // at least 8 MiB saved, compressed or not.
        assert!(
            used_bytes(&img) + (8 << 20) < used_bytes(&plain),
            "{extra:?}"
        );
        // The copies share one extent: the kernel reports shared bytes.
        let m = Mount::new(&img, "ro");
        let d = diff(
            &want,
            &manifest(m.path()),
            Compare {
                atime: false,
                ctime: true,
                sparse_blocks: false,
            },
        );
        assert!(d.is_empty(), "{}", d.join("\n"));
        let du = oracle::run_ok(
            Command::new("btrfs")
                .args(["filesystem", "du", "-s", "--raw"])
                .arg(m.path().join("dups")),
        );
        let cols: Vec<u64> = du
            .lines()
            .last()
            .unwrap()
            .split_whitespace()
            .take(3)
            .map(|v| v.parse().unwrap())
            .collect();
        let (total, exclusive, shared) = (cols[0], cols[1], cols[2]);
        // "Set shared" counts each shared extent once (on-disk size when
        // compressed): at least the incompressible 2 MiB serving five copies;
        // only the near-copy is exclusive.
        assert!(total >= 28 << 20, "{du}");
        assert!(
            shared >= (2 << 20) - (64 << 10) && exclusive <= (3 << 20) + (64 << 10),
            "{du}"
        );
        m.scrub(true);
        m.unmount();
        // Rewrite one copy: the others keep their content.
        let m = Mount::new(&img, "");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.path().join("dups/text0"))
            .unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"changed", 100).unwrap();
        drop(f);
        std::fs::remove_file(m.path().join("dups/random1")).unwrap();
        m.unmount();
        oracle::btrfs_check(&img, true);
        let m = Mount::new(&img, "ro");
        for i in 1..5 {
            assert_eq!(
                std::fs::read(m.path().join(format!("dups/text{i}"))).unwrap(),
                std::fs::read(src.join("text")).unwrap()
            );
        }
        assert_ne!(
            std::fs::read(m.path().join("dups/text0")).unwrap(),
            std::fs::read(src.join("text")).unwrap()
        );
        assert_eq!(
            std::fs::read(m.path().join("random")).unwrap(),
            std::fs::read(src.join("random")).unwrap()
        );
    }
}

/// Copies that only fit once deduplicated: with -b too small for every copy,
/// --dedupe still builds the image (the duplicates are found before sizing);
/// without it the size error names what the tree needs. Copies of files of
/// up to a sector, some of which compress inline, come out right too (they
/// are decided before the duplicates are found).
#[test]
fn dedupe_fits_where_the_copies_would_not() {
    if !oracle::require_btrfs_progs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut next = rng(7);
    let blob: Vec<u8> = (0..(6 << 20) / 8)
        .flat_map(|_| next().to_le_bytes())
        .collect();
    for i in 0..12 {
        std::fs::write(src.join(format!("copy{i:02}")), &blob).unwrap();
    }
    let small_noise = &blob[..3000];
    let small_text: Vec<u8> = b"a small file that compresses inline. "
        .iter()
        .copied()
        .cycle()
        .take(3500)
        .collect();
    for i in 0..3 {
        std::fs::write(src.join(format!("noise{i}")), small_noise).unwrap();
        std::fs::write(src.join(format!("text{i}")), &small_text).unwrap();
    }
    let img = dir.path().join("d.img");
    for extra in [&[][..], &["--compress=zstd"][..]] {
        let o = oracle::run(
            mkfs()
                .args(["-q", "-f", "-b", "64M"])
                .args(extra)
                .arg("--rootdir")
                .arg(&src)
                .arg(&img),
        );
        assert!(!o.status.success(), "72 MiB of copies fit in 64M?");
        // Uncompressed, refused up front; compressed, once the room -b
        // leaves the data has filled up (noise does not compress).
        let want = if extra.is_empty() {
            "-b gives"
        } else {
            "does not fit the space -b leaves it"
        };
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(want),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!oracle::looks_like_btrfs(&img));
        oracle::run_ok(
            mkfs()
                .args(["-q", "-f", "-b", "64M", "--dedupe"])
                .args(extra)
                .arg("--rootdir")
                .arg(&src)
                .arg(&img),
        );
        oracle::btrfs_check(&img, true);
        assert!(used_bytes(&img) < 16 << 20, "{extra:?}");
        if oracle::require_kernel() {
            let m = Mount::new(&img, "ro");
            for i in 0..12 {
                assert!(std::fs::read(m.path().join(format!("copy{i:02}"))).unwrap() == blob);
            }
            for i in 0..3 {
                assert!(std::fs::read(m.path().join(format!("noise{i}"))).unwrap() == small_noise);
                assert!(std::fs::read(m.path().join(format!("text{i}"))).unwrap() == small_text);
            }
            m.unmount();
        }
    }
}

#[test]
fn compressed_images_are_reproducible_across_threads() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src);
    manifest(&src); // settle atimes (relatime) before the first import
    let mut images = Vec::new();
    // The thread count and the memory budget (how far compression runs ahead
    // of allocation) must not change a byte.
    for (j, memory) in [("1", "1M"), ("2", "1M"), ("2", "256M")] {
        let img = dir.path().join(format!("r{j}-{memory}.img"));
        oracle::run_ok(
            mkfs()
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .args([
                    "-q",
                    "-j",
                    j,
                    "--compress=zstd",
                    "--dedupe",
                    "--memory",
                    memory,
                ])
                .args(["-U", "11111111-2222-3333-4444-555555555555"])
                .args(["--device-uuid", "66666666-7777-8888-9999-aaaaaaaaaaaa"])
                .arg("--rootdir")
                .arg(&src)
                .arg(&img),
        );
        images.push(std::fs::read(&img).unwrap());
    }
    assert!(images[0] == images[1], "-j 1 and -j 2 images differ");
    assert!(images[1] == images[2], "--memory 1M and 256M images differ");
}

#[test]
fn bad_compression_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (arg, want) in [
        ("--compress=zstd:22", "out of range"),
        ("--compress=brotli", "unknown compression"),
        ("--compress=zlib:x", "invalid compression level"),
    ] {
        let o = oracle::run(
            mkfs()
                .arg(arg)
                .arg("--rootdir")
                .arg(dir.path())
                .arg(dir.path().join("x.img")),
        );
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(want), "{arg}: {e}");
    }
}
