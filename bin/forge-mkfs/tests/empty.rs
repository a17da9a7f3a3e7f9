//! forge-mkfs on empty images, judged by btrfs-progs and the kernel.
use std::path::{Path, PathBuf};
use std::process::Command;

use forge_oracle as oracle;

const FSID: &str = "11111111-2222-3333-4444-555555555555";
const DEVID: &str = "66666666-7777-8888-9999-aaaaaaaaaaaa";

fn mkfs() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_forge-mkfs"));
    c.env("SOURCE_DATE_EPOCH", "1700000000");
    c
}

fn make(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let img = dir.join(name);
    oracle::run_ok(mkfs().args(args).arg("-q").arg(&img));
    img
}

/// Every checksum × nodesize × metadata profile × block-group-tree: btrfs check,
/// then a read-write mount that writes ~100 MiB and deletes some, scrub, and
/// btrfs check with data checksums again.
fn matrix(csum: &str) {
    if !oracle::require_kernel() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for nodesize in ["4K", "16K", "64K"] {
        for meta in ["single", "dup"] {
            for bgt in ["block-group-tree", "^block-group-tree"] {
                let what = format!("--csum {csum} -n {nodesize} -m {meta} -O {bgt}");
                eprintln!("checking {what}");
                let img = make(
                    dir.path(),
                    "m.img",
                    &[
                        "-f", "-b", "384M", "--csum", csum, "-n", nodesize, "-m", meta, "-O", bgt,
                        "-U", FSID,
                    ],
                );
                oracle::btrfs_check(&img, true);
                let m = oracle::Mount::new(&img, "");
                oracle::churn(m.path(), 100);
                m.scrub(true);
                m.unmount();
                let out = oracle::btrfs_check(&img, true);
                assert!(out.contains("no error found"), "{what}: {out}");
                std::fs::remove_file(&img).unwrap();
            }
        }
    }
}

#[test]
fn oracle_matrix_crc32c() {
    matrix("crc32c");
}

#[test]
fn oracle_matrix_xxhash() {
    matrix("xxhash");
}

#[test]
fn oracle_matrix_sha256() {
    matrix("sha256");
}

#[test]
fn oracle_matrix_blake2() {
    matrix("blake2");
}

#[test]
fn dump_super_shows_what_was_asked() {
    if !oracle::require_btrfs_progs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (csum, disk, size) in [
        ("crc32c", 0, 4),
        ("xxhash", 1, 8),
        ("sha256", 2, 32),
        ("blake2", 3, 32),
    ] {
        let img = make(
            dir.path(),
            "s.img",
            &[
                "-f",
                "-b",
                "300M",
                "-L",
                "my label",
                "-U",
                FSID,
                "--device-uuid",
                DEVID,
                "--csum",
                csum,
                "-n",
                "32K",
            ],
        );
        let d = oracle::dump_super(&img);
        let f = |k| oracle::super_field(&d, k).unwrap_or_else(|| panic!("{k} missing:\n{d}"));
        assert_eq!(f("label"), "my label");
        assert_eq!(f("fsid"), FSID);
        assert_eq!(f("dev_item.uuid"), DEVID);
        assert_eq!(f("dev_item.fsid"), format!("{FSID} [match]"));
        assert_eq!(f("total_bytes"), (300u64 << 20).to_string());
        assert_eq!(f("dev_item.total_bytes"), (300u64 << 20).to_string());
        assert_eq!(f("nodesize"), "32768");
        assert_eq!(f("sectorsize"), "4096");
        assert!(
            f("csum_type").starts_with(&format!("{disk} (")),
            "{}",
            f("csum_type")
        );
        assert_eq!(f("csum_size"), size.to_string());
        assert!(f("csum").ends_with("[match]"));
        let inc = u64::from_str_radix(f("incompat_flags").trim_start_matches("0x"), 16).unwrap();
        // MIXED_BACKREF | EXTENDED_IREF | SKINNY_METADATA | NO_HOLES
        assert_eq!(inc, 0x1 | 0x40 | 0x100 | 0x200);
        let ro = u64::from_str_radix(f("compat_ro_flags").trim_start_matches("0x"), 16).unwrap();
        assert_eq!(ro, 0x1 | 0x2 | 0x8);
        oracle::btrfs_check(&img, true);
    }
    // Turning features off shows in the flags too.
    let img = make(
        dir.path(),
        "t.img",
        &[
            "-f",
            "-b",
            "300M",
            "-O",
            "^block-group-tree,^no-holes,^skinny-metadata,^extref",
        ],
    );
    let d = oracle::dump_super(&img);
    let inc = oracle::super_field(&d, "incompat_flags").unwrap();
    assert_eq!(inc, "0x1", "{d}");
    assert_eq!(oracle::super_field(&d, "compat_ro_flags").unwrap(), "0x3");
}

/// Features off one at a time (and the free space tree off, which makes the
/// kernel fall back to its older space cache): still valid and writable.
#[test]
fn feature_variants_mount_and_check() {
    if !oracle::require_kernel() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for feats in [
        "^skinny-metadata",
        "^extref",
        "^no-holes,^block-group-tree",
        "^free-space-tree,^block-group-tree",
    ] {
        let img = make(
            dir.path(),
            "f.img",
            &["-f", "-b", "256M", "-O", feats, "-n", "4K"],
        );
        oracle::btrfs_check(&img, true);
        let m = oracle::Mount::new(&img, "");
        oracle::churn(m.path(), 40);
        m.scrub(true);
        m.unmount();
        oracle::btrfs_check(&img, true);
    }
}

#[test]
fn minimum_size_image_works_and_below_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("small.img");
    let o = oracle::run(mkfs().args(["-b", "1M"]).arg(&img));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("too small") && err.contains("minimum is"),
        "{err}"
    );
    // The message names the minimum; an image of exactly that size works.
    let min: u64 = err
        .split("minimum is ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number in: {err}"));
    assert!(!img.exists() || std::fs::metadata(&img).unwrap().len() == 0);
    let img = make(dir.path(), "min.img", &["-b", &min.to_string()]);
    if !oracle::require_kernel() {
        return;
    }
    oracle::btrfs_check(&img, true);
    let m = oracle::Mount::new(&img, "");
    std::fs::write(m.path().join("hello"), b"hello world").unwrap();
    m.unmount();
    oracle::btrfs_check(&img, true);
}

#[test]
fn reproducible_with_fixed_uuids_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "-b",
        "200M",
        "-U",
        FSID,
        "--device-uuid",
        DEVID,
        "-L",
        "repro",
    ];
    let a = make(dir.path(), "a.img", &args);
    let b = make(dir.path(), "b.img", &args);
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "images differ"
    );
    // A different epoch changes the image: times really come from it.
    let c = dir.path().join("c.img");
    oracle::run_ok(
        mkfs()
            .env("SOURCE_DATE_EPOCH", "1700000001")
            .args(args)
            .arg("-q")
            .arg(&c),
    );
    assert!(std::fs::read(&a).unwrap() != std::fs::read(&c).unwrap());
}

fn fails(args: &[&str], img: &Path) -> String {
    let o = oracle::run(mkfs().args(args).arg(img));
    assert!(!o.status.success(), "forge-mkfs {args:?} succeeded");
    assert!(o.stdout.is_empty() || !String::from_utf8_lossy(&o.stdout).contains("UUID"));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_input_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.img");
    let e = fails(&["-b", "300M", "-n", "12K"], &img);
    assert!(e.contains("nodesize") && e.contains("power of two"), "{e}");
    assert!(!forge_oracle::looks_like_btrfs(&img));
    let e = fails(&["-b", "300M", "-n", "128K"], &img);
    assert!(e.contains("nodesize"), "{e}");
    let e = fails(&["-b", "300M", "-O", "frobnicate"], &img);
    assert!(e.contains("unknown feature 'frobnicate'"), "{e}");
    let e = fails(&["-b", "300M", "--csum", "md5"], &img);
    assert!(e.contains("unknown checksum type 'md5'"), "{e}");
    let e = fails(&["-b", "300M", "-s", "8192"], &img);
    assert!(e.contains("sectorsize"), "{e}");
    let e = fails(&["-b", "300M", "-m", "raid5"], &img);
    assert!(e.contains("raid5"), "{e}");
    let e = fails(&["-b", "300M", "-U", "not-a-uuid"], &img);
    assert!(e.contains("not-a-uuid"), "{e}");
    let e = fails(&["-b", "300M", "-O", "^no-holes"], &img);
    assert!(e.contains("block-group-tree requires"), "{e}");
    assert!(!forge_oracle::looks_like_btrfs(&img));
    // A directory.
    let e = fails(&["-b", "300M"], dir.path());
    assert!(e.contains("directory"), "{e}");
    // An unwritable path.
    let e = fails(&["-b", "300M"], Path::new("/proc/forge-no-such/x.img"));
    assert!(e.contains("/proc/forge-no-such/x.img"), "{e}");
    // An empty new file without -b.
    let e = fails(&[], &dir.path().join("nosize.img"));
    assert!(e.contains("-b"), "{e}");
    // An existing filesystem is refused without -f, and left intact.
    let good = make(dir.path(), "good.img", &["-b", "300M"]);
    let before = std::fs::read(&good).unwrap();
    let e = fails(&["-b", "300M"], &good);
    assert!(e.contains("btrfs filesystem") && e.contains("-f"), "{e}");
    assert!(std::fs::read(&good).unwrap() == before);
    // ...and replaced with -f.
    make(dir.path(), "good.img", &["-f", "-b", "300M"]);
}

#[test]
fn too_small_leaves_no_filesystem_behind() {
    let dir = tempfile::tempdir().unwrap();
    // Overwriting a valid image with an impossible size must not leave the old
    // filesystem, or a new one, looking valid.
    let img = make(dir.path(), "old.img", &["-b", "300M"]);
    let e = fails(&["-f", "-b", "2M"], &img);
    assert!(e.contains("too small"), "{e}");
    assert!(
        forge_oracle::looks_like_btrfs(&img),
        "size is checked before the file is touched"
    );
}

#[test]
fn list_all_features() {
    let o = oracle::run_ok(mkfs().args(["-O", "list-all", "unused.img"]));
    for f in [
        "no-holes",
        "free-space-tree",
        "block-group-tree",
        "skinny-metadata",
        "extref",
    ] {
        assert!(o.contains(f), "{o}");
    }
}
