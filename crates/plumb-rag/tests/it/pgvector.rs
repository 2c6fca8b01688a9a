//! The PostgreSQL + pgvector backend against a real server (PostgreSQL 16.2, pgvector 0.6.2,
//! started on loopback for each test): the embedded backend's scenarios, reopening from a new
//! connection, and the same rankings as the embedded backend for the same vectors.

use std::sync::Arc;

use plumb_rag::ingest::{self, Quiet};
use plumb_rag::vectors::HnswParams;
use plumb_rag::{Backend, Filter, Retriever, SearchOptions, SqliteCollection, Store};
use plumb_test::PgServer;

use crate::collection::{
    Hashing, corpus, filter_scenario, incremental_scenario, manifest, refusal_scenario,
};

async fn store(server: &PgServer) -> Store {
    Store::open(&server.url()).await.unwrap()
}

#[tokio::test]
async fn pgvector_ingest_is_incremental_and_survives_a_new_connection() {
    let server = PgServer::start();
    let root = tempfile::tempdir().unwrap();
    let embedder = Hashing::new(64);
    let first = store(&server).await;
    let collection = first
        .create(manifest("help", &*embedder, 64))
        .await
        .unwrap();
    assert!(
        collection.location().ends_with("(tables plumb_rag_1_*)"),
        "{}",
        collection.location()
    );
    let expected = incremental_scenario(collection, embedder.clone(), root.path()).await;

    // Another connection (another gateway replica, say) sees the collection as it was left.
    let second = store(&server).await;
    assert_eq!(second.list().await.unwrap(), vec!["help"]);
    let reopened = second.open_collection("help").await.unwrap().unwrap();
    assert_eq!(reopened.manifest().dimensions, 64);
    let stats = reopened.stats().await.unwrap();
    assert_eq!(stats.documents, 2);
    let retriever = Retriever::new(reopened, embedder.clone()).unwrap();
    let again: Vec<(String, usize)> = retriever
        .search("25 MB payload", &SearchOptions::default())
        .await
        .unwrap()
        .iter()
        .map(|h| (h.chunk.text.clone(), h.chunk.start))
        .collect();
    assert_eq!(again, expected);

    // A second collection of the same name is refused; an unknown one is absent.
    let error = second
        .create(manifest("help", &*embedder, 64))
        .await
        .err()
        .unwrap();
    assert!(
        error
            .to_string()
            .starts_with("collection `help` already exists in postgres://postgres@127.0.0.1:"),
        "{error}"
    );
    assert!(second.open_collection("nope").await.unwrap().is_none());
}

#[tokio::test]
async fn pgvector_refuses_other_embedders_and_filters_both_searches() {
    let server = PgServer::start();
    let store = store(&server).await;
    let root = tempfile::tempdir().unwrap();
    let embedder = Hashing::new(32);
    let c = store.create(manifest("c", &*embedder, 32)).await.unwrap();
    refusal_scenario(c, &root.path().join("refusals")).await;

    let embedder = Hashing::new(64);
    let f = store.create(manifest("f", &*embedder, 64)).await.unwrap();
    filter_scenario(f, embedder, &root.path().join("filters")).await;
}

/// The same chunks and vectors in both backends give the same vector rankings and, for words
/// both stemmers reduce alike, the same BM25 rankings with nearly the same scores.
#[tokio::test]
async fn pgvector_ranks_like_the_embedded_backend() {
    let server = PgServer::start();
    let store = store(&server).await;
    let root = tempfile::tempdir().unwrap();
    let docs = root.path().join("docs");
    corpus(&docs);
    let embedder = Hashing::new(64);
    let pg = store
        .create(manifest("same", &*embedder, 64))
        .await
        .unwrap();
    let lite: Arc<dyn Backend> = Arc::new(
        SqliteCollection::create(
            &root.path().join("same"),
            manifest("same", &*embedder, 64),
            HnswParams::default(),
        )
        .unwrap(),
    );
    for collection in [&pg, &lite] {
        let found = ingest::discover(std::slice::from_ref(&docs), root.path()).unwrap();
        ingest::ingest(&**collection, &*embedder, found, &Quiet)
            .await
            .unwrap();
    }
    let place = |collection: &Arc<dyn Backend>, hits: Vec<plumb_rag::store::Scored>| {
        let collection = collection.clone();
        async move {
            let ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
            let chunks = collection.chunks(&ids).await.unwrap();
            assert_eq!(chunks.len(), hits.len());
            chunks
                .iter()
                .zip(&hits)
                .map(|(c, h)| (format!("{}#{}", c.source, c.ordinal), h.score))
                .collect::<Vec<_>>()
        }
    };
    let none = Filter::default();
    for query in [
        "requests per minute",
        "installer administrator rights",
        "invoices payment due",
        "status 413 payload",
    ] {
        let a = place(&pg, pg.text_search(query, 10, &none).await.unwrap()).await;
        let b = place(&lite, lite.text_search(query, 10, &none).await.unwrap()).await;
        assert!(!a.is_empty(), "{query}: no BM25 hits in PostgreSQL");
        let names = |hits: &[(String, f32)]| hits.iter().map(|h| h.0.clone()).collect::<Vec<_>>();
        assert_eq!(names(&a), names(&b), "{query}: BM25 order");
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 0.02 * y.abs().max(1e-3),
                "{query}: {name} BM25 {x} in PostgreSQL, {y} in SQLite"
            );
        }

        let vector = embedder_vector(&embedder, query).await;
        let a = place(&pg, pg.vector_search(&vector, 10, &none).await.unwrap()).await;
        let b = place(&lite, lite.vector_search(&vector, 10, &none).await.unwrap()).await;
        assert_eq!(a.len(), b.len(), "{query}");
        for ((name_a, x), (name_b, y)) in a.iter().zip(&b) {
            // Ties may come out in either order; the similarities must agree.
            assert!(
                (x - y).abs() < 1e-3,
                "{query}: {name_a} {x} vs {name_b} {y}"
            );
        }
    }
    // A query of stop words alone finds nothing in PostgreSQL rather than failing.
    assert!(pg.text_search("to be or not", 5, &none).await.is_ok());
}

async fn embedder_vector(embedder: &Hashing, text: &str) -> Vec<f32> {
    use plumb_core::Embedder;
    embedder.embed(&[text.to_owned()]).await.unwrap().remove(0)
}

#[tokio::test]
async fn an_unreachable_database_is_one_clear_error() {
    // Nothing listens on this port (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = Store::open(&format!("postgres://plumb:hunter2@127.0.0.1:{port}/rag"))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains(&format!(
            "cannot connect to postgres://plumb@127.0.0.1:{port}/rag"
        )),
        "{error}"
    );
    assert!(
        !error.contains("hunter2"),
        "the password is not shown: {error}"
    );
}
