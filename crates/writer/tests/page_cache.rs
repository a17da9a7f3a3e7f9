//! Data written through the writeback thread leaves the page cache once it
//! is on disk, when asked (`set_drop_behind`, as the pipeline does when it
//! compresses): an image of any size keeps only the last `DROP_BEHIND` bytes
//! (64 MiB) of its data cached, and reads back intact. Without the request,
//! the data stays cached.
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

/// Write 256 MiB in 1 MiB ranges through the writeback thread, flush, and
/// return the bytes still cached (None: the check cannot run here).
fn write_and_measure(drop_behind: bool) -> Option<u64> {
    // On a disk filesystem: tmpfs pages cannot be dropped.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("img");
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
