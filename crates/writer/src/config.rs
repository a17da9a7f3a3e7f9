//! What the user asked for: sizes, profiles, features, identity.
use btrfs_format::CsumType;

use crate::{Error, Result};

/// Block group profile on a single device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Single,
    Dup,
}

impl Profile {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "single" => Ok(Profile::Single),
            "dup" => Ok(Profile::Dup),
            other => Err(Error::InvalidOption(format!(
                "unsupported profile '{other}': a single-device image takes 'single' or 'dup'"
            ))),
        }
    }

    pub fn stripes(self) -> usize {
        match self {
            Profile::Single => 1,
            Profile::Dup => 2,
        }
    }

    pub fn flag(self) -> u64 {
        match self {
            Profile::Single => 0,
            Profile::Dup => btrfs_format::BTRFS_BLOCK_GROUP_DUP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Single => "single",
            Profile::Dup => "DUP",
        }
    }
}

/// Filesystem features selectable with `-O` (names as `mkfs.btrfs` spells them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub no_holes: bool,
    pub free_space_tree: bool,
    pub block_group_tree: bool,
    pub skinny_metadata: bool,
    pub extref: bool,
}

/// (name, description) of every feature `-O` understands.
pub const FEATURE_LIST: &[(&str, &str)] = &[
    ("extref", "increased hardlink limit per file to 65536"),
    ("skinny-metadata", "reduced-size metadata extent refs"),
    ("no-holes", "no explicit hole extents for files"),
    ("free-space-tree", "free space tree (space_cache=v2)"),
    (
        "block-group-tree",
        "block group items in their own tree, faster mount",
    ),
];

impl Default for Features {
    /// The defaults of `mkfs.btrfs` 6.19: all five on.
    fn default() -> Self {
        Features {
            no_holes: true,
            free_space_tree: true,
            block_group_tree: true,
            skinny_metadata: true,
            extref: true,
        }
    }
}

impl Features {
    /// Apply a comma-separated `-O` list; `^name` turns a feature off.
    pub fn apply(&mut self, list: &str) -> Result<()> {
        for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (on, name) = match raw.strip_prefix('^') {
                Some(n) => (false, n),
                None => (true, raw),
            };
            let slot = match name.to_ascii_lowercase().replace('_', "-").as_str() {
                "no-holes" => &mut self.no_holes,
                "free-space-tree" | "fst" => &mut self.free_space_tree,
                "block-group-tree" | "bgt" => &mut self.block_group_tree,
                "skinny-metadata" => &mut self.skinny_metadata,
                "extref" => &mut self.extref,
                _ => {
                    let known: Vec<_> = FEATURE_LIST.iter().map(|f| f.0).collect();
                    return Err(Error::InvalidOption(format!(
                        "unknown feature '{name}' (known: {})",
                        known.join(", ")
                    )));
                }
            };
            *slot = on;
        }
        Ok(())
    }

    /// Reject combinations the kernel refuses to mount.
    pub fn validate(&self) -> Result<()> {
        if self.block_group_tree && !(self.free_space_tree && self.no_holes) {
            return Err(Error::InvalidOption(
                "block-group-tree requires free-space-tree and no-holes (add -O ^block-group-tree)"
                    .into(),
            ));
        }
        Ok(())
    }

    pub fn incompat_flags(&self) -> u64 {
        use btrfs_format::*;
        let mut f = BTRFS_FEATURE_INCOMPAT_MIXED_BACKREF;
        if self.extref {
            f |= BTRFS_FEATURE_INCOMPAT_EXTENDED_IREF;
        }
        if self.skinny_metadata {
            f |= BTRFS_FEATURE_INCOMPAT_SKINNY_METADATA;
        }
        if self.no_holes {
            f |= BTRFS_FEATURE_INCOMPAT_NO_HOLES;
        }
        f
    }

    pub fn compat_ro_flags(&self) -> u64 {
        use btrfs_format::*;
        let mut f = 0;
        if self.free_space_tree {
            f |= BTRFS_FEATURE_COMPAT_RO_FREE_SPACE_TREE
                | BTRFS_FEATURE_COMPAT_RO_FREE_SPACE_TREE_VALID;
        }
        if self.block_group_tree {
            f |= BTRFS_FEATURE_COMPAT_RO_BLOCK_GROUP_TREE;
        }
        f
    }
}

/// Everything needed to lay out and write a filesystem.
#[derive(Debug, Clone)]
pub struct MkfsConfig {
    /// Filesystem size; `None` means the size of the existing file or device.
    pub byte_count: Option<u64>,
    pub nodesize: u32,
    pub sectorsize: u32,
    pub csum: CsumType,
    pub metadata_profile: Profile,
    pub data_profile: Profile,
    pub features: Features,
    pub label: String,
    pub fsid: Option<[u8; 16]>,
    pub dev_uuid: Option<[u8; 16]>,
    /// Seconds and nanoseconds stamped as "now" (from `SOURCE_DATE_EPOCH` when set).
    pub now: (u64, u32),
    pub force: bool,
}

impl Default for MkfsConfig {
    fn default() -> Self {
        MkfsConfig {
            byte_count: None,
            nodesize: 16384,
            sectorsize: 4096,
            csum: CsumType::Crc32c,
            metadata_profile: Profile::Dup,
            data_profile: Profile::Single,
            features: Features::default(),
            label: String::new(),
            fsid: None,
            dev_uuid: None,
            now: (0, 0),
            force: false,
        }
    }
}

impl MkfsConfig {
    pub fn validate(&self) -> Result<()> {
        if self.sectorsize != 4096 {
            return Err(Error::InvalidOption(format!(
                "sectorsize {} is not supported: use 4096 (the page size)",
                self.sectorsize
            )));
        }
        let n = self.nodesize;
        if !n.is_power_of_two() || !(4096..=65536).contains(&n) || n < self.sectorsize {
            return Err(Error::InvalidOption(format!(
                "invalid nodesize {n}: it must be a power of two from 4096 (the sectorsize) to 65536"
            )));
        }
        if self.label.len() >= btrfs_format::BTRFS_LABEL_SIZE {
            return Err(Error::InvalidOption(format!(
                "label is {} bytes long; at most {} bytes fit",
                self.label.len(),
                btrfs_format::BTRFS_LABEL_SIZE - 1
            )));
        }
        if self.label.contains('\0') {
            return Err(Error::InvalidOption(
                "label must not contain a NUL byte".into(),
            ));
        }
        self.features.validate()
    }
}

/// Parse a size with an optional binary suffix (K, M, G, T, P, E; `KiB` forms too).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| Error::InvalidOption(format!("invalid size '{s}'")))?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        "e" | "eb" | "eib" => 60,
        _ => {
            return Err(Error::InvalidOption(format!(
                "invalid size suffix in '{s}'"
            )))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| Error::InvalidOption(format!("size '{s}' is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("16K").unwrap(), 16384);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999E").is_err());
    }

    #[test]
    fn features_toggle_and_validate() {
        let mut f = Features::default();
        f.apply("^block-group-tree,^no-holes").unwrap();
        assert!(!f.block_group_tree && !f.no_holes && f.extref);
        assert!(f.validate().is_ok());
        f.apply("block-group-tree").unwrap();
        assert!(f.validate().is_err());
        assert!(Features::default().apply("quota-v3").is_err());
    }

    #[test]
    fn nodesize_must_be_power_of_two_in_range() {
        for n in [4096, 8192, 16384, 32768, 65536] {
            let c = MkfsConfig {
                nodesize: n,
                ..Default::default()
            };
            assert!(c.validate().is_ok(), "{n}");
        }
        for n in [2048, 12288, 131072] {
            let c = MkfsConfig {
                nodesize: n,
                ..Default::default()
            };
            assert!(c.validate().is_err(), "{n}");
        }
    }
}
