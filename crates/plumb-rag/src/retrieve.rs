//! Retrieval: BM25 and vector search fused by reciprocal rank, then an optional listwise
//! rerank by a chat model.
//!
//! Reciprocal rank fusion (Cormack et al. 2009): a chunk's fused score is
//! Σ wᵢ / (k + rankᵢ) over the searches that returned it (ranks from 1, k = 60 by default).
//! A search with weight 0 is not run, so `text` and `vector` alone are fusion's edge cases.

use std::collections::HashMap;
use std::sync::Arc;

use plumb_core::{
    ChatModel, ChatRequest, Embedder, JsonSchemaFormat, Message, ModelError, ModelParams,
    ResponseFormat, Role,
};
use serde::Serialize;
use serde_json::json;

use crate::store::{Backend, ChunkId, Filter, StoreError, StoredChunk};

/// How to search.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchOptions {
    /// Hits returned.
    pub k: usize,
    /// Hits each search contributes to fusion (at least `k`).
    pub candidates: usize,
    /// Weight of BM25's ranks in fusion (0 = no full-text search).
    pub text_weight: f32,
    /// Weight of vector ranks in fusion (0 = no vector search).
    pub vector_weight: f32,
    /// RRF's k: larger flattens the difference between ranks.
    pub rrf_k: f32,
    pub filter: Filter,
}

impl Default for SearchOptions {
    fn default() -> SearchOptions {
        SearchOptions {
            k: 5,
            candidates: 50,
            text_weight: 1.0,
            vector_weight: 1.0,
            rrf_k: 60.0,
            filter: Filter::default(),
        }
    }
}

/// One retrieved chunk and how it got there.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    /// 1-based rank in the final list.
    pub rank: usize,
    pub chunk: StoredChunk,
    pub fused: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_rank: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_score: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector_rank: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector_score: Option<f32>,
    /// Rank after fusion, before the reranker moved it (only when a reranker ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fused_rank: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum RetrieveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("embedder `{embedder}`: {error}")]
    Embed { embedder: String, error: ModelError },
    #[error("reranker `{model}`: {error}")]
    Rerank { model: String, error: ModelError },
    #[error("{0}")]
    Options(String),
}

/// A collection ready to search: its storage and the embedder it was built with.
#[derive(Clone)]
pub struct Retriever {
    pub backend: Arc<dyn Backend>,
    pub embedder: Arc<dyn Embedder>,
    pub reranker: Option<Reranker>,
}

impl Retriever {
    /// Builds a retriever, refusing an embedder other than the collection's.
    pub fn new(
        backend: Arc<dyn Backend>,
        embedder: Arc<dyn Embedder>,
    ) -> Result<Retriever, StoreError> {
        let manifest = backend.manifest();
        if embedder.id() != manifest.embedder {
            return Err(StoreError::Mismatch(format!(
                "collection `{}` was embedded with `{}`; queries must use it, not `{}`",
                manifest.name,
                manifest.embedder,
                embedder.id()
            )));
        }
        Ok(Retriever {
            backend,
            embedder,
            reranker: None,
        })
    }

    pub fn with_reranker(mut self, reranker: Option<Reranker>) -> Retriever {
        self.reranker = reranker;
        self
    }

    pub async fn search(
        &self,
        query: &str,
        options: &SearchOptions,
    ) -> Result<Vec<Hit>, RetrieveError> {
        if options.k == 0 {
            return Err(RetrieveError::Options("k must be at least 1".to_owned()));
        }
        if options.text_weight < 0.0 || options.vector_weight < 0.0 {
            return Err(RetrieveError::Options(
                "fusion weights must not be negative".to_owned(),
            ));
        }
        if options.text_weight == 0.0 && options.vector_weight == 0.0 {
            return Err(RetrieveError::Options(
                "both fusion weights are 0: nothing would be searched".to_owned(),
            ));
        }
        let depth = options.candidates.max(options.k);
        let text = if options.text_weight > 0.0 {
            self.backend
                .text_search(query, depth, &options.filter)
                .await?
        } else {
            Vec::new()
        };
        let vector = if options.vector_weight > 0.0 {
            let texts = [query.to_owned()];
            let embedded =
                self.embedder
                    .embed(&texts)
                    .await
                    .map_err(|error| RetrieveError::Embed {
                        embedder: self.embedder.id().to_owned(),
                        error,
                    })?;
            let Some(query_vector) = embedded.into_iter().next() else {
                return Err(RetrieveError::Embed {
                    embedder: self.embedder.id().to_owned(),
                    error: ModelError::new(
                        plumb_core::ModelErrorKind::Protocol,
                        "no vector for the query",
                    ),
                });
            };
            self.backend
                .vector_search(&query_vector, depth, &options.filter)
                .await?
        } else {
            Vec::new()
        };

        #[derive(Default)]
        struct Entry {
            fused: f32,
            text: Option<(usize, f32)>,
            vector: Option<(usize, f32)>,
        }
        let mut entries: HashMap<ChunkId, Entry> = HashMap::new();
        for (rank, hit) in text.iter().enumerate() {
            let entry = entries.entry(hit.id).or_default();
            entry.fused += options.text_weight / (options.rrf_k + rank as f32 + 1.0);
            entry.text = Some((rank + 1, hit.score));
        }
        for (rank, hit) in vector.iter().enumerate() {
            let entry = entries.entry(hit.id).or_default();
            entry.fused += options.vector_weight / (options.rrf_k + rank as f32 + 1.0);
            entry.vector = Some((rank + 1, hit.score));
        }
        let mut fused: Vec<(ChunkId, Entry)> = entries.into_iter().collect();
        // Ties (a chunk at the same rank in one list as another in the other) go to the better
        // vector rank, then the better BM25 rank, then the lower id: deterministic.
        fused.sort_by(|(a_id, a), (b_id, b)| {
            b.fused
                .total_cmp(&a.fused)
                .then_with(|| rank_or_max(a.vector).cmp(&rank_or_max(b.vector)))
                .then_with(|| rank_or_max(a.text).cmp(&rank_or_max(b.text)))
                .then_with(|| a_id.cmp(b_id))
        });
        let keep = match &self.reranker {
            Some(reranker) => reranker.depth.max(options.k),
            None => options.k,
        };
        fused.truncate(keep);
        let ids: Vec<ChunkId> = fused.iter().map(|(id, _)| *id).collect();
        let mut chunks: HashMap<ChunkId, StoredChunk> = self
            .backend
            .chunks(&ids)
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
        let mut hits: Vec<Hit> = fused
            .into_iter()
            .filter_map(|(id, entry)| {
                let chunk = chunks.remove(&id)?;
                Some(Hit {
                    rank: 0,
                    chunk,
                    fused: entry.fused,
                    text_rank: entry.text.map(|t| t.0),
                    text_score: entry.text.map(|t| t.1),
                    vector_rank: entry.vector.map(|v| v.0),
                    vector_score: entry.vector.map(|v| v.1),
                    fused_rank: None,
                })
            })
            .collect();
        if let Some(reranker) = &self.reranker
            && hits.len() > 1
        {
            let order = reranker.rank(query, &hits).await?;
            let mut reordered = Vec::with_capacity(hits.len());
            for (position, hit) in hits.iter_mut().enumerate() {
                hit.fused_rank = Some(position + 1);
            }
            let mut taken = vec![false; hits.len()];
            for index in order {
                if let Some(slot) = taken.get_mut(index)
                    && !*slot
                {
                    *slot = true;
                    reordered.push(hits[index].clone());
                }
            }
            for (index, hit) in hits.into_iter().enumerate() {
                if !taken[index] {
                    reordered.push(hit);
                }
            }
            hits = reordered;
        }
        hits.truncate(options.k);
        for (position, hit) in hits.iter_mut().enumerate() {
            hit.rank = position + 1;
        }
        Ok(hits)
    }
}

fn rank_or_max(found: Option<(usize, f32)>) -> usize {
    found.map(|f| f.0).unwrap_or(usize::MAX)
}

/// Listwise reranking by a chat model: the fused top `depth` passages, numbered, and the
/// question; the model answers the numbers best first under a JSON Schema. Numbers it leaves
/// out keep their fused order after the ones it ranked.
#[derive(Clone)]
pub struct Reranker {
    pub model: Arc<dyn ChatModel>,
    pub depth: usize,
}

/// Passages are cut to this many characters in the rerank prompt.
const RERANK_PASSAGE_CHARS: usize = 1200;

impl Reranker {
    async fn rank(&self, query: &str, hits: &[Hit]) -> Result<Vec<usize>, RetrieveError> {
        let mut listing = String::new();
        for (index, hit) in hits.iter().enumerate() {
            let text: String = hit.chunk.text.chars().take(RERANK_PASSAGE_CHARS).collect();
            listing.push_str(&format!("[{}] {}\n\n", index + 1, text.trim()));
        }
        let prompt = format!(
            "Rank the passages by how well they answer the question, most useful first.\n\n\
             Question: {query}\n\nPassages:\n\n{listing}\
             Answer with the passage numbers, best first, as JSON: {{\"ranking\": [numbers]}}."
        );
        let numbers: Vec<usize> = (1..=hits.len()).collect();
        let schema = json!({
            "type": "object",
            "properties": {
                "ranking": {
                    "type": "array",
                    "items": {"type": "integer", "enum": numbers},
                    "maxItems": hits.len(),
                }
            },
            "required": ["ranking"],
            "additionalProperties": false,
        });
        let request = ChatRequest {
            messages: vec![Message::new(Role::User, prompt)],
            params: ModelParams {
                temperature: Some(0.0),
                max_tokens: Some(16 + 4 * hits.len() as u32),
                response_format: Some(ResponseFormat::JsonSchema {
                    json_schema: JsonSchemaFormat {
                        name: "ranking".to_owned(),
                        schema,
                        strict: Some(true),
                    },
                }),
                ..ModelParams::default()
            },
            ..ChatRequest::default()
        };
        let failed = |error: ModelError| RetrieveError::Rerank {
            model: self.model.id().to_owned(),
            error,
        };
        let response = self.model.chat(&request).await.map_err(failed)?;
        let parsed: serde_json::Value =
            serde_json::from_str(response.content.trim()).map_err(|error| {
                failed(ModelError::new(
                    plumb_core::ModelErrorKind::Protocol,
                    format!("the ranking is not JSON: {error}"),
                ))
            })?;
        Ok(parsed["ranking"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|n| n.as_u64())
                    .filter(|n| *n >= 1)
                    .map(|n| n as usize - 1)
                    .collect()
            })
            .unwrap_or_default())
    }
}
