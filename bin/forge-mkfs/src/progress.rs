//! Progress display for --rootdir: files and bytes done, rate, ratio, ETA.
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use btrfs_writer::data::Progress;
use btrfs_writer::mkfs::DataStats;
use btrfs_writer::summary::human;
use indicatif::{ProgressBar, ProgressStyle};

pub struct Bar {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

/// A bar on stderr, updated from the counters, unless quiet or not a terminal.
pub fn start(p: &Arc<Progress>, quiet: bool) -> Option<Bar> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (p, s) = (p.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        while !s.load(Ordering::Relaxed) {
            let total = p.bytes_total.load(Ordering::Relaxed);
            let read = p.bytes_in.load(Ordering::Relaxed);
            let written = p.bytes_out.load(Ordering::Relaxed);
            bar.set_length(total);
            bar.set_position(read);
            let ratio = if read > 0 {
                written as f64 / read as f64
            } else {
                1.0
            };
            let (done, files) = (
                p.files_done.load(Ordering::Relaxed),
                p.files_total.load(Ordering::Relaxed),
            );
            bar.set_message(if !p.data_started.load(Ordering::Relaxed) {
                // The data step has not started: the scan is walking the tree.
                format!("scanning: {} entries", p.scanned.load(Ordering::Relaxed))
            } else if done == files {
                format!("files {done}/{files} ratio {ratio:.2}, writing metadata")
            } else {
                format!("files {done}/{files} ratio {ratio:.2}")
            });
            std::thread::sleep(Duration::from_millis(100));
        }
        bar.finish_and_clear();
    });
    Some(Bar { stop, thread })
}

pub fn finish(bar: Option<Bar>) {
    if let Some(b) = bar {
        b.stop.store(true, Ordering::Relaxed);
        let _ = b.thread.join();
    }
}

/// One line: files, bytes in, bytes on disk, ratio, time, rate.
pub fn summary_line(d: &DataStats, t: Duration) -> String {
    let secs = t.as_secs_f64().max(1e-6);
    let ratio = if d.bytes_in > 0 {
        d.bytes_on_disk as f64 / d.bytes_in as f64
    } else {
        1.0
    };
    format!(
        "imported {} files, {} in, {} on disk (ratio {ratio:.3}) in {secs:.2}s, {}/s",
        d.files,
        human(d.bytes_in),
        human(d.bytes_on_disk),
        human((d.bytes_in as f64 / secs) as u64)
    )
}
