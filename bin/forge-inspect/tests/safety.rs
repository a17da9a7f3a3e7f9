//! Crafted hostile images: `extract` never writes outside its destination,
//! never follows a symlink it created, refuses what it cannot do safely with a
//! clear error, and no command panics or hangs.
//!
//! Each case starts from one small image made by the writer library and patches
//! bytes of a leaf (then recomputes the leaf's crc32c, so the damage gets past
//! checksum verification to the code under test).
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use btrfs_image::btrfs_format::consts::*;
use btrfs_image::Image;
use common::*;

struct Case {
    /// The top of this case's scratch space: only `out` may appear in it.
    dir: PathBuf,
    img: PathBuf,
}

/// Run forge-inspect with a time limit; returns (exit code, stdout, stderr).
fn run(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_forge-inspect"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Drain the pipes while waiting, or a big output would block the child.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    use std::io::Read;
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("forge-inspect {args:?} hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let o = std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    let code = o.status.code().expect("exited, not killed by a signal");
    assert_ne!(
        code,
        101,
        "forge-inspect {args:?} panicked: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (
        code,
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

struct Fixture {
    _t: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    clean: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let outside = root.join("outside");
        std::fs::create_dir(&outside).unwrap();
        let src = root.join("src");
        std::fs::create_dir(&src).unwrap();
        // Ingredients: names of the right lengths to be patched into bad ones.
        for name in ["a_b", "xx", "n0n", "emp", "huge"] {
            write(&src.join(name), b"0123456789");
        }
        write(&src.join("far"), &bytes(1, 65536, false));
        write(&src.join("long"), &bytes(2, 65536, false));
        std::os::unix::fs::symlink(&outside, src.join("evil")).unwrap();
        std::fs::create_dir(src.join("evim")).unwrap();
        write(&src.join("evim/pwned"), b"written through a symlink\n");
        std::fs::create_dir(src.join("d1")).unwrap();
        std::fs::create_dir(src.join("d1/up")).unwrap();
        write(&src.join("d1/f"), b"f\n");
        std::fs::create_dir(src.join("d2")).unwrap();
        let img = root.join("clean.img");
        build_with(&src, &img, &small_config(), |_| {});
        let clean = std::fs::read(&img).unwrap();
        Fixture {
            root,
            outside,
            clean,
            _t: t,
        }
    }

    fn case(&self, name: &str, patch: impl FnOnce(&Image, &mut Vec<u8>)) -> Case {
        let dir = self.root.join(name);
        std::fs::create_dir(&dir).unwrap();
        let img = Image::from_bytes(self.clean.clone()).unwrap();
        let mut buf = self.clean.clone();
        patch(&img, &mut buf);
        let path = self.root.join(format!("{name}.img"));
        std::fs::write(&path, &buf).unwrap();
        Case { dir, img: path }
    }

    /// Nothing was written outside the case's `out` directory.
    fn assert_contained(&self, c: &Case) {
        assert_eq!(
            std::fs::read_dir(&self.outside).unwrap().count(),
            0,
            "something was written into the symlink's target"
        );
        let names: Vec<_> = std::fs::read_dir(&c.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names.is_empty() || names == ["out"],
            "{}: written next to the destination: {names:?}",
            c.dir.display()
        );
    }

    /// `extract` fails with `want` in its message and stays inside `out`.
    fn extract_refused(&self, c: &Case, want: &str) -> String {
        let out = c.dir.join("out");
        let (code, _, err) = run(&["extract".as_ref(), c.img.as_os_str(), out.as_os_str()]);
        assert_eq!(code, 2, "extract of {} should fail: {err}", c.img.display());
        assert!(err.contains(want), "expected '{want}' in: {err}");
        self.assert_contained(c);
        err
    }
}

fn name_patch(img: &Image, buf: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let it = dir_index_item(img, 256, from);
    patch_item(buf, &it, DIR_ITEM_NAME, to, img.nodesize() as usize);
}

/// Every read-only command on `img`: no panic, no hang, exit 0 or 2.
fn all_commands(img: &Path) {
    let i = img.as_os_str();
    for args in [
        vec!["ls", "-lR"],
        vec!["ls", "-lR", "--json"],
        vec!["dump-tree"],
        vec!["dump-super", "--all"],
    ] {
        let mut a: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_ref()).collect();
        a.insert(1, i);
        let (code, _, _) = run(&a);
        assert!(code == 0 || code == 2, "{args:?}: exit {code}");
    }
    for p in ["huge", "far", "long", "d1", "d2", "evil", "a_b", "a/b"] {
        for cmd in ["cat", "stat"] {
            let (code, _, _) = run(&[cmd.as_ref(), i, p.as_ref()]);
            assert!(code == 0 || code == 2, "{cmd} {p}: exit {code}");
        }
    }
    let dir = img.with_extension("empty-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let (code, _, _) = run(&["diff".as_ref(), i, dir.as_os_str()]);
    assert!(code == 1 || code == 2, "diff: exit {code}");
    assert!(forge_inspect::inspect_all(std::fs::read(img).unwrap()) > 0);
}

#[test]
fn hostile_images_are_refused_safely() {
    let f = Fixture::new();

    // Baseline: the clean image extracts, the absolute symlink is created as a
    // link and not followed.
    let c = f.case("clean", |_, _| {});
    let out = c.dir.join("out");
    let (code, _, err) = run(&["extract".as_ref(), c.img.as_os_str(), out.as_os_str()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_link(out.join("evil")).unwrap(), f.outside);
    assert!(out.join("evim/pwned").is_file());
    f.assert_contained(&c);
    all_commands(&c.img);

    // Names that cannot be a host name.
    let c = f.case("slash", |img, buf| name_patch(img, buf, b"a_b", b"a/b"));
    f.extract_refused(&c, "holding '/'");
    all_commands(&c.img);
    let c = f.case("dotdot", |img, buf| name_patch(img, buf, b"xx", b".."));
    f.extract_refused(&c, "'.' or '..'");
    let c = f.case("nul", |img, buf| name_patch(img, buf, b"n0n", b"n\0n"));
    f.extract_refused(&c, "NUL");
    let c = f.case("empty", |img, buf| {
        // name_len 0, and the old name becomes the entry's data.
        let it = dir_index_item(img, 256, b"emp");
        let ns = img.nodesize() as usize;
        patch_item(buf, &it, DIR_ITEM_DATA_LEN, &3u16.to_le_bytes(), ns);
        patch_item(buf, &it, DIR_ITEM_NAME_LEN, &0u16.to_le_bytes(), ns);
    });
    f.extract_refused(&c, "empty name");
    all_commands(&c.img);

    // A symlink to outside, then a directory of the same name with a file in
    // it: the file must not land in the symlink's target.
    let c = f.case("symlink", |img, buf| name_patch(img, buf, b"evim", b"evil"));
    f.extract_refused(&c, "twice");
    all_commands(&c.img);

    // A hard link to a directory, and a directory that contains its ancestor.
    let c = f.case("dirlink", |img, buf| {
        let d1 = ino_of(img, "d1");
        let it = dir_index_item(img, 256, b"d2");
        patch_item(
            buf,
            &it,
            DIR_ITEM_LOCATION,
            &d1.to_le_bytes(),
            img.nodesize() as usize,
        );
    });
    f.extract_refused(&c, "reached a second time");
    all_commands(&c.img);
    let c = f.case("loop", |img, buf| {
        let d1 = ino_of(img, "d1");
        let it = dir_index_item(img, d1, b"up");
        patch_item(
            buf,
            &it,
            DIR_ITEM_LOCATION,
            &256u64.to_le_bytes(),
            img.nodesize() as usize,
        );
    });
    f.extract_refused(&c, "reached a second time");
    all_commands(&c.img);

    // A file claiming 2^60 bytes: refused before anything is written for it.
    let c = f.case("huge", |img, buf| {
        let ino = ino_of(img, "huge");
        let it = find_item(img, 5, |k, _| {
            k.objectid == ino && k.item_type == BTRFS_INODE_ITEM_KEY
        });
        patch_item(
            buf,
            &it,
            16,
            &(1u64 << 60).to_le_bytes(),
            img.nodesize() as usize,
        );
    });
    let err = f.extract_refused(&c, "over the limit");
    assert!(
        err.contains("huge") && err.contains("--max-file-size"),
        "{err}"
    );
    assert!(!c.dir.join("out/huge").exists());
    let (code, _, err) = run(&["cat".as_ref(), c.img.as_os_str(), "huge".as_ref()]);
    assert_eq!(code, 2);
    assert!(err.contains("over the limit"), "{err}");
    all_commands(&c.img);
    // Raising the limit: the hole is not written, so the disk does not fill;
    // the destination filesystem may refuse so large a file (exit 2) or hold
    // it sparse (exit 0).
    let out2 = c.dir.join("out2");
    let (code, _, err) = run(&[
        "extract".as_ref(),
        "--max-file-size".as_ref(),
        "2E".as_ref(),
        c.img.as_os_str(),
        out2.as_os_str(),
    ]);
    assert!(code == 0 || code == 2, "{err}");
    if out2.join("huge").exists() {
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(out2.join("huge")).unwrap().blocks() < 64);
    }
    std::fs::remove_dir_all(&out2).unwrap();

    // --max-total: the data written in all is capped.
    let c = f.case("total", |_, _| {});
    let out = c.dir.join("out");
    let (code, _, err) = run(&[
        "extract".as_ref(),
        "--max-total".as_ref(),
        "100K".as_ref(),
        c.img.as_os_str(),
        out.as_os_str(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("filling the disk"), "{err}");

    // Extents pointing outside every chunk, and across a chunk's end.
    let c = f.case("far", |img, buf| {
        let ino = ino_of(img, "far");
        let it = find_item(img, 5, |k, _| {
            k.objectid == ino && k.item_type == BTRFS_EXTENT_DATA_KEY
        });
        patch_item(
            buf,
            &it,
            21,
            &(1u64 << 50).to_le_bytes(),
            img.nodesize() as usize,
        );
    });
    f.extract_refused(&c, "not mapped by any chunk");
    all_commands(&c.img);
    let c = f.case("long", |img, buf| {
        let ino = ino_of(img, "long");
        let it = find_item(img, 5, |k, _| {
            k.objectid == ino && k.item_type == BTRFS_EXTENT_DATA_KEY
        });
        let fe = &img.file_extents(5, ino).unwrap()[0];
        let btrfs_image::FileExtentKind::Regular { disk_bytenr, .. } = fe.kind else {
            panic!("regular extent expected: {fe:?}");
        };
        // The last sector of the last chunk: the rest of the extent is past
        // the end of everything the image maps.
        let _ = disk_bytenr;
        let end = img.chunk_map().iter().map(|c| c.end()).max().unwrap();
        patch_item(
            buf,
            &it,
            21,
            &(end - 4096).to_le_bytes(),
            img.nodesize() as usize,
        );
    });
    f.extract_refused(&c, "not mapped by any chunk");
    all_commands(&c.img);
}

#[test]
fn tree_block_loops_end_in_errors() {
    // Enough entries for the FS tree to have a node above its leaves (4K nodes).
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..300 {
        write(
            &src.join(format!("file-{i:04}")),
            format!("{i}\n").as_bytes(),
        );
    }
    let img_path = t.path().join("clean.img");
    build_with(&src, &img_path, &small_config(), |_| {});
    let clean = std::fs::read(&img_path).unwrap();
    let img = Image::from_bytes(clean.clone()).unwrap();
    let root = img.tree_root(5).unwrap().unwrap();
    assert!(root.level >= 1, "the FS tree needs a node");
    let ns = img.nodesize() as usize;
    let phys = img.chunk_map().map(root.bytenr, ns as u64).unwrap()[0] as usize;
    let tb = img.read_tree_block(root.bytenr).unwrap();
    let first_child = tb.key_ptr(0).unwrap().blockptr.get();
    // KeyPtr i at 101 + 33 i: key (17 bytes), blockptr, generation.
    let ptr = |i: usize| phys + 101 + 33 * i + 17;
    let last = tb.nritems() - 1;
    for (name, slot, target) in [
        ("self", 0usize, root.bytenr),
        ("sibling", last, first_child),
    ] {
        let mut buf = clean.clone();
        buf[ptr(slot)..ptr(slot) + 8].copy_from_slice(&target.to_le_bytes());
        fix_block_csum(&mut buf, phys, ns);
        let p = t.path().join(format!("{name}.img"));
        std::fs::write(&p, &buf).unwrap();
        let (code, _, err) = run(&["ls".as_ref(), "-R".as_ref(), p.as_os_str()]);
        assert_eq!(code, 2, "{name}: {err}");
        let out = t.path().join(format!("{name}-out"));
        let (code, _, err) = run(&["extract".as_ref(), p.as_os_str(), out.as_os_str()]);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.contains("tree block"), "{name}: {err}");
        let (code, _, _) = run(&["dump-tree".as_ref(), p.as_os_str()]);
        assert_eq!(code, 2, "{name}");
        forge_inspect::inspect_all(buf);
    }
}
