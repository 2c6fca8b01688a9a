//! Embedders behind `plumb_core::Embedder`: the embedded all-MiniLM-L6-v2 (plumb's BERT in
//! `minilm.rs` over the packaged safetensors and tokenizer.json; mean pooling and L2
//! normalization, as sentence-transformers does) and any OpenAI-compatible `/v1/embeddings`
//! endpoint.

use std::path::Path;
use std::sync::Arc;

use plumb_core::{BoxFuture, Embedder, ModelError, ModelErrorKind};
use serde_json::{Value, json};

use crate::http::{self, JsonRequest};
use crate::{ProviderContext, ProviderOptions, models};

/// The embedder `similar` uses when none is named.
pub const DEFAULT_EMBEDDER: &str = "local:all-minilm-l6-v2";

/// Builds the embedder named by `id`: `local:all-minilm-l6-v2` (or a directory with
/// `model.safetensors`, `config.json` and `tokenizer.json`), `openai:<model>`,
/// `openai-compatible:<base-url>#<model>`.
pub fn build_embedder(
    id: &str,
    options: &ProviderOptions,
    ctx: &ProviderContext,
) -> Result<Arc<dyn Embedder>, ModelError> {
    let (prefix, rest) = id.split_once(':').unwrap_or((id, ""));
    match prefix {
        "openai" => {
            let base = options
                .api_base_url
                .clone()
                .or_else(|| std::env::var("OPENAI_BASE_URL").ok())
                .unwrap_or_else(|| "https://api.openai.com/v1".to_owned());
            let key_env = options.api_key_env.clone().unwrap_or_else(|| "OPENAI_API_KEY".to_owned());
            let key = options.api_key.clone().or_else(|| http::api_key(&key_env));
            if key.is_none() {
                return Err(ModelError::config(format!("embedder `{id}` needs an API key in `{key_env}`")));
            }
            Ok(Arc::new(HttpEmbedder::new(id, rest, &base, key, options)?))
        }
        "openai-compatible" => {
            let Some((base, model)) = rest.rsplit_once('#') else {
                return Err(ModelError::config(format!("embedder `{id}` names no model"))
                    .with_hint("write `openai-compatible:<base-url>#<model>`"));
            };
            Ok(Arc::new(HttpEmbedder::new(id, model, base, options.api_key.clone(), options)?))
        }
        "local" => build_local(id, rest, ctx),
        _ => Err(ModelError::config(format!("unknown embedder `{id}`")).with_hint(format!(
            "accepted: `{DEFAULT_EMBEDDER}`, `openai:<model>`, `openai-compatible:<base-url>#<model>`"
        ))),
    }
}

#[cfg(feature = "embed")]
fn build_local(
    id: &str,
    name: &str,
    ctx: &ProviderContext,
) -> Result<Arc<dyn Embedder>, ModelError> {
    let path = if name.contains('/') {
        let path = Path::new(name);
        if path.is_absolute() {
            path.to_owned()
        } else {
            ctx.base_dir.join(path)
        }
    } else {
        let entry = models::entry(name)
            .filter(|e| e.kind == models::ModelKind::Embedding)
            .ok_or_else(|| {
                ModelError::config(format!("unknown local embedding model `{name}`"))
                    .with_hint(format!("the embedded one is `{DEFAULT_EMBEDDER}`"))
            })?;
        let path = models::installed_path(entry, &ctx.models_dir);
        if !path.exists() {
            return Err(
                ModelError::config(format!("embedding model `{name}` is not installed"))
                    .with_hint(format!("run `plumb models pull {name}`")),
            );
        }
        path
    };
    Ok(Arc::new(local::MiniLm::load(id, &path)?))
}

#[cfg(not(feature = "embed"))]
fn build_local(
    id: &str,
    _name: &str,
    _ctx: &ProviderContext,
) -> Result<Arc<dyn Embedder>, ModelError> {
    let _ = (Path::new(""), models::CATALOG.len());
    Err(ModelError::config(format!(
        "embedder `{id}` needs local embedding support, which this build lacks"
    )))
}

struct HttpEmbedder {
    id: String,
    model: String,
    url: reqwest::Url,
    key: Option<String>,
    timeout: std::time::Duration,
    max_retries: u32,
}

impl HttpEmbedder {
    fn new(
        id: &str,
        model: &str,
        base: &str,
        key: Option<String>,
        options: &ProviderOptions,
    ) -> Result<HttpEmbedder, ModelError> {
        Ok(HttpEmbedder {
            id: id.to_owned(),
            model: model.to_owned(),
            url: http::endpoint(id, &format!("{}/embeddings", base.trim_end_matches('/')))?,
            key,
            timeout: crate::timeout(options),
            max_retries: options.max_retries.unwrap_or(http::DEFAULT_MAX_RETRIES),
        })
    }

    async fn call(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        let headers: Vec<(String, String)> = self
            .key
            .iter()
            .map(|key| ("authorization".to_owned(), format!("Bearer {key}")))
            .collect();
        let body = json!({"model": self.model, "input": texts});
        let value = http::post_json(JsonRequest {
            url: &self.url,
            headers: &headers,
            body: &body,
            timeout: self.timeout,
            max_retries: self.max_retries,
            error_message: crate::openai::error_message,
        })
        .await?;
        let protocol = |message: &str| {
            ModelError::new(ModelErrorKind::Protocol, format!("{}: {message}", self.url))
        };
        let data = value
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| protocol("answer has no `data`"))?;
        let mut vectors = vec![Vec::new(); texts.len()];
        for (position, item) in data.iter().enumerate() {
            let index = item
                .get("index")
                .and_then(Value::as_u64)
                .map(|i| i as usize)
                .unwrap_or(position);
            let embedding = item
                .get("embedding")
                .and_then(Value::as_array)
                .ok_or_else(|| protocol("item without `embedding`"))?
                .iter()
                .map(|v| v.as_f64().unwrap_or(0.0) as f32)
                .collect::<Vec<f32>>();
            let slot = vectors
                .get_mut(index)
                .ok_or_else(|| protocol("embedding index out of range"))?;
            *slot = normalize(embedding);
        }
        if vectors.iter().any(Vec::is_empty) {
            return Err(protocol("fewer embeddings than inputs"));
        }
        Ok(vectors)
    }
}

impl Embedder for HttpEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, ModelError>> {
        Box::pin(self.call(texts))
    }
}

fn normalize(mut vector: Vec<f32>) -> Vec<f32> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut vector {
            *x /= norm;
        }
    }
    vector
}

#[cfg(feature = "embed")]
mod local {
    use std::path::Path;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use plumb_core::{BoxFuture, Embedder, ModelError, ModelErrorKind};
    use tokenizers::Tokenizer;

    use crate::minilm::{Bert, Config};

    /// sentence-transformers truncates all-MiniLM-L6-v2 inputs at 256 word pieces.
    const MAX_TOKENS: usize = 256;
    /// Word pieces per batch (texts are packed without padding). Attention's cost grows with
    /// each text's length squared, the rest with the total; on 2 cores batches of 1024–4096
    /// tokens ran alike (bench/embeddings.py).
    const TOKEN_BUDGET: usize = 2048;

    pub(super) struct MiniLm {
        id: String,
        model: Bert,
        tokenizer: Mutex<Tokenizer>,
    }

    fn failed(what: &str, error: impl std::fmt::Display) -> ModelError {
        ModelError::new(
            ModelErrorKind::Local,
            format!("embedding model: {what}: {error}"),
        )
    }

    impl MiniLm {
        pub(super) fn load(id: &str, dir: &Path) -> Result<MiniLm, ModelError> {
            let read = |name: &str| {
                std::fs::read(dir.join(name)).map_err(|e| {
                    ModelError::config(format!("cannot read {}: {e}", dir.join(name).display()))
                        .with_hint("a local embedding model directory holds model.safetensors, config.json, tokenizer.json")
                })
            };
            let config: Config = serde_json::from_slice(&read("config.json")?)
                .map_err(|e| failed("config.json", e))?;
            let model = Bert::load(&config, &read("model.safetensors")?)
                .map_err(|e| failed("model.safetensors", e))?;
            let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
                .map_err(|e| failed("tokenizer.json", e))?;
            // The packaged tokenizer pads to a fixed 128; batches are packed unpadded instead,
            // and truncated where sentence-transformers does.
            tokenizer.with_padding(None);
            tokenizer
                .with_truncation(Some(tokenizers::TruncationParams {
                    max_length: MAX_TOKENS.min(model.max_positions()),
                    ..Default::default()
                }))
                .map_err(|e| failed("truncation", e))?;
            Ok(MiniLm {
                id: id.to_owned(),
                model,
                tokenizer: Mutex::new(tokenizer),
            })
        }

        /// Tokenizes every text, cuts them into batches of about `TOKEN_BUDGET` tokens (fewer
        /// when that would leave a core idle) and embeds the batches on all cores; the
        /// vectors come back in the order given.
        pub(super) fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
            let encodings = {
                let tokenizer = self
                    .tokenizer
                    .lock()
                    .map_err(|_| failed("tokenizer", "lock poisoned"))?;
                tokenizer
                    .encode_batch(texts.to_vec(), true)
                    .map_err(|e| failed("tokenize", e))?
            };
            let ids: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
            let threads = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            let total: usize = ids.iter().map(|t| t.len()).sum();
            let budget = TOKEN_BUDGET.min(total.div_ceil(threads)).max(1);
            let mut batches: Vec<std::ops::Range<usize>> = Vec::new();
            let mut start = 0;
            while start < ids.len() {
                let mut end = start + 1;
                let mut tokens = ids[start].len();
                while end < ids.len() && tokens + ids[end].len() <= budget {
                    tokens += ids[end].len();
                    end += 1;
                }
                batches.push(start..end);
                start = end;
            }
            let next = AtomicUsize::new(0);
            let done: Mutex<Vec<(usize, Vec<Vec<f32>>)>> = Mutex::new(Vec::new());
            let work = || -> Result<(), ModelError> {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(range) = batches.get(i) else {
                        return Ok(());
                    };
                    let vectors = self
                        .model
                        .embed(&ids[range.clone()])
                        .map_err(|e| failed("forward", e))?;
                    done.lock()
                        .map_err(|_| failed("batch", "lock poisoned"))?
                        .push((range.start, vectors));
                }
            };
            std::thread::scope(|scope| {
                let helpers: Vec<_> = (1..threads.min(batches.len()))
                    .map(|_| scope.spawn(work))
                    .collect();
                let mine = work();
                helpers
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(failed("batch", "panicked")))
                    })
                    .chain(std::iter::once(mine))
                    .collect::<Result<Vec<()>, ModelError>>()
            })?;
            let mut done = done
                .into_inner()
                .map_err(|_| failed("batch", "lock poisoned"))?;
            done.sort_by_key(|(start, _)| *start);
            Ok(done.into_iter().flat_map(|(_, vectors)| vectors).collect())
        }
    }

    impl Embedder for MiniLm {
        fn id(&self) -> &str {
            &self.id
        }

        fn embed<'a>(
            &'a self,
            texts: &'a [String],
        ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, ModelError>> {
            // Inference is CPU-bound: on a multi-threaded runtime, tell tokio this worker is
            // busy; a current-thread runtime has no other worker to hand the tasks to.
            Box::pin(async move {
                let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|h| {
                    h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                });
                if multi_thread {
                    tokio::task::block_in_place(|| self.embed_blocking(texts))
                } else {
                    self.embed_blocking(texts)
                }
            })
        }
    }
}
