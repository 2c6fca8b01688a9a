//! Embedders behind `plumb_core::Embedder`: the embedded all-MiniLM-L6-v2 (candle BERT over
//! the packaged safetensors and tokenizer.json; mean pooling and L2 normalization, as
//! sentence-transformers does) and any OpenAI-compatible `/v1/embeddings` endpoint.

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

    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;
    use candle_transformers::models::bert::{BertModel, Config};
    use plumb_core::{BoxFuture, Embedder, ModelError, ModelErrorKind};
    use tokenizers::Tokenizer;

    /// sentence-transformers truncates all-MiniLM-L6-v2 inputs at 256 word pieces.
    const MAX_TOKENS: usize = 256;
    /// Word pieces per forward pass (rows × the longest row). Attention's scores grow with the
    /// square of the length, so long texts go in small batches and short ones in large; on 2
    /// cores 1024–4096 were alike and 8192 slower (bench/embeddings.py).
    const TOKEN_BUDGET: usize = 2048;
    /// Most texts per forward pass.
    const MAX_ROWS: usize = 128;

    pub(super) struct MiniLm {
        id: String,
        model: BertModel,
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
            let weights = read("model.safetensors")?;
            let vars = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
                .map_err(|e| failed("model.safetensors", e))?;
            let model = BertModel::load(vars, &config).map_err(|e| failed("load", e))?;
            let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
                .map_err(|e| failed("tokenizer.json", e))?;
            // The packaged tokenizer pads to a fixed 128; batches are padded here instead, and
            // truncated where sentence-transformers does.
            tokenizer.with_padding(None);
            tokenizer
                .with_truncation(Some(tokenizers::TruncationParams {
                    max_length: MAX_TOKENS,
                    ..Default::default()
                }))
                .map_err(|e| failed("truncation", e))?;
            Ok(MiniLm {
                id: id.to_owned(),
                model,
                tokenizer: Mutex::new(tokenizer),
            })
        }

        /// Tokenizes every text, batches texts of similar length together (each batch padded
        /// to its longest, within the token budget), then returns the vectors in the order
        /// given.
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
            let mut order: Vec<usize> = (0..texts.len()).collect();
            order.sort_by_key(|&i| encodings[i].get_ids().len());
            let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
            let mut start = 0;
            while start < order.len() {
                // Sorted ascending: the last row of a batch is its longest.
                let mut end = start + 1;
                while end < order.len()
                    && end - start < MAX_ROWS
                    && (end + 1 - start) * encodings[order[end]].get_ids().len() <= TOKEN_BUDGET
                {
                    end += 1;
                }
                let batch: Vec<&tokenizers::Encoding> =
                    order[start..end].iter().map(|&i| &encodings[i]).collect();
                for (&i, vector) in order[start..end].iter().zip(self.embed_batch(&batch)?) {
                    out[i] = vector;
                }
                start = end;
            }
            Ok(out)
        }

        fn embed_batch(
            &self,
            encodings: &[&tokenizers::Encoding],
        ) -> Result<Vec<Vec<f32>>, ModelError> {
            let rows = encodings.len();
            let width = encodings
                .iter()
                .map(|e| e.get_ids().len())
                .max()
                .unwrap_or(0);
            let mut ids: Vec<u32> = Vec::with_capacity(rows * width);
            let mut mask: Vec<u32> = Vec::with_capacity(rows * width);
            for encoding in encodings {
                let length = encoding.get_ids().len();
                ids.extend_from_slice(encoding.get_ids());
                ids.extend(std::iter::repeat_n(0, width - length));
                mask.extend(std::iter::repeat_n(1, length));
                mask.extend(std::iter::repeat_n(0, width - length));
            }
            let device = Device::Cpu;
            let ids =
                Tensor::from_vec(ids, (rows, width), &device).map_err(|e| failed("ids", e))?;
            let mask =
                Tensor::from_vec(mask, (rows, width), &device).map_err(|e| failed("mask", e))?;
            let types = ids.zeros_like().map_err(|e| failed("types", e))?;
            let hidden = self
                .model
                .forward(&ids, &types, Some(&mask))
                .map_err(|e| failed("forward", e))?;
            // Mean over real tokens only, then L2 normalization.
            let mask = mask
                .to_dtype(DType::F32)
                .and_then(|m| m.unsqueeze(2))
                .map_err(|e| failed("pool", e))?;
            let summed = hidden
                .broadcast_mul(&mask)
                .and_then(|h| h.sum(1))
                .map_err(|e| failed("pool", e))?;
            let counts = mask.sum(1).map_err(|e| failed("pool", e))?;
            let mean = summed
                .broadcast_div(&counts)
                .map_err(|e| failed("pool", e))?;
            let norms = mean
                .sqr()
                .and_then(|s| s.sum_keepdim(1))
                .and_then(|s| s.sqrt())
                .map_err(|e| failed("norm", e))?;
            let normalized = mean.broadcast_div(&norms).map_err(|e| failed("norm", e))?;
            normalized.to_vec2::<f32>().map_err(|e| failed("read", e))
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
