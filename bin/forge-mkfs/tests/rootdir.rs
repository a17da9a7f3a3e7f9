//! forge-mkfs --rootdir, judged by the kernel and btrfs-progs.
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use forge_oracle::manifest::{diff, manifest, Compare};
use forge_oracle::{self as oracle, Mount};

fn mkfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_forge-mkfs"))
}

fn is_root() -> bool {
    oracle::run(Command::new("id").arg("-u")).stdout == b"0\n"
}

use oracle::bytes;

fn write(p: &Path, data: &[u8]) {
    std::fs::write(p, data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}

/// POSIX ACL xattr value: version 2, then (tag, perm, id) entries.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// Set atime/mtime (with nanoseconds) of everything, children before parents.
fn set_times(root: &Path) {
    let mut all = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        all.push(p);
    }
    for (i, p) in all.iter().enumerate().rev() {
        let i = i as i64;
        let t = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 1_600_000_000 + i * 7,
                tv_nsec: (i * 7919 % 1_000_000_000) as _,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: if i == 3 {
                    -315_619_200
                } else {
                    1_500_000_000 + i * 13
                },
                tv_nsec: (999_999_999 - i * 104_729 % 1_000_000_000) as _,
            },
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            p,
            &t,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
    }
}

/// A tree with every case forge-mkfs must carry exactly. `big` adds a file
/// with a 300 MiB data run (cut into extents of at most 128 MiB).
fn make_tree(r: &Path, big: bool) {
    for (i, (name, size)) in [
        ("empty", 0),
        ("one", 1),
        ("inline_max", 2048),
        ("inline_over", 2049),
        ("sector_minus", 4095),
        ("sector", 4096),
        ("sector_plus", 4097),
        ("three_mib", 3 << 20),
        ("text", 200_000),
    ]
    .into_iter()
    .enumerate()
    {
        write(&r.join(name), &bytes(i as u64, size, name == "text"));
    }
    // Sparse files: holes at start, middle, end; all holes; tiny all-hole.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(r.join("sparse"))
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&bytes(50, 100_000, false), 1 << 20).unwrap();
    f.write_all_at(&bytes(51, 5000, false), 5 << 20).unwrap();
    f.set_len(9 << 20).unwrap();
    std::fs::File::create(r.join("all_holes"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    std::fs::File::create(r.join("tiny_hole"))
        .unwrap()
        .set_len(1000)
        .unwrap();
    if big {
        let f = std::fs::File::create(r.join("big")).unwrap();
        let mut block = bytes(60, 1 << 20, false);
        for i in 0..300u64 {
            block[..8].copy_from_slice(&i.to_le_bytes());
            f.write_all_at(&block, (64 << 20) + (i << 20)).unwrap();
        }
        f.set_len(3 << 30).unwrap();
    }
    // Directories: a large one, a deep path, long and non-UTF-8 names.
    let large = r.join("large");
    std::fs::create_dir(&large).unwrap();
    for i in 0..20_000 {
        write(
            &large.join(format!("entry-{i:05}")),
            format!("{i}\n").as_bytes(),
        );
    }
    let mut deep = r.join("deep");
    for i in 0..60 {
        deep = deep.join(format!("level{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    write(&deep.join("bottom"), b"bottom\n");
    write(&r.join("n".repeat(255)), b"long name\n");
    let odd = std::ffi::OsStr::from_bytes(b"not-utf8-\xff\xfe\x80");
    write(&r.join(odd), b"odd name\n");
    // Symlinks: plain, dangling, long target.
    std::os::unix::fs::symlink("one", r.join("link")).unwrap();
    std::os::unix::fs::symlink("no/such/target", r.join("dangling")).unwrap();
    std::os::unix::fs::symlink("t".repeat(4000), r.join("long_link")).unwrap();
    // Special files.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        r.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    drop(std::os::unix::net::UnixListener::bind(r.join("socket")).unwrap());
    if is_root() {
        for (name, ft, major, minor) in [
            ("null", rustix::fs::FileType::CharacterDevice, 1, 3),
            ("chr", rustix::fs::FileType::CharacterDevice, 240, 70000),
            ("blk", rustix::fs::FileType::BlockDevice, 259, 12345),
        ] {
            let dev = rustix::fs::makedev(major, minor);
            rustix::fs::mknodat(
                rustix::fs::CWD,
                r.join(name),
                ft,
                rustix::fs::Mode::from_raw_mode(0o660),
                dev,
            )
            .unwrap();
        }
    }
    // Hard links: across directories, and enough long names in one directory
    // to overflow an INODE_REF item into INODE_EXTREFs.
    std::fs::create_dir(r.join("links")).unwrap();
    write(&r.join("links/orig"), b"linked\n");
    std::fs::hard_link(r.join("links/orig"), r.join("hard_top")).unwrap();
    std::fs::hard_link(r.join("links/orig"), r.join("large/zz-hard")).unwrap();
    std::fs::create_dir(r.join("many")).unwrap();
    write(&r.join("many/target"), b"many names\n");
    for i in 0..150 {
        let name = format!("{i:03}-{}", "x".repeat(200));
        std::fs::hard_link(r.join("many/target"), r.join("many").join(name)).unwrap();
    }
    // Modes.
    use std::os::unix::fs::PermissionsExt;
    for (name, mode) in [
        ("setuid", 0o4755),
        ("setgid", 0o2750),
        ("nothing", 0o000),
        ("private", 0o600),
    ] {
        write(&r.join(name), name.as_bytes());
        std::fs::set_permissions(r.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::create_dir(r.join("sticky")).unwrap();
    std::fs::set_permissions(r.join("sticky"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::create_dir(r.join("sgid_dir")).unwrap();
    std::fs::set_permissions(r.join("sgid_dir"), std::fs::Permissions::from_mode(0o2775)).unwrap();
    // Owners.
    if is_root() {
        for (name, uid, gid) in [
            ("one", 1000, 1000),
            ("sticky", 65534, 100),
            ("link", 4242, 4343),
        ] {
            rustix::fs::chownat(
                rustix::fs::CWD,
                r.join(name),
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .unwrap();
        }
    }
    // Xattrs.
    set_xattr(&r.join("one"), "user.small", b"v");
    set_xattr(&r.join("one"), "user.empty", b"");
    set_xattr(&r.join("text"), "user.big", &bytes(70, 3000, false));
    set_xattr(&r.join("large"), "user.on_dir", b"dir attr");
    set_xattr(
        &r.join("private"),
        "system.posix_acl_access",
        &acl(&[
            (1, 6, u32::MAX),
            (2, 4, 1000),
            (4, 4, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ]),
    );
    set_xattr(
        &r.join("sgid_dir"),
        "system.posix_acl_default",
        &acl(&[(1, 7, u32::MAX), (4, 5, u32::MAX), (0x20, 5, u32::MAX)]),
    );
    if is_root() {
        set_xattr(&r.join("one"), "trusted.t", b"trusted value");
        set_xattr(
            &r.join("setuid"),
            "security.selinux",
            b"system_u:object_r:bin_t:s0\0",
        );
        // VFS_CAP_REVISION_2: magic_etc, then permitted/inheritable for two words.
        let mut cap = 0x0200_0001u32.to_le_bytes().to_vec(); // revision 2, effective
        cap.extend_from_slice(&(1u32 << 10).to_le_bytes()); // CAP_NET_BIND_SERVICE
        cap.extend_from_slice(&0u32.to_le_bytes());
        cap.extend_from_slice(&0u32.to_le_bytes());
        cap.extend_from_slice(&0u32.to_le_bytes());
        set_xattr(&r.join("three_mib"), "security.capability", &cap);
    }
    set_times(r);
}

fn import(src: &Path, img: &Path, extra: &[&str]) -> String {
    oracle::run_ok(mkfs().args(extra).arg("--rootdir").arg(src).arg(img))
}

/// Mount read-only, compare everything, scrub; check; then a read-write mount
/// that writes and deletes must leave an image btrfs check accepts.
fn verify_image(img: &Path, want: &forge_oracle::manifest::Manifest, subdir: Option<&str>) {
    eprintln!("verifying {}", img.display());
    oracle::btrfs_check(img, true);
    let m = Mount::new(img, "ro");
    let root: PathBuf = match subdir {
        Some(s) => m.path().join(s),
        None => m.path().to_path_buf(),
    };
    let got = manifest(&root);
    let d = diff(
        want,
        &got,
        Compare {
            atime: true,
            ctime: true,
            sparse_blocks: true,
        },
    );
    assert!(
        d.is_empty(),
        "{} differences, first:\n{}",
        d.len(),
        d[..d.len().min(40)].join("\n")
    );
    m.scrub(true);
    m.unmount();
    let m = Mount::new(img, "");
    let usage = oracle::run_ok(
        Command::new("btrfs")
            .args(["filesystem", "usage", "-b"])
            .arg(m.path()),
    );
    eprintln!("{usage}");
    oracle::churn(m.path(), 30);
    m.unmount();
    oracle::btrfs_check(img, true);
}

#[test]
fn every_kind_of_file_survives_exactly() {
    if !oracle::require_kernel() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src, true);
    let want = manifest(&src);
    let img = dir.path().join("tree.img");
    import(&src, &img, &["-q"]);
    verify_image(&img, &want, None);
    // 4K nodes, single metadata, every checksum, no-holes off: still exact.
    for (i, args) in [
        [
            "-n",
            "4K",
            "-m",
            "single",
            "--csum",
            "xxhash",
            "-O",
            "^no-holes,^block-group-tree",
        ],
        [
            "-n", "64K", "-m", "dup", "--csum", "sha256", "-O", "^extref",
        ],
        [
            "-n",
            "8K",
            "-m",
            "dup",
            "--csum",
            "blake2",
            "-O",
            "^skinny-metadata",
        ],
    ]
    .iter()
    .enumerate()
    {
        if i == 0 {
            // The 4000-byte symlink does not fit a 4K block: a clear error.
            let o = oracle::run(
                mkfs()
                    .args(*args)
                    .arg("-q")
                    .arg("--rootdir")
                    .arg(&src)
                    .arg(&img)
                    .arg("-f"),
            );
            assert!(!o.status.success());
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(
                e.contains("long_link") && e.contains("symlink target is 4000 bytes"),
                "{e}"
            );
            std::fs::remove_file(src.join("long_link")).unwrap();
        }
        let want = manifest(&src);
        eprintln!("importing with {args:?}");
        import(&src, &img, &[&["-q", "-f"][..], &args[..]].concat());
        verify_image(&img, &want, None);
    }
}

#[test]
fn sparse_file_extents_and_sizes() {
    // Library-level facts the kernel test cannot see: extents ≤ 128 MiB,
    // holes not stored, inline only below max-inline.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let f = std::fs::File::create(src.join("big")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&bytes(1, 300 << 20, false), 10 << 20)
        .unwrap();
    f.set_len(2 << 30).unwrap();
    write(&src.join("small"), &bytes(2, 100, false));
    write(&src.join("edge"), &bytes(3, 2048, false));
    let img = dir.path().join("s.img");
    import(&src, &img, &["-q", "--max-inline", "100"]);
    let image = btrfs_image::Image::open(&img).unwrap();
    let fs = image.default_subvol().unwrap();
    let (sv, ino) = image.lookup(fs, b"big").unwrap();
    let ext = image.file_extents(sv, ino).unwrap();
    assert!(
        ext.len() >= 3,
        "300 MiB is cut into several extents: {ext:?}"
    );
    let mut data = 0;
    for e in &ext {
        assert!(e.len() <= 128 << 20, "{e:?}");
        assert!(
            e.file_offset >= 10 << 20 && e.file_offset < 310 << 20,
            "no extent in a hole: {e:?}"
        );
        data += e.len();
    }
    assert_eq!(data, 300 << 20);
    let (sv, ino) = image.lookup(fs, b"small").unwrap();
    let inline = |e: &btrfs_image::FileExtentInfo| {
        matches!(e.kind, btrfs_image::FileExtentKind::Inline { .. })
    };
    assert!(
        inline(&image.file_extents(sv, ino).unwrap()[0]),
        "100 bytes are inline at --max-inline 100"
    );
    let (sv, ino) = image.lookup(fs, b"edge").unwrap();
    assert!(
        !inline(&image.file_extents(sv, ino).unwrap()[0]),
        "2048 bytes are not inline at --max-inline 100"
    );
    if oracle::require_btrfs_progs() {
        oracle::btrfs_check(&img, true);
    }
}

#[test]
fn subvolumes_and_default() {
    if !oracle::require_kernel() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for d in ["rw/inner", "ro", "def", "plain"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    write(&src.join("rw/file"), b"in rw\n");
    write(&src.join("rw/inner/file"), b"in nested\n");
    write(&src.join("ro/file"), b"in ro\n");
    write(&src.join("def/file"), b"in default\n");
    write(&src.join("top"), b"top\n");
    std::fs::hard_link(src.join("top"), src.join("rw/link_across")).unwrap();
    set_times(&src);
    let want = manifest(&src);
    let img = dir.path().join("sv.img");
    import(
        &src,
        &img,
        &[
            "-q",
            "--subvol",
            "rw",
            "--subvol",
            "rw:rw/inner",
            "--subvol",
            "ro:ro",
            "--subvol",
            "default:def",
        ],
    );
    oracle::btrfs_check(&img, true);
    // The default subvolume is what a plain mount shows.
    let m = Mount::new(&img, "ro");
    assert_eq!(
        std::fs::read(m.path().join("file")).unwrap(),
        b"in default\n"
    );
    m.unmount();
    // The whole tree through subvolid=5, hard links split at subvolume edges.
    let m = Mount::new(&img, "ro,subvolid=5");
    let mut got = manifest(m.path());
    let list = oracle::run_ok(
        Command::new("btrfs")
            .args(["subvolume", "list", "-a"])
            .arg(m.path()),
    );
    for s in ["rw", "rw/inner", "ro", "def"] {
        let found = list.lines().any(|l| {
            l.ends_with(&format!("path {s}")) || l.ends_with(&format!("path <FS_TREE>/{s}"))
        });
        assert!(found, "{s} missing:\n{list}");
    }
    let show = oracle::run_ok(
        Command::new("btrfs")
            .args(["subvolume", "show"])
            .arg(m.path().join("ro")),
    );
    assert!(
        show.lines()
            .any(|l| l.contains("Flags:") && l.contains("readonly")),
        "{show}"
    );
    m.unmount();
    // A read-only subvolume refuses writes on a read-write mount.
    let m = Mount::new(&img, "subvolid=5");
    let e = std::fs::write(m.path().join("ro/new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(30), "EROFS expected: {e}");
    std::fs::write(m.path().join("rw/new"), b"x").unwrap();
    std::fs::remove_file(m.path().join("rw/new")).unwrap();
    m.unmount();
    for (p, e) in got.iter_mut() {
        // Links crossing into a subvolume become separate inodes.
        if p.starts_with("rw") || p == Path::new("top") {
            e.link_group = None;
            e.nlink = 1;
        }
    }
    let mut want = want;
    for (p, e) in want.iter_mut() {
        if p.starts_with("rw") || p == Path::new("top") {
            e.link_group = None;
            e.nlink = 1;
        }
    }
    let d = diff(
        &want,
        &got,
        Compare {
            atime: true,
            ctime: true,
            sparse_blocks: true,
        },
    );
    assert!(d.is_empty(), "{}", d.join("\n"));
    let m = Mount::new(&img, "subvol=rw");
    oracle::churn(m.path(), 10);
    m.unmount();
    oracle::btrfs_check(&img, true);
}

#[test]
fn reproducible_across_thread_counts() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src, false);
    // Read everything once so relatime has settled the source's atimes
    // before the first import (whose reads would otherwise change them).
    manifest(&src);
    let mut images = Vec::new();
    for j in ["1", "2", "2"] {
        let img = dir.path().join(format!("r{}.img", images.len()));
        oracle::run_ok(
            mkfs()
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .args(["-q", "-j", j, "-U", "11111111-2222-3333-4444-555555555555"])
                .args(["--device-uuid", "66666666-7777-8888-9999-aaaaaaaaaaaa"])
                .arg("--rootdir")
                .arg(&src)
                .arg(&img),
        );
        images.push(std::fs::read(&img).unwrap());
    }
    assert!(
        images[0] == images[1] && images[1] == images[2],
        "images differ between runs"
    );
}

#[test]
fn epoch_clamps_newer_times_and_owner_options() {
    if !oracle::require_kernel() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    write(&src.join("old"), b"old");
    write(&src.join("new"), b"new");
    set_times(&src); // mtimes around 2017, atimes around 2020
    let epoch = 1_550_000_000i64;
    let img = dir.path().join("e.img");
    oracle::run_ok(
        mkfs()
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .args(["-q", "--uid", "123", "--gid", "456", "--rootdir"])
            .arg(&src)
            .arg(&img),
    );
    let m = Mount::new(&img, "ro");
    let got = manifest(m.path());
    for e in got.values() {
        assert_eq!((e.uid, e.gid), (123, 456));
        assert!(
            e.mtime.0 <= epoch && e.atime.0 <= epoch && e.ctime.0 <= epoch,
            "{e:?}"
        );
    }
    assert_eq!(
        got[Path::new("old")].atime,
        (epoch, 0),
        "2020 atime clamped to the epoch"
    );
    assert!(got[Path::new("old")].mtime.0 < epoch, "2017 mtime kept");
    m.unmount();
    oracle::run_ok(
        mkfs()
            .args(["-q", "-f", "--all-root", "--rootdir"])
            .arg(&src)
            .arg(&img),
    );
    let m = Mount::new(&img, "ro");
    assert!(manifest(m.path())
        .values()
        .all(|e| e.uid == 0 && e.gid == 0));
}

#[test]
fn shrink_and_byte_count() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    write(&src.join("data"), &bytes(9, 20 << 20, false));
    let shrunk = dir.path().join("shrunk.img");
    import(&src, &shrunk, &["-q", "--shrink"]);
    let plain = dir.path().join("plain.img");
    import(&src, &plain, &["-q"]);
    let s = std::fs::metadata(&shrunk).unwrap().len();
    let p = std::fs::metadata(&plain).unwrap().len();
    assert!(s < p, "--shrink ({s}) is smaller than the default ({p})");
    assert!(
        s < (20 << 20) + (16 << 20),
        "--shrink image {s} is close to the data size"
    );
    let sized = dir.path().join("sized.img");
    import(&src, &sized, &["-q", "-b", "1G"]);
    assert_eq!(std::fs::metadata(&sized).unwrap().len(), 1 << 30);
    // Too small for the tree: a clear error with the size needed, no superblock.
    let small = dir.path().join("small.img");
    let o = oracle::run(
        mkfs()
            .args(["-b", "16M", "--rootdir"])
            .arg(&src)
            .arg(&small),
    );
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("needs") && e.contains("-b gives"), "{e}");
    assert!(!forge_oracle::looks_like_btrfs(&small));
    if oracle::require_kernel() {
        for img in [&shrunk, &plain, &sized] {
            oracle::btrfs_check(img, true);
            let m = Mount::new(img, "ro");
            assert_eq!(
                std::fs::read(m.path().join("data")).unwrap(),
                bytes(9, 20 << 20, false)
            );
            m.scrub(true);
        }
        for img in [&plain, &sized] {
            let m = Mount::new(img, "");
            oracle::churn(m.path(), 20);
            m.unmount();
            oracle::btrfs_check(img, true);
        }
    }
}

#[test]
fn bad_sources_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.img");
    let fail = |args: &[&str], src: &Path| -> String {
        let o = oracle::run(mkfs().args(args).arg("--rootdir").arg(src).arg(&img));
        assert!(!o.status.success(), "{args:?} {} succeeded", src.display());
        assert!(
            !forge_oracle::looks_like_btrfs(&img),
            "a failed run left a valid superblock"
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let missing = dir.path().join("no-such-dir");
    let e = fail(&[], &missing);
    assert!(e.contains("no-such-dir"), "{e}");
    let file = dir.path().join("a-file");
    write(&file, b"x");
    let e = fail(&[], &file);
    assert!(e.contains("not a directory"), "{e}");
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let e = fail(&["--subvol", "nope"], &src);
    assert!(e.contains("nope"), "{e}");
    // Unreadable entries: run as an unprivileged user (root reads everything).
    if is_root() && oracle::have("setpriv") {
        use std::os::unix::fs::PermissionsExt;
        let src = dir.path().join("locked");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        write(&src.join("secret"), b"secret");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o000))
            .unwrap();
        let run_as_nobody = |src: &Path| {
            oracle::run(
                Command::new("setpriv")
                    .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                    .arg(env!("CARGO_BIN_EXE_forge-mkfs"))
                    .arg("--rootdir")
                    .arg(src)
                    .arg(&img),
            )
        };
        let o = run_as_nobody(&src);
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.contains("secret") && e.contains("ermission denied"),
            "{e}"
        );
        assert!(!forge_oracle::looks_like_btrfs(&img));
        std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::set_permissions(src.join("sub"), std::fs::Permissions::from_mode(0o000)).unwrap();
        let o = run_as_nobody(&src);
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.contains("sub") && e.contains("cannot read directory"),
            "{e}"
        );
        assert!(!forge_oracle::looks_like_btrfs(&img));
    } else {
        eprintln!("*** SKIPPED: unreadable-file cases need root and setpriv ***");
    }
}

/// A real tree: the Rust toolchain this test was built with (tens of
/// thousands of files). Not in the quick run: `cargo xtask test` runs it.
#[test]
#[ignore = "slow: imports the installed Rust toolchain; run by cargo xtask test"]
fn real_tree_rust_toolchain() {
    if !oracle::require_kernel() {
        return;
    }
    let sysroot = oracle::run_ok(Command::new("rustc").args(["--print", "sysroot"]));
    let src = PathBuf::from(sysroot.trim());
    let want = manifest(&src);
    assert!(
        want.len() > 1000,
        "{} has {} entries",
        src.display(),
        want.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("toolchain.img");
    import(&src, &img, &["-q"]);
    oracle::btrfs_check(&img, true);
    let m = Mount::new(&img, "ro");
    let got = manifest(m.path());
    let d = diff(
        &want,
        &got,
        Compare {
            atime: false,
            ctime: true,
            sparse_blocks: true,
        },
    );
    assert!(
        d.is_empty(),
        "{} differences, first:\n{}",
        d.len(),
        d[..d.len().min(40)].join("\n")
    );
    m.scrub(true);
    m.unmount();
    let m = Mount::new(&img, "");
    oracle::churn(m.path(), 50);
    m.unmount();
    oracle::btrfs_check(&img, true);
}

/// The README's main job on the example tree this repository ships.
#[test]
fn readme_example_tree() {
    let tree = oracle::testdata("example-tree");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("example.img");
    import(
        &tree,
        &img,
        &["-q", "--compress", "zstd:3", "--dedupe", "--shrink"],
    );
    let plain = dir.path().join("plain.img");
    import(&tree, &plain, &["-q"]);
    if !oracle::require_kernel() {
        return;
    }
    let want = manifest(&tree);
    for img in [&img, &plain] {
        oracle::btrfs_check(img, true);
        let m = Mount::new(img, "ro");
        let d = diff(
            &want,
            &manifest(m.path()),
            Compare {
                atime: false,
                ctime: true,
                sparse_blocks: true,
            },
        );
        assert!(d.is_empty(), "{}", d.join("\n"));
    }
}
