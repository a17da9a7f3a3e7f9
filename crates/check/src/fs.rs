//! Filesystem trees: inodes, names (INODE_REF / INODE_EXTREF / DIR_ITEM /
//! DIR_INDEX), name hashes, file types, directory sizes, `nlink`, `nbytes`, file
//! extents, orphans, and the root tree's subvolume links.
use std::collections::{HashMap, HashSet};

use btrfs_format::consts::*;
use btrfs_format::items::*;
use btrfs_format::*;
use rayon::prelude::*;

use crate::finding::{Finding, Kind};
use crate::walk::{TreeKind, WalkedTree};
use crate::{items, Ctx, Walked};

/// Inode -> (parent directory, name).
type Parents = HashMap<u64, (u64, Box<[u8]>)>;
/// A subvolume link: (parent tree, directory, child, DIR_INDEX index, name).
type LinkKey<'a> = (u64, u64, u64, Option<u64>, &'a [u8]);
/// A ROOT_REF / ROOT_BACKREF: (dirid, sequence, name, key).
type RefVal = (u64, u64, Box<[u8]>, Key);

/// A compressed data extent to decompress.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Compressed {
    pub disk_bytenr: u64,
    pub disk_num_bytes: u64,
    pub ram_bytes: u64,
    pub compression: u8,
    pub tree: u64,
    pub ino: u64,
}

/// Disk bytes a file extent needs checksums for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NeedCsum {
    pub start: u64,
    pub end: u64,
    pub tree: u64,
    pub ino: u64,
}

#[derive(Default)]
pub(crate) struct FsOut {
    pub inodes: u64,
    pub compressed: Vec<Compressed>,
    pub need_csum: Vec<NeedCsum>,
    /// Per tree: inode -> (parent, name), and the top directory: paths on demand.
    parents: HashMap<u64, (Parents, u64)>,
    /// data extent -> one (tree, inode) that uses it.
    pub users: HashMap<u64, (u64, u64)>,
}

#[derive(Default, Clone)]
struct Inode {
    mode: u32,
    nlink: u32,
    size: u64,
    nbytes: u64,
    flags: u64,
    found_nbytes: u64,
    links: u32,
    dir_size: u64,
    orphan: bool,
    extent_end: u64,
    gap: Option<u64>,
}

struct NameRef {
    child: u64,
    parent: u64,
    index: u64,
    name: Box<[u8]>,
    key: Key,
}

struct DirEnt {
    dir: u64,
    index: u64,
    name: Box<[u8]>,
    location: Key,
    ftype: u8,
    key: Key,
}

/// A directory entry naming a subvolume.
struct SubvolLink {
    parent_tree: u64,
    dir: u64,
    name: Box<[u8]>,
    child: u64,
    index: Option<u64>,
}

struct TreeOut {
    inodes: u64,
    compressed: Vec<Compressed>,
    need_csum: Vec<NeedCsum>,
    links: Vec<SubvolLink>,
    users: Vec<(u64, u64, u64)>,
    parents: HashMap<u64, (u64, Box<[u8]>)>,
    root_dir: u64,
}

pub(crate) fn check(ctx: &Ctx<'_>, w: &Walked) -> FsOut {
    let trees: Vec<&WalkedTree> = w
        .trees
        .iter()
        .filter(|t| {
            (t.spec.kind == TreeKind::Subvol && !t.spec.dead)
                || t.spec.id == BTRFS_DATA_RELOC_TREE_OBJECTID
        })
        .collect();
    let outs: Vec<TreeOut> = trees.par_iter().map(|t| check_tree(ctx, t)).collect();
    let mut out = FsOut::default();
    let mut links = Vec::new();
    for (t, o) in trees.iter().zip(outs) {
        out.inodes += o.inodes;
        out.compressed.extend_from_slice(&o.compressed);
        out.need_csum.extend_from_slice(&o.need_csum);
        for &(b, tree, ino) in &o.users {
            out.users.entry(b).or_insert((tree, ino));
        }
        links.extend(o.links);
        out.parents.insert(t.spec.id, (o.parents, o.root_dir));
    }
    root_refs(ctx, w, &links);
    out
}

impl FsOut {
    /// Path of inode `ino` of tree `tree`, when its names lead to the top.
    pub fn path(&self, tree: u64, ino: u64) -> Option<String> {
        let (p, root) = self.parents.get(&tree)?;
        path_of(p, *root, ino)
    }
}

/// Path of `ino` from the subvolume's top directory, when its names lead there.
fn path_of(parents: &HashMap<u64, (u64, Box<[u8]>)>, root: u64, ino: u64) -> Option<String> {
    let mut parts = Vec::new();
    let mut cur = ino;
    for _ in 0..256 {
        if cur == root {
            parts.reverse();
            return Some(format!("/{}", parts.join("/")));
        }
        let (p, name) = parents.get(&cur)?;
        parts.push(String::from_utf8_lossy(name).into_owned());
        cur = *p;
    }
    None
}

fn check_tree(ctx: &Ctx<'_>, t: &WalkedTree) -> TreeOut {
    let tree = t.spec.id;
    let no_holes = ctx.incompat(BTRFS_FEATURE_INCOMPAT_NO_HOLES);
    let root_dir = ctx
        .img
        .root_item(tree)
        .ok()
        .flatten()
        .map(|(_, ri)| ri.root_dirid.get())
        .filter(|&d| d != 0)
        .unwrap_or(BTRFS_FIRST_FREE_OBJECTID);
    let mut inodes: HashMap<u64, Inode> = HashMap::new();
    let mut refs: Vec<NameRef> = Vec::new();
    let mut dir_items: Vec<DirEnt> = Vec::new();
    let mut dir_index: Vec<DirEnt> = Vec::new();
    let mut orphans: Vec<(u64, Key)> = Vec::new();
    let mut out = TreeOut {
        inodes: 0,
        compressed: Vec::new(),
        need_csum: Vec::new(),
        links: Vec::new(),
        users: Vec::new(),
        parents: HashMap::new(),
        root_dir,
    };
    let err = |kind: Kind, key: Key, ino: u64, msg: String| {
        ctx.sink
            .push(Finding::error(kind, msg).tree(tree).key(key).ino(ino));
    };
    let mut cur: Option<u64> = None;
    let finish_file = |ino: u64, i: &Inode| {
        if !no_holes && i.mode & S_IFMT == S_IFREG {
            let size_end = i
                .size
                .div_ceil(ctx.sectorsize)
                .saturating_mul(ctx.sectorsize);
            let gap = i.gap.or((i.extent_end < size_end).then_some(i.extent_end));
            if let Some(g) = gap {
                ctx.sink.push(
                    Finding::error(Kind::FileExtentOverlap, format!("inode {ino}: file extents leave a gap at offset {g} (no-holes is off, holes need extents)"))
                        .tree(tree)
                        .ino(ino),
                );
            }
        }
    };
    for it in items(ctx, t) {
        let k = it.key;
        let ino = k.objectid;
        if cur != Some(ino) {
            if let Some(p) = cur {
                if let Some(i) = inodes.get(&p) {
                    finish_file(p, i);
                }
            }
            cur = Some(ino);
            if k.item_type != BTRFS_INODE_ITEM_KEY
                && (BTRFS_FIRST_FREE_OBJECTID..=BTRFS_LAST_FREE_OBJECTID).contains(&ino)
            {
                err(
                    Kind::InodeMissing,
                    k,
                    ino,
                    format!("items of inode {ino} but no INODE_ITEM"),
                );
            }
        }
        match k.item_type {
            BTRFS_INODE_ITEM_KEY => {
                let Ok(ii) = InodeItem::read(it.data) else {
                    continue;
                };
                out.inodes += 1;
                let mode = ii.mode.get();
                if ft_from_mode(mode) == BTRFS_FT_UNKNOWN {
                    err(
                        Kind::InodeInvalid,
                        k,
                        ino,
                        format!("inode {ino} has mode 0o{mode:o}: no valid file type"),
                    );
                }
                inodes.insert(
                    ino,
                    Inode {
                        mode,
                        nlink: ii.nlink.get(),
                        size: ii.size.get(),
                        nbytes: ii.nbytes.get(),
                        flags: ii.flags.get(),
                        ..Inode::default()
                    },
                );
            }
            BTRFS_INODE_REF_KEY => {
                let Ok(names) = parse_inode_refs(k.offset, it.data) else {
                    continue;
                };
                for n in names {
                    refs.push(NameRef {
                        child: ino,
                        parent: n.parent,
                        index: n.index,
                        name: n.name.into(),
                        key: k,
                    });
                }
            }
            BTRFS_INODE_EXTREF_KEY => {
                let Ok(names) = parse_inode_extrefs(it.data) else {
                    continue;
                };
                for n in names {
                    if extref_hash(n.parent, n.name) != k.offset {
                        err(Kind::NameHash, k, ino, format!(
                            "INODE_EXTREF of inode {ino} for name {:?} in directory {}: key offset is not the name's hash",
                            String::from_utf8_lossy(n.name), n.parent
                        ));
                    }
                    refs.push(NameRef {
                        child: ino,
                        parent: n.parent,
                        index: n.index,
                        name: n.name.into(),
                        key: k,
                    });
                }
            }
            BTRFS_DIR_ITEM_KEY | BTRFS_DIR_INDEX_KEY | BTRFS_XATTR_ITEM_KEY => {
                let Ok(ents) = parse_dir_items(it.data) else {
                    continue;
                };
                for e in ents {
                    if k.item_type != BTRFS_DIR_INDEX_KEY && name_hash(e.name) != k.offset {
                        err(
                            Kind::NameHash,
                            k,
                            ino,
                            format!(
                                "{} name {:?}: key offset {} is not the name's hash {}",
                                crate::walk::type_name(k.item_type),
                                String::from_utf8_lossy(e.name),
                                k.offset,
                                name_hash(e.name)
                            ),
                        );
                    }
                    if k.item_type == BTRFS_XATTR_ITEM_KEY {
                        continue;
                    }
                    if e.file_type == BTRFS_FT_XATTR || e.file_type >= BTRFS_FT_MAX {
                        err(
                            Kind::FileType,
                            k,
                            ino,
                            format!(
                                "directory entry {:?} has invalid type {}",
                                String::from_utf8_lossy(e.name),
                                e.file_type
                            ),
                        );
                    }
                    let d = DirEnt {
                        dir: ino,
                        index: if k.item_type == BTRFS_DIR_INDEX_KEY {
                            k.offset
                        } else {
                            0
                        },
                        name: e.name.into(),
                        location: e.location,
                        ftype: e.file_type,
                        key: k,
                    };
                    if k.item_type == BTRFS_DIR_ITEM_KEY {
                        dir_items.push(d);
                    } else {
                        dir_index.push(d);
                    }
                }
            }
            BTRFS_ORPHAN_ITEM_KEY if ino == BTRFS_ORPHAN_OBJECTID => {
                orphans.push((k.offset, k));
            }
            BTRFS_EXTENT_DATA_KEY => {
                let Some(inode) = inodes.get_mut(&ino) else {
                    continue;
                };
                file_extent(ctx, tree, k, it.data, inode, no_holes, &mut out);
            }
            _ => {}
        }
    }
    if let Some(p) = cur {
        if let Some(i) = inodes.get(&p) {
            finish_file(p, i);
        }
    }
    for &(o, _) in &orphans {
        if let Some(i) = inodes.get_mut(&o) {
            i.orphan = true;
        }
    }
    // Names: refs <-> dir items <-> dir index.
    let mut by_item: HashMap<(u64, &[u8]), &DirEnt> = HashMap::new();
    for d in &dir_items {
        by_item.insert((d.dir, &d.name[..]), d);
    }
    let mut by_index: HashMap<(u64, u64), &DirEnt> = HashMap::new();
    for d in &dir_index {
        by_index.insert((d.dir, d.index), d);
    }
    let mut ref_set: HashSet<(u64, u64, &[u8])> = HashSet::new();
    let mut ref_idx: HashSet<(u64, u64, u64)> = HashSet::new();
    for r in &refs {
        ref_set.insert((r.child, r.parent, &r.name[..]));
        ref_idx.insert((r.child, r.parent, r.index));
        if let Some(i) = inodes.get_mut(&r.child) {
            i.links = i.links.saturating_add(1);
        }
        out.parents
            .entry(r.child)
            .or_insert((r.parent, r.name.clone()));
    }
    out.parents.remove(&root_dir);
    let path = |ino: u64| path_of(&out.parents, root_dir, ino);
    for r in &refs {
        let name = String::from_utf8_lossy(&r.name);
        if r.child == root_dir && r.parent == root_dir {
            continue;
        }
        let child = inodes.get(&r.child);
        if child.is_some_and(|c| c.orphan) {
            continue;
        }
        let want_ft = child.map(|c| ft_from_mode(c.mode));
        match inodes.get(&r.parent) {
            None => err(
                Kind::DirEntryDangling,
                r.key,
                r.child,
                format!(
                    "inode {} is named {name:?} in directory {}, which does not exist",
                    r.child, r.parent
                ),
            ),
            Some(p) if p.mode & S_IFMT != S_IFDIR => err(
                Kind::DirEntryDangling,
                r.key,
                r.child,
                format!(
                    "inode {} is named {name:?} in inode {}, which is not a directory",
                    r.child, r.parent
                ),
            ),
            _ => {}
        }
        let loc = Key::new(r.child, BTRFS_INODE_ITEM_KEY, 0);
        match by_item.get(&(r.parent, &r.name[..])) {
            None => ctx.sink.push(Finding::error(Kind::DirEntryMissing, format!(
                "inode {} is named {name:?} in directory {} (index {}) but the directory has no DIR_ITEM for it",
                r.child, r.parent, r.index
            )).tree(tree).key(r.key).ino(r.child).path(path(r.child))),
            Some(d) if d.location != loc => err(Kind::DirEntryMismatch, d.key, r.parent, format!("DIR_ITEM {name:?} in directory {} points at {}, the inode ref says inode {}", r.parent, d.location, r.child)),
            Some(d) => {
                if let Some(ft) = want_ft {
                    if d.ftype != ft {
                        ctx.sink.push(Finding::error(Kind::FileType, format!(
                            "DIR_ITEM {name:?} in directory {} has type {}, inode {} is type {ft}", r.parent, d.ftype, r.child
                        )).tree(tree).key(d.key).ino(r.child).path(path(r.child)));
                    }
                }
            }
        }
        match by_index.get(&(r.parent, r.index)) {
            None => ctx.sink.push(Finding::error(Kind::DirEntryMissing, format!(
                "inode {} is named {name:?} in directory {} with index {} but the directory has no DIR_INDEX {}",
                r.child, r.parent, r.index, r.index
            )).tree(tree).key(r.key).ino(r.child).path(path(r.child))),
            Some(d) if d.location != loc || d.name != r.name => err(Kind::DirEntryMismatch, d.key, r.parent, format!(
                "DIR_INDEX {} in directory {} names {:?} -> {}, the inode ref {name:?} -> inode {}",
                r.index, r.parent, String::from_utf8_lossy(&d.name), d.location, r.child
            )),
            Some(d) => {
                if let Some(ft) = want_ft {
                    if d.ftype != ft {
                        err(Kind::FileType, d.key, r.child, format!("DIR_INDEX {name:?} in directory {} has type {}, inode {} is type {ft}", r.parent, d.ftype, r.child));
                    }
                }
            }
        }
    }
    for (list, what) in [(&dir_items, "DIR_ITEM"), (&dir_index, "DIR_INDEX")] {
        for d in list {
            let name = String::from_utf8_lossy(&d.name);
            if let Some(i) = inodes.get_mut(&d.dir) {
                i.dir_size = i.dir_size.saturating_add(d.name.len() as u64);
            }
            match inodes.get(&d.dir) {
                Some(i) if i.mode & S_IFMT == S_IFDIR => {}
                _ => err(
                    Kind::DirEntryDangling,
                    d.key,
                    d.dir,
                    format!(
                        "{what} {name:?} belongs to inode {}, which is not a directory",
                        d.dir
                    ),
                ),
            }
            if what == "DIR_INDEX" {
                match by_item.get(&(d.dir, &d.name[..])) {
                    Some(di) if di.location == d.location => {}
                    Some(di) => err(
                        Kind::DirEntryMismatch,
                        d.key,
                        d.dir,
                        format!(
                            "DIR_INDEX {} {name:?} points at {}, its DIR_ITEM at {}",
                            d.index, d.location, di.location
                        ),
                    ),
                    None => err(
                        Kind::DirEntryMismatch,
                        d.key,
                        d.dir,
                        format!(
                            "DIR_INDEX {} {name:?} in directory {} has no DIR_ITEM",
                            d.index, d.dir
                        ),
                    ),
                }
            }
            match d.location.item_type {
                BTRFS_INODE_ITEM_KEY => {
                    let c = d.location.objectid;
                    if !inodes.contains_key(&c) {
                        err(Kind::DirEntryDangling, d.key, d.dir, format!("{what} {name:?} in directory {} points at inode {c}, which does not exist", d.dir));
                        continue;
                    }
                    let has_ref = if what == "DIR_ITEM" {
                        ref_set.contains(&(c, d.dir, &d.name[..]))
                    } else {
                        ref_idx.contains(&(c, d.dir, d.index))
                    };
                    if !has_ref {
                        err(Kind::DirEntryDangling, d.key, d.dir, format!("{what} {name:?} in directory {} points at inode {c}, which has no matching inode ref", d.dir));
                    }
                }
                BTRFS_ROOT_ITEM_KEY => {
                    if what == "DIR_ITEM" {
                        out.links.push(SubvolLink {
                            parent_tree: tree,
                            dir: d.dir,
                            name: d.name.clone(),
                            child: d.location.objectid,
                            index: None,
                        });
                    } else {
                        out.links.push(SubvolLink {
                            parent_tree: tree,
                            dir: d.dir,
                            name: d.name.clone(),
                            child: d.location.objectid,
                            index: Some(d.index),
                        });
                    }
                }
                _ => err(
                    Kind::DirEntryMismatch,
                    d.key,
                    d.dir,
                    format!(
                        "{what} {name:?} points at {}, neither an inode nor a subvolume",
                        d.location
                    ),
                ),
            }
        }
    }
    for &(o, k) in &orphans {
        if !inodes.contains_key(&o) {
            ctx.sink.push(
                Finding::warning(
                    Kind::Orphan,
                    format!("orphan item for inode {o}, which no longer exists"),
                )
                .tree(tree)
                .key(k),
            );
        }
    }
    let mut sorted: Vec<(&u64, &Inode)> = inodes.iter().collect();
    sorted.sort_by_key(|(i, _)| **i);
    for (&ino, i) in sorted {
        let key = Key::new(ino, BTRFS_INODE_ITEM_KEY, 0);
        let f = |kind: Kind, msg: String| {
            Finding::error(kind, msg)
                .tree(tree)
                .key(key)
                .ino(ino)
                .path(path(ino))
        };
        let orphan = i.orphan;
        if i.nlink != i.links && !(orphan && i.links == 0) {
            ctx.sink.push(f(
                Kind::InodeNlink,
                format!(
                    "inode {ino} has nlink {} but {} name(s) reference it",
                    i.nlink, i.links
                ),
            ));
        }
        if i.nlink == 0 && !orphan {
            ctx.sink.push(f(
                Kind::Orphan,
                format!("inode {ino} has no links and no orphan item: it is lost"),
            ));
        }
        if i.mode & S_IFMT == S_IFDIR && i.size != i.dir_size {
            ctx.sink.push(f(
                Kind::InodeSize,
                format!(
                    "directory {ino} has size {}, its entries' names add up to {}",
                    i.size, i.dir_size
                ),
            ));
        }
        let fmt = i.mode & S_IFMT;
        if (fmt == S_IFREG || fmt == S_IFLNK) && i.nbytes != i.found_nbytes {
            ctx.sink.push(f(
                Kind::InodeNbytes,
                format!(
                    "inode {ino} has nbytes {}, its extents hold {}",
                    i.nbytes, i.found_nbytes
                ),
            ));
        }
    }
    if !inodes.contains_key(&root_dir) {
        ctx.sink.push(
            Finding::error(
                Kind::InodeMissing,
                format!("the top directory (inode {root_dir}) of the tree has no INODE_ITEM"),
            )
            .tree(tree)
            .ino(root_dir),
        );
    }
    out
}

fn file_extent(
    ctx: &Ctx<'_>,
    tree: u64,
    k: Key,
    data: &[u8],
    inode: &mut Inode,
    no_holes: bool,
    out: &mut TreeOut,
) {
    let ino = k.objectid;
    let off = k.offset;
    let bad = |kind: Kind, msg: String| {
        ctx.sink
            .push(Finding::error(kind, msg).tree(tree).key(k).ino(ino));
    };
    let Ok(fe) = parse_file_extent(data) else {
        return;
    };
    let ss = ctx.sectorsize;
    let (compression, encryption, other, len) = match &fe {
        FileExtent::Inline { header, data } => {
            let ram = header.ram_bytes.get();
            if off != 0 {
                bad(Kind::FileExtentInvalid, format!("inline extent of inode {ino} at file offset {off}: inline extents must start at 0"));
            }
            if header.compression == BTRFS_COMPRESS_NONE && ram != data.len() as u64 {
                bad(
                    Kind::FileExtentInvalid,
                    format!(
                        "inline extent of inode {ino}: ram_bytes {ram} but {} bytes inline",
                        data.len()
                    ),
                );
            }
            if ram > ss || data.len() as u64 > ss {
                bad(
                    Kind::FileExtentInvalid,
                    format!("inline extent of inode {ino} holds {ram} bytes, more than a sector"),
                );
            }
            if header.compression != BTRFS_COMPRESS_NONE
                && header.compression <= BTRFS_COMPRESS_ZSTD
                && !ctx.opts.metadata_only
            {
                let limit = (ram.min(ss) + 1) as usize;
                match btrfs_image::decompress(header.compression, data, limit, ctx.sectorsize as u32) {
                    Err(e) => bad(Kind::Decompress, format!("inline extent of inode {ino}: {e}")),
                    Ok(v) if v.len() as u64 > ram || (v.len() as u64).div_ceil(ss) < ram.div_ceil(ss) => bad(
                        Kind::Decompress,
                        format!("inline extent of inode {ino} decompresses to {} bytes, ram_bytes says {ram}", v.len()),
                    ),
                    Ok(_) => {}
                }
            }
            inode.found_nbytes = inode.found_nbytes.saturating_add(ram);
            (
                header.compression,
                header.encryption,
                header.other_encoding.get(),
                ram,
            )
        }
        FileExtent::Regular(r) => {
            let (db, dn, eo, nb, ram) = (
                r.disk_bytenr.get(),
                r.disk_num_bytes.get(),
                r.offset.get(),
                r.num_bytes.get(),
                r.ram_bytes.get(),
            );
            let prealloc = r.type_ == BTRFS_FILE_EXTENT_PREALLOC;
            if nb == 0 || nb % ss != 0 || !off.is_multiple_of(ss) {
                bad(
                    Kind::FileExtentInvalid,
                    format!("file extent of inode {ino} at {off}: {nb} bytes, not whole sectors"),
                );
            }
            if prealloc && r.compression != BTRFS_COMPRESS_NONE {
                bad(
                    Kind::FileExtentInvalid,
                    format!(
                        "preallocated extent of inode {ino} at {off} claims compression {}",
                        r.compression
                    ),
                );
            }
            if db != 0 {
                inode.found_nbytes = inode.found_nbytes.saturating_add(nb);
                if db % ss != 0 || dn == 0 || dn % ss != 0 {
                    bad(Kind::FileExtentInvalid, format!("file extent of inode {ino} at {off}: disk extent {db} of {dn} bytes is not sector aligned"));
                }
                let compressed = r.compression != BTRFS_COMPRESS_NONE;
                if compressed {
                    if dn > BTRFS_MAX_COMPRESSED || ram > BTRFS_MAX_COMPRESSED {
                        bad(Kind::FileExtentInvalid, format!("compressed extent of inode {ino} at {off}: {dn} bytes on disk, {ram} in memory (at most 128 KiB)"));
                    }
                    if eo.checked_add(nb).is_none_or(|e| e > ram) {
                        bad(Kind::FileExtentInvalid, format!("file extent of inode {ino} at {off}: offset {eo} + {nb} bytes past ram_bytes {ram}"));
                    }
                } else if eo.checked_add(nb).is_none_or(|e| e > dn) {
                    bad(Kind::FileExtentInvalid, format!("file extent of inode {ino} at {off}: offset {eo} + {nb} bytes past the disk extent's {dn} bytes"));
                }
                let mapped = ctx
                    .img
                    .chunk_map()
                    .lookup(db)
                    .filter(|c| db.checked_add(dn).is_some_and(|e| e <= c.end()));
                match mapped {
                    None => bad(Kind::FileExtentInvalid, format!("file extent of inode {ino} at {off} points at disk bytes {db}..{} outside any chunk (past the end of the filesystem?)", db.saturating_add(dn))),
                    Some(c) if c.type_flags & BTRFS_BLOCK_GROUP_DATA == 0 => bad(Kind::FileExtentInvalid, format!("file extent of inode {ino} at {off} points into a {} chunk", block_group_flags_name(c.type_flags))),
                    _ => {}
                }
                out.users.push((db, tree, ino));
                if !prealloc && inode.flags & BTRFS_INODE_NODATASUM == 0 {
                    let (s, e) = if compressed {
                        (db, db.saturating_add(dn))
                    } else {
                        (
                            db.saturating_add(eo),
                            db.saturating_add(eo).saturating_add(nb),
                        )
                    };
                    out.need_csum.push(NeedCsum {
                        start: s,
                        end: e,
                        tree,
                        ino,
                    });
                }
                if compressed && !prealloc && r.compression <= BTRFS_COMPRESS_ZSTD {
                    out.compressed.push(Compressed {
                        disk_bytenr: db,
                        disk_num_bytes: dn,
                        ram_bytes: ram,
                        compression: r.compression,
                        tree,
                        ino,
                    });
                }
            }
            (r.compression, r.encryption, r.other_encoding.get(), nb)
        }
    };
    if compression > BTRFS_COMPRESS_ZSTD {
        bad(
            Kind::FileExtentInvalid,
            format!(
                "file extent of inode {ino} at {off} has unknown compression type {compression}"
            ),
        );
    }
    if encryption != 0 || other != 0 {
        bad(Kind::FileExtentInvalid, format!("file extent of inode {ino} at {off} has encryption {encryption} / other encoding {other}"));
    }
    if off < inode.extent_end {
        bad(
            Kind::FileExtentOverlap,
            format!(
                "file extent of inode {ino} at {off} overlaps the previous one, which ends at {}",
                inode.extent_end
            ),
        );
    } else if !no_holes && off > inode.extent_end && inode.gap.is_none() {
        inode.gap = Some(inode.extent_end);
    }
    let end = off.saturating_add(len);
    inode.extent_end = if matches!(fe, FileExtent::Inline { .. }) {
        end.div_ceil(ss).saturating_mul(ss)
    } else {
        end
    }
    .max(inode.extent_end);
}

/// ROOT_REF <-> ROOT_BACKREF <-> the directory entries that name subvolumes.
fn root_refs(ctx: &Ctx<'_>, w: &Walked, links: &[SubvolLink]) {
    let rt = BTRFS_ROOT_TREE_OBJECTID;
    let Some(t) = w.tree(rt) else { return };
    let mut fwd: HashMap<(u64, u64), RefVal> = HashMap::new();
    let mut back: HashMap<(u64, u64), RefVal> = HashMap::new();
    let mut subvols: Vec<(u64, Key)> = Vec::new();
    let mut dead: HashSet<u64> = HashSet::new();
    for it in items(ctx, t) {
        let k = it.key;
        match k.item_type {
            BTRFS_ROOT_REF_KEY | BTRFS_ROOT_BACKREF_KEY => {
                let Ok((r, name)) = parse_root_ref(it.data) else {
                    continue;
                };
                let v = (r.dirid.get(), r.sequence.get(), Box::<[u8]>::from(name), k);
                if k.item_type == BTRFS_ROOT_REF_KEY {
                    fwd.insert((k.objectid, k.offset), v);
                } else {
                    back.insert((k.offset, k.objectid), v);
                }
            }
            BTRFS_ROOT_ITEM_KEY
                if (BTRFS_FIRST_FREE_OBJECTID..=BTRFS_LAST_FREE_OBJECTID).contains(&k.objectid) =>
            {
                if let Ok(ri) = RootItem::read_any(it.data) {
                    if ri.refs.get() == 0 {
                        dead.insert(k.objectid);
                    } else {
                        subvols.push((k.objectid, k));
                    }
                }
            }
            _ => {}
        }
    }
    let bad = |msg: String, k: Key| {
        ctx.sink
            .push(Finding::error(Kind::RootRef, msg).tree(rt).key(k))
    };
    let link_set: HashSet<LinkKey<'_>> = links
        .iter()
        .map(|l| (l.parent_tree, l.dir, l.child, l.index, &l.name[..]))
        .collect();
    let tree_ids: HashSet<u64> = w.trees.iter().map(|t| t.spec.id).collect();
    for (&(p, c), (dir, seq, name, k)) in &fwd {
        match back.get(&(p, c)) {
            None => bad(
                format!("ROOT_REF of subvolume {c} in {p} has no ROOT_BACKREF"),
                *k,
            ),
            Some((d2, s2, n2, _)) if d2 != dir || s2 != seq || n2 != name => bad(
                format!("ROOT_REF and ROOT_BACKREF of subvolume {c} in {p} disagree"),
                *k,
            ),
            _ => {}
        }
        if dead.contains(&c) {
            continue;
        }
        let have_item = link_set.contains(&(p, *dir, c, None, &name[..]));
        let have_index = link_set.contains(&(p, *dir, c, Some(*seq), &name[..]));
        if tree_ids.contains(&p) && !(have_item && have_index) {
            bad(format!(
                "subvolume {c} is linked as {:?} in directory {dir} of {p}, but that directory has no {}",
                String::from_utf8_lossy(name),
                if have_item { "DIR_INDEX for it" } else { "DIR_ITEM for it" }
            ), *k);
        }
    }
    for (&(p, c), (_, _, _, k)) in &back {
        if !fwd.contains_key(&(p, c)) {
            bad(
                format!("ROOT_BACKREF of subvolume {c} in {p} has no ROOT_REF"),
                *k,
            );
        }
    }
    // A directory entry naming a subvolume without a ROOT_REF from this tree is
    // normal in a snapshot: the entry was copied from the snapshotted subvolume,
    // the reference was not (the kernel shows an empty directory there).
    let children: HashSet<u64> = back.keys().map(|&(_, c)| c).collect();
    for (id, k) in subvols {
        if !children.contains(&id) {
            bad(
                format!("subvolume {id} has no ROOT_BACKREF: it is linked into no directory"),
                k,
            );
        }
    }
}
