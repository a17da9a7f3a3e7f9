//! Helpers shared by the integration tests: fixtures, btrfs-progs output parsing,
//! and comparing an image's files with a directory or a manifest.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use btrfs_image::btrfs_format::consts::*;
use btrfs_image::btrfs_format::CsumType;
use btrfs_image::Image;

// Not every test file uses each.
#[allow(unused_imports)]
pub use forge_oracle::{fixture_bytes, testdata};

pub fn sha256_hex(data: &[u8]) -> String {
    CsumType::Sha256
        .compute(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn uuid(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `btrfs inspect-internal dump-super` output as field -> first value token
/// (the label keeps its whole value).
pub fn parse_dump_super(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with(['\t', ' ']) {
            continue;
        }
        let mut parts = line.splitn(2, ['\t', ' ']);
        let (Some(k), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        let rest = rest.trim();
        let v = if k == "label" {
            rest.to_string()
        } else {
            rest.split_whitespace().next().unwrap_or("").to_string()
        };
        m.entry(k.to_string()).or_insert(v);
    }
    m
}

/// Check the superblock fields the image reports against dump-super's.
pub fn assert_superblock_matches(img: &Image, dump: &str) {
    let d = parse_dump_super(dump);
    let sb = img.superblock();
    let num = |k: &str| -> u64 {
        let v = d.get(k).unwrap_or_else(|| panic!("dump-super has no {k}"));
        match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).unwrap(),
            None => v
                .parse()
                .unwrap_or_else(|_| panic!("{k}: {v:?} is not a number")),
        }
    };
    let pairs: [(&str, u64); 16] = [
        ("generation", sb.generation.get()),
        ("root", sb.root.get()),
        ("chunk_root", sb.chunk_root.get()),
        ("chunk_root_generation", sb.chunk_root_generation.get()),
        ("root_level", sb.root_level as u64),
        ("chunk_root_level", sb.chunk_root_level as u64),
        ("total_bytes", sb.total_bytes.get()),
        ("bytes_used", sb.bytes_used.get()),
        ("sectorsize", sb.sectorsize.get() as u64),
        ("nodesize", sb.nodesize.get() as u64),
        ("csum_type", sb.csum_type.get() as u64),
        ("num_devices", sb.num_devices.get()),
        ("sys_array_size", sb.sys_chunk_array_size.get() as u64),
        ("compat_ro_flags", sb.compat_ro_flags.get()),
        ("incompat_flags", sb.incompat_flags.get()),
        ("dev_item.devid", sb.dev_item.devid.get()),
    ];
    for (k, v) in pairs {
        assert_eq!(num(k), v, "superblock field {k}");
    }
    assert_eq!(d["fsid"], uuid(&sb.fsid), "fsid");
    assert_eq!(
        d.get("label").map(String::as_str).unwrap_or(""),
        String::from_utf8_lossy(sb.label_bytes()),
        "label"
    );
    assert_eq!(num("root_dir"), sb.root_dir_objectid.get());
}

/// Items per tree as `dump-tree -t ID` lists them ("\titem N key (" lines).
pub fn count_dump_tree_items(text: &str) -> usize {
    text.lines()
        .filter(|l| {
            l.strip_prefix("\titem ")
                .and_then(|r| r.split_once(' '))
                .is_some_and(|(n, rest)| n.parse::<u32>().is_ok() && rest.starts_with("key ("))
        })
        .count()
}

/// Items in tree `id` by our iterator.
pub fn count_items(img: &Image, id: u64) -> usize {
    let root = img
        .tree_root(id)
        .unwrap()
        .unwrap_or_else(|| panic!("tree {id} exists"));
    let mut n = 0;
    for r in img.iter(&root) {
        r.expect("tree iterates");
        n += 1;
    }
    n
}

/// Parse an `*.items.txt` fixture: "TREE_ID ITEMS" lines.
pub fn parse_items_file(text: &str) -> Vec<(u64, usize)> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

/// One line of a fixture manifest.
#[derive(Debug)]
pub enum Entry {
    Dir,
    File { size: u64, sha256: String },
    Symlink { target: String },
}

pub fn parse_manifest(text: &str) -> Vec<(String, Entry)> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            let (kind, size, hash, path) = (
                p.next().unwrap(),
                p.next().unwrap(),
                p.next().unwrap(),
                p.next().unwrap(),
            );
            let e = match kind {
                "dir" => Entry::Dir,
                "file" => Entry::File {
                    size: size.parse().unwrap(),
                    sha256: hash.to_string(),
                },
                "symlink" => Entry::Symlink {
                    target: hash.to_string(),
                },
                k => panic!("manifest kind {k}"),
            };
            (path.to_string(), e)
        })
        .collect()
}

/// Every manifest entry is found by path from `subvol` with the right type and bytes,
/// and each directory lists exactly the manifest's children.
pub fn assert_manifest(img: &Image, subvol: u64, manifest: &str) {
    let entries = parse_manifest(manifest);
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    children.insert(String::new(), Vec::new());
    for (path, e) in &entries {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        children
            .entry(parent.to_string())
            .or_default()
            .push(name.to_string());
        if matches!(e, Entry::Dir) {
            children.entry(path.clone()).or_default();
        }
        let (sv, ino) = img
            .lookup(subvol, path.as_bytes())
            .unwrap_or_else(|e| panic!("lookup {path}: {e}"));
        let inode = img.inode(sv, ino).unwrap();
        let mode = inode.mode.get() & S_IFMT;
        match e {
            Entry::Dir => assert_eq!(mode, S_IFDIR, "{path} is a directory"),
            Entry::File { size, sha256 } => {
                assert_eq!(mode, S_IFREG, "{path} is a file");
                assert_eq!(inode.size.get(), *size, "{path} size");
                let data = img
                    .read_file_all(sv, ino, 1 << 30)
                    .unwrap_or_else(|e| panic!("read {path}: {e}"));
                assert_eq!(data.len() as u64, *size, "{path} bytes read");
                assert_eq!(&sha256_hex(&data), sha256, "{path} content");
            }
            Entry::Symlink { target } => {
                assert_eq!(mode, S_IFLNK, "{path} is a symlink");
                assert_eq!(
                    img.readlink(sv, ino).unwrap(),
                    target.as_bytes(),
                    "{path} target"
                );
            }
        }
    }
    for (dir, mut names) in children {
        let (sv, ino) = img.lookup(subvol, dir.as_bytes()).unwrap();
        let mut got: Vec<String> = img
            .read_dir(sv, ino)
            .unwrap()
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .collect();
        got.sort();
        names.sort();
        assert_eq!(got, names, "entries of directory {dir:?}");
    }
}

/// Compare the image's tree under `subvol` with the host directory `dir`: names,
/// types, file bytes, symlink targets; every path also resolves through `lookup`.
pub fn assert_matches_dir(img: &Image, subvol: u64, dir: &Path) {
    fn walk(img: &Image, top: u64, sv: u64, ino: u64, dir: &Path, rel: &str) {
        let mut host: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        host.sort();
        let entries = img.read_dir(sv, ino).unwrap();
        let mut names: Vec<String> = entries
            .iter()
            .map(|e| String::from_utf8(e.name.clone()).unwrap())
            .collect();
        names.sort();
        assert_eq!(names, host, "entries of {rel:?}");
        for e in entries {
            let name = String::from_utf8(e.name.clone()).unwrap();
            let p = dir.join(&name);
            let rel = format!("{rel}/{name}");
            let (csv, cino) = if e.is_subvolume() {
                (
                    e.location.objectid,
                    img.subvol_root_dir(e.location.objectid).unwrap(),
                )
            } else {
                (sv, e.location.objectid)
            };
            let found = img
                .lookup(top, rel.as_bytes())
                .unwrap_or_else(|e| panic!("lookup {rel}: {e}"));
            assert_eq!(found, (csv, cino), "lookup {rel}");
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                assert_eq!(
                    img.readlink(csv, cino).unwrap(),
                    t.as_os_str().as_encoded_bytes(),
                    "{rel}"
                );
            } else if meta.is_dir() {
                walk(img, top, csv, cino, &p, &rel);
            } else {
                let want = std::fs::read(&p).unwrap();
                let got = img
                    .read_file_all(csv, cino, 1 << 30)
                    .unwrap_or_else(|e| panic!("read {rel}: {e}"));
                assert!(
                    got == want,
                    "{rel}: content differs ({} vs {} bytes)",
                    got.len(),
                    want.len()
                );
            }
        }
    }
    let top = img.subvol_root_dir(subvol).unwrap();
    walk(img, subvol, subvol, top, dir, "");
}

/// Run a command, returning stdout; panics with its stderr on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Say why a test did nothing, past libtest's output capture so it shows in a
/// plain `cargo test` run.
pub fn skip(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Open, iterate every tree the root tree names, walk every subvolume and read all
/// its files: the work the robustness test throws at damaged images. Returns
/// the first error, never panics (that is the point).
pub fn exercise(img: &Image) -> Result<usize, btrfs_image::Error> {
    exercise_with(img, 4 << 20)
}

/// [`exercise`], reading at most `read_len` bytes of each file.
pub fn exercise_with(img: &Image, read_len: u64) -> Result<usize, btrfs_image::Error> {
    let mut n = 0usize;
    let rt = img.root_tree();
    let mut roots = vec![rt, img.chunk_root()];
    for it in img.iter(&rt) {
        let it = it?;
        if it.key.item_type == BTRFS_ROOT_ITEM_KEY {
            if let Some(r) = img.tree_root(it.key.objectid)? {
                roots.push(r);
            }
        }
    }
    for r in &roots {
        for b in img.tree_blocks(r) {
            b?;
            n += 1;
        }
        for it in img.iter(r) {
            it?;
            n += 1;
        }
    }
    let _ = img.default_subvol()?;
    let _ = img.superblock_copies();
    for sv in img.subvolumes()? {
        let top = img.subvol_root_dir(sv)?;
        let mut stack = vec![(top, 0u32)];
        // A damaged image can make a directory its own descendant: visit each once.
        let mut seen = std::collections::HashSet::new();
        while let Some((dir, depth)) = stack.pop() {
            if depth > 64 || !seen.insert(dir) {
                continue;
            }
            for e in img.read_dir(sv, dir)? {
                if e.is_subvolume() {
                    continue;
                }
                let ino = e.location.objectid;
                n += img.xattrs(sv, ino)?.len();
                match e.file_type {
                    BTRFS_FT_DIR => stack.push((ino, depth + 1)),
                    BTRFS_FT_SYMLINK => n += img.readlink(sv, ino)?.len(),
                    BTRFS_FT_REG_FILE => {
                        n += img.file_extents(sv, ino)?.len();
                        n += img.read_file(sv, ino, 0, read_len)?.len();
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(n)
}
