//! btrfs on-disk format: structures, constants, checksums and hashes.
//!
//! Pure and panic-free: no I/O, no policy. Every structure is a fixed little-endian
//! layout named after `include/uapi/linux/btrfs_tree.h`; decoding arbitrary bytes
//! returns [`FormatError`] instead of panicking or trusting a length.
#![forbid(unsafe_code)]

pub mod consts;
pub mod csum;
pub mod hash;
pub mod items;
pub mod key;
pub mod structs;
pub mod tree;

pub use consts::*;
pub use csum::CsumType;
pub use hash::{extent_data_ref_hash, extref_hash, name_hash};
pub use key::Key;
pub use structs::*;

/// Decoding failure: the bytes do not hold what they claim to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("{what}: need {need} bytes, have {have}")]
    TooShort {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{what}: {detail}")]
    Invalid { what: &'static str, detail: String },
}

impl FormatError {
    pub fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        FormatError::Invalid {
            what,
            detail: detail.into(),
        }
    }
}

/// Read a fixed-layout structure from the start of `bytes`, without trusting its length.
pub fn read_struct<T>(bytes: &[u8], what: &'static str) -> Result<T, FormatError>
where
    T: zerocopy::FromBytes + zerocopy::KnownLayout + zerocopy::Immutable + zerocopy::Unaligned,
{
    let need = core::mem::size_of::<T>();
    match T::read_from_prefix(bytes) {
        Ok((v, _)) => Ok(v),
        Err(_) => Err(FormatError::TooShort {
            what,
            need,
            have: bytes.len(),
        }),
    }
}
