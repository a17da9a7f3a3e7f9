//! `cat`: the bytes of one file, decompressed, holes as zeros.
use std::io::Write;

use btrfs_image::Image;

use crate::{meta, Error, InodeId, Kind, Limits, Result};

/// Bytes read from the image per step.
pub const CHUNK: u64 = 4 << 20;

/// Call `f` with the bytes of regular file `id` in order, `CHUNK` at a time;
/// refuses files over `limits.max_file_size`.
pub fn read_chunks(
    img: &Image,
    id: InodeId,
    shown: &str,
    limits: &Limits,
    f: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<u64> {
    let m = meta(img, id)?;
    if m.kind != Kind::File {
        return Err(Error::Usage(format!(
            "{shown}: a {}, not a regular file",
            m.kind.name()
        )));
    }
    limits.check_size(shown, m.size)?;
    let mut off = 0u64;
    while off < m.size {
        let n = CHUNK.min(m.size - off);
        let data = img.read_file(id.subvol, id.ino, off, n)?;
        if data.len() as u64 != n {
            return Err(Error::Image(btrfs_image::Error::corrupt(
                btrfs_image::Location::Inode {
                    subvol: id.subvol,
                    ino: id.ino,
                },
                format!("read {} bytes at {off}, expected {n}", data.len()),
            )));
        }
        f(off, &data)?;
        off += n;
    }
    Ok(m.size)
}

/// Write regular file `id` to `w`; returns its size.
pub fn cat(
    img: &Image,
    id: InodeId,
    shown: &str,
    limits: &Limits,
    w: &mut dyn Write,
) -> Result<u64> {
    read_chunks(img, id, shown, limits, &mut |_, data| {
        w.write_all(data).map_err(|e| Error::io("<output>", e))
    })
}
