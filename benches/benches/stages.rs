//! Throughput of each data-path stage on seeded data, and of a whole backup.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lifeboat::chunker::{Chunker, ChunkerParams};
use lifeboat::compress::Compressor;
use lifeboat::crypto::Keys;
use lifeboat::pack::{BlobType, PackWriter};
use lifeboat_benches::seeded;

const LEN: usize = 64 << 20;

fn stages(c: &mut Criterion) {
    let data = seeded(LEN, 50, 7);
    let keys = Keys::from_master([7; 32]);
    let chunker = Chunker::new(ChunkerParams::default(), keys.gear_seed());
    let mut g = c.benchmark_group("stage");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(LEN as u64));

    g.bench_function("chunk", |b| {
        let mut ends = Vec::new();
        b.iter(|| {
            ends.clear();
            black_box(chunker.cut(&data, true, &mut ends));
        });
    });
    let mut ends = Vec::new();
    chunker.cut(&data, true, &mut ends);
    let chunks: Vec<&[u8]> = std::iter::once(0)
        .chain(ends.iter().copied())
        .zip(ends.iter().copied())
        .map(|(a, b)| &data[a..b])
        .collect();

    g.bench_function("hash", |b| {
        b.iter(|| {
            for ch in &chunks {
                black_box(keys.blob_id(ch));
            }
        });
    });
    g.bench_function("compress_zstd3", |b| {
        let mut z = Compressor::new(3).unwrap();
        b.iter(|| {
            for ch in &chunks {
                black_box(z.compress(ch).map(<[u8]>::len));
            }
        });
    });
    g.bench_function("seal_and_pack", |b| {
        b.iter(|| {
            let mut p = PackWriter::new(&keys, LEN).unwrap();
            for ch in &chunks {
                p.add(keys.blob_id(ch), BlobType::Data, ch.len() as u32, false, ch);
            }
            black_box(p.finish().id)
        });
    });
    g.finish();
}

fn end_to_end(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..16u64 {
        std::fs::write(src.join(format!("f{i}")), seeded(8 << 20, 50, i)).unwrap();
    }
    let mut g = c.benchmark_group("backup");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(16 * (8 << 20)));
    let secret = lifeboat::Secret::key_file(&[1u8; 32]).unwrap();
    g.bench_function("full_128MiB", |b| {
        b.iter_with_setup(
            || {
                let repo = dir.path().join("repo");
                let _ = std::fs::remove_dir_all(&repo);
                let mut r = lifeboat::Repository::init(
                    &lifeboat::Location::parse(repo.to_str().unwrap()).unwrap(),
                    &secret,
                    &lifeboat::InitOptions::default(),
                )
                .unwrap();
                r.load_index().unwrap();
                r
            },
            |repo| {
                lifeboat::backup(
                    &repo,
                    std::slice::from_ref(&src),
                    &lifeboat::BackupOptions::default(),
                    &lifeboat::Progress::default(),
                )
                .unwrap()
            },
        );
    });
    g.finish();
}

criterion_group!(benches, stages, end_to_end);
criterion_main!(benches);
