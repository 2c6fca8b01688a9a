//! Collections: ingest, incremental re-ingest, persistence, refusals, and hybrid fusion on a
//! small labeled set with the real all-MiniLM-L6-v2.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use plumb_core::{BoxFuture, Embedder, ModelError};
use plumb_rag::ingest::{self, Quiet};
use plumb_rag::vectors::HnswParams;
use plumb_rag::{
    Backend, ChunkingConfig, Filter, Manifest, Retriever, SearchOptions, SqliteCollection,
};

/// A deterministic embedder for storage tests: hashed bag of words, L2-normalized; counts the
/// texts it embeds.
pub(crate) struct Hashing {
    pub(crate) id: String,
    pub(crate) dimensions: usize,
    pub(crate) texts: AtomicUsize,
}

impl Hashing {
    pub(crate) fn new(dimensions: usize) -> Arc<Hashing> {
        Arc::new(Hashing {
            id: "test:hashing".to_owned(),
            dimensions,
            texts: AtomicUsize::new(0),
        })
    }
}

impl Embedder for Hashing {
    fn id(&self) -> &str {
        &self.id
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, ModelError>> {
        Box::pin(async move {
            self.texts.fetch_add(texts.len(), Ordering::SeqCst);
            Ok(texts
                .iter()
                .map(|text| {
                    let mut v = vec![0.0f32; self.dimensions];
                    for word in text.split(|c: char| !c.is_alphanumeric()) {
                        if word.is_empty() {
                            continue;
                        }
                        let h = plumb_core::hash_hex(word.to_lowercase().as_bytes());
                        let slot = usize::from_str_radix(&h[..8], 16).unwrap() % self.dimensions;
                        v[slot] += 1.0;
                    }
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                    v.iter_mut().for_each(|x| *x /= norm);
                    v
                })
                .collect())
        })
    }
}

pub(crate) fn manifest(name: &str, embedder: &dyn Embedder, dimensions: usize) -> Manifest {
    Manifest {
        name: name.to_owned(),
        chunking: ChunkingConfig {
            max_tokens: 24,
            overlap: 4,
            ..ChunkingConfig::default()
        },
        embedder: embedder.id().to_owned(),
        dimensions,
        created_ms: 0,
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

pub(crate) fn corpus(docs: &Path) {
    write(
        &docs.join("install.md"),
        "# Installing\n\nDownload the archive and run the installer. The installer needs \
         administrator rights on Windows.\n\n## Upgrading\n\nRun the installer again; settings \
         are kept between versions.\n",
    );
    write(
        &docs.join("limits.md"),
        "# Limits\n\nEach account may send 600 requests per minute. Above that the API answers \
         with status 429 and a Retry-After header.\n\n## Payload size\n\nRequests larger than \
         10 MB are refused with status 413.\n",
    );
    write(
        &docs.join("sub/billing.txt"),
        "Invoices are sent on the first day of each month. Payment is due within 30 days.\n",
    );
    write(&docs.join("empty.md"), "   \n");
    std::fs::write(docs.join("logo.png"), [0x89, b'P', b'N', b'G', 0, 0, 1, 2]).unwrap();
    std::fs::write(docs.join("blob.txt"), [0u8, 159, 146, 150, 0, 1]).unwrap();
}

async fn sources(retriever: &Retriever, query: &str, k: usize) -> Vec<String> {
    let options = SearchOptions {
        k,
        ..SearchOptions::default()
    };
    retriever
        .search(query, &options)
        .await
        .unwrap()
        .into_iter()
        .map(|hit| hit.chunk.source)
        .collect()
}

/// Ingests the corpus into an empty collection, then again unchanged, then with one section
/// changed and one file removed, checking each report and the searches; gives the hits (text,
/// start) of "25 MB payload" at the end, which a reopened collection must repeat.
pub(crate) async fn incremental_scenario(
    collection: Arc<dyn Backend>,
    embedder: Arc<Hashing>,
    root: &Path,
) -> Vec<(String, usize)> {
    let docs = root.join("docs");
    corpus(&docs);
    let found = ingest::discover(std::slice::from_ref(&docs), root).unwrap();
    let report = ingest::ingest(&*collection, &*embedder, found, &Quiet)
        .await
        .unwrap();
    assert_eq!(
        report.added,
        vec!["docs/install.md", "docs/limits.md", "docs/sub/billing.txt"]
    );
    let skipped: Vec<(&str, &str)> = report
        .skipped
        .iter()
        .map(|s| (s.source.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert!(skipped.contains(&(
        "docs/logo.png",
        "`.png` is not a document type (Markdown, HTML, PDF, text)"
    )));
    assert!(skipped.contains(&(
        "docs/blob.txt",
        "a binary file, not text (supported: Markdown, HTML, PDF, plain text)"
    )));
    assert!(skipped.contains(&("docs/empty.md", "no text in it")));
    let first_chunks = report.chunks;
    assert!(first_chunks >= 5, "{first_chunks} chunks");
    assert_eq!(embedder.texts.load(Ordering::SeqCst), report.embedded);

    let retriever = Retriever::new(collection.clone(), embedder.clone()).unwrap();
    assert_eq!(
        sources(&retriever, "requests per minute 429", 1).await,
        vec!["docs/limits.md"]
    );

    // Nothing changed: nothing read further, nothing embedded.
    let before = embedder.texts.load(Ordering::SeqCst);
    let found = ingest::discover(std::slice::from_ref(&docs), root).unwrap();
    let report = ingest::ingest(&*collection, &*embedder, found, &Quiet)
        .await
        .unwrap();
    assert_eq!(report.unchanged, 3);
    assert!(report.added.is_empty() && report.updated.is_empty() && report.removed.is_empty());
    assert_eq!(embedder.texts.load(Ordering::SeqCst), before);

    // One section of one file changes: only its new chunks are embedded.
    let limits = std::fs::read_to_string(docs.join("limits.md")).unwrap();
    write(
        &docs.join("limits.md"),
        &limits.replace(
            "10 MB are refused with status 413",
            "25 MB are refused with status 413",
        ),
    );
    std::fs::remove_file(docs.join("sub/billing.txt")).unwrap();
    let found = ingest::discover(std::slice::from_ref(&docs), root).unwrap();
    let report = ingest::ingest(&*collection, &*embedder, found, &Quiet)
        .await
        .unwrap();
    assert_eq!(report.updated, vec!["docs/limits.md"]);
    assert_eq!(report.removed, vec!["docs/sub/billing.txt"]);
    assert_eq!(report.unchanged, 1);
    assert!(
        report.embedded >= 1 && report.embedded < report.chunks,
        "{} of {} chunks embedded again",
        report.embedded,
        report.chunks
    );
    let stored = collection.documents().await.unwrap();
    assert_eq!(
        stored.iter().map(|d| d.source.as_str()).collect::<Vec<_>>(),
        vec!["docs/install.md", "docs/limits.md"]
    );
    assert_eq!(
        sources(&retriever, "invoices payment due", 3)
            .await
            .iter()
            .filter(|s| s.contains("billing"))
            .count(),
        0,
        "a removed file's chunks are gone from both indexes"
    );
    let hits = retriever
        .search("25 MB payload", &SearchOptions::default())
        .await
        .unwrap();
    assert!(hits[0].chunk.text.contains("25 MB"));
    let expected: Vec<(String, usize)> = hits
        .iter()
        .map(|h| (h.chunk.text.clone(), h.chunk.start))
        .collect();
    expected
}

#[tokio::test]
async fn ingest_is_incremental_persistent_and_reports_what_it_skipped() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(".plumb/rag/help");
    let embedder = Hashing::new(64);
    let collection = Arc::new(
        SqliteCollection::create(
            &dir,
            manifest("help", &*embedder, 64),
            HnswParams::default(),
        )
        .unwrap(),
    );
    let expected = incremental_scenario(collection, embedder.clone(), root.path()).await;

    // Reopened: the same answers from the saved index file.
    let vector_files = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                name.ends_with(".hnsw").then_some(name)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        vector_files(&dir),
        vec!["vectors-2.hnsw"],
        "old generations are deleted"
    );
    let reopen = |dir: &Path| {
        let collection: Arc<dyn Backend> =
            Arc::new(SqliteCollection::open(dir, HnswParams::default()).unwrap());
        Retriever::new(collection, embedder.clone()).unwrap()
    };
    let again = |retriever: Retriever| async move {
        retriever
            .search("25 MB payload", &SearchOptions::default())
            .await
            .unwrap()
            .iter()
            .map(|h| (h.chunk.text.clone(), h.chunk.start))
            .collect::<Vec<_>>()
    };
    assert_eq!(again(reopen(&dir)).await, expected);
    // Without its index file, the collection rebuilds it from the stored vectors.
    std::fs::remove_file(dir.join("vectors-2.hnsw")).unwrap();
    assert_eq!(again(reopen(&dir)).await, expected);
    assert_eq!(vector_files(&dir), vec!["vectors-2.hnsw"]);
    // So does an unreadable one (a crash mid-write, another plumb's format).
    std::fs::write(dir.join("vectors-2.hnsw"), b"plumbANN\x07garbage").unwrap();
    assert_eq!(again(reopen(&dir)).await, expected);
    let bytes = std::fs::read(dir.join("vectors-2.hnsw")).unwrap();
    assert!(bytes.len() > 100, "rewritten whole: {} bytes", bytes.len());
}

#[tokio::test]
async fn mismatched_embedders_are_refused_and_nothing_is_written() {
    let root = tempfile::tempdir().unwrap();
    let embedder = Hashing::new(32);
    let collection = Arc::new(
        SqliteCollection::create(
            &root.path().join("c"),
            manifest("c", &*embedder, 32),
            HnswParams::default(),
        )
        .unwrap(),
    );
    refusal_scenario(collection, root.path()).await;
}

/// A 32-dimensional collection `c` of `test:hashing`, empty: other embedders are refused and
/// nothing is written.
pub(crate) async fn refusal_scenario(collection: Arc<dyn Backend>, root: &Path) {
    let docs = root.join("docs");
    corpus(&docs);
    // Another model: refused before anything is read.
    let other = Arc::new(Hashing {
        id: "test:other".to_owned(),
        dimensions: 32,
        texts: AtomicUsize::new(0),
    });
    let found = ingest::discover(std::slice::from_ref(&docs), root).unwrap();
    let error = ingest::ingest(&*collection, &*other, found, &Quiet)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "collection `c` was embedded with `test:hashing`, not `test:other`"
    );
    assert!(Retriever::new(collection.clone(), other).is_err());

    // The same id but vectors of another size (a changed endpoint): refused, nothing stored.
    let resized = Hashing::new(48);
    let found = ingest::discover(std::slice::from_ref(&docs), root).unwrap();
    let error = ingest::ingest(&*collection, &*resized, found, &Quiet)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "embedder `test:hashing` returned 48-dimensional vectors; collection `c` holds \
         32-dimensional ones"
    );
    assert!(collection.documents().await.unwrap().is_empty());
    assert_eq!(collection.stats().await.unwrap().chunks, 0);

    let missing = ingest::discover(&[root.join("nope")], root).unwrap_err();
    assert!(
        missing
            .to_string()
            .ends_with("nope: no such file or directory")
    );
}

#[tokio::test]
async fn filters_narrow_both_searches() {
    let root = tempfile::tempdir().unwrap();
    let embedder = Hashing::new(64);
    let collection = Arc::new(
        SqliteCollection::create(
            &root.path().join("c"),
            manifest("c", &*embedder, 64),
            HnswParams::default(),
        )
        .unwrap(),
    );
    filter_scenario(collection, embedder, root.path()).await;
}

/// Ingests the corpus into an empty 64-dimensional collection and checks that source, format
/// and heading filters hold for the fused search.
pub(crate) async fn filter_scenario(
    collection: Arc<dyn Backend>,
    embedder: Arc<Hashing>,
    root: &Path,
) {
    let docs = root.join("docs");
    corpus(&docs);
    let found = ingest::discover(std::slice::from_ref(&docs), root).unwrap();
    ingest::ingest(&*collection, &*embedder, found, &Quiet)
        .await
        .unwrap();
    let retriever = Retriever::new(collection, embedder).unwrap();
    for (terms, expected) in [
        (vec!["source=docs/sub/*"], vec!["docs/sub/billing.txt"]),
        (vec!["format=text"], vec!["docs/sub/billing.txt"]),
        (
            vec!["source=docs/*.md", "heading=upgrading"],
            vec!["docs/install.md"],
        ),
    ] {
        let filter =
            Filter::parse(&terms.iter().map(|t| t.to_string()).collect::<Vec<_>>()).unwrap();
        let options = SearchOptions {
            k: 10,
            filter,
            ..SearchOptions::default()
        };
        let mut found: Vec<String> = retriever
            .search("the installer requests invoices", &options)
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.chunk.source)
            .collect();
        found.dedup();
        assert_eq!(found, expected, "filter {terms:?}");
    }
}

/// Short help pages; each query has one relevant page. Some queries share no words with their
/// page, some hinge on an exact code. Fusion's scores are checked against RRF's formula.
#[tokio::test]
async fn hybrid_fusion_on_a_small_labeled_set() {
    let ctx = plumb_provider::ProviderContext::new(Path::new("."));
    let embedder = match plumb_provider::build_embedder(
        plumb_provider::DEFAULT_EMBEDDER,
        &plumb_provider::ProviderOptions::default(),
        &ctx,
    ) {
        Ok(embedder) => embedder,
        Err(error) => {
            panic!("{error} — run `scripts/test.sh` or `plumb models pull all-minilm-l6-v2` first")
        }
    };
    let root = tempfile::tempdir().unwrap();
    let docs = root.path().join("docs");
    let pages = [
        (
            "reset.md",
            "# Resetting a password\n\nOpen Settings, choose Security and press \"Forgot password\". A link valid for one hour arrives by email.",
        ),
        (
            "refunds.md",
            "# Refunds\n\nMoney is returned to the original card within five business days after a cancellation is approved.",
        ),
        (
            "export.md",
            "# Exporting data\n\nChoose File, then Export, and pick CSV or JSON. Large workspaces are exported in the background.",
        ),
        (
            "sso.md",
            "# Single sign-on\n\nSAML 2.0 and OpenID Connect are supported. Administrators configure the identity provider under Organization.",
        ),
        (
            "offline.md",
            "# Working offline\n\nThe desktop app keeps the last 30 days of documents on the device and syncs changes when the connection returns.",
        ),
        (
            "e4012.md",
            "# E-4012\n\nThe upload token expired. Request a new token and sign in again.",
        ),
        (
            "e4021.md",
            "# E-4021\n\nThe download token expired. Request a new token and sign in again.",
        ),
        (
            "e4102.md",
            "# E-4102\n\nThe sync token expired. Request a new token and sign in again.",
        ),
        (
            "e4120.md",
            "# E-4120\n\nThe share token expired. Request a new token and sign in again.",
        ),
        (
            "hw.md",
            "# Hardware\n\nThe KX-200 hub weighs 300 g and has four ports. The KX-300 hub weighs 450 g and has eight ports. The KX-230 hub weighs 320 g and has six ports.",
        ),
        (
            "uploads.md",
            "# Troubleshooting uploads\n\nUploads resume after a dropped connection and keep partial files for a day. Files over the plan's size limit are refused before the transfer starts. If a transfer stalls with code Z93, the proxy is stripping headers.",
        ),
        (
            "power.md",
            "# Power\n\nThe KX-300 hub draws 12 W; the KX-200 and KX-230 draw 5 W. Use the supplied adapter.",
        ),
    ];
    for (name, text) in pages {
        write(&docs.join(name), text);
    }
    let probe = embedder.embed(&["probe".to_owned()]).await.unwrap();
    let collection = Arc::new(
        SqliteCollection::create(
            &root.path().join("c"),
            manifest("c", &*embedder, probe[0].len()),
            HnswParams::default(),
        )
        .unwrap(),
    );
    let found = ingest::discover(std::slice::from_ref(&docs), root.path()).unwrap();
    ingest::ingest(&*collection, &*embedder, found, &Quiet)
        .await
        .unwrap();
    let retriever = Retriever::new(collection, embedder).unwrap();
    let labeled = [
        ("I can't remember my secret phrase to sign in", "reset.md"),
        ("how long until I am reimbursed", "refunds.md"),
        ("use it on a plane with no network", "offline.md"),
        ("download my workspace as a spreadsheet", "export.md"),
        ("log in with our company's identity system", "sso.md"),
        ("E-4021", "e4021.md"),
        ("E-4120", "e4120.md"),
        ("error E-4102 during sync", "e4102.md"),
        ("E-4012", "e4012.md"),
        ("KX-230 weight", "hw.md"),
        ("Z93", "uploads.md"),
        ("how many watts does the KX-300 need", "power.md"),
    ];
    // Reciprocal rank of the relevant page in the top 3, summed: MRR@3 × queries.
    let mut reciprocal = [0.0f64; 3];
    for (query, page) in labeled {
        for (slot, (text_weight, vector_weight)) in
            [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)].into_iter().enumerate()
        {
            let options = SearchOptions {
                k: 3,
                text_weight,
                vector_weight,
                ..SearchOptions::default()
            };
            let hits = retriever.search(query, &options).await.unwrap();
            for (position, hit) in hits.iter().enumerate() {
                assert_eq!(hit.rank, position + 1);
                let expected = hit
                    .text_rank
                    .map_or(0.0, |r| text_weight / (60.0 + r as f32))
                    + hit
                        .vector_rank
                        .map_or(0.0, |r| vector_weight / (60.0 + r as f32));
                assert!((hit.fused - expected).abs() < 1e-6, "{query}: {hit:?}");
                if position > 0 {
                    assert!(hit.fused <= hits[position - 1].fused);
                }
            }
            if let Some(hit) = hits.iter().find(|h| h.chunk.source.ends_with(page)) {
                reciprocal[slot] += 1.0 / hit.rank as f64;
            }
        }
    }
    let [bm25, vector, hybrid] = reciprocal.map(|r| r / labeled.len() as f64);
    // Measured when written: BM25 0.667, vector 0.958, hybrid 0.875. The words-only misses
    // (questions sharing no words with their page) are what fusion recovers; this small set
    // cannot show fusion beating MiniLM alone, `plumb rag eval` on examples/rag measures that.
    assert!(
        hybrid > bm25 + 0.1 && vector >= 0.8 && hybrid >= 0.8,
        "MRR@3 over {} queries: BM25 {bm25:.3}, vector {vector:.3}, hybrid {hybrid:.3}",
        labeled.len()
    );
}
