//! An opened image: storage, superblock, chunk map, logical reads and tree blocks.
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use btrfs_format::consts::*;
use btrfs_format::items::parse_sys_chunk_array;
use btrfs_format::tree::TreeBlock;
use btrfs_format::{CsumType, Header, Key, SuperBlock};

use crate::chunk::ChunkMap;
use crate::error::{fmt_err, Error, Location, Result};
use crate::tree::Root;

enum Storage {
    Mmap(memmap2::Mmap),
    Shared(Arc<Vec<u8>>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Shared(v) => v,
        }
    }
}

/// Validity of one superblock copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuperblockStatus {
    /// The image (or the device size the superblock records) ends before this copy.
    Absent,
    Valid {
        generation: u64,
    },
    Invalid(String),
}

/// One of the three superblock locations and what is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuperblockCopy {
    pub mirror: usize,
    pub offset: u64,
    pub status: SuperblockStatus,
}

/// Check superblock copy `mirror` of `data`: magic, checksum, self-consistency of sizes.
pub fn read_superblock(data: &[u8], mirror: usize) -> Result<SuperBlock> {
    if mirror >= BTRFS_SUPER_MIRROR_MAX {
        return Err(Error::NotFound(format!(
            "superblock mirror {mirror} (only 0..3 exist)"
        )));
    }
    let offset = btrfs_sb_offset(mirror);
    let at = Location::Superblock { mirror, offset };
    let bad = |what: String| Err(Error::corrupt(at, what));
    let end = offset as usize + BTRFS_SUPER_INFO_SIZE;
    let Some(bytes) = data.get(offset as usize..end) else {
        return bad(format!("image of {} bytes ends before it", data.len()));
    };
    let sb = SuperBlock::read(bytes).map_err(fmt_err(at))?;
    if sb.magic.get() != BTRFS_MAGIC {
        return bad(format!("bad magic 0x{:016x}", sb.magic.get()));
    }
    let Some(csum) = CsumType::from_disk(sb.csum_type.get()) else {
        return Err(Error::Unsupported(format!(
            "{at}: checksum type {}",
            sb.csum_type.get()
        )));
    };
    let want = csum.compute(&bytes[BTRFS_CSUM_SIZE..]);
    if want[..csum.size()] != sb.csum[..csum.size()] {
        return bad(format!(
            "{csum} checksum mismatch (stored {}, computed {})",
            hex(&sb.csum[..csum.size()]),
            hex(&want[..csum.size()])
        ));
    }
    if sb.bytenr.get() != offset {
        return bad(format!(
            "records bytenr {}, lives at {offset}",
            sb.bytenr.get()
        ));
    }
    let (sector, node) = (sb.sectorsize.get(), sb.nodesize.get());
    if !sector.is_power_of_two() || !(4096..=65536).contains(&sector) {
        return bad(format!("sectorsize {sector} not a power of two in 4K..64K"));
    }
    if !node.is_power_of_two() || !(4096..=65536).contains(&node) || node < sector {
        return bad(format!(
            "nodesize {node} not a power of two in sectorsize..64K"
        ));
    }
    if sb.sys_chunk_array_size.get() as usize > BTRFS_SYSTEM_CHUNK_ARRAY_SIZE {
        return bad(format!(
            "sys_chunk_array_size {} over 2048",
            sb.sys_chunk_array_size.get()
        ));
    }
    for (name, addr, level) in [
        ("root", sb.root.get(), sb.root_level),
        ("chunk_root", sb.chunk_root.get(), sb.chunk_root_level),
    ] {
        if addr == 0 || addr & (sector as u64 - 1) != 0 {
            return bad(format!("{name} {addr} zero or not sector aligned"));
        }
        if level >= BTRFS_MAX_LEVEL {
            return bad(format!("{name} level {level} not below {BTRFS_MAX_LEVEL}"));
        }
    }
    Ok(sb)
}

/// Which superblock copies `data` holds, and whether each is valid.
pub fn superblock_copies(data: &[u8]) -> Vec<SuperblockCopy> {
    // Copies past the device size the primary records are not expected to exist.
    let dev_size = read_superblock(data, 0)
        .map(|sb| sb.dev_item.total_bytes.get())
        .unwrap_or(u64::MAX);
    (0..BTRFS_SUPER_MIRROR_MAX)
        .map(|mirror| {
            let offset = btrfs_sb_offset(mirror);
            let end = offset + BTRFS_SUPER_INFO_SIZE as u64;
            let status = if end > data.len() as u64 || (mirror > 0 && end > dev_size) {
                SuperblockStatus::Absent
            } else {
                match read_superblock(data, mirror) {
                    Ok(sb) => SuperblockStatus::Valid {
                        generation: sb.generation.get(),
                    },
                    Err(e) => SuperblockStatus::Invalid(e.to_string()),
                }
            };
            SuperblockCopy {
                mirror,
                offset,
                status,
            }
        })
        .collect()
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A read-only btrfs image: one device, memory-mapped or in memory.
pub struct Image {
    storage: Storage,
    path: Option<PathBuf>,
    sb: SuperBlock,
    sb_mirror: usize,
    csum: CsumType,
    chunks: ChunkMap,
    verified: VerifiedBlocks,
}

/// Tree blocks whose checksum and structure were verified, and which copy passed:
/// re-reading a hot block (a root, an upper node) then skips the checksum. A small
/// direct-mapped table of atomics: bounded memory, no locks, `Image` stays `Sync`.
/// Entries are `bytenr | (copy + 1)`; tree blocks are sector aligned, so the low
/// 12 bits are free.
struct VerifiedBlocks(Box<[std::sync::atomic::AtomicU64]>);

impl VerifiedBlocks {
    const SLOTS: usize = 4096;

    fn new() -> Self {
        VerifiedBlocks((0..Self::SLOTS).map(|_| Default::default()).collect())
    }

    fn slot(&self, bytenr: u64) -> &std::sync::atomic::AtomicU64 {
        &self.0[((bytenr >> 12) as usize) % Self::SLOTS]
    }

    fn get(&self, bytenr: u64) -> Option<usize> {
        let v = self.slot(bytenr).load(std::sync::atomic::Ordering::Relaxed);
        (v != 0 && v & !0xfff == bytenr).then(|| (v & 0xfff) as usize - 1)
    }

    fn put(&self, bytenr: u64, copy: usize) {
        if copy < 0xfff {
            self.slot(bytenr).store(
                bytenr | (copy as u64 + 1),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}

impl core::fmt::Debug for Image {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Image")
            .field("path", &self.path)
            .field("len", &self.storage.bytes().len())
            .field("superblock_mirror", &self.sb_mirror)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl Image {
    /// Open the image file at `path` read-only, using the primary superblock.
    pub fn open(path: &Path) -> Result<Image> {
        Self::open_with_mirror(path, 0)
    }

    /// Open using superblock copy `mirror` (0: 64 KiB, 1: 64 MiB, 2: 256 GiB).
    pub fn open_with_mirror(path: &Path, mirror: usize) -> Result<Image> {
        let map = map_file(path)?;
        Self::with_storage(Storage::Mmap(map), Some(path.to_path_buf()), mirror)
    }

    /// An image held in memory (tests, fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Image> {
        Self::from_shared(Arc::new(bytes), 0)
    }

    /// An in-memory image shared with the caller, who can take it back (for example
    /// with `Arc::get_mut`) once the `Image` is dropped.
    pub fn from_shared(bytes: Arc<Vec<u8>>, mirror: usize) -> Result<Image> {
        Self::with_storage(Storage::Shared(bytes), None, mirror)
    }

    fn with_storage(storage: Storage, path: Option<PathBuf>, mirror: usize) -> Result<Image> {
        let sb = read_superblock(storage.bytes(), mirror)?;
        let csum = CsumType::from_disk(sb.csum_type.get())
            .ok_or_else(|| Error::Unsupported(format!("checksum type {}", sb.csum_type.get())))?;
        let at = Location::Superblock {
            mirror,
            offset: btrfs_sb_offset(mirror),
        };
        let mut sys = ChunkMap::new(sb.dev_item.devid.get());
        let array =
            parse_sys_chunk_array(&sb.sys_chunk_array, sb.sys_chunk_array_size.get() as usize)
                .map_err(|e| Error::corrupt(at, format!("sys_chunk_array: {e}")))?;
        for (key, c) in &array {
            if c.chunk.type_.get() & BTRFS_BLOCK_GROUP_SYSTEM == 0 {
                return Err(Error::corrupt(
                    at,
                    format!(
                        "sys_chunk_array chunk at logical {} is not SYSTEM",
                        key.offset
                    ),
                ));
            }
            sys.insert(key.offset, c, sb.sectorsize.get(), at)?;
        }
        let mut img = Image {
            storage,
            path,
            sb,
            sb_mirror: mirror,
            csum,
            chunks: sys,
            verified: VerifiedBlocks::new(),
        };
        img.chunks = img.load_chunk_tree()?;
        Ok(img)
    }

    /// The full chunk map: the sys_chunk_array's chunks plus the chunk tree's.
    fn load_chunk_tree(&self) -> Result<ChunkMap> {
        let mut map = self.chunks.clone();
        let root = self.chunk_root();
        let start = Key::new(BTRFS_FIRST_CHUNK_TREE_OBJECTID, BTRFS_CHUNK_ITEM_KEY, 0);
        let end = Key::new(
            BTRFS_FIRST_CHUNK_TREE_OBJECTID,
            BTRFS_CHUNK_ITEM_KEY,
            u64::MAX,
        );
        for item in self.range(&root, start, end) {
            let item = item?;
            let at = Location::Item {
                tree: BTRFS_CHUNK_TREE_OBJECTID,
                key: item.key,
            };
            let c = btrfs_format::items::ChunkWithStripes::parse(item.data).map_err(fmt_err(at))?;
            map.insert(item.key.offset, &c, self.sectorsize(), at)?;
        }
        Ok(map)
    }

    /// The whole image as bytes (the mapping or the in-memory buffer).
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn superblock(&self) -> &SuperBlock {
        &self.sb
    }

    /// Which superblock copy this image was opened with.
    pub fn superblock_mirror(&self) -> usize {
        self.sb_mirror
    }

    /// All three superblock locations of this image and their state.
    pub fn superblock_copies(&self) -> Vec<SuperblockCopy> {
        superblock_copies(self.bytes())
    }

    pub fn csum_type(&self) -> CsumType {
        self.csum
    }

    pub fn sectorsize(&self) -> u32 {
        self.sb.sectorsize.get()
    }

    pub fn nodesize(&self) -> u32 {
        self.sb.nodesize.get()
    }

    /// The fsid stamped into tree block headers.
    pub fn metadata_fsid(&self) -> [u8; 16] {
        self.sb.metadata_fsid()
    }

    pub fn chunk_map(&self) -> &ChunkMap {
        &self.chunks
    }

    /// Root of the root tree, from the superblock.
    pub fn root_tree(&self) -> Root {
        Root {
            tree_id: BTRFS_ROOT_TREE_OBJECTID,
            bytenr: self.sb.root.get(),
            level: self.sb.root_level,
            generation: self.sb.generation.get(),
        }
    }

    /// Root of the chunk tree, from the superblock.
    pub fn chunk_root(&self) -> Root {
        Root {
            tree_id: BTRFS_CHUNK_TREE_OBJECTID,
            bytenr: self.sb.chunk_root.get(),
            level: self.sb.chunk_root_level,
            generation: self.sb.chunk_root_generation.get(),
        }
    }

    /// `len` bytes at file offset `offset`.
    pub fn read_physical(&self, offset: u64, len: u64) -> Result<&[u8]> {
        let data = self.bytes();
        offset
            .checked_add(len)
            .filter(|&e| e <= data.len() as u64)
            .map(|e| &data[offset as usize..e as usize])
            .ok_or_else(|| {
                Error::corrupt(
                    Location::Physical(offset),
                    format!(
                        "{len} bytes run past the end of the image ({} bytes)",
                        data.len()
                    ),
                )
            })
    }

    /// `len` bytes at logical address `logical`, from the first copy.
    pub fn read_logical(&self, logical: u64, len: u64) -> Result<Cow<'_, [u8]>> {
        self.read_logical_mirror(logical, len, 0)
    }

    /// `len` bytes at `logical` from copy `mirror` (0-based here; messages count
    /// copies from 1 as btrfs does; DUP and RAID1 have 2).
    /// A range across chunks is assembled, after every piece has been mapped.
    pub fn read_logical_mirror(
        &self,
        logical: u64,
        len: u64,
        mirror: usize,
    ) -> Result<Cow<'_, [u8]>> {
        let pieces = self.chunks.split(logical, len)?;
        let mut slices = Vec::with_capacity(pieces.len());
        for (start, n) in pieces {
            let copies = self.chunks.map(start, n)?;
            let phys = *copies.get(mirror).ok_or_else(|| {
                Error::NotFound(format!(
                    "copy {} of logical {start} ({} copies)",
                    mirror + 1,
                    copies.len()
                ))
            })?;
            slices.push(self.read_physical(phys, n)?);
        }
        Ok(match slices.as_slice() {
            [] => Cow::Borrowed(&[][..]),
            [one] => Cow::Borrowed(*one),
            many => Cow::Owned(many.concat()),
        })
    }

    /// Read and verify the tree block at `bytenr`, trying each copy in turn.
    pub fn read_tree_block(&self, bytenr: u64) -> Result<TreeBlock<'_>> {
        self.read_tree_block_checked(bytenr, None, None)
    }

    /// Like [`Image::read_tree_block`], also requiring the level and generation the
    /// parent pointer (or root item) promises. When every copy fails, the error
    /// lists why each did.
    pub fn read_tree_block_checked(
        &self,
        bytenr: u64,
        level: Option<u8>,
        generation: Option<u64>,
    ) -> Result<TreeBlock<'_>> {
        let at = Location::TreeBlock(bytenr);
        let copies = self.tree_block_copies(bytenr)?;
        let nodesize = self.nodesize() as u64;
        if let Some(&phys) = self.verified.get(bytenr).and_then(|i| copies.get(i)) {
            // Verified before: only what the caller expects is left to check.
            if let Ok(b) = self.read_physical(phys, nodesize) {
                if let Ok(tb) = TreeBlock::parse(b) {
                    if expect(&tb.header, level, generation).is_ok() {
                        return Ok(tb);
                    }
                }
            }
        }
        let mut why = Vec::new();
        for (i, &phys) in copies.iter().enumerate() {
            let res = self
                .read_physical(phys, nodesize)
                .map_err(|e| e.to_string())
                .and_then(|b| self.verify_tree_block(b, bytenr, level, generation));
            match res {
                Ok(tb) => {
                    self.verified.put(bytenr, i);
                    return Ok(tb);
                }
                Err(e) if copies.len() == 1 => why.push(e),
                Err(e) => why.push(format!("copy {} at physical {phys}: {e}", i + 1)),
            }
        }
        Err(Error::corrupt(at, why.join("; ")))
    }

    /// Verify one specific copy (0-based) of a tree block, without falling back.
    pub fn read_tree_block_mirror(
        &self,
        bytenr: u64,
        mirror: usize,
        level: Option<u8>,
        generation: Option<u64>,
    ) -> Result<TreeBlock<'_>> {
        let at = Location::TreeBlock(bytenr);
        let copies = self.tree_block_copies(bytenr)?;
        let phys = *copies.get(mirror).ok_or_else(|| {
            Error::NotFound(format!(
                "copy {} of tree block {bytenr} ({} copies)",
                mirror + 1,
                copies.len()
            ))
        })?;
        let b = self.read_physical(phys, self.nodesize() as u64)?;
        self.verify_tree_block(b, bytenr, level, generation)
            .map_err(|e| Error::corrupt(at, format!("copy {} at physical {phys}: {e}", mirror + 1)))
    }

    fn tree_block_copies(&self, bytenr: u64) -> Result<Vec<u64>> {
        if bytenr == 0 || bytenr & (self.sectorsize() as u64 - 1) != 0 {
            return Err(Error::corrupt(
                Location::TreeBlock(bytenr),
                "address zero or not sector aligned",
            ));
        }
        self.chunks
            .map(bytenr, self.nodesize() as u64)
            .map_err(|e| match e {
                Error::Corrupt { what, .. } => Error::corrupt(Location::TreeBlock(bytenr), what),
                other => other,
            })
    }

    /// Checksum, identity and structure of one tree block copy.
    fn verify_tree_block<'a>(
        &self,
        b: &'a [u8],
        bytenr: u64,
        level: Option<u8>,
        generation: Option<u64>,
    ) -> Result<TreeBlock<'a>, String> {
        let h = Header::read(b).map_err(|e| e.to_string())?;
        let n = self.csum.size();
        let want = self.csum.compute(&b[BTRFS_CSUM_SIZE..]);
        if want[..n] != h.csum[..n] {
            return Err(format!(
                "checksum mismatch (stored {}, computed {})",
                hex(&h.csum[..n]),
                hex(&want[..n])
            ));
        }
        if h.bytenr.get() != bytenr {
            return Err(format!("header bytenr {} does not match", h.bytenr.get()));
        }
        if h.fsid != self.metadata_fsid() {
            return Err(format!("fsid {} is not this filesystem's", hex(&h.fsid)));
        }
        if h.level >= BTRFS_MAX_LEVEL {
            return Err(format!("level {} not below {BTRFS_MAX_LEVEL}", h.level));
        }
        expect(&h, level, generation)?;
        let tb = TreeBlock::parse(b).map_err(|e| e.to_string())?;
        check_keys(&tb)?;
        Ok(tb)
    }
}

/// The level and generation a parent pointer or root item promises.
fn expect(h: &Header, level: Option<u8>, generation: Option<u64>) -> Result<(), String> {
    if let Some(l) = level.filter(|&l| l != h.level) {
        return Err(format!("level {} where {l} was expected", h.level));
    }
    if let Some(g) = generation.filter(|&g| g != h.generation.get()) {
        return Err(format!(
            "generation {} where {g} was expected",
            h.generation.get()
        ));
    }
    Ok(())
}

/// Keys strictly ascending; every leaf item's payload inside the block; nodes non-empty.
fn check_keys(tb: &TreeBlock<'_>) -> Result<(), String> {
    let n = tb.nritems();
    if tb.level() > 0 && n == 0 {
        return Err("node with no pointers".into());
    }
    let mut prev: Option<Key> = None;
    for i in 0..n {
        let k = tb.key_at(i).map_err(|e| e.to_string())?;
        if let Some(p) = prev.filter(|&p| p >= k) {
            return Err(format!("slot {i} key {k} not above slot {} key {p}", i - 1));
        }
        prev = Some(k);
    }
    Ok(())
}

fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the mapping is read-only and private to this process. If another
    // process truncates or rewrites the file while it is mapped, reads may fault
    // (SIGBUS) or see changing bytes; every read is bounds-checked against the
    // length taken here and no invariant depends on bytes staying the same, so the
    // only risk is that fault, which a read-only tool on an image it was handed accepts.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
    Ok(map)
}
