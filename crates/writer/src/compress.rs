//! Compression of delayed ordered extents: zlib, zstd and lzo as btrfs stores
//! them, one reusable compressor per worker thread.
use std::cell::RefCell;
use std::io::Write;

use btrfs_format::*;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Zlib,
    Lzo,
    Zstd,
}

/// `--compress ALGO[:LEVEL]` / `--compress-force ALGO[:LEVEL]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    pub algo: Algo,
    pub level: i32,
    /// Try every range instead of giving up on a file whose first range
    /// does not compress (the kernel's `compress-force`).
    pub force: bool,
}

impl Compression {
    /// Whether a range is given to the compressor: always when forced,
    /// otherwise when the kernel's heuristic expects it to compress. `len`
    /// is the range's length (bytes past `data` are zeros).
    pub fn tries(&self, data: &[u8], len: usize) -> bool {
        self.force || heuristic_says_compress(data, len)
    }

    /// Parse `zstd[:1..15]`, `zlib[:1..9]`, `lzo`, or `no`/`none` (→ `None`).
    pub fn parse(s: &str, force: bool) -> Result<Option<Self>> {
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => {
                let l: i32 = l.parse().map_err(|_| {
                    Error::InvalidOption(format!("invalid compression level in '{s}'"))
                })?;
                (n, Some(l))
            }
            None => (s, None),
        };
        let (algo, default, range) = match name.to_ascii_lowercase().as_str() {
            "no" | "none" => return Ok(None),
            "zstd" => (Algo::Zstd, 3, 1..=15),
            "zlib" => (Algo::Zlib, 3, 1..=9),
            "lzo" => (Algo::Lzo, 1, 1..=1),
            other => {
                return Err(Error::InvalidOption(format!(
                    "unknown compression '{other}' (zstd, zlib, lzo, no)"
                )))
            }
        };
        if algo == Algo::Lzo && !cfg!(feature = "lzo") {
            return Err(Error::InvalidOption(
                "lzo support was not built in (cargo feature 'lzo')".into(),
            ));
        }
        let level = level.unwrap_or(default);
        if !range.contains(&level) {
            return Err(Error::InvalidOption(format!(
                "compression level {level} out of range {}..={} for {name}",
                range.start(),
                range.end()
            )));
        }
        Ok(Some(Compression { algo, level, force }))
    }

    /// The `compression` byte of file extent items.
    pub fn type_byte(&self) -> u8 {
        match self.algo {
            Algo::Zlib => BTRFS_COMPRESS_ZLIB,
            Algo::Lzo => BTRFS_COMPRESS_LZO,
            Algo::Zstd => BTRFS_COMPRESS_ZSTD,
        }
    }

    /// The incompat bit compressed data of this kind needs.
    pub fn incompat_flag(&self) -> u64 {
        match self.algo {
            Algo::Zlib => 0,
            Algo::Lzo => BTRFS_FEATURE_INCOMPAT_COMPRESS_LZO,
            Algo::Zstd => BTRFS_FEATURE_INCOMPAT_COMPRESS_ZSTD,
        }
    }

    pub fn name(&self) -> String {
        match self.algo {
            Algo::Zlib => format!("zlib:{}", self.level),
            Algo::Lzo => "lzo".into(),
            Algo::Zstd => format!("zstd:{}", self.level),
        }
    }
}

/// A worker's compressor state, reused across extents.
struct Worker {
    zstd: Option<(i32, zstd::bulk::Compressor<'static>)>,
    buf: Vec<u8>,
}

thread_local! {
    static WORKER: RefCell<Worker> = const { RefCell::new(Worker { zstd: None, buf: Vec::new() }) };
}

fn zstd_compress(w: &mut Worker, level: i32, input: &[u8], padded_to: usize) -> Result<Vec<u8>> {
    if w.zstd.as_ref().map(|z| z.0) != Some(level) {
        let mut c = zstd::bulk::Compressor::new(level)
            .map_err(|e| Error::Internal(format!("zstd: {e}")))?;
        // The kernel decodes with a 128 KiB window.
        c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(17))
            .map_err(|e| Error::Internal(format!("zstd: {e}")))?;
        w.zstd = Some((level, c));
    }
    let (_, c) = w
        .zstd
        .as_mut()
        .ok_or_else(|| Error::Internal("zstd".into()))?;
    let cap = zstd::zstd_safe::compress_bound(input.len());
    if padded_to == 1 {
        // Inline bytes, kept until the trees are built: compressed in the
        // thread's buffer, then given one of their exact size.
        w.buf.clear();
        w.buf.reserve(cap);
        c.compress_to_buffer(input, &mut w.buf)
            .map_err(|e| Error::Internal(format!("zstd: {e}")))?;
        return Ok(w.buf.clone());
    }
    // An extent: compressed straight into its own buffer, which is then
    // padded and shrunk in place (no copy of the compressed bytes).
    let mut v = Vec::with_capacity(cap.div_ceil(padded_to) * padded_to);
    c.compress_to_buffer(input, &mut v)
        .map_err(|e| Error::Internal(format!("zstd: {e}")))?;
    v.resize(v.len().div_ceil(padded_to) * padded_to, 0);
    v.shrink_to_fit();
    Ok(v)
}

fn zlib_compress(level: i32, input: &[u8]) -> Result<Vec<u8>> {
    let mut e = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(input.len() + input.len() / 8 + 64),
        flate2::Compression::new(level as u32),
    );
    e.write_all(input)
        .and_then(|_| e.finish())
        .map_err(|err| Error::Internal(format!("zlib: {err}")))
}

/// btrfs's LZO framing: a 4-byte total length, then per input sector a 4-byte
/// segment length and its LZO1X data; a segment header never straddles a
/// sector of the output (zeros pad to the next sector instead).
#[cfg(feature = "lzo")]
fn lzo_compress(input: &[u8], sectorsize: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; 4];
    for seg in input.chunks(sectorsize) {
        let c = lzokay_native::compress(seg).map_err(|e| Error::Internal(format!("lzo: {e:?}")))?;
        let room = sectorsize - out.len() % sectorsize;
        if room < 4 {
            out.resize(out.len() + room, 0);
        }
        out.extend_from_slice(&(c.len() as u32).to_le_bytes());
        out.extend_from_slice(&c);
        if out.len() > input.len() {
            break; // larger than the input: not worth it
        }
    }
    let total = out.len() as u32;
    out[..4].copy_from_slice(&total.to_le_bytes());
    Ok(out)
}

#[cfg(not(feature = "lzo"))]
fn lzo_compress(_: &[u8], _: usize) -> Result<Vec<u8>> {
    Err(Error::InvalidOption("lzo support was not built in".into()))
}

/// Compress `input` (whole sectors of file data, zero padded) the way btrfs
/// stores it inline: exactly the compressed bytes.
pub fn compress(c: &Compression, input: &[u8], sectorsize: usize) -> Result<Vec<u8>> {
    match c.algo {
        Algo::Zstd => WORKER.with(|w| zstd_compress(&mut w.borrow_mut(), c.level, input, 1)),
        Algo::Zlib => zlib_compress(c.level, input),
        Algo::Lzo => lzo_compress(input, sectorsize),
    }
}

/// Compress `input` for a regular extent: zero padded to whole sectors, as
/// the extent stores it on disk.
pub fn compress_extent(c: &Compression, input: &[u8], sectorsize: usize) -> Result<Vec<u8>> {
    let mut z = match c.algo {
        Algo::Zstd => {
            return WORKER.with(|w| zstd_compress(&mut w.borrow_mut(), c.level, input, sectorsize))
        }
        Algo::Zlib => zlib_compress(c.level, input)?,
        Algo::Lzo => lzo_compress(input, sectorsize)?,
    };
    z.resize(z.len().div_ceil(sectorsize) * sectorsize, 0);
    Ok(z)
}

/// The kernel's guess, before compressing a range, whether it is worth
/// trying (`btrfs_compress_heuristic`): it looks at 16 bytes of every 256 of
/// the range (at most 128 KiB; the zeros padding its last sector included,
/// as the kernel samples whole pages) and says yes for a sample whose
/// second half repeats its first, that uses under 64 byte values, whose 64
/// commonest values make up 90% of it, or whose byte entropy is under 80%;
/// no when 200 values are needed to cover 90% (random or already compressed
/// data) or the entropy is higher. Skipping those ranges saves most of the
/// compressor's time on incompressible data.
///
/// `len` is the range's length: bytes of it past `data` are zeros (the
/// padding of a file's last sector, which need not be in memory).
pub fn heuristic_says_compress(data: &[u8], len: usize) -> bool {
    const READ: usize = 16;
    const INTERVAL: usize = 256;
    const SET_THRESHOLD: usize = 64;
    const CORE_LOW: usize = 64;
    const CORE_HIGH: usize = 200;
    const ENTROPY_HIGH: u64 = 80;
    let len = len.max(data.len()).min(BTRFS_MAX_COMPRESSED as usize);
    let mut sample = [0u8; BTRFS_MAX_COMPRESSED as usize / INTERVAL * READ];
    let mut n = 0;
    let mut at = 0;
    while at + READ <= len {
        // What lies past `data` stays zero in the sample.
        if at < data.len() {
            let have = data.len().min(at + READ);
            sample[n..n + have - at].copy_from_slice(&data[at..have]);
        }
        n += READ;
        at += INTERVAL;
    }
    let sample = &sample[..n];
    let half = n / 2;
    if sample[..half] == sample[half..2 * half] {
        return true;
    }
    // Four tables: runs of one byte value (text is full of them) would
    // otherwise wait on each other's increments.
    let mut four = [[0u32; 256]; 4];
    let mut quads = sample.chunks_exact(4);
    for q in &mut quads {
        four[0][q[0] as usize] += 1;
        four[1][q[1] as usize] += 1;
        four[2][q[2] as usize] += 1;
        four[3][q[3] as usize] += 1;
    }
    for &b in quads.remainder() {
        four[0][b as usize] += 1;
    }
    let mut counts = [0u32; 256];
    for (v, c) in counts.iter_mut().enumerate() {
        *c = four[0][v] + four[1][v] + four[2][v] + four[3][v];
    }
    // Only the values present matter from here on: sorting those alone is
    // cheaper than sorting all 256 for the text most ranges hold.
    let mut present = [0u32; 256];
    let mut set = 0;
    for &c in counts.iter().filter(|&&c| c > 0) {
        present[set] = c;
        set += 1;
    }
    if set < SET_THRESHOLD {
        return true;
    }
    let counts = &mut present[..];
    counts[..set].sort_unstable_by(|a, b| b.cmp(a));
    // How many of the commonest values cover 90% of the sample: the kernel
    // counts the first 64 at once, then one by one up to 200.
    let threshold = n as u64 * 90 / 100;
    let mut sum: u64 = counts[..CORE_LOW].iter().map(|&c| c as u64).sum();
    let mut core = CORE_LOW;
    if sum <= threshold {
        while core < CORE_HIGH && counts[core] > 0 {
            sum += counts[core] as u64;
            if sum > threshold {
                break;
            }
            core += 1;
        }
        if core >= CORE_HIGH {
            return false;
        }
        if core > CORE_LOW {
            // Shannon entropy in percent of 8 bits per byte, with the
            // kernel's integer log2 of fourth powers.
            let log4 = |x: u64| (x * x * x * x).ilog2() as u64;
            let base = log4(n as u64);
            let bits: u64 = counts
                .iter()
                .take_while(|&&c| c > 0)
                .map(|&c| c as u64 * (base - log4(c as u64)))
                .sum();
            return bits / n as u64 * 100 / (8 * 4) < ENTROPY_HIGH;
        }
    }
    true
}

/// Compressed bytes worth keeping for an extent: they must save a sector.
pub fn worth_it(compressed: usize, raw: usize, sectorsize: usize) -> bool {
    compressed.div_ceil(sectorsize) < raw.div_ceil(sectorsize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_and_levels() {
        let z = Compression::parse("zstd", false).unwrap().unwrap();
        assert_eq!((z.algo, z.level), (Algo::Zstd, 3));
        assert_eq!(
            Compression::parse("zlib:9", true).unwrap().unwrap().level,
            9
        );
        assert!(Compression::parse("no", false).unwrap().is_none());
        assert!(Compression::parse("zstd:16", false).is_err());
        assert!(Compression::parse("zlib:0", false).is_err());
        assert!(Compression::parse("brotli", false).is_err());
    }

    #[test]
    fn zstd_and_zlib_round_trip() {
        let data: Vec<u8> = (0..128 * 1024u32).map(|i| (i / 100) as u8).collect();
        for spec in ["zstd:1", "zstd:15", "zlib:1", "zlib:9"] {
            let c = Compression::parse(spec, false).unwrap().unwrap();
            let out = compress(&c, &data, 4096).unwrap();
            assert!(worth_it(out.len(), data.len(), 4096), "{spec}");
            let back = match c.algo {
                Algo::Zstd => zstd::bulk::decompress(&out, data.len()).unwrap(),
                _ => {
                    let mut d = flate2::read::ZlibDecoder::new(&out[..]);
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut d, &mut v).unwrap();
                    v
                }
            };
            assert_eq!(back, data, "{spec}");
        }
    }

    #[test]
    fn extents_are_the_exact_bytes_zero_padded_to_sectors() {
        let data: Vec<u8> = (0..128 * 1024u32).map(|i| (i / 7 % 251) as u8).collect();
        for spec in ["zstd:3", "zlib:6"] {
            let c = Compression::parse(spec, false).unwrap().unwrap();
            let exact = compress(&c, &data, 4096).unwrap();
            let ext = compress_extent(&c, &data, 4096).unwrap();
            assert_eq!(ext.len() % 4096, 0, "{spec}");
            assert!(ext.len() - exact.len() < 4096, "{spec}");
            assert_eq!(&ext[..exact.len()], &exact[..], "{spec}");
            assert!(ext[exact.len()..].iter().all(|&b| b == 0), "{spec}");
        }
    }

    /// A splitmix64 stream: incompressible bytes without a dependency.
    fn noise(len: usize, mut x: u64) -> Vec<u8> {
        (0..len.div_ceil(8))
            .flat_map(|_| {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)).to_le_bytes()
            })
            .take(len)
            .collect()
    }

    #[test]
    fn heuristic_follows_the_kernels_rules() {
        // Random bytes: every value common, maximal entropy.
        assert!(!heuristic_says_compress(&noise(128 * 1024, 1), 128 * 1024));
        assert!(!heuristic_says_compress(&noise(4096, 2), 4096));
        // Text: under 64 byte values.
        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog\n"
            .iter()
            .cycle()
            .take(100_000)
            .copied()
            .collect();
        assert!(heuristic_says_compress(&text, text.len()));
        // Random bytes repeated: the sample's halves are equal.
        let half = noise(64 * 1024, 3);
        assert!(heuristic_says_compress(
            &[&half[..], &half[..]].concat(),
            128 * 1024
        ));
        // Too short to sample, or all alike: try.
        assert!(heuristic_says_compress(&[], 0));
        assert!(heuristic_says_compress(&noise(15, 4), 15));
        assert!(heuristic_says_compress(&vec![7u8; 8192], 8192));
        // Random bytes padded with zeros to their sector: the zeros are
        // sampled too, which brings the entropy down (a 3000-byte random
        // file in a 4 KiB sector is worth a try), unlike the bytes alone.
        let short = noise(3000, 8);
        assert!(heuristic_says_compress(&short, 4096));
        let mut padded = short.clone();
        padded.resize(4096, 0);
        assert!(heuristic_says_compress(&padded, 4096));
        assert!(!heuristic_says_compress(&short, 2816 + 16));
        // Zeros given by `len` are the same as zeros in memory.
        for size in [1, 15, 16, 17, 255, 256, 3000, 4095, 4096, 5000, 131_072] {
            for data in [
                noise(size, size as u64),
                text[..size.min(text.len())].to_vec(),
            ] {
                let len = data.len().div_ceil(4096) * 4096;
                let mut padded = data.clone();
                padded.resize(len, 0);
                assert_eq!(
                    heuristic_says_compress(&data, len),
                    heuristic_says_compress(&padded, len),
                    "{size}"
                );
            }
        }
        // All 256 values, but a few of them most of the time: 64 values
        // cover 90%, so the core set is small.
        let skewed: Vec<u8> = noise(128 * 1024, 5)
            .iter()
            .enumerate()
            .map(|(i, &b)| if i % 16 == 0 { b } else { b % 32 })
            .collect();
        assert!(heuristic_says_compress(&skewed, skewed.len()));
        // 160 values, nearly evenly: the core set is between 64 and 200 and the
        // entropy (log2 160 = 7.3 bits, 91%) too high.
        let even: Vec<u8> = noise(128 * 1024, 6).iter().map(|&b| b % 160).collect();
        assert!(!heuristic_says_compress(&even, even.len()));
        // 100 values, skewed (a few common): entropy under 80%.
        let low: Vec<u8> = noise(128 * 1024, 7)
            .iter()
            .map(|&b| if b < 128 { b % 8 } else { b % 100 })
            .collect();
        assert!(heuristic_says_compress(&low, low.len()));
    }

    #[cfg(feature = "lzo")]
    #[test]
    fn lzo_framing_keeps_headers_inside_sectors() {
        let data: Vec<u8> = (0..64 * 1024u32)
            .map(|i| (i % 7 + i / 4096) as u8)
            .collect();
        let out = lzo_compress(&data, 4096).unwrap();
        assert_eq!(
            u32::from_le_bytes(out[..4].try_into().unwrap()) as usize,
            out.len()
        );
        let mut pos = 4;
        let mut segments = 0;
        while pos < out.len() {
            if 4096 - pos % 4096 < 4 {
                pos += 4096 - pos % 4096;
            }
            let len = u32::from_le_bytes(out[pos..pos + 4].try_into().unwrap()) as usize;
            assert!(pos % 4096 + 4 <= 4096, "header straddles a sector");
            pos += 4 + len;
            segments += 1;
        }
        assert_eq!(segments, 16);
        assert!(worth_it(1000, 8192, 4096) && !worth_it(4097, 8192, 4096));
    }
}
