//! The four checksum algorithms btrfs uses for metadata and data.
use sha2::Digest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CsumType {
    Crc32c,
    Xxhash64,
    Sha256,
    Blake2b,
}

impl CsumType {
    pub const ALL: [CsumType; 4] = [
        CsumType::Crc32c,
        CsumType::Xxhash64,
        CsumType::Sha256,
        CsumType::Blake2b,
    ];

    /// `csum_type` value in the superblock.
    pub fn from_disk(v: u16) -> Option<Self> {
        Some(match v {
            0 => CsumType::Crc32c,
            1 => CsumType::Xxhash64,
            2 => CsumType::Sha256,
            3 => CsumType::Blake2b,
            _ => return None,
        })
    }

    pub fn to_disk(self) -> u16 {
        match self {
            CsumType::Crc32c => 0,
            CsumType::Xxhash64 => 1,
            CsumType::Sha256 => 2,
            CsumType::Blake2b => 3,
        }
    }

    /// Bytes of checksum stored per sector or block.
    pub fn size(self) -> usize {
        match self {
            CsumType::Crc32c => 4,
            CsumType::Xxhash64 => 8,
            CsumType::Sha256 | CsumType::Blake2b => 32,
        }
    }

    /// Name as `mkfs.btrfs --csum` accepts it.
    pub fn name(self) -> &'static str {
        match self {
            CsumType::Crc32c => "crc32c",
            CsumType::Xxhash64 => "xxhash",
            CsumType::Sha256 => "sha256",
            CsumType::Blake2b => "blake2",
        }
    }

    /// Parse a `--csum` name (with the aliases btrfs-progs accepts).
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "crc32c" => CsumType::Crc32c,
            "xxhash" | "xxhash64" => CsumType::Xxhash64,
            "sha256" => CsumType::Sha256,
            "blake2" | "blake2b" => CsumType::Blake2b,
            _ => return None,
        })
    }

    /// Checksum of `data`, zero-padded to 32 bytes as stored in headers.
    pub fn compute(self, data: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        self.compute_into(data, &mut out[..self.size()]);
        out
    }

    /// Write the checksum of `data` into `out` (exactly `self.size()` bytes).
    pub fn compute_into(self, data: &[u8], out: &mut [u8]) {
        match self {
            CsumType::Crc32c => out.copy_from_slice(&crc32c::crc32c(data).to_le_bytes()),
            CsumType::Xxhash64 => {
                out.copy_from_slice(&xxhash_rust::xxh64::xxh64(data, 0).to_le_bytes())
            }
            CsumType::Sha256 => out.copy_from_slice(&sha2::Sha256::digest(data)),
            CsumType::Blake2b => {
                let mut h = blake2::Blake2b::<blake2::digest::consts::U32>::new();
                h.update(data);
                out.copy_from_slice(&h.finalize())
            }
        }
    }
}

impl core::fmt::Display for CsumType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // crc32c("123456789") = 0xe3069283 (the standard check value).
        assert_eq!(
            CsumType::Crc32c.compute(b"123456789")[..4],
            0xe3069283u32.to_le_bytes()
        );
        // XXH64("", 0) = 0xef46db3751d8e999.
        assert_eq!(
            CsumType::Xxhash64.compute(b"")[..8],
            0xef46db3751d8e999u64.to_le_bytes()
        );
        // SHA-256("abc") starts ba7816bf.
        assert_eq!(
            CsumType::Sha256.compute(b"abc")[..4],
            [0xba, 0x78, 0x16, 0xbf]
        );
        // BLAKE2b-256("abc") starts bddd813c.
        assert_eq!(
            CsumType::Blake2b.compute(b"abc")[..4],
            [0xbd, 0xdd, 0x81, 0x3c]
        );
    }

    #[test]
    fn names_round_trip() {
        for c in CsumType::ALL {
            assert_eq!(CsumType::from_name(c.name()), Some(c));
            assert_eq!(CsumType::from_disk(c.to_disk()), Some(c));
        }
        assert_eq!(CsumType::from_name("md5"), None);
        assert_eq!(CsumType::from_disk(4), None);
    }
}
