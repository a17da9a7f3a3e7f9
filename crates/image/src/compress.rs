//! Decompression of compressed file extents, with output capped by the caller.
//!
//! btrfs stores each compressed extent as one self-contained stream: zlib-wrapped
//! deflate, a zstd frame, or btrfs's own LZO segment framing. The stream is
//! followed by zero padding up to the sector, so decoders stop at their stream's end
//! and never at the end of the input.
use std::io::Read;

use btrfs_format::consts::*;

/// zstd window the kernel allows for btrfs (`ZSTD_BTRFS_MAX_WINDOWLOG`): a frame that
/// asks for more is not one the kernel wrote, and bounds the decoder's memory.
const ZSTD_MAX_WINDOWLOG: u32 = 17;

/// Decompress `input` (compression type `compression`) into at most `limit` bytes.
/// The output may be shorter than `limit`; the caller zero-fills the rest, as the
/// kernel does.
pub fn decompress(
    compression: u8,
    input: &[u8],
    limit: usize,
    sectorsize: u32,
) -> Result<Vec<u8>, String> {
    match compression {
        BTRFS_COMPRESS_ZLIB => read_capped(flate2::read::ZlibDecoder::new(input), limit)
            .map_err(|e| format!("zlib: {e}")),
        BTRFS_COMPRESS_ZSTD => {
            let mut d = zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|e| format!("zstd: {e}"))?
                .single_frame();
            d.window_log_max(ZSTD_MAX_WINDOWLOG)
                .map_err(|e| format!("zstd: {e}"))?;
            read_capped(d, limit).map_err(|e| format!("zstd: {e}"))
        }
        BTRFS_COMPRESS_LZO => lzo_extent(input, limit, sectorsize),
        other => Err(format!("unknown compression type {other}")),
    }
}

fn read_capped(r: impl Read, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(limit.min(BTRFS_MAX_COMPRESSED as usize));
    r.take(limit as u64).read_to_end(&mut out)?;
    Ok(out)
}

fn le32(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

/// Largest LZO1X output for `n` input bytes; the kernel sizes its segment buffers so.
fn lzo1x_worst_compress(n: usize) -> usize {
    n + n / 16 + 64 + 3 + 2
}

/// btrfs LZO framing: LE32 total length (header included), then segments of LE32
/// length + LZO1X data, each decompressing to at most one sector. A segment header
/// never straddles a sector: with fewer than 4 bytes left, zeros pad to the next.
fn lzo_extent(input: &[u8], limit: usize, sectorsize: u32) -> Result<Vec<u8>, String> {
    let sector = sectorsize.max(4096) as usize;
    let total = le32(input, 0).ok_or("lzo: extent shorter than its header")?;
    if total > input.len() || total > BTRFS_MAX_COMPRESSED as usize || total < 4 {
        return Err(format!(
            "lzo: total length {total} invalid for {} bytes on disk",
            input.len()
        ));
    }
    let mut pos = 4usize;
    let mut out = Vec::with_capacity(limit.min(BTRFS_MAX_COMPRESSED as usize));
    while pos < total && out.len() < limit {
        let seg = le32(input, pos).ok_or("lzo: segment header past end")?;
        pos += 4;
        if seg > lzo1x_worst_compress(sector) {
            return Err(format!(
                "lzo: segment of {seg} bytes at {} too big",
                pos - 4
            ));
        }
        let end = pos
            .checked_add(seg)
            .filter(|&e| e <= total)
            .ok_or_else(|| format!("lzo: segment at {} runs past total length {total}", pos - 4))?;
        let part = crate::lzo::decompress(&input[pos..end], lzo1x_worst_compress(sector))
            .map_err(|e| format!("{e} (segment at {})", pos - 4))?;
        let room = limit - out.len();
        out.extend_from_slice(&part[..part.len().min(room)]);
        pos = end;
        let left = sector - pos % sector;
        if left < 4 {
            pos += left;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn zlib_and_zstd_round_trip_with_padding() {
        let data: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).unwrap();
        let mut zl = z.finish().unwrap();
        zl.resize(zl.len().next_multiple_of(4096), 0);
        assert_eq!(
            decompress(BTRFS_COMPRESS_ZLIB, &zl, 20000, 4096).unwrap(),
            data
        );
        // A cap shorter than the stream truncates, never over-allocates.
        assert_eq!(
            decompress(BTRFS_COMPRESS_ZLIB, &zl, 100, 4096).unwrap(),
            &data[..100]
        );

        let mut zs = zstd::bulk::compress(&data, 3).unwrap();
        zs.resize(zs.len().next_multiple_of(4096), 0);
        assert_eq!(
            decompress(BTRFS_COMPRESS_ZSTD, &zs, 20000, 4096).unwrap(),
            data
        );
        assert!(decompress(BTRFS_COMPRESS_ZSTD, &zs[..10], 20000, 4096).is_err());
        assert!(decompress(9, &zs, 20000, 4096).is_err());
    }

    #[test]
    fn lzo_framing_skips_sector_padding() {
        // Two literal-only segments; the first ends 2 bytes before a sector boundary.
        let lit = |n: usize, b: u8| {
            let mut s = vec![0u8, 0, 0, 0]; // placeholder for the segment header
                                            // state 0, t = 0: long literal run of 3 + 15 + ext
            s.push(0);
            let ext = n - 18;
            s.extend(std::iter::repeat_n(0u8, ext / 255));
            s.push((ext % 255) as u8);
            s.extend(std::iter::repeat_n(b, n));
            s.extend_from_slice(&[0x11, 0, 0]);
            let seg = (s.len() - 4) as u32;
            s[..4].copy_from_slice(&seg.to_le_bytes());
            s
        };
        // Pick the first segment's size so it ends at 4094 within the sector.
        let mut buf = vec![0u8; 4];
        let mut n = 3000;
        loop {
            let s = lit(n, b'a');
            if (n - 18) % 255 != 0 && 4 + s.len() == 4094 {
                buf.extend_from_slice(&s);
                break;
            }
            n += 1;
            assert!(n < 4096);
        }
        buf.extend_from_slice(&[0, 0]); // padding to the sector boundary
        buf.extend_from_slice(&lit(100, b'b'));
        let total = buf.len() as u32;
        buf[..4].copy_from_slice(&total.to_le_bytes());
        let out = decompress(BTRFS_COMPRESS_LZO, &buf, 8192, 4096).unwrap();
        assert_eq!(out.len(), n + 100);
        assert!(out[..n].iter().all(|&b| b == b'a'));
        assert!(out[n..].iter().all(|&b| b == b'b'));
        // Corrupt total length.
        buf[..4].copy_from_slice(&(total + 1).to_le_bytes());
        assert!(decompress(BTRFS_COMPRESS_LZO, &buf, 8192, 4096).is_err());
    }
}
