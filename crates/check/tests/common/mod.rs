//! Helpers for the checker's tests: generated trees, images made by the writer,
//! and surgical damage to images (with tree block checksums fixed, every copy).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use btrfs_check::{Kind, Report};
use btrfs_image::btrfs_format::consts::*;
use btrfs_image::btrfs_format::{CsumType, Header, Item, Key};
use btrfs_image::Image;
use btrfs_writer::scan::SubvolSpec;
use btrfs_writer::{MkfsConfig, RootdirOptions};

// Not every test file uses each.
#[allow(unused_imports)]
pub use forge_oracle::{bytes, fixture_bytes};

/// A small tree with every kind of inode: inline, multi-sector and large files,
/// directories, a symlink, hard links, xattrs, an empty file; `files` extra small
/// files grow the fs tree (with 4K nodes, above one leaf).
pub fn make_tree(root: &Path, files: usize, subvol: bool) {
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    for (i, (name, size)) in [
        ("empty", 0usize),
        ("tiny", 5),
        ("inline", 2000),
        ("sector", 4096),
        ("ten_k", 10_000),
        ("dir/hundred_k", 100_000),
        ("dir/sub/one_mib", 1 << 20),
        ("dir/text", 50_000),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(
            root.join(name),
            bytes(i as u64 + 1, size, name.contains("text")),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("dir/sub/one_mib", root.join("link")).unwrap();
    std::fs::hard_link(root.join("ten_k"), root.join("dir/ten_k_again")).unwrap();
    rustix::fs::setxattr(
        root.join("tiny"),
        "user.note",
        b"hello",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("many")).unwrap();
    for i in 0..files {
        std::fs::write(
            root.join(format!("many/file-{i:05}")),
            bytes(1000 + i as u64, 100 + i % 3000, false),
        )
        .unwrap();
    }
    if subvol {
        std::fs::create_dir_all(root.join("vol/inner")).unwrap();
        std::fs::write(root.join("vol/inner/data"), bytes(77, 30_000, false)).unwrap();
    }
}

/// Build an image of a generated tree with the writer library.
pub fn writer_image(
    dir: &Path,
    name: &str,
    cfg: &MkfsConfig,
    files: usize,
    subvol: bool,
) -> PathBuf {
    let src = dir.join(format!("{name}-src"));
    make_tree(&src, files, subvol);
    let img = dir.join(format!("{name}.img"));
    let mut opts = RootdirOptions::new(&src);
    // Cut to size unless the size is given (then with the usual metadata
    // room, for kernel writes).
    opts.shrink = cfg.byte_count.is_none();
    opts.threads = 2;
    if subvol {
        opts.scan.subvols.push(SubvolSpec {
            rel: "vol".into(),
            readonly: false,
            default: false,
        });
    }
    let mut cfg = cfg.clone();
    cfg.force = true;
    btrfs_writer::make_rootdir_filesystem(&img, &cfg, &opts).expect("writer builds the image");
    img
}

pub fn config(csum: CsumType, nodesize: u32, bgt: bool) -> MkfsConfig {
    let mut cfg = MkfsConfig {
        csum,
        nodesize,
        fsid: Some([7; 16]),
        dev_uuid: Some([9; 16]),
        now: (1_700_000_000, 0),
        ..MkfsConfig::default()
    };
    cfg.features.block_group_tree = bgt;
    cfg
}

pub fn kinds(r: &Report) -> Vec<Kind> {
    let mut k: Vec<Kind> = r.findings.iter().map(|f| f.kind).collect();
    k.dedup();
    k
}

pub fn show(r: &Report) -> String {
    r.findings.iter().map(|f| format!("  {f}\n")).collect()
}

/// Where an item's payload lives inside its leaf.
#[derive(Debug, Clone, Copy)]
pub struct ItemLoc {
    pub tree: u64,
    pub leaf: u64,
    pub slot: usize,
    pub key: Key,
    /// Offset of the payload inside the block.
    pub off: usize,
    pub size: usize,
}

/// An image in memory, with tools to damage it precisely.
#[derive(Clone)]
pub struct Img {
    pub bytes: Vec<u8>,
}

impl Img {
    pub fn load(p: &Path) -> Img {
        Img {
            bytes: std::fs::read(p).unwrap(),
        }
    }

    pub fn image(&self) -> Image {
        Image::from_bytes(self.bytes.clone()).expect("image opens")
    }

    pub fn csum(&self) -> CsumType {
        self.image().csum_type()
    }

    pub fn nodesize(&self) -> usize {
        self.image().nodesize() as usize
    }

    pub fn write(&self, p: &Path) {
        std::fs::write(p, &self.bytes).unwrap();
    }

    /// Physical offsets of every copy of logical `logical` (`len` bytes).
    pub fn copies(&self, logical: u64, len: u64) -> Vec<usize> {
        self.image()
            .chunk_map()
            .map(logical, len)
            .unwrap()
            .into_iter()
            .map(|p| p as usize)
            .collect()
    }

    /// Every item of tree `tree` whose key satisfies `pred`.
    pub fn find_all(&self, tree: u64, pred: impl Fn(Key) -> bool) -> Vec<ItemLoc> {
        let img = self.image();
        let root = img
            .tree_root(tree)
            .unwrap()
            .unwrap_or_else(|| panic!("tree {tree}"));
        let base = img.bytes().as_ptr() as usize;
        let ns = img.nodesize() as u64;
        let mut out = Vec::new();
        for it in img.iter(&root) {
            let it = it.unwrap();
            if !pred(it.key) {
                continue;
            }
            let phys = it.data.as_ptr() as usize - base;
            let copies = img.chunk_map().map(it.leaf, ns).unwrap();
            let c = copies
                .iter()
                .find(|&&c| (c as usize) <= phys && phys < c as usize + ns as usize)
                .copied()
                .unwrap();
            out.push(ItemLoc {
                tree,
                leaf: it.leaf,
                slot: it.slot,
                key: it.key,
                off: phys - c as usize,
                size: it.data.len(),
            });
        }
        out
    }

    pub fn find(&self, tree: u64, pred: impl Fn(Key) -> bool) -> ItemLoc {
        self.find_all(tree, pred)
            .into_iter()
            .next()
            .expect("item found")
    }

    /// Find an item that is not the first in its leaf (so deleting it keeps the
    /// parent's key right).
    pub fn find_not_first(&self, tree: u64, pred: impl Fn(Key) -> bool) -> ItemLoc {
        self.find_all(tree, pred)
            .into_iter()
            .find(|l| l.slot > 0)
            .expect("item not first in its leaf")
    }

    /// Recompute the checksum of the tree block at physical `phys`.
    pub fn fix_block_csum(&mut self, phys: usize) {
        let ns = self.nodesize();
        let c = self.csum();
        let sum = c.compute(&self.bytes[phys + 32..phys + ns]);
        self.bytes[phys..phys + c.size()].copy_from_slice(&sum[..c.size()]);
    }

    /// Change every copy of tree block `bytenr` with `f`, then fix checksums
    /// (unless `fix` is false).
    pub fn patch_block(&mut self, bytenr: u64, fix: bool, f: impl Fn(&mut [u8])) {
        let ns = self.nodesize();
        for c in self.copies(bytenr, ns as u64) {
            f(&mut self.bytes[c..c + ns]);
            if fix {
                self.fix_block_csum(c);
            }
        }
    }

    /// Change the payload of `loc` in every copy and fix checksums.
    pub fn patch_item(&mut self, loc: ItemLoc, f: impl Fn(&mut [u8])) {
        let (off, size) = (loc.off, loc.size);
        self.patch_block(loc.leaf, true, |b| f(&mut b[off..off + size]));
    }

    /// Rewrite leaf `bytenr` from its items after `f` edits the list.
    pub fn rebuild_leaf(&mut self, bytenr: u64, f: impl Fn(&mut Vec<(Key, Vec<u8>)>)) {
        let ns = self.nodesize();
        let c0 = self.copies(bytenr, ns as u64)[0];
        let block = self.bytes[c0..c0 + ns].to_vec();
        let n = u32::from_le_bytes(block[96..100].try_into().unwrap()) as usize;
        let mut items = Vec::new();
        for i in 0..n {
            let h = Header::SIZE + i * Item::SIZE;
            let it = Item::read(&block[h..]).unwrap();
            let o = Header::SIZE + it.offset.get() as usize;
            items.push((
                Key::from(it.key),
                block[o..o + it.size.get() as usize].to_vec(),
            ));
        }
        f(&mut items);
        let mut nb = block.clone();
        nb[96..100].copy_from_slice(&(items.len() as u32).to_le_bytes());
        let mut end = ns - Header::SIZE;
        for (i, (k, p)) in items.iter().enumerate() {
            end -= p.len();
            let item = Item {
                key: k.to_disk(),
                offset: (end as u32).into(),
                size: (p.len() as u32).into(),
            };
            let h = Header::SIZE + i * Item::SIZE;
            nb[h..h + Item::SIZE].copy_from_slice(zerocopy::IntoBytes::as_bytes(&item));
            nb[Header::SIZE + end..Header::SIZE + end + p.len()].copy_from_slice(p);
        }
        self.patch_block(bytenr, true, |b| b.copy_from_slice(&nb));
    }

    /// Change the primary superblock with `f`, then fix its checksum.
    pub fn patch_super(&mut self, f: impl Fn(&mut [u8])) {
        let c = self.csum();
        let sb = &mut self.bytes[65536..65536 + 4096];
        f(sb);
        let sum = c.compute(&sb[32..]);
        sb[..c.size()].copy_from_slice(&sum[..c.size()]);
    }

    /// Every block (bytenr, level) of tree `tree`.
    pub fn blocks(&self, tree: u64) -> Vec<(u64, u8)> {
        let img = self.image();
        let root = img.tree_root(tree).unwrap().unwrap();
        img.tree_blocks(&root)
            .map(|b| {
                let b = b.unwrap();
                (b.bytenr, b.block.level())
            })
            .collect()
    }
}

pub fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

pub fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The key types used by the tests.
pub const INODE: u8 = BTRFS_INODE_ITEM_KEY;
