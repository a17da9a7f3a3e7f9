//! `diff` of images made by our writer against their source: no difference;
//! then each deliberate change to a copy of the source is found, and only it.
mod common;

use std::path::Path;

use btrfs_image::Image;
use common::*;
use forge_inspect::diff::{diff, DiffOptions, Difference, Ignore};
use forge_inspect::{select_subvol, InodeId, Limits};

fn run_diff(img: &Image, dir: &Path) -> Vec<Difference> {
    let sv = select_subvol(img, None).unwrap();
    let start = InodeId {
        subvol: sv,
        ino: img.subvol_root_dir(sv).unwrap(),
    };
    let opts = DiffOptions {
        ignore: Ignore::default(),
        limits: Limits::for_image(img.bytes().len() as u64),
    };
    diff(img, start, dir, &opts).unwrap()
}

/// (path, field) of each difference.
fn fields(d: &[Difference]) -> Vec<(String, String)> {
    d.iter()
        .map(|d| (d.path.clone(), d.field.clone()))
        .collect()
}

fn mtime_of(p: &Path) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(p).unwrap();
    (md.mtime(), md.mtime_nsec())
}

/// Apply `change` to a fresh copy of `src` (keeping the directory's and the
/// changed path's times where asked), diff, and expect exactly `want`.
fn expect_after(
    img: &Image,
    src: &Path,
    work: &Path,
    label: &str,
    change: impl FnOnce(&Path),
    want: &[(&str, &str)],
) {
    let copy = work.join(label);
    copy_tree(src, &copy);
    assert!(
        run_diff(img, &copy).is_empty(),
        "{label}: clean copy differs"
    );
    let keep: Vec<_> = all_paths(&copy)
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
        .map(|p| {
            let t = mtime_of(&p);
            (p, t)
        })
        .collect();
    change(&copy);
    // Directory times move when entries come and go: put them back, so that
    // only the change itself shows.
    for (p, (s, n)) in keep {
        if p.exists() {
            set_time(&p, s, n);
        }
    }
    let got = fields(&run_diff(img, &copy));
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(p, f)| (p.to_string(), f.to_string()))
        .collect();
    assert_eq!(got, want, "{label}");
    // The binary says the same, with exit code 1.
    let o = bin()
        .arg("diff")
        .arg(img.path().unwrap())
        .arg(&copy)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{label}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.lines().count(), want.len(), "{label}: {text}");
}

#[test]
fn our_images_match_their_source_and_changes_are_found() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src);
    let img_path = t.path().join("img");
    build(&src, &img_path);
    let img = Image::open(&img_path).unwrap();
    let d = run_diff(&img, &src);
    assert!(d.is_empty(), "image differs from its source: {d:#?}");

    // Binary: exit 0 and no output; JSON says equal.
    let o = bin().arg("diff").arg(&img_path).arg(&src).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.stdout.is_empty());
    let o = bin()
        .args(["diff", "--json"])
        .arg(&img_path)
        .arg(&src)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["equal"], true);
    // Exit 2 on an error (no such directory), with the path in the message.
    let o = bin()
        .arg("diff")
        .arg(&img_path)
        .arg(t.path().join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nowhere"));

    let work = t.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let w = work.as_path();
    expect_after(
        &img,
        &src,
        w,
        "byte",
        |c| {
            let p = c.join("dir/sub/b");
            let (s, n) = mtime_of(&p);
            let mut data = std::fs::read(&p).unwrap();
            data[7777] ^= 0x20;
            std::fs::write(&p, data).unwrap();
            set_time(&p, s, n);
        },
        &[("dir/sub/b", "content")],
    );
    expect_after(
        &img,
        &src,
        w,
        "mode",
        |c| chmod(&c.join("private"), 0o640),
        &[("private", "mode")],
    );
    expect_after(
        &img,
        &src,
        w,
        "mtime",
        |c| {
            let p = c.join("text");
            let (s, n) = mtime_of(&p);
            set_time(&p, s, n + 1);
        },
        &[("text", "mtime")],
    );
    expect_after(
        &img,
        &src,
        w,
        "xattr",
        |c| set_xattr(&c.join("one"), "user.forge", b"other"),
        &[("one", "xattr user.forge")],
    );
    expect_after(
        &img,
        &src,
        w,
        "missing",
        |c| std::fs::remove_file(c.join("dir/sub/deeper/c")).unwrap(),
        &[("dir/sub/deeper/c", "only-in-image")],
    );
    expect_after(
        &img,
        &src,
        w,
        "extra",
        |c| write(&c.join("dir/new"), b"new"),
        &[("dir/new", "only-in-directory")],
    );
    expect_after(
        &img,
        &src,
        w,
        "hardlink",
        |c| {
            // Same bytes, same metadata, but its own inode now.
            let p = c.join("hard1");
            let tmp = c.join("hard1.tmp");
            std::fs::copy(&p, &tmp).unwrap();
            copy_tree_meta(&p, &tmp);
            std::fs::rename(&tmp, &p).unwrap();
        },
        &[("dir/linked", "hard-links")],
    );
    expect_after(
        &img,
        &src,
        w,
        "symlink",
        |c| {
            let p = c.join("link");
            std::fs::remove_file(&p).unwrap();
            std::os::unix::fs::symlink("two", &p).unwrap();
            set_time(
                &p,
                mtime_of(&src.join("link")).0,
                mtime_of(&src.join("link")).1,
            );
            if is_root() {
                rustix::fs::chownat(
                    rustix::fs::CWD,
                    &p,
                    Some(rustix::fs::Uid::from_raw(7)),
                    Some(rustix::fs::Gid::from_raw(8)),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .unwrap();
            }
        },
        &[("link", "target")],
    );
    expect_after(
        &img,
        &src,
        w,
        "type",
        |c| {
            let p = c.join("fifo");
            std::fs::remove_file(&p).unwrap();
            write(&p, b"");
            chmod(&p, 0o640);
            set_time(
                &p,
                mtime_of(&src.join("fifo")).0,
                mtime_of(&src.join("fifo")).1,
            );
        },
        &[("fifo", "type")],
    );
    if is_root() {
        expect_after(
            &img,
            &src,
            w,
            "owner",
            |c| {
                rustix::fs::chown(c.join("inline"), Some(rustix::fs::Uid::from_raw(99)), None)
                    .unwrap()
            },
            &[("inline", "uid")],
        );
        expect_after(
            &img,
            &src,
            w,
            "rdev",
            |c| {
                let p = c.join("chr");
                std::fs::remove_file(&p).unwrap();
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &p,
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::from_raw_mode(0o660),
                    rustix::fs::makedev(240, 70001),
                )
                .unwrap();
                copy_tree_meta(&src.join("chr"), &p);
            },
            &[("chr", "rdev")],
        );
    } else {
        eprintln!("SKIPPED: owner and device differences need root");
    }

    // --ignore leaves fields out.
    let copy = work.join("ignored");
    copy_tree(&src, &copy);
    chmod(&copy.join("private"), 0o644);
    let o = bin()
        .args(["diff", "--ignore", "mode"])
        .arg(&img_path)
        .arg(&copy)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// Copy mode, owner and times of `from` onto `to`.
fn copy_tree_meta(from: &Path, to: &Path) {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(from).unwrap();
    chmod(to, md.mode() & 0o7777);
    if is_root() {
        rustix::fs::chown(
            to,
            Some(rustix::fs::Uid::from_raw(md.uid())),
            Some(rustix::fs::Gid::from_raw(md.gid())),
        )
        .unwrap();
    }
    set_time(to, md.mtime(), md.mtime_nsec());
}

#[test]
fn committed_fixture_lists_and_reads() {
    // ls -lR --json, stat --json and cat through the binary on the mkfs.btrfs fixture.
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("fx.img");
    std::fs::write(&p, fixture_bytes("mkfs-6.2-rootdir")).unwrap();
    let o = bin()
        .args(["ls", "-lR", "--json"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let paths: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "empty",
            "emptydir",
            "hardlink-to-sub-a",
            "inline-3000",
            "link",
            "one",
            "sparse",
            "sub",
            "sub/a",
            "sub/deeper",
            "sub/deeper/b",
            "text-200k"
        ]
    );
    let link = &v.as_array().unwrap()[4];
    assert_eq!(link["type"], "symlink");
    assert_eq!(link["target"], "text-200k");
    let o = bin()
        .args(["stat", "--json"])
        .arg(&p)
        .arg("text-200k")
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["size"], 204800);
    assert_eq!(s["extents"][0]["type"], "regular");
    assert_eq!(s["extents"][0]["disk_bytenr"], 14680064);
    assert_eq!(s["extents"][0]["physical"][0], 14680064);
    let o = bin()
        .arg("cat")
        .arg(&p)
        .arg("sub/deeper/b")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(o.stdout.len(), 5000);
    // cat of a directory is an error naming it, exit 2.
    let o = bin().arg("cat").arg(&p).arg("sub").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("sub"));
    // A missing path.
    let o = bin().arg("stat").arg(&p).arg("nope").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope"));
}
