//! `plumb rag ingest|query|eval|list|show`: collections of documents for retrieval, under
//! `.plumb/rag/NAME/` in the project, or in the store `--store` / `$PLUMB_RAG_STORE` names
//! (another directory, or a PostgreSQL database with pgvector).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use plumb_core::Embedder;
use plumb_provider::{ProviderContext, ProviderOptions};
use plumb_rag::ingest::{self, Observer};
use plumb_rag::{
    Backend, ChunkingConfig, Filter, Hit, Manifest, Reranker, Retriever, SearchOptions, Store,
    Strategy, evidence,
};

use crate::{Outcome, project, user_error};

#[derive(Args, Debug)]
pub struct RagArgs {
    /// Where collections live: a directory, or a PostgreSQL database with pgvector
    /// (`postgres://USER:PASSWORD@HOST:PORT/DB`) [default: .plumb/rag in the project]
    #[arg(long, global = true, env = "PLUMB_RAG_STORE", value_name = "DIR|URL")]
    pub store: Option<String>,
    #[command(subcommand)]
    pub command: RagCommand,
}

#[derive(Subcommand, Debug)]
pub enum RagCommand {
    /// Read documents (Markdown, HTML, PDF, text; files or directories) into a collection:
    /// chunked, embedded and indexed for BM25 and vector search. Again later, only changed
    /// files are embedded and removed files are removed.
    Ingest(IngestArgs),
    /// Search a collection: BM25 and vectors fused by reciprocal rank, optionally reranked
    Query(QueryArgs),
    /// Measure retrieval on labeled queries (recall@k, MRR, nDCG with 95% CIs) and compare
    /// settings — collections (chunking, embedder) × fusion — paired by query
    Eval(EvalArgs),
    /// List the project's collections
    List,
    /// Show a collection's settings and documents
    Show {
        /// The collection
        collection: String,
    },
}

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// Files and directories to ingest (directories recursively; hidden entries left out)
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The collection (made on first ingest with the settings below)
    #[arg(long, short = 'c')]
    pub collection: String,
    /// Chunking strategy of a new collection: by structure (headings, paragraphs, sentences)
    /// or fixed token windows
    #[arg(long, value_enum)]
    pub chunking: Option<ChunkingArg>,
    /// Most tokens per chunk (cl100k) of a new collection [default: 256]
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Tokens shared by neighbouring chunks of a new collection [default: 32]
    #[arg(long)]
    pub overlap: Option<usize>,
    /// Embedder of a new collection: `local:all-minilm-l6-v2`, `openai:<model>`,
    /// `openai-compatible:<base-url>#<model>` [default: local:all-minilm-l6-v2]
    #[arg(long)]
    pub embedder: Option<String>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ChunkingArg {
    Structure,
    Fixed,
}

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// The collection
    pub collection: String,
    /// What to search for
    pub query: String,
    /// Hits to return
    #[arg(short, default_value_t = 5)]
    pub k: usize,
    /// Show each hit's BM25 rank and score, vector rank and similarity, fused score and span
    #[arg(long)]
    pub debug: bool,
    /// Only chunks matching KEY=VALUE: source=GLOB, format=markdown|html|pdf|text,
    /// page=N or N-M, heading=TEXT (repeatable; all must hold)
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
    /// Weight of BM25 in fusion (0: vectors only)
    #[arg(long, default_value_t = 1.0)]
    pub text_weight: f32,
    /// Weight of vector search in fusion (0: BM25 only)
    #[arg(long, default_value_t = 1.0)]
    pub vector_weight: f32,
    #[command(flatten)]
    pub search: SearchArgs,
    /// A passage that should be retrieved: say whether and at which rank it was
    #[arg(long, value_name = "TEXT")]
    pub gold: Option<String>,
    /// An answer written from these hits: say which hits it cites and draws on
    #[arg(long, value_name = "TEXT")]
    pub answer: Option<String>,
    /// Print the hits as JSON
    #[arg(long)]
    pub json: bool,
}

/// Options shared by `query` and `eval`.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Hits each search contributes to fusion
    #[arg(long, default_value_t = 50)]
    pub candidates: usize,
    /// Rerank the fused top hits with this chat model (listwise), e.g. `local:smollm2-135m`
    #[arg(long, value_name = "MODEL")]
    pub rerank: Option<String>,
    /// How many fused hits the reranker sees
    #[arg(long, default_value_t = 10)]
    pub rerank_depth: usize,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Labeled queries: a YAML list of `{query, gold: [passage…], sources: [file…]}`
    pub labels: PathBuf,
    /// Collections to evaluate (repeatable; the first is the baseline)
    #[arg(long = "collection", short = 'c', required = true)]
    pub collections: Vec<String>,
    /// Fusion settings (repeatable): hybrid, bm25, vector, or TEXT_WEIGHT,VECTOR_WEIGHT
    #[arg(long = "fusion", default_value = "hybrid")]
    pub fusions: Vec<String>,
    /// Cutoff of recall@k, MRR@k and nDCG@k
    #[arg(short, default_value_t = 5)]
    pub k: usize,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Fail (exit 1) when the baseline's recall@k is below this
    #[arg(long, value_name = "RECALL")]
    pub min_recall: Option<f64>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// Where the project's collections live: `store` (the `--store` flag or `$PLUMB_RAG_STORE`),
/// else `.plumb/rag` in the project.
pub fn store_spec(start: &Path, store: Option<&str>) -> String {
    match store {
        Some(spec) if !spec.trim().is_empty() => spec.trim().to_owned(),
        _ => project::root_from(start)
            .join(".plumb")
            .join("rag")
            .display()
            .to_string(),
    }
}

/// Opens the collections' store (connecting to PostgreSQL when it is a database).
pub async fn open_store(start: &Path, store: Option<&str>) -> anyhow::Result<Store> {
    let spec = store_spec(start, store);
    Store::open(&spec).await.map_err(|error| {
        user_error(
            format!("the collections' store: {error}"),
            Some(
                "check --store / PLUMB_RAG_STORE: a directory, or postgres://USER@HOST:PORT/DB \
                 of a running server where pgvector is installed"
                    .to_owned(),
            ),
        )
    })
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if plumb_rag::store::valid_name(name) {
        Ok(())
    } else {
        Err(user_error(
            format!("`{name}` is not a collection name"),
            Some("use letters, digits, `-` and `_` (at most 64)".to_owned()),
        ))
    }
}

/// Opens collection `name` of `store`; a missing one is an error naming what is there.
pub async fn open_collection(store: &Store, name: &str) -> anyhow::Result<Arc<dyn Backend>> {
    check_name(name)?;
    let opened = store.open_collection(name).await.map_err(|error| {
        user_error(
            format!("collection `{name}`: {error}"),
            Some(format!("it lives in {}", store.describe())),
        )
    })?;
    if let Some(collection) = opened {
        return Ok(collection);
    }
    let known = store.list().await.unwrap_or_default();
    let hint = match plumb_core::did_you_mean(name, known.iter().map(String::as_str)) {
        Some(best) => format!("did you mean `{best}`?"),
        None if known.is_empty() => {
            "make one with `plumb rag ingest PATH… --collection NAME`".to_owned()
        }
        None => format!("collections here: {}", known.join(", ")),
    };
    Err(user_error(
        format!("collection `{name}` does not exist in {}", store.describe()),
        Some(hint),
    ))
}

/// Builds the collection's embedder (pulling the embedded one when missing).
pub fn build_embedder(id: &str, ctx: &ProviderContext) -> anyhow::Result<Arc<dyn Embedder>> {
    crate::eval_cmd::pull_if_missing(id, ctx)?;
    Ok(plumb_provider::build_embedder(
        id,
        &ProviderOptions::default(),
        ctx,
    )?)
}

/// Runs the suite's retrieval steps (`context:` on tests), filling their vars, with the
/// collections of the suite's project (or of `$PLUMB_RAG_STORE`).
pub(crate) async fn attach_retrieval(
    suite: &mut plumb_eval::Suite,
    base_dir: &Path,
    ctx: &ProviderContext,
) -> anyhow::Result<()> {
    let names = suite.collections();
    if names.is_empty() {
        return Ok(());
    }
    // The project is found by walking up from the suite's directory: start from its
    // absolute path.
    let base_dir = if base_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base_dir
    };
    let base_dir = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_owned());
    let base_dir = base_dir.as_path();
    let store_env = std::env::var("PLUMB_RAG_STORE").ok();
    let mut store = None;
    let mut retrievers = std::collections::HashMap::new();
    for name in names {
        let at = suite
            .tests
            .iter()
            .filter_map(|t| t.retrieval.as_ref())
            .find(|step| step.collection == name)
            .map(|step| step.location.clone())
            .unwrap_or_else(|| plumb_core::SourceError::in_file(&suite.path, ""));
        let located = |error: anyhow::Error| -> anyhow::Error {
            let mut located = at.clone();
            if let Some(user) = error.downcast_ref::<crate::UserError>() {
                located.message = format!("`context`: {}", user.message);
                located.hint = user.hint.clone();
            } else {
                located.message = format!("`context`: {error:#}");
            }
            anyhow::Error::new(located)
        };
        if store.is_none() {
            store = Some(
                open_store(base_dir, store_env.as_deref())
                    .await
                    .map_err(located)?,
            );
        }
        let Some(opened) = &store else {
            continue;
        };
        let collection = open_collection(opened, &name).await.map_err(located)?;
        let embedder = build_embedder(&collection.manifest().embedder, ctx).map_err(located)?;
        let retriever = Retriever::new(collection, embedder)
            .map_err(|error| located(anyhow::Error::new(error)))?;
        retrievers.insert(name, retriever);
    }
    let started = std::time::Instant::now();
    let filled = plumb_eval::retrieval::attach(suite, &retrievers).await?;
    eprintln!(
        "plumb: retrieved context for {filled} tests in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The listwise reranker `--rerank MODEL` names, if any.
fn build_reranker(
    id: Option<&str>,
    depth: usize,
    ctx: &ProviderContext,
) -> anyhow::Result<Option<Reranker>> {
    let Some(id) = id else {
        return Ok(None);
    };
    crate::eval_cmd::pull_if_missing(id, ctx)?;
    let model = plumb_provider::build(id, &ProviderOptions::default(), ctx)?;
    model.preflight()?;
    Ok(Some(Reranker { model, depth }))
}

pub async fn run(args: RagArgs) -> anyhow::Result<Outcome> {
    let cwd = project::current_dir()?;
    let store = args.store.as_deref();
    match args.command {
        RagCommand::Ingest(command) => ingest_cmd(&cwd, store, command).await,
        RagCommand::Query(command) => query_cmd(&cwd, store, command).await,
        RagCommand::Eval(command) => eval_cmd(&cwd, store, command).await,
        RagCommand::List => list_cmd(&cwd, store).await,
        RagCommand::Show { collection } => show_cmd(&cwd, store, &collection).await,
    }
}

async fn ingest_cmd(cwd: &Path, store: Option<&str>, args: IngestArgs) -> anyhow::Result<Outcome> {
    check_name(&args.collection)?;
    let root = project::root_from(cwd);
    let ctx = ProviderContext::new(cwd);
    // Paths first: a typo fails before any model loads.
    let discovered = ingest::discover(&args.paths, &root)
        .map_err(|error| user_error(error.to_string(), None))?;
    let store = open_store(cwd, store).await?;
    let existing = store
        .open_collection(&args.collection)
        .await
        .map_err(|error| user_error(format!("collection `{}`: {error}", args.collection), None))?;
    let (collection, embedder) = if let Some(collection) = existing {
        refuse_changed_settings(collection.manifest(), &args)?;
        let embedder = build_embedder(&collection.manifest().embedder, &ctx)?;
        (collection, embedder)
    } else {
        let chunking = ChunkingConfig {
            strategy: match args.chunking {
                Some(ChunkingArg::Fixed) => Strategy::Fixed,
                _ => Strategy::Structure,
            },
            max_tokens: args
                .max_tokens
                .unwrap_or(ChunkingConfig::default().max_tokens),
            overlap: args.overlap.unwrap_or(ChunkingConfig::default().overlap),
        };
        chunking
            .check()
            .map_err(|error| user_error(error.to_string(), None))?;
        let embedder_id = args
            .embedder
            .clone()
            .unwrap_or_else(|| plumb_provider::DEFAULT_EMBEDDER.to_owned());
        let embedder = build_embedder(&embedder_id, &ctx)?;
        let probe = embedder.embed(&["dimension probe".to_owned()]).await?;
        let dimensions = probe.first().map(Vec::len).unwrap_or(0);
        if dimensions == 0 {
            return Err(user_error(
                format!("embedder `{embedder_id}` returned no vector"),
                None,
            ));
        }
        let manifest = Manifest {
            name: args.collection.clone(),
            chunking,
            embedder: embedder_id,
            dimensions,
            created_ms: plumb_core::now_ms(),
        };
        let collection = store
            .create(manifest)
            .await
            .map_err(|error| user_error(error.to_string(), None))?;
        (collection, embedder)
    };
    let progress = IngestProgress::new();
    // pdf-extract reports some damaged files by panicking; that is caught and reported as
    // a skipped file, so the default hook's message would only be noise here.
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = ingest::ingest(&*collection, &*embedder, discovered, &progress).await;
    std::panic::set_hook(previous_hook);
    progress.bar.finish_and_clear();
    let report = result.map_err(|error| user_error(error.to_string(), None))?;
    let stats = collection.stats().await?;
    if args.json {
        let json = serde_json::json!({
            "collection": args.collection,
            "added": report.added,
            "updated": report.updated,
            "removed": report.removed,
            "unchanged": report.unchanged,
            "skipped": report.skipped.iter().map(|s| serde_json::json!({"source": s.source, "reason": s.reason})).collect::<Vec<_>>(),
            "chunks": report.chunks,
            "embedded": report.embedded,
            "bytes": report.bytes,
            "seconds": report.elapsed.as_secs_f64(),
            "documents_total": stats.documents,
            "chunks_total": stats.chunks,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(Outcome::Ok);
    }
    let seconds = report.elapsed.as_secs_f64().max(1e-9);
    println!(
        "collection `{}`: {} added, {} updated, {} unchanged, {} removed, {} skipped",
        args.collection,
        report.added.len(),
        report.updated.len(),
        report.unchanged,
        report.removed.len(),
        report.skipped.len()
    );
    if report.chunks > 0 {
        println!(
            "  {} chunks stored, {} embedded ({} from the cache) · {:.2} MB read in {:.1} s ({:.2} MB/s)",
            report.chunks,
            report.embedded,
            report.chunks.saturating_sub(report.embedded),
            report.bytes as f64 / 1e6,
            seconds,
            report.bytes as f64 / 1e6 / seconds
        );
    }
    for source in &report.removed {
        println!("  removed {source}");
    }
    if !report.skipped.is_empty() {
        println!("skipped:");
        for skipped in &report.skipped {
            println!("  {}: {}", skipped.source, skipped.reason);
        }
    }
    println!(
        "  now {} documents, {} chunks in {}",
        stats.documents,
        stats.chunks,
        collection.location()
    );
    Ok(Outcome::Ok)
}

/// An existing collection keeps its settings: a flag that would change them is an error.
fn refuse_changed_settings(manifest: &Manifest, args: &IngestArgs) -> anyhow::Result<()> {
    let mut changed = Vec::new();
    if let Some(embedder) = &args.embedder
        && *embedder != manifest.embedder
    {
        changed.push(format!(
            "embedder `{}` (given `{embedder}`)",
            manifest.embedder
        ));
    }
    let strategy = args.chunking.map(|c| match c {
        ChunkingArg::Structure => Strategy::Structure,
        ChunkingArg::Fixed => Strategy::Fixed,
    });
    if let Some(strategy) = strategy
        && strategy != manifest.chunking.strategy
    {
        changed.push(format!(
            "chunking `{:?}` (given `{strategy:?}`)",
            manifest.chunking.strategy
        ));
    }
    if let Some(max) = args.max_tokens
        && max != manifest.chunking.max_tokens
    {
        changed.push(format!(
            "max tokens {} (given {max})",
            manifest.chunking.max_tokens
        ));
    }
    if let Some(overlap) = args.overlap
        && overlap != manifest.chunking.overlap
    {
        changed.push(format!(
            "overlap {} (given {overlap})",
            manifest.chunking.overlap
        ));
    }
    if changed.is_empty() {
        return Ok(());
    }
    Err(user_error(
        format!(
            "collection `{}` was made with {}",
            manifest.name,
            changed.join(", ")
        ),
        Some(
            "a collection keeps its chunking and embedder; ingest into a new collection to compare settings"
                .to_owned(),
        ),
    ))
}

struct IngestProgress {
    bar: ProgressBar,
}

impl IngestProgress {
    fn new() -> IngestProgress {
        let bar = ProgressBar::hidden();
        if std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(8));
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        IngestProgress { bar }
    }

    fn stage(&self, template: &str, length: usize) {
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        self.bar.set_style(style);
        self.bar.set_length(length as u64);
        self.bar.set_position(0);
    }
}

impl Observer for IngestProgress {
    fn reading(&self, files: usize) {
        self.stage(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} files · {msg}",
            files,
        );
    }

    fn read(&self, source: &str) {
        self.bar.set_message(source.to_owned());
        self.bar.inc(1);
    }

    fn embedding(&self, texts: usize) {
        self.stage(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} chunks embedded · {per_sec} · ETA {eta}",
            texts,
        );
    }

    fn embedded(&self, texts: usize) {
        self.bar.inc(texts as u64);
    }
}

async fn query_cmd(cwd: &Path, store: Option<&str>, args: QueryArgs) -> anyhow::Result<Outcome> {
    let filter = Filter::parse(&args.filters).map_err(|error| {
        user_error(
            error,
            Some("e.g. --filter source='docs/**/*.md' --filter page=2-4".to_owned()),
        )
    })?;
    if args.k == 0 {
        return Err(user_error("-k must be at least 1", None));
    }
    let store = open_store(cwd, store).await?;
    let collection = open_collection(&store, &args.collection).await?;
    let ctx = ProviderContext::new(cwd);
    let embedder = build_embedder(&collection.manifest().embedder, &ctx)?;
    let reranker = build_reranker(
        args.search.rerank.as_deref(),
        args.search.rerank_depth.max(args.k),
        &ctx,
    )?;
    let retriever = Retriever::new(collection, embedder)
        .map_err(|error| user_error(error.to_string(), None))?
        .with_reranker(reranker);
    let options = SearchOptions {
        k: args.k,
        candidates: args.search.candidates,
        text_weight: args.text_weight,
        vector_weight: args.vector_weight,
        filter,
        ..SearchOptions::default()
    };
    // With a gold passage, look for it further down than k.
    let wide = SearchOptions {
        k: if args.gold.is_some() {
            args.search.candidates.max(args.k)
        } else {
            args.k
        },
        ..options.clone()
    };
    let mut ranked = retriever
        .search(&args.query, &wide)
        .await
        .map_err(|error| {
            use plumb_rag::RetrieveError;
            match error {
                RetrieveError::Options(message) => user_error(message, None),
                other => anyhow::Error::new(other),
            }
        })?;
    let gold_rank = args.gold.as_deref().and_then(|gold| {
        ranked
            .iter()
            .find(|hit| evidence::holds_passage(&hit.chunk.text, gold, 0.8))
            .map(|hit| hit.rank)
    });
    let deeper = args.gold.as_ref().and_then(|_| {
        gold_rank
            .filter(|rank| *rank > args.k)
            .and_then(|rank| ranked.get(rank - 1).cloned())
    });
    ranked.truncate(args.k);
    let hits = ranked;

    if args.json {
        let mut json = serde_json::json!({ "hits": hits });
        if args.gold.is_some() {
            json["gold_rank"] = serde_json::json!(gold_rank);
        }
        if let Some(answer) = &args.answer {
            json["answer"] = answer_json(answer, &hits, gold_rank);
        }
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(Outcome::Ok);
    }
    if hits.is_empty() {
        println!("no hits");
    }
    for hit in &hits {
        print_hit(hit, args.debug);
    }
    if args.gold.is_some() {
        println!();
        match (gold_rank, &deeper) {
            (Some(rank), None) => println!("gold passage: retrieved at rank {rank}"),
            (Some(rank), Some(hit)) => println!(
                "gold passage: not in the top {}; fused rank {rank} ({}, BM25 rank {}, vector rank {})",
                args.k,
                hit.chunk.place(),
                rank_text(hit.text_rank),
                rank_text(hit.vector_rank)
            ),
            (None, _) => println!(
                "gold passage: not retrieved in the top {} of either search (is it in the collection? `plumb rag show {}`)",
                args.search.candidates, args.collection
            ),
        }
    }
    if let Some(answer) = &args.answer {
        let json = answer_json(answer, &hits, gold_rank);
        let cited: Vec<String> = json["cites"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| format!("[{n}]"))
            .collect();
        let missing: Vec<String> = json["cites_missing"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| format!("[{n}]"))
            .collect();
        println!(
            "answer: cites {}{}",
            if cited.is_empty() {
                "nothing".to_owned()
            } else {
                cited.join(" ")
            },
            if missing.is_empty() {
                String::new()
            } else {
                format!(" — {} not among the hits", missing.join(" "))
            }
        );
        if let Some(support) = json["support"].as_array() {
            let shares: Vec<String> = support
                .iter()
                .map(|s| {
                    format!(
                        "#{} {:.0}%",
                        s["rank"],
                        s["share"].as_f64().unwrap_or(0.0) * 100.0
                    )
                })
                .collect();
            println!(
                "  share of the answer's words found in each hit: {}",
                shares.join(", ")
            );
        }
        if let Some(used) = json["gold_used"].as_bool() {
            println!(
                "  the gold passage {}",
                if used {
                    "was used (cited, or the hit accounting for most of the answer)"
                } else {
                    "was not used"
                }
            );
        }
    }
    Ok(Outcome::Ok)
}

/// What an answer cites and draws on among the hits; whether it used the gold passage (cited
/// it, or it is the hit that accounts for most of the answer's words).
fn answer_json(answer: &str, hits: &[Hit], gold_rank: Option<usize>) -> serde_json::Value {
    let cites = evidence::citations(answer);
    let (present, missing): (Vec<usize>, Vec<usize>) =
        cites.iter().partition(|n| **n >= 1 && **n <= hits.len());
    let support: Vec<(usize, f64)> = hits
        .iter()
        .map(|hit| (hit.rank, evidence::answer_support(answer, &hit.chunk.text)))
        .collect();
    let best = support
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .filter(|(_, share)| *share >= 0.5)
        .map(|(rank, _)| *rank);
    let mut json = serde_json::json!({
        "cites": present,
        "cites_missing": missing,
        "support": support.iter().map(|(rank, share)| serde_json::json!({"rank": rank, "share": share})).collect::<Vec<_>>(),
    });
    if let Some(gold) = gold_rank.filter(|r| *r <= hits.len()) {
        json["gold_used"] = serde_json::json!(present.contains(&gold) || best == Some(gold));
    } else if gold_rank.is_some() {
        json["gold_used"] = serde_json::json!(false);
    }
    json
}

fn rank_text(rank: Option<usize>) -> String {
    rank.map(|r| r.to_string())
        .unwrap_or_else(|| "-".to_owned())
}

fn print_hit(hit: &Hit, debug: bool) {
    println!("[{}] {}", hit.rank, hit.chunk.place());
    if debug {
        let text = match (hit.text_rank, hit.text_score) {
            (Some(rank), Some(score)) => format!("#{rank} ({score:.2})"),
            _ => "-".to_owned(),
        };
        let vector = match (hit.vector_rank, hit.vector_score) {
            (Some(rank), Some(score)) => format!("#{rank} ({score:.3})"),
            _ => "-".to_owned(),
        };
        let mut line = format!(
            "    fused {:.4} · BM25 {text} · vector {vector} · bytes {}..{} · {} tokens · chunk {}",
            hit.fused, hit.chunk.start, hit.chunk.end, hit.chunk.tokens, hit.chunk.id
        );
        if let Some(before) = hit.fused_rank {
            line.push_str(&format!(" · fused rank {before} before rerank"));
        }
        println!("{line}");
    }
    let flat: String = hit
        .chunk
        .text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let limit = if debug { 400 } else { 240 };
    let shown: String = flat.chars().take(limit).collect();
    let more = if flat.chars().count() > limit {
        "…"
    } else {
        ""
    };
    println!("    {shown}{more}");
}

/// `hybrid` → (1, 1), `bm25` → (1, 0), `vector` → (0, 1), `0.5,1` → (0.5, 1).
fn parse_fusion(text: &str) -> anyhow::Result<(f32, f32)> {
    let weights = match text {
        "hybrid" => Some((1.0, 1.0)),
        "bm25" | "text" => Some((1.0, 0.0)),
        "vector" => Some((0.0, 1.0)),
        _ => text.split_once(',').and_then(|(t, v)| {
            let t: f32 = t.trim().parse().ok()?;
            let v: f32 = v.trim().parse().ok()?;
            (t >= 0.0 && v >= 0.0 && t + v > 0.0).then_some((t, v))
        }),
    };
    weights.ok_or_else(|| {
        user_error(
            format!("fusion `{text}` is not a fusion setting"),
            Some(
                "accepted: hybrid, bm25, vector, or TEXT_WEIGHT,VECTOR_WEIGHT (e.g. 0.5,1)"
                    .to_owned(),
            ),
        )
    })
}

async fn eval_cmd(cwd: &Path, store: Option<&str>, args: EvalArgs) -> anyhow::Result<Outcome> {
    use plumb_eval::retrieval_eval::{self, Setting};
    if args.k == 0 {
        return Err(user_error("-k must be at least 1", None));
    }
    if let Some(min) = args.min_recall
        && !(0.0..=1.0).contains(&min)
    {
        return Err(user_error(
            format!("--min-recall must be in [0, 1], got {min}"),
            None,
        ));
    }
    let labels = retrieval_eval::load_labels(&args.labels)?;
    let fusions: Vec<(String, (f32, f32))> = args
        .fusions
        .iter()
        .map(|f| Ok((f.clone(), parse_fusion(f)?)))
        .collect::<anyhow::Result<_>>()?;
    let ctx = ProviderContext::new(cwd);
    let reranker = build_reranker(
        args.search.rerank.as_deref(),
        args.search.rerank_depth.max(args.k),
        &ctx,
    )?;
    let store = open_store(cwd, store).await?;
    let mut settings = Vec::new();
    for name in &args.collections {
        let collection = open_collection(&store, name).await?;
        let embedder = build_embedder(&collection.manifest().embedder, &ctx)?;
        let retriever = Retriever::new(collection, embedder)
            .map_err(|error| user_error(error.to_string(), None))?
            .with_reranker(reranker.clone());
        for (fusion, (text_weight, vector_weight)) in &fusions {
            let label = if args.collections.len() > 1 && fusions.len() > 1 {
                format!("{name} · {fusion}")
            } else if args.collections.len() > 1 {
                name.clone()
            } else {
                fusion.clone()
            };
            settings.push(Setting {
                label,
                retriever: retriever.clone(),
                options: SearchOptions {
                    k: args.k,
                    candidates: args.search.candidates,
                    text_weight: *text_weight,
                    vector_weight: *vector_weight,
                    ..SearchOptions::default()
                },
            });
        }
    }
    let bar = ProgressBar::hidden();
    if std::io::stderr().is_terminal() && !args.json {
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        bar.set_style(
            ProgressStyle::with_template("{spinner} {bar:30} {pos}/{len} queries · {per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_length((labels.len() * settings.len()) as u64);
    }
    let report = retrieval_eval::evaluate(&labels, &settings, args.k, |n| bar.inc(n as u64))
        .await
        .map_err(|error| user_error(error, None))?;
    bar.finish_and_clear();
    let gate = args
        .min_recall
        .map(|min| report.settings[0].recall.mean >= min);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_retrieval_report(&report, &labels, &args);
    }
    Ok(match gate {
        Some(false) => Outcome::GateFailed,
        _ => Outcome::Ok,
    })
}

fn print_retrieval_report(
    report: &plumb_eval::retrieval_eval::RetrievalReport,
    labels: &[plumb_eval::retrieval_eval::Label],
    args: &EvalArgs,
) {
    let k = report.k;
    println!(
        "plumb rag eval {} · {} queries · k {k}",
        args.labels.display(),
        report.queries
    );
    println!();
    let width = report
        .settings
        .iter()
        .map(|s| s.label.chars().count())
        .max()
        .unwrap_or(7)
        .max(7);
    println!(
        "  {:<width$}  {:<22} {:<22} {:<22} misses",
        "setting",
        format!("recall@{k} (95% CI)"),
        format!("MRR@{k} (95% CI)"),
        format!("nDCG@{k} (95% CI)"),
    );
    let cell = |e: &plumb_eval::retrieval_eval::Estimate| {
        format!("{:.3} ({:.2}–{:.2})", e.mean, e.low, e.high)
    };
    for setting in &report.settings {
        println!(
            "  {:<width$}  {:<22} {:<22} {:<22} {}",
            setting.label,
            cell(&setting.recall),
            cell(&setting.mrr),
            cell(&setting.ndcg),
            setting.misses().count()
        );
    }
    if !report.comparisons.is_empty() {
        println!();
        println!(
            "compared with {} (paired over {} queries):",
            report.settings[0].label, report.queries
        );
        for comparison in &report.comparisons {
            println!("  {}:", comparison.setting);
            for measure in &comparison.measures {
                println!("    {}", measure.describe(comparison.measures.len()));
            }
        }
    }
    let baseline = &report.settings[0];
    let misses: Vec<_> = baseline.misses().collect();
    if !misses.is_empty() {
        println!();
        println!(
            "not retrieved in the top {k} by {} ({}):",
            baseline.label,
            misses.len()
        );
        for miss in misses.iter().take(20) {
            if let Some(label) = labels.iter().find(|l| l.number == miss.number) {
                println!(
                    "  query {}: {}  (debug: plumb rag query {} {:?} --debug --gold {:?})",
                    label.number,
                    label.query,
                    args.collections[0],
                    label.query,
                    label.gold.first().map(String::as_str).unwrap_or("")
                );
            }
        }
        if misses.len() > 20 {
            println!("  … and {} more (see --json)", misses.len() - 20);
        }
    }
    if let Some(min) = args.min_recall {
        let recall = baseline.recall.mean;
        println!();
        if recall >= min {
            println!("plumb: gate holds (recall@{k} {recall:.3} ≥ {min})");
        } else {
            println!("plumb: gate failed: recall@{k} {recall:.3} < {min}");
        }
    }
}

async fn list_cmd(cwd: &Path, store: Option<&str>) -> anyhow::Result<Outcome> {
    let store = open_store(cwd, store).await?;
    let names = store.list().await?;
    if names.is_empty() {
        println!(
            "no collections in {} — make one with `plumb rag ingest PATH… --collection NAME`",
            store.describe()
        );
        return Ok(Outcome::Ok);
    }
    println!(
        "{:<20} {:>9} {:>8} {:>9}  {:<26} chunking",
        "collection", "documents", "chunks", "MB", "embedder"
    );
    for name in names {
        let collection = open_collection(&store, &name).await?;
        let stats = collection.stats().await?;
        let manifest = collection.manifest();
        println!(
            "{:<20} {:>9} {:>8} {:>9.2}  {:<26} {}",
            name,
            stats.documents,
            stats.chunks,
            stats.bytes as f64 / 1e6,
            manifest.embedder,
            chunking_text(&manifest.chunking)
        );
    }
    Ok(Outcome::Ok)
}

fn chunking_text(chunking: &ChunkingConfig) -> String {
    format!(
        "{} · {} tokens · overlap {}",
        match chunking.strategy {
            Strategy::Structure => "structure",
            Strategy::Fixed => "fixed",
        },
        chunking.max_tokens,
        chunking.overlap
    )
}

async fn show_cmd(cwd: &Path, store: Option<&str>, name: &str) -> anyhow::Result<Outcome> {
    let store = open_store(cwd, store).await?;
    let collection = open_collection(&store, name).await?;
    let manifest = collection.manifest();
    let stats = collection.stats().await?;
    println!("collection {name} ({})", collection.location());
    println!(
        "  embedder {} ({} dimensions)",
        manifest.embedder, manifest.dimensions
    );
    println!("  chunking {}", chunking_text(&manifest.chunking));
    println!("  created {}", project::utc_minute(manifest.created_ms));
    println!(
        "  {} documents, {} chunks, {:.2} MB",
        stats.documents,
        stats.chunks,
        stats.bytes as f64 / 1e6
    );
    for document in collection.documents().await? {
        println!("  {:>5} chunks  {}", document.chunks, document.source);
    }
    Ok(Outcome::Ok)
}
