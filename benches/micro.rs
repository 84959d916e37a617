//! Criterion micro-benchmarks: the frame codec, piece hashing on one and on
//! all cores, and the piece picker.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pex::manifest::{hash_pieces, PIECE_SIZE};
use pex::picker::Picker;
use pex::wire::{decode, Frame};
use pex::Hash;
use std::hint::black_box;

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let data = Bytes::from(vec![7u8; PIECE_SIZE as usize]);
    let give = Frame::Give { hash: Hash::of(&data), data };
    let encoded = give.to_bytes();
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function("decode GIVE 1 MiB", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&encoded[..]);
            black_box(decode(&mut buf).unwrap());
        })
    });
    g.bench_function("encode GIVE head", |b| {
        let mut head = BytesMut::with_capacity(64);
        b.iter(|| {
            head.clear();
            black_box(give.encode_head(&mut head));
        })
    });
    let asks: Vec<u8> = (0..1000u32).flat_map(|i| Frame::Ask(Hash::of(&i.to_be_bytes())).to_bytes()).collect();
    g.throughput(Throughput::Elements(1000));
    g.bench_function("decode 1000 ASKs", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&asks[..]);
            while let Some(f) = decode(&mut buf).unwrap() {
                black_box(f);
            }
        })
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("hashing");
    let piece = vec![0x5au8; PIECE_SIZE as usize];
    g.throughput(Throughput::Bytes(PIECE_SIZE));
    g.bench_function("SHA-256 of one 1 MiB piece", |b| b.iter(|| black_box(Hash::of(&piece))));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let size = 64 * PIECE_SIZE;
    std::fs::write(&path, vec![0xa5u8; size as usize]).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    g.throughput(Throughput::Bytes(size));
    g.sample_size(10);
    for threads in [1, 2] {
        g.bench_with_input(BenchmarkId::new("hash 64 MiB file, threads", threads), &threads, |b, &t| {
            b.iter(|| black_box(hash_pieces(&file, size, t, &|_| {}).unwrap()))
        });
    }
    g.finish();
}

fn picker(c: &mut Criterion) {
    let mut g = c.benchmark_group("picker");
    for n in [1024usize, 65536] {
        let mut p = Picker::new(bitvec::bitvec![0; n]);
        for k in 0..8 {
            let has: bitvec::vec::BitVec = (0..n).map(|i| (i + k) % 3 != 0).collect();
            p.add_peer(&has);
        }
        let mut rng = fastrand::Rng::with_seed(1);
        g.bench_with_input(BenchmarkId::new("pick rarest of", n), &n, |b, _| {
            b.iter(|| black_box(p.pick(None, |_| false, &mut rng)))
        });
    }
    g.finish();
}

criterion_group!(benches, codec, hashing, picker);
criterion_main!(benches);
