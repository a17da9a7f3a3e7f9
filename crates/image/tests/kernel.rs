//! Compressed extents written by the Linux kernel: mkfs, loop-mount with
//! `compress-force=ALGO`, write files, unmount, read them back with `Image`.
//! Needs root, /dev/loop-control, btrfs-progs and the btrfs module; skips loudly
//! otherwise.
mod common;

use std::path::Path;
use std::process::Command;

use btrfs_image::btrfs_format::consts::*;
use btrfs_image::{FileExtentKind, Image};
use common::*;

fn kernel_available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let why = if !root {
        "not running as root"
    } else if !Path::new("/dev/loop-control").exists() {
        "no /dev/loop-control"
    } else if !(have("mkfs.btrfs") && have("btrfs")) {
        "mkfs.btrfs not found (install btrfs-progs)"
    } else {
        return true;
    };
    skip(&format!("kernel compression test: {why}"));
    false
}

/// Unmounts on drop so a failed assertion does not leave a mount behind.
struct Mount<'a>(&'a Path);

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn text(n: usize, seed: u64) -> Vec<u8> {
    let words = [
        "btrfs", "extent", "chunk", "leaf", "node", "stripe", "csum", "inode",
    ];
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 64);
    let mut i = 0u64;
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(
            format!("{i:07} {} {}\n", words[(x % 8) as usize], x % 1000).as_bytes(),
        );
        i += 1;
    }
    out.truncate(n);
    out
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Write the same files to the mount and to `host`.
fn populate(mnt: &Path, host: &Path) {
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("small", text(2500, 1)),
        ("page", text(4096, 2)),
        ("big", text(700 * 1024 + 33, 3)),
        ("noise", noise(300 * 1024, 4)),
        (
            "mixed",
            [text(100_000, 5), noise(40_000, 6), text(90_000, 7)].concat(),
        ),
        ("d/nested", text(20_000, 8)),
    ];
    for base in [mnt, host] {
        for (name, data) in &files {
            let p = base.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
        }
    }
    run(&mut Command::new("sync"));
    // Overwrite inside a compressed extent: the old extent stays referenced around it.
    for base in [mnt, host] {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(base.join("big"))
            .unwrap();
        f.seek(SeekFrom::Start(200_000)).unwrap();
        f.write_all(&[b'#'; 10_000]).unwrap();
    }
    run(&mut Command::new("sync"));
}

#[test]
fn kernel_compressed_extents_read_back() {
    if !kernel_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (algo, ctype) in [
        ("zstd", BTRFS_COMPRESS_ZSTD),
        ("zlib", BTRFS_COMPRESS_ZLIB),
        ("lzo", BTRFS_COMPRESS_LZO),
    ] {
        let img_path = tmp.path().join(format!("{algo}.img"));
        std::fs::File::create(&img_path)
            .unwrap()
            .set_len(128 << 20)
            .unwrap();
        run(Command::new("mkfs.btrfs").args(["-q", "-f"]).arg(&img_path));
        let mnt = tmp.path().join(format!("mnt-{algo}"));
        let host = tmp.path().join(format!("host-{algo}"));
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        let st = Command::new("mount")
            .args(["-o", &format!("loop,compress-force={algo}")])
            .arg(&img_path)
            .arg(&mnt)
            .output()
            .unwrap();
        if !st.status.success() {
            skip(&format!(
                "kernel compression test: mount failed: {}",
                String::from_utf8_lossy(&st.stderr).trim()
            ));
            return;
        }
        {
            let _m = Mount(&mnt);
            populate(&mnt, &host);
        }
        let img = Image::open(&img_path).unwrap();
        assert_matches_dir(&img, 5, &host);
        let (sv, ino) = img.lookup(5, b"big").unwrap();
        let ext = img.file_extents(sv, ino).unwrap();
        assert!(
            ext.iter().any(|e| e.compression == ctype
                && matches!(e.kind, FileExtentKind::Regular { offset, .. } if offset > 0)),
            "{algo}: expected a partly referenced compressed extent: {ext:?}"
        );
        exercise(&img).unwrap();
    }
}
