//! LZO1X decompression, bounds-checked: no crate we could use both decodes hostile
//! input without panicking and is licensed compatibly, so this is our own decoder of
//! the LZO1X bitstream (version 0, as the kernel's `lzo1x_1_compress` writes it).
//!
//! Instruction summary (`t` is the instruction byte, `state` the literal count the
//! previous instruction copied, 4 meaning "four or more"):
//! - `t` 0..15, state 0: literal run of `t + 3` bytes (t = 0: extended length).
//! - `t` 0..15, state 1..3: 2-byte match, distance `1 + (t >> 2) + (next << 2)`.
//! - `t` 0..15, state 4: 3-byte match, distance `2049 + (t >> 2) + (next << 2)`.
//! - `t` 64..255: match of `(t >> 5) + 1` bytes, distance `1 + ((t >> 2) & 7) + (next << 3)`.
//! - `t` 32..63: match of `(t & 31) + 2` bytes (0: extended), distance from an LE16.
//! - `t` 16..31: far match (distance above 16 KiB); distance 0 ends the stream.
//!
//! After a match, the low two bits of its last byte give 0..3 literals that follow.

/// Why an LZO stream was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LzoError {
    /// The input ended inside an instruction.
    InputOverrun,
    /// The output would exceed the caller's limit.
    OutputOverrun,
    /// A match refers before the start of the output.
    LookbehindOverrun,
    /// Bytes follow the end-of-stream marker.
    TrailingInput,
    /// A malformed end-of-stream marker, or an unsupported stream version.
    Invalid,
}

impl core::fmt::Display for LzoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            LzoError::InputOverrun => "lzo: input ends inside an instruction",
            LzoError::OutputOverrun => "lzo: output exceeds its limit",
            LzoError::LookbehindOverrun => "lzo: match distance before start of output",
            LzoError::TrailingInput => "lzo: bytes after the end-of-stream marker",
            LzoError::Invalid => "lzo: malformed stream",
        })
    }
}

struct Input<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> Result<usize, LzoError> {
        let b = *self.buf.get(self.pos).ok_or(LzoError::InputOverrun)?;
        self.pos += 1;
        Ok(b as usize)
    }

    fn le16(&mut self) -> Result<usize, LzoError> {
        let lo = self.byte()?;
        let hi = self.byte()?;
        Ok(lo | (hi << 8))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], LzoError> {
        let end = self.pos.checked_add(n).ok_or(LzoError::InputOverrun)?;
        let s = self.buf.get(self.pos..end).ok_or(LzoError::InputOverrun)?;
        self.pos = end;
        Ok(s)
    }

    /// An extended length: zero bytes each add 255, then a non-zero byte plus `base`.
    /// Capped at `limit` so a run of zeros cannot grow the count without bound.
    fn ext_len(&mut self, base: usize, limit: usize) -> Result<usize, LzoError> {
        let mut n = 0usize;
        loop {
            let b = self.byte()?;
            if b != 0 {
                return Ok(n + base + b);
            }
            n += 255;
            if n > limit {
                return Err(LzoError::OutputOverrun);
            }
        }
    }
}

fn copy_literals(
    inp: &mut Input<'_>,
    out: &mut Vec<u8>,
    n: usize,
    limit: usize,
) -> Result<(), LzoError> {
    if out.len() + n > limit {
        return Err(LzoError::OutputOverrun);
    }
    out.extend_from_slice(inp.take(n)?);
    Ok(())
}

fn copy_match(out: &mut Vec<u8>, len: usize, dist: usize, limit: usize) -> Result<(), LzoError> {
    if dist == 0 || dist > out.len() {
        return Err(LzoError::LookbehindOverrun);
    }
    if out.len() + len > limit {
        return Err(LzoError::OutputOverrun);
    }
    let start = out.len() - dist;
    if dist >= len {
        out.extend_from_within(start..start + len);
    } else {
        // Overlapping copy repeats the last `dist` bytes: byte by byte on purpose.
        for i in 0..len {
            let b = out[start + i];
            out.push(b);
        }
    }
    Ok(())
}

/// Decompress one LZO1X stream of exactly `src`, producing at most `limit` bytes.
pub fn decompress(src: &[u8], limit: usize) -> Result<Vec<u8>, LzoError> {
    let mut inp = Input { buf: src, pos: 0 };
    let mut out = Vec::with_capacity(limit.min(64 * 1024));
    let mut state = 0usize;

    // The first byte may start with a literal run of up to 238 bytes.
    let first = *src.first().ok_or(LzoError::InputOverrun)? as usize;
    if first > 17 {
        inp.pos = 1;
        let n = first - 17;
        copy_literals(&mut inp, &mut out, n, limit)?;
        state = if n < 4 { n } else { 4 };
    } else if first == 17 {
        // Marks the run-length ("lzo-rle") bitstream, which btrfs never writes.
        return Err(LzoError::Invalid);
    }

    loop {
        let t = inp.byte()?;
        let (len, dist, next);
        if t < 16 {
            if state == 0 {
                let n = if t == 0 { inp.ext_len(15, limit)? } else { t } + 3;
                copy_literals(&mut inp, &mut out, n, limit)?;
                state = 4;
                continue;
            }
            let h = inp.byte()?;
            next = t & 3;
            if state < 4 {
                len = 2;
                dist = 1 + (t >> 2) + (h << 2);
            } else {
                len = 3;
                dist = 1 + 0x800 + (t >> 2) + (h << 2);
            }
        } else if t >= 64 {
            let h = inp.byte()?;
            len = (t >> 5) + 1;
            dist = 1 + ((t >> 2) & 7) + (h << 3);
            next = t & 3;
        } else if t >= 32 {
            let l = t & 31;
            len = if l == 0 { inp.ext_len(31, limit)? } else { l } + 2;
            let d = inp.le16()?;
            dist = 1 + (d >> 2);
            next = d & 3;
        } else {
            let l = t & 7;
            len = if l == 0 { inp.ext_len(7, limit)? } else { l } + 2;
            let d = inp.le16()?;
            let far = ((t & 8) << 11) + (d >> 2);
            if far == 0 {
                // End of stream: the marker is exactly 0x11 0x00 0x00.
                if len != 3 {
                    return Err(LzoError::Invalid);
                }
                if inp.pos != src.len() {
                    return Err(LzoError::TrailingInput);
                }
                return Ok(out);
            }
            dist = far + 0x4000;
            next = d & 3;
        }
        copy_match(&mut out, len, dist, limit)?;
        copy_literals(&mut inp, &mut out, next, limit)?;
        state = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EOS: [u8; 3] = [0x11, 0, 0];

    #[test]
    fn literal_only_stream() {
        let mut s = vec![17 + 5];
        s.extend_from_slice(b"hello");
        s.extend_from_slice(&EOS);
        assert_eq!(decompress(&s, 100).unwrap(), b"hello");
        assert_eq!(decompress(&s, 4), Err(LzoError::OutputOverrun));
        assert_eq!(
            decompress(&s[..s.len() - 1], 100),
            Err(LzoError::InputOverrun)
        );
        let mut t = s.clone();
        t.push(0);
        assert_eq!(decompress(&t, 100), Err(LzoError::TrailingInput));
    }

    #[test]
    fn overlapping_match_repeats() {
        // "ab" as 2 literals, then an M2 match (t >= 64) of length 3 + L at distance 2.
        // 01 L DDD SS: L=1 -> len 4, DDD = (dist-1) & 7 = 1, SS = 0; H = 0.
        let mut s = vec![17 + 2, b'a', b'b'];
        s.push(0b0110_0100);
        s.push(0);
        s.extend_from_slice(&EOS);
        assert_eq!(decompress(&s, 100).unwrap(), b"ababab");
    }

    #[test]
    fn long_literal_run_with_extended_length() {
        // First byte 0 (state 0): run length 3 + 15 + zeros*255 + byte.
        let n = 3 + 15 + 255 + 7;
        let mut s = vec![0, 0, 7];
        s.extend(std::iter::repeat_n(b'x', n));
        s.extend_from_slice(&EOS);
        assert_eq!(decompress(&s, 1000).unwrap().len(), n);
    }

    #[test]
    fn rejects_lookbehind_and_garbage_without_panicking() {
        assert_eq!(
            decompress(&[18, b'a', 0x40, 0x01], 100),
            Err(LzoError::LookbehindOverrun)
        );
        assert_eq!(decompress(&[], 100), Err(LzoError::InputOverrun));
        let mut x = 1u32;
        for _ in 0..20000 {
            let len = (x % 64) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = decompress(&buf, 4096);
        }
    }

    #[test]
    fn zero_run_is_capped() {
        let mut s = vec![0u8];
        s.extend(std::iter::repeat_n(0u8, 10_000));
        assert_eq!(decompress(&s, 4096), Err(LzoError::OutputOverrun));
    }
}
