//! The ANN side of `bench/ann.py`: builds plumb's vector index (`plumb_rag::vectors`, the one
//! collections use) over raw little-endian f32 vectors, then answers the queries at each
//! search expansion on one thread, and prints JSON: build seconds, and per expansion the
//! queries per second and the ids found (for recall against exact search).
//!
//! Usage: ann DATA QUERIES DIMENSIONS K CONNECTIVITY EXPANSION_ADD EF[,EF…] OUT_IDS
//!
//! With `ANN_INDEX=PATH` set, the index is read from PATH when it exists (build seconds are
//! then 0) and saved there after a build otherwise: a search change can be timed on the
//! same graph, run after run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark program"
)]

use std::io::Write;
use std::time::Instant;

use plumb_rag::store::bytes_vector;
use plumb_rag::vectors::{HnswParams, VectorIndex};

fn read(path: &str, dimensions: usize) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(path).expect("readable vectors");
    bytes_vector(&bytes)
        .chunks_exact(dimensions)
        .map(<[f32]>::to_vec)
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 9 {
        eprintln!(
            "usage: ann DATA QUERIES DIMENSIONS K CONNECTIVITY EXPANSION_ADD EF[,EF…] OUT_IDS"
        );
        std::process::exit(2);
    }
    let dimensions: usize = args[3].parse().unwrap();
    let k: usize = args[4].parse().unwrap();
    let connectivity: usize = args[5].parse().unwrap();
    let expansion_add: usize = args[6].parse().unwrap();
    let efs: Vec<usize> = args[7].split(',').map(|e| e.parse().unwrap()).collect();
    let data = read(&args[1], dimensions);
    let queries = read(&args[2], dimensions);

    let params = HnswParams {
        connectivity,
        expansion_add,
        expansion_search: efs[0],
    };
    let items: Vec<(u64, Vec<f32>)> = data
        .into_iter()
        .enumerate()
        .map(|(i, v)| (i as u64, v))
        .collect();
    let saved = std::env::var_os("ANN_INDEX").map(std::path::PathBuf::from);
    let (mut index, build) = match &saved {
        Some(path) if path.exists() => (VectorIndex::load(path, dimensions, params).unwrap(), 0.0),
        _ => {
            let started = Instant::now();
            let mut index = VectorIndex::new(dimensions, params).unwrap();
            index.add(&items).unwrap();
            let build = started.elapsed().as_secs_f64();
            if let Some(path) = &saved {
                index.save(path).unwrap();
            }
            (index, build)
        }
    };

    let mut out = std::fs::File::create(&args[8]).unwrap();
    let mut runs = Vec::new();
    for ef in efs {
        index.set_expansion_search(ef);
        let started = Instant::now();
        let mut found: Vec<u64> = Vec::with_capacity(queries.len() * k);
        for query in &queries {
            let hits = index.search(query, k, None).unwrap();
            let mut ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
            ids.resize(k, u64::MAX);
            found.extend(ids);
        }
        let seconds = started.elapsed().as_secs_f64();
        for id in &found {
            out.write_all(&id.to_le_bytes()).unwrap();
        }
        runs.push(format!(
            "{{\"ef\": {ef}, \"qps\": {:.1}}}",
            queries.len() as f64 / seconds
        ));
    }
    println!(
        "{{\"build_seconds\": {build:.3}, \"threads\": {}, \"runs\": [{}]}}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        runs.join(", ")
    );
}
