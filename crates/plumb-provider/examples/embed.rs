//! The plumb side of `bench/embeddings.py`: embeds a JSON list of texts with the embedded
//! all-MiniLM-L6-v2 (the embedder collections use), several times, and prints JSON: the
//! model's load seconds and each run's seconds. The last run's vectors go to OUT as
//! little-endian f32, for the benchmark to compare with sentence-transformers'.
//!
//! Usage: embed MODEL_DIR TEXTS_JSON RUNS OUT

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark program"
)]

use std::path::Path;
use std::time::Instant;

use plumb_provider::{ProviderContext, ProviderOptions, build_embedder};

// The allocator the plumb binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: embed MODEL_DIR TEXTS_JSON RUNS OUT");
        std::process::exit(2);
    }
    let dir = std::path::absolute(&args[1]).expect("model directory");
    let texts: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(&args[2]).expect("texts")).expect("JSON");
    let runs: usize = args[3].parse().expect("RUNS");
    let ctx = ProviderContext::new(Path::new("."));
    let started = Instant::now();
    let embedder = build_embedder(
        &format!("local:{}", dir.display()),
        &ProviderOptions::default(),
        &ctx,
    )
    .expect("the embedding model loads");
    let load = started.elapsed().as_secs_f64();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut seconds = Vec::new();
    let mut vectors = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        vectors = runtime.block_on(embedder.embed(&texts)).expect("embedding");
        seconds.push(started.elapsed().as_secs_f64());
    }
    let bytes: Vec<u8> = vectors
        .iter()
        .flatten()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    std::fs::write(&args[4], bytes).expect("writable OUT");
    println!(
        "{}",
        serde_json::json!({"load_seconds": load, "seconds": seconds, "texts": texts.len(),
                           "dimensions": vectors.first().map_or(0, Vec::len)})
    );
}
