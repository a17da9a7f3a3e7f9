//! The image file or device: sizing, refusing to clobber, positional writes,
//! and the superblock copies (always written last).
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use btrfs_format::*;
use zerocopy::IntoBytes;

use crate::{Error, Result};

pub struct Output {
    file: File,
    /// The thread that starts writeback of finished ranges (see
    /// `start_writeback`), started on first use.
    writeback: std::sync::Mutex<WritebackState>,
    /// Whether ranges given to `start_writeback` leave the page cache once
    /// on disk (see `Writeback`).
    drop_behind: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// When space is reserved as writes reach it (see `reserve_lazily`):
    /// the end reserved so far, and the most there is to reserve.
    lazy_reserve: std::sync::Mutex<Option<LazyReserve>>,
    pub path: PathBuf,
    /// Bytes of the filesystem (not necessarily of the file or device).
    pub size: u64,
    pub is_block_device: bool,
}

/// Space reserved as writes reach it: reserved up to `done`, attempted up
/// to `tried`, never beyond `limit`.
struct LazyReserve {
    done: u64,
    tried: u64,
    limit: u64,
}

/// Signatures of filesystems and partition tables we refuse to overwrite without -f.
fn detect_signature(f: &File, dev_size: u64) -> Option<String> {
    let mut head = vec![0u8; 68 * 1024];
    let n = f.read_at(&mut head, 0).unwrap_or(0);
    head.truncate(n);
    let at = |off: usize, sig: &[u8]| head.get(off..off + sig.len()) == Some(sig);
    for mirror in 0..BTRFS_SUPER_MIRROR_MAX {
        let off = btrfs_sb_offset(mirror);
        if off + BTRFS_SUPER_INFO_SIZE as u64 > dev_size {
            continue;
        }
        let mut m = [0u8; 8];
        if f.read_exact_at(&mut m, off + 0x40).is_ok() && u64::from_le_bytes(m) == BTRFS_MAGIC {
            return Some(format!("it holds a btrfs filesystem (superblock at {off})"));
        }
    }
    if at(1024 + 56, &[0x53, 0xef]) {
        return Some("it holds an ext2/3/4 filesystem".into());
    }
    if at(0, b"XFSB") {
        return Some("it holds an XFS filesystem".into());
    }
    if at(0, b"hsqs") {
        return Some("it holds a squashfs filesystem".into());
    }
    if at(1024, &0xE0F5E1E2u32.to_le_bytes()) {
        return Some("it holds an EROFS filesystem".into());
    }
    if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        return Some("it holds swap space".into());
    }
    if at(512, b"EFI PART") {
        return Some("it holds a GPT partition table".into());
    }
    if at(510, &[0x55, 0xaa]) && (0..4).any(|i| head.get(446 + i * 16 + 4).is_some_and(|&t| t != 0))
    {
        return Some("it holds a DOS partition table".into());
    }
    None
}

impl Output {
    /// Open (or create) `path` for a filesystem of `byte_count` bytes, or of the
    /// existing size. Regular files are cut to zero first so that the result
    /// depends only on what we write; old superblocks on devices are wiped.
    pub fn create(path: &Path, byte_count: Option<u64>, force: bool) -> Result<Output> {
        let io = |e| Error::io(path, e);
        if path.is_dir() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory"),
            ));
        }
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        let is_block_device = meta.file_type().is_block_device();
        let current = if is_block_device {
            (&file).seek(SeekFrom::End(0)).map_err(io)?
        } else {
            meta.len()
        };
        if existed && !force {
            if let Some(what) = detect_signature(&file, current) {
                return Err(Error::ExistingFilesystem {
                    path: path.into(),
                    what,
                });
            }
        }
        let size = match byte_count {
            Some(b) => b,
            None if current > 0 => current,
            None => {
                if !existed {
                    let _ = std::fs::remove_file(path);
                }
                return Err(Error::InvalidOption(format!(
                    "{}: the file is empty; give its size with -b/--byte-count",
                    path.display()
                )));
            }
        };
        if is_block_device {
            if size > current {
                return Err(Error::InvalidOption(format!(
                    "{}: -b {size} is larger than the device ({current} bytes)",
                    path.display()
                )));
            }
        } else {
            file.set_len(0).map_err(io)?;
            file.set_len(size).map_err(io)?;
        }
        let out = Output {
            file,
            writeback: std::sync::Mutex::new(WritebackState::NotStarted),
            drop_behind: Default::default(),
            lazy_reserve: Default::default(),
            path: path.into(),
            size,
            is_block_device,
        };
        if is_block_device {
            out.wipe(current)?;
        }
        Ok(out)
    }

    /// Zero the reserved first MiB and every superblock copy on the device.
    fn wipe(&self, dev_size: u64) -> Result<()> {
        let zeros = vec![0u8; BTRFS_DEVICE_RANGE_RESERVED as usize];
        self.write_at(&zeros[..dev_size.min(zeros.len() as u64) as usize], 0)?;
        for mirror in 1..BTRFS_SUPER_MIRROR_MAX {
            let off = btrfs_sb_offset(mirror);
            if off + BTRFS_SUPER_INFO_SIZE as u64 <= dev_size {
                self.write_at(&zeros[..BTRFS_SUPER_INFO_SIZE], off)?;
            }
        }
        self.sync()
    }

    /// Start writing `[offset, offset+len)` back to disk soon, so the final
    /// flush has less left to do. The request goes to a thread of its own:
    /// `sync_file_range` can sleep in the block layer's writeback throttling,
    /// and a worker sleeping there leaves its core idle (measured: a third
    /// of the data pipeline's wall time).
    pub fn start_writeback(&self, offset: u64, len: u64) {
        let mut wb = self.writeback.lock().unwrap_or_else(|p| p.into_inner());
        if let WritebackState::NotStarted = *wb {
            // Without a second descriptor (or a thread) the ranges are
            // simply left to the kernel's own writeback.
            let drop_behind = self.drop_behind.clone();
            *wb = match self
                .file
                .try_clone()
                .ok()
                .and_then(|f| Writeback::start(f, drop_behind))
            {
                Some(w) => WritebackState::Running(w),
                None => WritebackState::Unavailable,
            };
        }
        if let WritebackState::Running(w) = &*wb {
            let _ = w.tx.send((offset, len));
        }
    }

    /// Let written ranges leave the page cache once they are on disk and
    /// `DROP_BEHIND` bytes behind the newest (off by default).
    pub fn set_drop_behind(&self, on: bool) {
        self.drop_behind
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Wait for the writeback thread to have started every range asked for.
    fn stop_writeback(&self) {
        let running = {
            let mut wb = self.writeback.lock().unwrap_or_else(|p| p.into_inner());
            match std::mem::replace(&mut *wb, WritebackState::NotStarted) {
                WritebackState::Running(w) => Some(w),
                // Unavailable stays so: not tried again after a flush.
                other => {
                    *wb = other;
                    None
                }
            }
        };
        if let Some(w) = running {
            w.stop();
        }
    }

    /// Reserve the disk space of `[from, to)` (`fallocate`, the file's size
    /// unchanged), so that a full disk is a clear error before the bytes are
    /// written. Returns whether the space is reserved: not on a device, nor
    /// where the filesystem cannot.
    pub fn reserve(&self, from: u64, to: u64) -> Result<bool> {
        use rustix::io::Errno;
        if self.is_block_device || to <= from {
            return Ok(false);
        }
        loop {
            let r = rustix::fs::fallocate(
                &self.file,
                rustix::fs::FallocateFlags::KEEP_SIZE,
                from,
                to - from,
            );
            return match r {
                Ok(()) => Ok(true),
                Err(Errno::INTR) => continue,
                Err(Errno::NOSPC | Errno::DQUOT) => Err(Error::NoSpace(format!(
                    "{}: not enough free disk space for the image ({} at offset {from})",
                    self.path.display(),
                    crate::summary::human(to - from)
                ))),
                // Not supported here: written without a reservation.
                Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::NODEV | Errno::INVAL) => Ok(false),
                Err(e) => Err(Error::io(
                    &self.path,
                    std::io::Error::new(
                        std::io::Error::from(e).kind(),
                        format!("reserving {} bytes at offset {from}: {e}", to - from),
                    ),
                )),
            };
        }
    }

    /// Reserve `[from, limit)` a step at a time as writes reach it
    /// (`reserve_ahead`) instead of all at once: for compressed data, whose
    /// chunks are laid out for the worst case (nothing compresses), so that
    /// an image that fits once compressed is not refused, and little is
    /// left to give back at the end (see `rootdir`).
    pub fn reserve_lazily(&self, from: u64, limit: u64) {
        *self.lazy_reserve.lock().unwrap_or_else(|p| p.into_inner()) = Some(LazyReserve {
            done: from,
            tried: from,
            limit,
        });
    }

    /// Before a write that ends at `end`: reserve up to it and a step
    /// beyond, when reserving lazily and not done yet.
    pub fn reserve_ahead(&self, end: u64) -> Result<()> {
        // Small: what the metadata chunk, placed after the data, does not
        // cover is given back at the end.
        const STEP: u64 = 8 << 20;
        let mut guard = self.lazy_reserve.lock().unwrap_or_else(|p| p.into_inner());
        let Some(lazy) = guard.as_mut() else {
            return Ok(());
        };
        if end <= lazy.done {
            return Ok(());
        }
        let ahead = (end + STEP).min(lazy.limit).max(end);
        // A failed fallocate may keep part of what it allocated.
        lazy.tried = lazy.tried.max(ahead);
        // A step ahead, or just what this write needs when the disk is
        // nearly full.
        let reserved = match self.reserve(lazy.done, ahead) {
            Err(Error::NoSpace(_)) if ahead > end => (self.reserve(lazy.done, end)?, end),
            r => (r?, ahead),
        };
        match reserved {
            (true, to) => lazy.done = to,
            // Not supported: nothing more to try.
            (false, _) => *guard = None,
        }
        Ok(())
    }

    /// When space was reserved step by step: where the reservation surely
    /// ends, and the furthest it may reach (a failed step can leave part of
    /// its allocation).
    pub fn lazily_reserved(&self) -> Option<(u64, u64)> {
        self.lazy_reserve
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|l| (l.done, l.tried.max(l.done)))
    }

    /// Positional write. Plain writes, not a shared mapping: faulting fresh
    /// pages of a mapping in (zeroed first), and unmapping them again to keep
    /// RSS flat, measured slower than copying through write(2).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file.write_all_at(buf, offset).map_err(|e| {
            Error::io(
                &self.path,
                std::io::Error::new(
                    e.kind(),
                    format!("writing {} bytes at offset {offset}: {e}", buf.len()),
                ),
            )
        })
    }

    /// Positional write of several buffers, one after the other, in one call
    /// (`pwritev`) where it can.
    pub fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let err = |e: std::io::Error| {
            Error::io(
                &self.path,
                std::io::Error::new(
                    e.kind(),
                    format!("writing {total} bytes at offset {offset}: {e}"),
                ),
            )
        };
        let mut slices: Vec<std::io::IoSlice> =
            bufs.iter().map(|b| std::io::IoSlice::new(b)).collect();
        let mut rest = &mut slices[..];
        let mut done = 0;
        while done < total {
            // IOV_MAX is 1024 on Linux.
            let n = rest.len().min(1024);
            match rustix::io::pwritev(&self.file, &rest[..n], offset + done as u64) {
                Ok(0) => return Err(err(std::io::ErrorKind::WriteZero.into())),
                Ok(k) => {
                    done += k;
                    std::io::IoSlice::advance_slices(&mut rest, k);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(err(e.into())),
            }
        }
        Ok(())
    }

    /// Set the filesystem size once it is known (regular files are resized).
    pub fn set_size(&mut self, size: u64) -> Result<()> {
        if !self.is_block_device {
            self.file
                .set_len(size)
                .map_err(|e| Error::io(&self.path, e))?;
        }
        self.size = size;
        Ok(())
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn sync(&self) -> Result<()> {
        self.stop_writeback();
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    /// Write every superblock copy that fits the filesystem, then flush. The
    /// primary goes last: if a copy cannot be written, the image is still
    /// not a filesystem.
    pub fn write_superblocks(&self, sb: &SuperBlock, csum: CsumType) -> Result<()> {
        for mirror in (0..BTRFS_SUPER_MIRROR_MAX).rev() {
            let off = btrfs_sb_offset(mirror);
            if off + BTRFS_SUPER_INFO_SIZE as u64 > self.size {
                continue;
            }
            let mut copy = *sb;
            copy.bytenr = off.into();
            let bytes = copy.as_mut_bytes();
            let c = csum.compute(&bytes[BTRFS_CSUM_SIZE..]);
            bytes[..BTRFS_CSUM_SIZE].copy_from_slice(&c);
            self.write_at(copy.as_bytes(), off)?;
        }
        self.stop_writeback();
        self.file.sync_all().map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.stop_writeback();
    }
}

enum WritebackState {
    NotStarted,
    Running(Writeback),
    /// No thread could be started: the kernel's own writeback does it all.
    Unavailable,
}

/// Written data kept in the page cache behind the newest range started:
/// older ranges are waited for and dropped from the cache.
const DROP_BEHIND: u64 = 64 << 20;

/// `sync_file_range` on `[start, end)`. Its result is only advice: a write
/// error shows up in the final flush, which is checked.
fn sync_range(file: &File, start: u64, end: u64, flags: libc::c_uint) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor `file` keeps open.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            start as libc::off64_t,
            (end - start) as libc::off64_t,
            flags,
        );
    }
}

/// A thread that calls `sync_file_range(SYNC_FILE_RANGE_WRITE)` on ranges
/// sent to it, merging neighbours that arrived together, and one that drops
/// ranges from the page cache once they are on disk and `DROP_BEHIND` bytes
/// old.
///
/// The image is written once and not read back by us, so its pages only
/// push other data out of the cache; and fresh page-cache pages cost more
/// than reused ones, much more on a VM that hands free memory back to its
/// host (measured on ours: copying 900 MB into new pages took from 0.13 s
/// to 1.5 s of CPU from run to run; with the drop, 0.11 to 0.2 s). The
/// rootdir import asks for the drop (`Output::set_drop_behind`) for raw
/// data too: run alone, a 1.2 GB raw image is ~4% faster without it, but
/// run after other tools, as in the bench, raw runs without it took up to
/// 2.7 s of CPU instead of 1.2 in one round of five, and with it never
/// more than 1.4 (`--shrink` medians 0.96 and 0.85 s without, 0.81 and
/// 0.70 s with, over two benches of five rounds each).
struct Writeback {
    tx: std::sync::mpsc::Sender<(u64, u64)>,
    thread: std::thread::JoinHandle<()>,
}

impl Writeback {
    fn start(
        file: File,
        drop_behind: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Option<Writeback> {
        let file = std::sync::Arc::new(file);
        // Waiting for old ranges happens on a second thread, so that it
        // never delays the start of new ones.
        let (drop_tx, drop_rx) = std::sync::mpsc::channel::<(u64, u64)>();
        let f = file.clone();
        let dropper = std::thread::Builder::new()
            .name("drop-cache".into())
            .spawn(move || {
                while let Ok((start, end)) = drop_rx.recv() {
                    // Waiting makes the pages clean, so that the advice can
                    // drop them.
                    sync_range(
                        &f,
                        start,
                        end,
                        libc::SYNC_FILE_RANGE_WAIT_BEFORE
                            | libc::SYNC_FILE_RANGE_WRITE
                            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                    );
                    let _ = rustix::fs::fadvise(
                        &*f,
                        start,
                        std::num::NonZeroU64::new(end - start),
                        rustix::fs::Advice::DontNeed,
                    );
                }
            })
            .ok()?;
        let (tx, rx) = std::sync::mpsc::channel::<(u64, u64)>();
        let thread = std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                let mut pending = Vec::new();
                // Ranges started and still cached, oldest first, and their bytes.
                let mut cached = std::collections::VecDeque::new();
                let mut cached_bytes = 0u64;
                while let Ok(r) = rx.recv() {
                    pending.push(r);
                    pending.extend(rx.try_iter());
                    pending.sort_unstable();
                    let dropping = drop_behind.load(std::sync::atomic::Ordering::Relaxed);
                    let mut i = 0;
                    while i < pending.len() {
                        let (start, mut end) = (pending[i].0, pending[i].0 + pending[i].1);
                        i += 1;
                        while i < pending.len() && pending[i].0 <= end {
                            end = end.max(pending[i].0 + pending[i].1);
                            i += 1;
                        }
                        sync_range(&file, start, end, libc::SYNC_FILE_RANGE_WRITE);
                        if dropping {
                            cached.push_back((start, end));
                            cached_bytes += end - start;
                        }
                    }
                    pending.clear();
                    while cached_bytes > DROP_BEHIND {
                        let Some((start, end)) = cached.pop_front() else {
                            break;
                        };
                        cached_bytes -= end - start;
                        let _ = drop_tx.send((start, end));
                    }
                }
                drop(drop_tx);
                let _ = dropper.join();
            })
            .ok()?;
        Some(Writeback { tx, thread })
    }

    fn stop(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many buffers of odd sizes (more than IOV_MAX of them) land one
    /// after the other at the offset, as one write of their concatenation.
    #[test]
    fn vectored_writes_land_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let out = Output::create(&path, Some(1 << 20), false).unwrap();
        let bufs: Vec<Vec<u8>> = (0..2500u32)
            .map(|i| vec![(i % 251) as u8; (i % 7) as usize * 13 + 1])
            .collect();
        let slices: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
        out.write_vectored_at(&slices, 4096).unwrap();
        drop(out);
        let got = std::fs::read(&path).unwrap();
        let want = bufs.concat();
        assert_eq!(&got[4096..4096 + want.len()], &want[..]);
        assert!(got[..4096].iter().all(|&b| b == 0));
        assert!(got[4096 + want.len()..].iter().all(|&b| b == 0));
    }
}
