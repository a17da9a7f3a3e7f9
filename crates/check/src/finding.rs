//! Findings: what the checker reports. They are data, never errors: a damaged
//! image yields findings, an unreadable file yields an error.
use std::collections::HashMap;
use std::sync::Mutex;

use btrfs_format::Key;
use serde::Serialize;

/// How bad a finding is. Errors make `forge-fsck` exit with 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The image contradicts the format or itself.
    Error,
    /// Valid btrfs, but something the checker cannot verify (exit 8 when no error).
    Unsupported,
    /// Worth knowing, not damage.
    Warning,
}

macro_rules! kinds {
    ($($(#[$m:meta])* $name:ident = $text:literal,)*) => {
        /// What a finding is about. Stable names (`Kind::name`) for CI and scripts.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum Kind { $($(#[$m])* $name,)* }
        impl Kind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [Kind] = &[$(Kind::$name,)*];
            /// The kebab-case name used in text and JSON output.
            pub fn name(self) -> &'static str {
                match self { $(Kind::$name => $text,)* }
            }
        }
    };
}

kinds! {
    // Superblock.
    /// The primary superblock is unreadable or invalid.
    SuperblockInvalid = "superblock-invalid",
    /// A superblock mirror is invalid or disagrees with the primary.
    SuperblockMirror = "superblock-mirror",
    /// A superblock field is out of range or inconsistent.
    SuperblockField = "superblock-field",
    /// A backup root disagrees with the superblock.
    BackupRoot = "backup-root",
    /// A feature or layout the checker does not verify.
    UnsupportedFeature = "unsupported-feature",
    /// The image file is shorter than the filesystem it holds.
    ImageTruncated = "image-truncated",
    // Tree blocks.
    /// A tree block copy fails its checksum.
    TreeBlockChecksum = "tree-block-checksum",
    /// A tree block header is wrong: bytenr, fsid, chunk tree uuid, owner, level, generation.
    TreeBlockHeader = "tree-block-header",
    /// A tree block cannot be read at all (unmapped, past the end of the image).
    TreeBlockUnreadable = "tree-block-unreadable",
    /// Keys out of order inside a block or across a parent/child boundary.
    KeyOrder = "key-order",
    /// Leaf item headers point outside the block or overlap.
    ItemOffset = "item-offset",
    /// An item payload has the wrong size for its type, or does not parse.
    ItemSize = "item-size",
    /// A tree block is reachable twice in one tree.
    BlockReachedTwice = "block-reached-twice",
    /// A node points at one of its own ancestors.
    TreeCycle = "tree-cycle",
    /// A root item is invalid.
    RootItem = "root-item",
    // Chunks and devices.
    /// Chunk tree and `sys_chunk_array` disagree, or a chunk is invalid.
    ChunkInvalid = "chunk-invalid",
    /// A chunk stripe has no matching dev extent, or a dev extent no chunk.
    DevExtent = "dev-extent",
    /// A device item's `bytes_used` or size disagrees with its dev extents.
    DevItem = "dev-item",
    /// A chunk has no block group item, or they disagree.
    BlockGroupMismatch = "block-group-mismatch",
    /// A block group's `used` differs from the extents inside it.
    BlockGroupUsed = "block-group-used",
    /// The superblock's `bytes_used` differs from the sum of block groups.
    SuperBytesUsed = "super-bytes-used",
    // Extent tree.
    /// A tree block or data extent has no extent item.
    ExtentItemMissing = "extent-item-missing",
    /// An extent item no tree block or file extent references.
    ExtentUnreferenced = "extent-unreferenced",
    /// An extent item's reference count differs from its backrefs or the real references.
    ExtentRefCount = "extent-ref-count",
    /// A reference exists with no backref in the extent tree.
    BackrefMissing = "backref-missing",
    /// A backref in the extent tree matches no reference.
    BackrefExtra = "backref-extra",
    /// Two extent items overlap.
    ExtentOverlap = "extent-overlap",
    /// An extent item is malformed: flags, size, level, block group.
    ExtentItemInvalid = "extent-item-invalid",
    // Free space tree.
    /// Free space tree extents differ from the complement of allocated extents.
    FreeSpaceMismatch = "free-space-mismatch",
    /// Free space tree entries for a block group that does not exist.
    FreeSpaceStale = "free-space-stale",
    /// A FREE_SPACE_INFO item is missing or its counts are wrong.
    FreeSpaceInfo = "free-space-info",
    // Filesystem trees.
    /// Items of an inode with no INODE_ITEM.
    InodeMissing = "inode-missing",
    /// `nlink` differs from the names that reference the inode.
    InodeNlink = "inode-nlink",
    /// `nbytes` differs from the bytes its extents hold.
    InodeNbytes = "inode-nbytes",
    /// A directory's size is not twice the length of its names, or a file's size is wrong.
    InodeSize = "inode-size",
    /// An inode item field is invalid (mode, flags).
    InodeInvalid = "inode-invalid",
    /// An INODE_REF / INODE_EXTREF without its DIR_ITEM or DIR_INDEX.
    DirEntryMissing = "dir-entry-missing",
    /// A DIR_ITEM / DIR_INDEX without an inode ref, or pointing at nothing.
    DirEntryDangling = "dir-entry-dangling",
    /// DIR_ITEM and DIR_INDEX disagree, or the entry is malformed.
    DirEntryMismatch = "dir-entry-mismatch",
    /// A name hash in a key does not match the name.
    NameHash = "name-hash",
    /// A directory entry's file type differs from the inode's mode.
    FileType = "file-type",
    /// File extents overlap, or leave a gap without NO_HOLES.
    FileExtentOverlap = "file-extent-overlap",
    /// A file extent is invalid (inline rules, alignment, sizes, compression type).
    FileExtentInvalid = "file-extent-invalid",
    /// ROOT_REF / ROOT_BACKREF / subvolume directory entry disagree.
    RootRef = "root-ref",
    /// An unlinked inode without an orphan item, or an orphan item without its inode.
    Orphan = "orphan",
    // Checksums and data.
    /// Checksum items overlap or are out of order.
    CsumOverlap = "csum-overlap",
    /// Checksums for bytes that are not in a data extent.
    CsumOutsideExtent = "csum-outside-extent",
    /// A data sector that needs a checksum has none.
    CsumMissing = "csum-missing",
    /// A data sector does not match its checksum.
    DataChecksum = "data-checksum",
    /// Data cannot be read (unmapped, past the end of the image).
    DataUnreadable = "data-unreadable",
    /// A compressed extent does not decompress to its `ram_bytes`.
    Decompress = "decompress",
}

impl core::fmt::Display for Kind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// A key as findings carry it: numbers plus the `dump-tree` spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct FKey {
    pub objectid: u64,
    pub item_type: u8,
    pub offset: u64,
}

impl From<Key> for FKey {
    fn from(k: Key) -> Self {
        FKey {
            objectid: k.objectid,
            item_type: k.item_type,
            offset: k.offset,
        }
    }
}

impl From<FKey> for Key {
    fn from(k: FKey) -> Self {
        Key::new(k.objectid, k.item_type, k.offset)
    }
}

/// One thing the checker found, with everything known about where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub kind: Kind,
    /// Tree id (1 root, 2 extent, 3 chunk, 5 fs, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree: Option<u64>,
    /// Logical address of the tree block or extent concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytenr: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<FKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
    /// Path of the inode from its subvolume's top, where it can be resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub message: String,
}

/// Printable name of a tree id.
pub fn tree_name(id: u64) -> String {
    match btrfs_format::objectid_name(id) {
        Some(n) if !(BTRFS_FIRST_FREE..=BTRFS_LAST_FREE).contains(&id) => {
            n.to_ascii_lowercase().replace('_', " ")
        }
        _ => format!("subvolume {id}"),
    }
}

const BTRFS_FIRST_FREE: u64 = btrfs_format::BTRFS_FIRST_FREE_OBJECTID;
const BTRFS_LAST_FREE: u64 = btrfs_format::BTRFS_LAST_FREE_OBJECTID;

impl Finding {
    pub fn new(severity: Severity, kind: Kind, message: impl Into<String>) -> Self {
        Finding {
            severity,
            kind,
            tree: None,
            bytenr: None,
            key: None,
            ino: None,
            path: None,
            message: message.into(),
        }
    }

    pub fn error(kind: Kind, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, kind, message)
    }

    pub fn warning(kind: Kind, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, kind, message)
    }

    pub fn tree(mut self, t: u64) -> Self {
        self.tree = Some(t);
        self
    }

    pub fn bytenr(mut self, b: u64) -> Self {
        self.bytenr = Some(b);
        self
    }

    pub fn key(mut self, k: Key) -> Self {
        self.key = Some(k.into());
        self
    }

    pub fn ino(mut self, i: u64) -> Self {
        self.ino = Some(i);
        self
    }

    pub fn path(mut self, p: Option<String>) -> Self {
        self.path = p;
        self
    }
}

impl core::fmt::Display for Finding {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Unsupported => "unsupported",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}[{}]: {}", self.kind, self.message)?;
        let mut at = Vec::new();
        if let Some(t) = self.tree {
            at.push(tree_name(t));
        }
        if let Some(b) = self.bytenr {
            at.push(format!("bytenr {b}"));
        }
        if let Some(k) = self.key {
            at.push(format!("key {}", Key::from(k)));
        }
        if let Some(i) = self.ino {
            at.push(format!("inode {i}"));
        }
        if let Some(p) = &self.path {
            at.push(format!("path {p:?}"));
        }
        if !at.is_empty() {
            write!(f, " ({})", at.join(", "))?;
        }
        Ok(())
    }
}

/// Counts of what was checked, for the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub trees: u64,
    pub tree_blocks: u64,
    pub tree_block_copies: u64,
    pub extent_items: u64,
    pub inodes: u64,
    pub data_bytes_verified: u64,
    pub compressed_extents: u64,
    /// Findings not kept because a kind passed its cap.
    pub findings_dropped: u64,
}

/// The result of a check.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub stats: Stats,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count()
    }

    pub fn has(&self, kind: Kind) -> bool {
        self.findings.iter().any(|f| f.kind == kind)
    }

    /// The exit code `fsck` documents: 0 clean, 4 errors left uncorrected, 8 when
    /// something could not be verified (unsupported) and no error was found.
    pub fn exit_code(&self) -> i32 {
        if self.errors() > 0 {
            4
        } else if self
            .findings
            .iter()
            .any(|f| f.severity == Severity::Unsupported)
        {
            8
        } else {
            0
        }
    }
}

/// Thread-safe collector; keeps at most `cap` findings of each kind.
pub struct Sink {
    inner: Mutex<SinkInner>,
    stats: Mutex<Stats>,
    cap: usize,
}

#[derive(Default)]
struct SinkInner {
    findings: Vec<Finding>,
    per_kind: HashMap<Kind, usize>,
    dropped: u64,
}

impl Sink {
    pub fn new(cap: usize) -> Self {
        Sink {
            inner: Mutex::new(SinkInner::default()),
            stats: Mutex::new(Stats::default()),
            cap,
        }
    }

    /// Update the statistics.
    pub fn add_stats(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn push(&self, f: Finding) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let n = g.per_kind.entry(f.kind).or_default();
        *n += 1;
        if *n > self.cap {
            g.dropped += 1;
        } else {
            g.findings.push(f);
        }
    }

    /// How many findings of `kind` were reported so far (kept or not).
    pub fn count(&self, kind: Kind) -> usize {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.per_kind.get(&kind).copied().unwrap_or(0)
    }

    pub fn into_parts(self) -> (Vec<Finding>, u64) {
        let g = self.inner.into_inner().unwrap_or_else(|e| e.into_inner());
        (g.findings, g.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_unique_kebab_case_and_match_serde() {
        let mut seen = std::collections::HashSet::new();
        for k in Kind::ALL {
            let n = k.name();
            assert!(seen.insert(n), "duplicate {n}");
            assert!(n.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{n}");
            let json = serde_json::to_string(k).unwrap();
            assert_eq!(json, format!("\"{n}\""));
        }
    }

    #[test]
    fn exit_codes_and_caps() {
        let sink = Sink::new(2);
        for _ in 0..5 {
            sink.push(Finding::error(Kind::DataChecksum, "x"));
        }
        sink.push(Finding::new(
            Severity::Unsupported,
            Kind::UnsupportedFeature,
            "y",
        ));
        assert_eq!(sink.count(Kind::DataChecksum), 5);
        let (f, dropped) = sink.into_parts();
        assert_eq!((f.len(), dropped), (3, 3));
        let r = Report {
            findings: f,
            stats: Stats::default(),
        };
        assert_eq!(r.exit_code(), 4);
        let r = Report {
            findings: vec![Finding::new(
                Severity::Unsupported,
                Kind::UnsupportedFeature,
                "y",
            )],
            stats: Stats::default(),
        };
        assert_eq!(r.exit_code(), 8);
        assert_eq!(Report::default().exit_code(), 0);
        let f = Finding::error(
            Kind::InodeNlink,
            "inode 257 has nlink 2 but 1 name(s) reference it",
        )
        .tree(5)
        .key(Key::new(257, 1, 0))
        .ino(257)
        .path(Some("/a".into()));
        assert_eq!(
            f.to_string(),
            "error[inode-nlink]: inode 257 has nlink 2 but 1 name(s) reference it (fs tree, key (257 INODE_ITEM 0), inode 257, path \"/a\")"
        );
    }
}
