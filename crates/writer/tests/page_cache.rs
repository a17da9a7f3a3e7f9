//! Data written through the writeback thread leaves the page cache once it
//! is on disk: an image of any size keeps only the last `DROP_BEHIND` bytes
//! (64 MiB) of its data cached, and reads back intact.
use std::process::Command;

use btrfs_writer::output::Output;

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

#[test]
fn written_data_leaves_the_page_cache() {
    // On a disk filesystem: tmpfs pages cannot be dropped.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("img");
    if rustix::fs::statfs(dir.path()).unwrap().f_type == 0x0102_1994 {
        eprintln!(
            "SKIPPED: {} is on tmpfs, whose pages stay cached",
            dir.path().display()
        );
        return;
    }
    if cached_bytes(&std::env::current_exe().unwrap()).is_none() {
        eprintln!("SKIPPED: util-linux fincore is not installed");
        return;
    }
    let total = 256 * MIB;
    let out = Output::create(&path, Some(total + MIB), false).unwrap();
    let piece = |i: u64| vec![(i % 251) as u8 + 1; MIB as usize];
    for i in 0..total / MIB {
        out.write_at(&piece(i), MIB + i * MIB).unwrap();
        out.start_writeback(MIB + i * MIB, MIB);
    }
    out.sync().unwrap();
    let cached = cached_bytes(&path).expect("fincore on the image");
    // What is left: the last 64 MiB, and pages at the edges of ranges.
    assert!(
        cached <= 64 * MIB + 4 * MIB,
        "{} MiB of {} MiB written still cached",
        cached / MIB,
        total / MIB
    );
    drop(out);
    let got = std::fs::read(&path).unwrap();
    for i in 0..total / MIB {
        let at = (MIB + i * MIB) as usize;
        assert!(
            got[at..at + MIB as usize] == piece(i)[..],
            "MiB {i} reads back wrong"
        );
    }
}
