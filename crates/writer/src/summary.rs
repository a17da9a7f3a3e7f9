//! Human-readable sizes and the summary `forge-mkfs` prints.
use std::fmt;

use btrfs_format::*;

use crate::commit::CommitReport;
use crate::config::MkfsConfig;
use crate::layout::Layout;

/// `1.50GiB`-style size, as btrfs-progs prints them.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}.00B")
    } else {
        format!("{v:.2}{}", UNITS[u])
    }
}

pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Parse a textual UUID (with or without dashes).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 || s.len() != 36 && s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What `forge-mkfs` prints after a successful run, in `mkfs.btrfs`'s shape.
pub struct Summary<'a> {
    pub path: &'a str,
    pub cfg: &'a MkfsConfig,
    pub layout: &'a Layout,
    pub report: &'a CommitReport,
}

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sb = &self.report.superblock;
        let label = String::from_utf8_lossy(sb.label_bytes()).into_owned();
        writeln!(f, "btrfs-forge {}", env!("CARGO_PKG_VERSION"))?;
        writeln!(f)?;
        writeln!(
            f,
            "Label:              {}",
            if label.is_empty() { "(null)" } else { &label }
        )?;
        writeln!(f, "UUID:               {}", format_uuid(&sb.fsid))?;
        writeln!(f, "Node size:          {}", sb.nodesize.get())?;
        writeln!(f, "Sector size:        {}", sb.sectorsize.get())?;
        writeln!(f, "Filesystem size:    {}", human(sb.total_bytes.get()))?;
        writeln!(f, "Block group profiles:")?;
        for (name, flag) in [
            ("Data", BTRFS_BLOCK_GROUP_DATA),
            ("Metadata", BTRFS_BLOCK_GROUP_METADATA),
            ("System", BTRFS_BLOCK_GROUP_SYSTEM),
        ] {
            let chunks: Vec<_> = self
                .layout
                .chunks
                .iter()
                .filter(|c| c.flags & flag != 0)
                .collect();
            let total: u64 = chunks.iter().map(|c| c.length).sum();
            let profile = if chunks.iter().any(|c| c.flags & BTRFS_BLOCK_GROUP_DUP != 0) {
                "DUP"
            } else {
                "single"
            };
            writeln!(
                f,
                "  {:<17}{:<10}{:>12}",
                format!("{name}:"),
                profile,
                human(total)
            )?;
        }
        let mut incompat = Vec::new();
        let inc = sb.incompat_flags.get();
        for (bit, name) in [
            (BTRFS_FEATURE_INCOMPAT_EXTENDED_IREF, "extref"),
            (BTRFS_FEATURE_INCOMPAT_SKINNY_METADATA, "skinny-metadata"),
            (BTRFS_FEATURE_INCOMPAT_NO_HOLES, "no-holes"),
            (BTRFS_FEATURE_INCOMPAT_COMPRESS_ZSTD, "compress-zstd"),
            (BTRFS_FEATURE_INCOMPAT_COMPRESS_LZO, "compress-lzo"),
            (BTRFS_FEATURE_INCOMPAT_DEFAULT_SUBVOL, "default-subvol"),
        ] {
            if inc & bit != 0 {
                incompat.push(name);
            }
        }
        let mut ro = Vec::new();
        let cro = sb.compat_ro_flags.get();
        if cro & BTRFS_FEATURE_COMPAT_RO_FREE_SPACE_TREE != 0 {
            ro.push("free-space-tree");
        }
        if cro & BTRFS_FEATURE_COMPAT_RO_BLOCK_GROUP_TREE != 0 {
            ro.push("block-group-tree");
        }
        writeln!(
            f,
            "Features:           {}",
            incompat
                .iter()
                .chain(ro.iter())
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        writeln!(f, "Checksum:           {}", self.cfg.csum)?;
        writeln!(f, "Number of devices:  1")?;
        writeln!(f, "Devices:")?;
        writeln!(f, "   ID        SIZE  PATH")?;
        writeln!(
            f,
            "    1  {:>10}  {}",
            human(sb.total_bytes.get()),
            self.path
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512.00B");
        assert_eq!(human(1536), "1.50KiB");
        assert_eq!(human(512 << 20), "512.00MiB");
    }

    #[test]
    fn uuid_text_round_trip() {
        let u = parse_uuid("11111111-2222-3333-4444-555555555555").unwrap();
        assert_eq!(format_uuid(&u), "11111111-2222-3333-4444-555555555555");
        assert!(parse_uuid("1111").is_none());
        assert!(parse_uuid("zz111111-2222-3333-4444-555555555555").is_none());
    }
}
