//! Images that no one here wrote: `mkfs.btrfs --rootdir` images and images the
//! kernel wrote (compressed with zstd, zlib and lzo, with a subvolume, a
//! reflink, preallocated and punched ranges). What the kernel shows when it
//! mounts them, copied out with `cp -a`, is the reference: `diff` must find no
//! difference, and `extract` must give the same tree.
//!
//! Needs root, loop devices and btrfs-progs (forge_oracle::require_kernel),
//! else skips loudly.
mod common;

use std::path::Path;
use std::process::Command;

use btrfs_image::Image;
use common::*;
use forge_inspect::diff::{diff, DiffOptions, Ignore};
use forge_inspect::extract::{extract, ExtractOptions};
use forge_inspect::{select_subvol, InodeId, Limits};
use forge_oracle::manifest::{diff as mdiff, manifest, Compare};
use forge_oracle::{run_ok, Mount};

fn top(img: &Image) -> InodeId {
    let sv = select_subvol(img, None).unwrap();
    InodeId {
        subvol: sv,
        ino: img.subvol_root_dir(sv).unwrap(),
    }
}

/// Mount `img` read-only and `cp -a` what the kernel shows into `copy`.
fn kernel_view(img: &Path, copy: &Path) {
    let m = Mount::new(img, "ro");
    copy_tree(m.path(), copy);
    m.unmount();
}

/// `diff` finds nothing, and an extract equals the kernel's view.
fn check_against(img_path: &Path, copy: &Path, scratch: &Path) {
    let img = Image::open(img_path).unwrap();
    let opts = DiffOptions {
        ignore: Ignore::default(),
        limits: Limits::for_image(img.bytes().len() as u64),
    };
    let d = diff(&img, top(&img), copy, &opts).unwrap();
    assert!(
        d.is_empty(),
        "{} differs from what the kernel shows:\n{}",
        img_path.display(),
        d.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The binary agrees (exit 0).
    let o = bin().arg("diff").arg(img_path).arg(copy).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    let dest = scratch.join("extracted");
    let eopts = ExtractOptions::new(Limits::for_image(img.bytes().len() as u64));
    let r = extract(&img, top(&img), b"", &dest, &eopts).unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let how = Compare {
        atime: false,
        ctime: false,
        sparse_blocks: false,
    };
    let d: Vec<String> = mdiff(&manifest(copy), &manifest(&dest), how)
        .into_iter()
        .filter(|l| !l.contains(": otime "))
        .collect();
    assert!(
        d.is_empty(),
        "extract differs from the kernel's view:\n{}",
        d.join("\n")
    );
}

#[test]
fn mkfs_btrfs_rootdir_image_matches_the_kernel_view() {
    if !forge_oracle::require_kernel() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src);
    let img = t.path().join("mkfs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    run_ok(
        Command::new("mkfs.btrfs")
            .arg("-q")
            .arg("--rootdir")
            .arg(&src)
            .arg(&img),
    );
    let copy = t.path().join("copy");
    kernel_view(&img, &copy);
    check_against(&img, &copy, t.path());
}

#[test]
fn kernel_written_image_matches_the_kernel_view() {
    if !forge_oracle::require_kernel() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src);
    let img = t.path().join("kernel.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    run_ok(Command::new("mkfs.btrfs").arg("-q").arg(&img));
    for algo in ["zstd", "zlib", "lzo"] {
        let m = Mount::new(&img, &format!("compress-force={algo}"));
        let dir = m.path().join(algo);
        copy_tree(&src, &dir);
        if algo == "zstd" {
            let root = m.path();
            run_ok(
                Command::new("btrfs")
                    .args(["subvolume", "create"])
                    .arg(root.join("sv")),
            );
            copy_tree(&src.join("dir"), &root.join("sv/inside"));
            // Overwrite the middle of a compressed file, reflink it, and
            // preallocate and punch ranges.
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("text"))
                .unwrap();
            use std::os::unix::fs::FileExt;
            f.write_all_at(b"overwritten in the middle", 150_000)
                .unwrap();
            drop(f);
            run_ok(
                Command::new("cp")
                    .arg("--reflink=always")
                    .arg(dir.join("big"))
                    .arg(root.join("reflinked")),
            );
            run_ok(
                Command::new("fallocate")
                    .args(["-l", "1M"])
                    .arg(root.join("prealloc")),
            );
            write(&root.join("punched"), &bytes(9, 1 << 20, false));
            run_ok(
                Command::new("fallocate")
                    .args(["--punch-hole", "-o", "65536", "-l", "131072"])
                    .arg(root.join("punched")),
            );
        }
        m.unmount();
    }
    let copy = t.path().join("copy");
    kernel_view(&img, &copy);
    // The compressed extents are there, as the kernel wrote them.
    let image = Image::open(&img).unwrap();
    for (algo, path) in [
        ("zstd", "zstd/text"),
        ("zlib", "zlib/text"),
        ("lzo", "lzo/text"),
    ] {
        let (sv, ino) = image.lookup(5, path.as_bytes()).unwrap();
        let s = forge_inspect::stat::stat(&image, InodeId { subvol: sv, ino }, path).unwrap();
        assert!(
            s.extents.iter().any(|e| e.compression == algo),
            "{path}: no {algo} extent in {:?}",
            s.extents
        );
    }
    drop(image);
    check_against(&img, &copy, t.path());
}
