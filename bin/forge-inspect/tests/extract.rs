//! `extract` of our images, then a comparison with the source tree by an
//! independent snapshot (forge_oracle::manifest) and by `diff`.
mod common;

use std::path::Path;

use btrfs_image::Image;
use common::*;
use forge_inspect::extract::{extract, ExtractOptions};
use forge_inspect::{select_subvol, InodeId, Limits};
use forge_oracle::manifest::{diff as mdiff, manifest, Compare};

/// Differences between two trees, leaving out birth time (which no extract can
/// set) and, when not root, what only root can restore.
pub fn tree_differences(want: &Path, got: &Path) -> Vec<String> {
    let how = Compare {
        atime: false,
        ctime: false,
        sparse_blocks: true,
    };
    mdiff(&manifest(want), &manifest(got), how)
        .into_iter()
        .filter(|l| !l.contains(": otime "))
        .collect()
}

fn top(img: &Image) -> InodeId {
    let sv = select_subvol(img, None).unwrap();
    InodeId {
        subvol: sv,
        ino: img.subvol_root_dir(sv).unwrap(),
    }
}

#[test]
fn extract_reproduces_the_source_tree() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src);
    let img_path = t.path().join("img");
    build(&src, &img_path);
    let img = Image::open(&img_path).unwrap();
    let dest = t.path().join("out");
    let opts = ExtractOptions::new(Limits::for_image(img.bytes().len() as u64));
    let r = extract(&img, top(&img), b"", &dest, &opts).unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(r.hardlinks, 2);
    assert!(r.files > 10 && r.symlinks == 4 && r.dirs == 4, "{r:?}");
    if is_root() {
        assert_eq!(r.specials, 5);
    }
    let d = tree_differences(&src, &dest);
    assert!(
        d.is_empty(),
        "extracted tree differs from the source:\n{}",
        d.join("\n")
    );
    // Holes stayed holes.
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(dest.join("all_holes")).unwrap();
    assert_eq!((md.len(), md.blocks()), (3 << 20, 0));
    // And forge-inspect's own diff agrees.
    let o = bin()
        .arg("diff")
        .arg(&img_path)
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // The binary: a subtree, then a single file, then a non-empty destination.
    let sub = t.path().join("sub");
    let o = bin()
        .args(["extract", "-q"])
        .arg(&img_path)
        .arg(&sub)
        .arg("dir/sub")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // hard2's other names are outside the subtree: only its link count differs.
    let d = tree_differences(&src.join("dir/sub"), &sub);
    assert_eq!(
        d,
        [
            "hard2: hard links Some(\"hard2\") != None",
            "hard2: nlink 3 != 1"
        ],
        "{d:#?}"
    );
    let one = t.path().join("one");
    let o = bin()
        .args(["extract", "--json"])
        .arg(&img_path)
        .arg(&one)
        .arg("text")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["files"], 1);
    assert_eq!(
        std::fs::read(one.join("text")).unwrap(),
        std::fs::read(src.join("text")).unwrap()
    );
    let o = bin()
        .arg("extract")
        .arg(&img_path)
        .arg(&one)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
}

#[test]
fn extract_of_the_mkfs_fixture_matches_its_manifest() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("fx.img");
    std::fs::write(&p, fixture_bytes("mkfs-6.2-rootdir")).unwrap();
    let img = Image::open(&p).unwrap();
    let dest = t.path().join("out");
    let opts = ExtractOptions::new(Limits::for_image(img.bytes().len() as u64));
    extract(&img, top(&img), b"", &dest, &opts).unwrap();
    // Every line of the fixture's manifest: type, size, sha256 or target.
    let text = std::fs::read_to_string(testdata("mkfs-6.2-rootdir.manifest.txt")).unwrap();
    let m = manifest(&dest);
    let mut n = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut f = line.splitn(4, ' ');
        let (kind, size, hash, path) = (
            f.next().unwrap(),
            f.next().unwrap(),
            f.next().unwrap(),
            f.next().unwrap(),
        );
        let e = m
            .get(Path::new(path))
            .unwrap_or_else(|| panic!("{path} extracted"));
        match kind {
            "file" => {
                assert_eq!(e.kind, 'f', "{path}");
                assert_eq!(e.size.to_string(), size, "{path}");
                let h: String = e
                    .sha256
                    .unwrap()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                assert_eq!(h, hash, "{path}");
            }
            "dir" => assert_eq!(e.kind, 'd', "{path}"),
            "symlink" => assert_eq!(e.target.as_deref(), Some(hash.as_bytes()), "{path}"),
            k => panic!("{k}"),
        }
        n += 1;
    }
    assert_eq!(
        m.len(),
        n + 1,
        "nothing more than the manifest (plus the top)"
    );
    let a = &m[Path::new("sub/a")];
    assert_eq!(
        a.link_group.as_deref(),
        Some(Path::new("hardlink-to-sub-a"))
    );
    assert_eq!(a.xattrs.len(), 0);
    assert_eq!(
        m[Path::new("one")]
            .xattrs
            .get(&b"user.forge"[..])
            .map(|v| &v[..]),
        Some(&b"fixture"[..])
    );
}
