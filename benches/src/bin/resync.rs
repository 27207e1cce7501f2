//! How many chunks past an in-place change content-defined chunking takes to meet the old cuts
//! again: the measurement behind `RESYNC_CHUNKS` in `mover/src/backup.rs`.
//!
//! ```text
//! cargo run --release -p lifeboat-benches --bin resync -- [--trials N]
//! ```
//!
//! Chunks 512 MiB of seeded random data with the default parameters, then for each trial
//! overwrites 4 KiB, 64 KiB or 1 MiB at a random place, re-chunks from the old cut before the
//! change (as a changed-ranges backup does) and counts the chunks that end past the change before
//! one ends on an old cut. Prints the distribution.

use std::collections::BTreeMap;

use clap::Parser;
use lifeboat::chunker::{Chunker, ChunkerParams};
use lifeboat_benches::{Rng, seeded};

#[derive(Parser)]
#[command(about = "Chunks past an in-place change until CDC meets the old cuts")]
struct Args {
    /// Changes to try.
    #[arg(long, default_value_t = 2000)]
    trials: usize,
}

fn main() {
    let args = Args::parse();
    let chunker = Chunker::new(ChunkerParams::default(), 0xfeed);
    let len = 512usize << 20;
    // Past the change, 12 chunks of at most 4 MiB fit in what is re-chunked.
    let window = 56usize << 20;
    let data = seeded(len, 0, 99);
    let mut old = Vec::new();
    chunker.cut(&data, true, &mut old);
    let mut hist = BTreeMap::<Option<usize>, usize>::new();
    let (mut rng, mut buf, mut new) = (Rng::new(12345), Vec::new(), Vec::new());
    for _ in 0..args.trials {
        let at = rng.below((len - window - (8 << 20)) as u64) as usize + (4 << 20);
        let size = [4 << 10, 64 << 10, 1 << 20][rng.below(3) as usize];
        let i = old.partition_point(|&e| e <= at);
        let start = if i == 0 { 0 } else { old[i - 1] };
        buf.clear();
        buf.extend_from_slice(&data[start..start + window]);
        buf[at - start..at - start + size].copy_from_slice(&seeded(size, 0, rng.next_u64()));
        new.clear();
        chunker.cut(&buf, false, &mut new);
        let changed_end = at + size;
        let met = new
            .iter()
            .map(|e| start + e)
            .filter(|e| *e >= changed_end)
            .position(|e| old.binary_search(&e).is_ok());
        *hist.entry(met).or_default() += 1;
    }
    let mut seen = 0;
    for (past, n) in &hist {
        seen += n;
        let past = past.map_or_else(|| "never".to_owned(), |p| p.to_string());
        println!(
            "met the old cuts {past:>5} chunks past the change: {n:>5} ({:.2}% so far)",
            100.0 * seen as f64 / args.trials as f64
        );
    }
}
