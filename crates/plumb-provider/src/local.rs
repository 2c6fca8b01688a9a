//! `local:` models: GGUF files run in-process through llama.cpp.
//!
//! Each model file gets one worker thread that owns the loaded model and one llama.cpp
//! context (contexts are neither `Send` nor safe to create concurrently); requests queue on a
//! channel and run one at a time (two generations would only split the same cores). The
//! context's KV cache is kept between requests: a prompt that shares a prefix with the previous
//! one (every case of a few-shot prompt does) only decodes what is new.
//!
//! Sampling is done here, in Rust, over the logits llama.cpp returns, and a JSON-Schema
//! `response_format` becomes a llama.cpp grammar. The grammar is consulted the cheap way: the
//! chosen token is checked alone, and the full vocabulary is masked only when it is rejected
//! (checking 262k tokens every step costs two thirds of the speed). A token is only ever
//! accepted by the grammar after the grammar said it is legal, and "no legal token" is an
//! error, not a C++ exception that would abort the process.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use plumb_core::{
    BoxFuture, ChatDelta, ChatModel, ChatRequest, ChatResponse, ChatStream, FinishReason, Message,
    ModelError, ModelErrorKind, ModelParams, Pricing, ResponseFormat, Role, Usage,
};

use crate::ProviderOptions;

/// Generation stops here when neither the prompt nor the suite sets `max_tokens`.
const DEFAULT_MAX_TOKENS: u32 = 256;
/// When sampling (temperature > 0) without `top_k`, only this many best tokens are considered,
/// as llama.cpp's own default does; sorting 262k logits every step would dominate the time.
const DEFAULT_TOP_K: usize = 40;
/// The context window when the provider sets no `n_ctx` (grown per request when a prompt needs
/// more, up to what the model was trained for).
const DEFAULT_CONTEXT: usize = 4096;

fn backend() -> Result<&'static LlamaBackend, ModelError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut backend = LlamaBackend::init().map_err(|error| error.to_string())?;
            backend.void_logs();
            Ok(backend)
        })
        .as_ref()
        .map_err(|message| local_error(format!("cannot start llama.cpp: {message}")))
}

struct Job {
    request: ChatRequest,
    reply: tokio::sync::oneshot::Sender<Result<ChatResponse, ModelError>>,
    /// For streamed calls: text as it is generated (a prefix of the final content).
    progress: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

/// The handle of a model's worker thread.
struct Worker {
    jobs: Mutex<mpsc::Sender<Job>>,
}

/// Settings that shape the worker's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct WorkerSettings {
    threads: i32,
    n_ctx: Option<u32>,
}

/// Starts (once per file and settings) the worker that owns the model, and waits until the
/// model is loaded so load errors surface here.
fn worker(path: &Path, settings: WorkerSettings) -> Result<Arc<Worker>, ModelError> {
    type Workers = Mutex<HashMap<(PathBuf, WorkerSettings), Arc<Worker>>>;
    static WORKERS: OnceLock<Workers> = OnceLock::new();
    let workers = WORKERS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut workers = workers
        .lock()
        .map_err(|_| local_error("worker table lock poisoned".to_owned()))?;
    let key = (path.to_owned(), settings);
    if let Some(worker) = workers.get(&key) {
        return Ok(worker.clone());
    }
    let (jobs, receiver) = mpsc::channel::<Job>();
    let (ready_sender, ready) = mpsc::sync_channel::<Result<(), ModelError>>(1);
    let thread_path = path.to_owned();
    std::thread::Builder::new()
        .name("plumb-llama".to_owned())
        .spawn(move || serve(&thread_path, settings, &ready_sender, &receiver))
        .map_err(|error| local_error(format!("cannot start the model thread: {error}")))?;
    ready
        .recv()
        .map_err(|_| local_error("the model thread stopped while loading".to_owned()))??;
    let worker = Arc::new(Worker {
        jobs: Mutex::new(jobs),
    });
    workers.insert(key, worker.clone());
    Ok(worker)
}

/// The worker thread: load, then answer jobs one by one, keeping the KV cache between them.
fn serve(
    path: &Path,
    settings: WorkerSettings,
    ready: &mpsc::SyncSender<Result<(), ModelError>>,
    jobs: &mpsc::Receiver<Job>,
) {
    let loaded = backend().and_then(|backend| {
        LlamaModel::load_from_file(backend, path, &LlamaModelParams::default()).map_err(|error| {
            ModelError::config(format!("cannot load model `{}`: {error}", path.display()))
                .with_hint("is it a GGUF file of an architecture llama.cpp supports?")
        })
    });
    let model = match loaded {
        Ok(model) => model,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let template = model.chat_template(None).ok();
    let name = model
        .meta_val_str("general.name")
        .unwrap_or_else(|_| "local".to_owned());
    if ready.send(Ok(())).is_err() {
        return;
    }
    let mut session: Option<Session<'_>> = None;
    while let Ok(job) = jobs.recv() {
        let result = generate(
            &model,
            template.as_ref(),
            &name,
            &mut session,
            &job.request,
            settings,
            job.progress.as_ref(),
        );
        if result.is_err() {
            // The KV cache may hold half a request; start the next one from scratch.
            session = None;
        }
        let _ = job.reply.send(result);
    }
}

/// A context and the tokens whose keys and values it holds, in position order.
struct Session<'a> {
    ctx: LlamaContext<'a>,
    n_ctx: usize,
    tokens: Vec<LlamaToken>,
}

pub(crate) struct LocalModel {
    id: String,
    path: PathBuf,
    identity: String,
    settings: WorkerSettings,
}

impl LocalModel {
    pub(crate) fn new(
        id: &str,
        path: &Path,
        options: &ProviderOptions,
    ) -> Result<LocalModel, ModelError> {
        let size = std::fs::metadata(path)
            .map_err(|error| {
                ModelError::config(format!("cannot read `{}`: {error}", path.display()))
            })?
            .len();
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let threads = options.threads.map(|t| t as i32).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as i32)
                .unwrap_or(2)
        });
        Ok(LocalModel {
            id: id.to_owned(),
            path: path.to_owned(),
            identity: format!("local|{file_name}|{size}"),
            settings: WorkerSettings {
                threads: threads.max(1),
                n_ctx: options.n_ctx,
            },
        })
    }

    /// Queues `request` on the model's thread; the answer arrives on the returned channel.
    async fn submit(
        &self,
        request: &ChatRequest,
        progress: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<ChatResponse, ModelError>>, ModelError> {
        let path = self.path.clone();
        let settings = self.settings;
        // Starting a worker loads the model: blocking work, off the async threads.
        let worker = tokio::task::spawn_blocking(move || worker(&path, settings))
            .await
            .map_err(|error| local_error(format!("model start failed: {error}")))??;
        let (reply, answer) = tokio::sync::oneshot::channel();
        worker
            .jobs
            .lock()
            .map_err(|_| local_error("job queue lock poisoned".to_owned()))?
            .send(Job {
                request: request.clone(),
                reply,
                progress,
            })
            .map_err(|_| local_error("the model thread has stopped".to_owned()))?;
        Ok(answer)
    }

    async fn call(&self, request: &ChatRequest) -> Result<ChatResponse, ModelError> {
        self.submit(request, None)
            .await?
            .await
            .map_err(|_| local_error("the model thread dropped the request".to_owned()))?
    }

    /// Text as it is generated, then the rest of the answer with its finish reason and usage.
    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, ModelError> {
        let (sender, pieces) = tokio::sync::mpsc::unbounded_channel();
        let answer = self.submit(request, Some(sender)).await?;
        struct State {
            pieces: tokio::sync::mpsc::UnboundedReceiver<String>,
            answer: Option<tokio::sync::oneshot::Receiver<Result<ChatResponse, ModelError>>>,
            sent: usize,
        }
        let state = State {
            pieces,
            answer: Some(answer),
            sent: 0,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            |mut state| async move {
                if let Some(piece) = state.pieces.recv().await {
                    state.sent += piece.len();
                    let delta = ChatDelta {
                        content: piece,
                        ..ChatDelta::default()
                    };
                    return Some((Ok(delta), state));
                }
                // The job is done (its sender dropped): the final answer is there.
                let answer = state.answer.take()?.await;
                let item = match answer {
                    Ok(Ok(response)) => {
                        let mut last = ChatDelta::whole(response);
                        last.content = last.content.get(state.sent..).unwrap_or("").to_owned();
                        Ok(last)
                    }
                    Ok(Err(error)) => Err(error),
                    Err(_) => Err(local_error(
                        "the model thread dropped the request".to_owned(),
                    )),
                };
                Some((item, state))
            },
        )))
    }
}

impl ChatModel for LocalModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        Box::pin(self.call(request))
    }

    fn chat_stream<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatStream, ModelError>> {
        Box::pin(self.stream(request))
    }

    fn preflight(&self) -> Result<(), ModelError> {
        worker(&self.path, self.settings).map(|_| ())
    }

    fn pricing(&self) -> Option<Pricing> {
        Some(Pricing::default())
    }

    fn max_concurrency(&self) -> Option<usize> {
        Some(1)
    }

    fn cache_identity(&self) -> String {
        self.identity.clone()
    }
}

fn local_error(message: String) -> ModelError {
    ModelError::new(ModelErrorKind::Local, message)
}

/// The text the model continues: the model's own chat template when it ships one, otherwise
/// plain completion text (contents joined by blank lines), which is what base models without a
/// template do best with.
fn format_prompt(
    model: &LlamaModel,
    template: Option<&LlamaChatTemplate>,
    messages: &[Message],
) -> Result<String, ModelError> {
    let Some(template) = template else {
        return Ok(messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n\n"));
    };
    let chat = messages
        .iter()
        .map(|m| {
            let role = match m.role {
                Role::Developer => "system",
                other => other.as_str(),
            };
            LlamaChatMessage::new(role.to_owned(), m.content.clone())
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            ModelError::new(
                ModelErrorKind::BadRequest,
                format!("invalid message: {error}"),
            )
        })?;
    model
        .apply_chat_template(template, &chat, true)
        .map_err(|error| local_error(format!("cannot apply the model's chat template: {error}")))
}

fn grammar_for(
    model: &LlamaModel,
    format: Option<&ResponseFormat>,
) -> Result<Option<LlamaSampler>, ModelError> {
    let schema = match format {
        None | Some(ResponseFormat::Text) => return Ok(None),
        Some(ResponseFormat::JsonObject) => serde_json::json!({"type": "object"}),
        Some(ResponseFormat::JsonSchema { json_schema }) => json_schema.schema.clone(),
    };
    let gbnf = llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|error| {
        ModelError::new(
            ModelErrorKind::BadRequest,
            format!("cannot turn the response schema into a grammar: {error}"),
        )
        .with_hint("local models support the JSON Schema subset of llama.cpp (no external $ref)")
    })?;
    LlamaSampler::grammar(model, &gbnf, "root")
        .map(Some)
        .map_err(|error| {
            ModelError::new(
                ModelErrorKind::BadRequest,
                format!("invalid grammar: {error}"),
            )
        })
}

/// Makes `session` hold a context of at least `n_ctx` tokens, creating it if needed.
fn ensure_session<'a>(
    model: &'a LlamaModel,
    session: &mut Option<Session<'a>>,
    n_ctx: usize,
    threads: i32,
) -> Result<(), ModelError> {
    if session.as_ref().is_some_and(|s| s.n_ctx >= n_ctx) {
        return Ok(());
    }
    *session = None;
    let context_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx as u32))
        .with_n_batch(n_ctx as u32)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let ctx = model
        .new_context(backend()?, context_params)
        .map_err(|error| local_error(format!("cannot create a context: {error}")))?;
    *session = Some(Session {
        ctx,
        n_ctx,
        tokens: Vec::new(),
    });
    Ok(())
}

fn decode(
    ctx: &mut LlamaContext<'_>,
    tokens: &[LlamaToken],
    start: usize,
) -> Result<(), ModelError> {
    let mut batch = LlamaBatch::new(tokens.len().max(1), 1);
    let last = tokens.len().saturating_sub(1);
    for (offset, token) in tokens.iter().enumerate() {
        batch
            .add(*token, (start + offset) as i32, &[0], offset == last)
            .map_err(|error| local_error(format!("batch: {error}")))?;
    }
    ctx.decode(&mut batch)
        .map_err(|error| local_error(format!("decode failed: {error}")))
}

fn generate<'a>(
    model: &'a LlamaModel,
    template: Option<&LlamaChatTemplate>,
    name: &str,
    session: &mut Option<Session<'a>>,
    request: &ChatRequest,
    settings: WorkerSettings,
    progress: Option<&tokio::sync::mpsc::UnboundedSender<String>>,
) -> Result<ChatResponse, ModelError> {
    let params = &request.params;
    // Streamed text holds back what could still turn out to be the start of a stop sequence.
    let hold_back = params
        .stop
        .iter()
        .map(|s| s.len().saturating_sub(1))
        .max()
        .unwrap_or(0);
    let mut streamed = 0usize;
    let prompt = format_prompt(model, template, &request.messages)?;
    let vocab = model.vocab();
    let prompt_tokens = vocab.tokenize(prompt.as_bytes(), true, true);
    if prompt_tokens.is_empty() {
        return Err(ModelError::new(
            ModelErrorKind::BadRequest,
            "the prompt is empty",
        ));
    }
    let max_new = params.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS) as usize;
    let train = (model.n_ctx_train() as usize).max(1);
    let needed = (prompt_tokens.len() + max_new).next_multiple_of(256);
    let window = settings
        .n_ctx
        .map(|n| n as usize)
        .unwrap_or(DEFAULT_CONTEXT)
        .max(needed)
        .min(train);
    if prompt_tokens.len() >= window {
        return Err(ModelError::new(
            ModelErrorKind::BadRequest,
            format!(
                "the prompt has {} tokens; the context window is {window}",
                prompt_tokens.len()
            ),
        )
        .with_hint("shorten the prompt or raise `n_ctx` in the provider config"));
    }
    let max_new = max_new.min(window - prompt_tokens.len());
    ensure_session(model, session, window, settings.threads)?;
    let Some(state) = session.as_mut() else {
        return Err(local_error("no context".to_owned()));
    };

    // Reuse the cached prefix; at least the last prompt token is decoded again for its logits.
    let mut common = state
        .tokens
        .iter()
        .zip(&prompt_tokens)
        .take_while(|(a, b)| a == b)
        .count();
    common = common.min(prompt_tokens.len() - 1);
    if common < state.tokens.len() {
        let removed = state
            .ctx
            .clear_kv_cache_seq(Some(0), Some(common as u32), None)
            .unwrap_or(false);
        // Sliding-window layers (Gemma 3) drop keys older than their window once a sequence
        // grows past it; a prefix whose early positions are gone cannot be continued. The
        // cache then starts after position 0, and everything is decoded again.
        let pruned = state.ctx.kv_cache_seq_pos_min(0) > 0;
        if !removed || pruned {
            state.ctx.clear_kv_cache();
            common = 0;
        }
        state.tokens.truncate(common);
    }
    decode(&mut state.ctx, &prompt_tokens[common..], common)?;
    state.tokens.extend_from_slice(&prompt_tokens[common..]);

    let mut grammar = grammar_for(model, params.response_format.as_ref())?;
    let seed = params.seed.unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut output: Vec<u8> = Vec::new();
    let mut generated = 0u64;
    let mut finish = FinishReason::Length;
    let mut stop_at: Option<usize> = None;
    // Logits of the last decoded token: index within the last batch.
    let mut logits_index = (prompt_tokens.len() - common - 1) as i32;
    for _ in 0..max_new {
        let mut candidates = state.ctx.token_data_array_ith(logits_index);
        let token = choose(&mut candidates, grammar.as_mut(), params, &mut rng)?;
        if let Some(grammar) = grammar.as_mut() {
            grammar.try_accept(token).map_err(|error| {
                local_error(format!("the grammar rejected a token it allowed: {error}"))
            })?;
        }
        if vocab.is_eog(token) {
            finish = FinishReason::Stop;
            break;
        }
        generated += 1;
        output.extend(vocab.token_to_piece(token, false, None));
        if !params.stop.is_empty() {
            let text = String::from_utf8_lossy(&output);
            if let Some(index) = params
                .stop
                .iter()
                .filter_map(|stop| text.find(stop.as_str()))
                .min()
            {
                stop_at = Some(index);
                finish = FinishReason::Stop;
                break;
            }
        }
        if let Some(progress) = progress {
            if progress.is_closed() {
                // Nobody is reading any more: stop spending the model on it.
                break;
            }
            let valid = match std::str::from_utf8(&output) {
                Ok(text) => text.len(),
                Err(error) => error.valid_up_to(),
            };
            let mut end = valid.saturating_sub(hold_back);
            while end > streamed && std::str::from_utf8(&output[streamed..end]).is_err() {
                end -= 1;
            }
            if end > streamed {
                let piece = String::from_utf8_lossy(&output[streamed..end]).into_owned();
                streamed = end;
                let _ = progress.send(piece);
            }
        }
        decode(&mut state.ctx, &[token], state.tokens.len())?;
        state.tokens.push(token);
        logits_index = 0;
    }
    let mut content = String::from_utf8_lossy(&output).into_owned();
    if let Some(index) = stop_at {
        content.truncate(index);
    }
    Ok(ChatResponse {
        content,
        finish_reason: Some(finish),
        usage: Usage {
            prompt_tokens: prompt_tokens.len() as u64,
            completion_tokens: generated,
        },
        model: Some(name.to_owned()),
        ..ChatResponse::default()
    })
}

/// Picks the next token: greedy at temperature 0 (or unset), else top-k / top-p / temperature
/// sampling with the request's seed. With a grammar, the pick is checked alone first and the
/// full vocabulary is masked only if the grammar rejects it.
fn choose(
    candidates: &mut LlamaTokenDataArray,
    grammar: Option<&mut LlamaSampler>,
    params: &ModelParams,
    rng: &mut fastrand::Rng,
) -> Result<LlamaToken, ModelError> {
    let first = pick(&candidates.data, params, rng)
        .ok_or_else(|| local_error("the model produced no finite logits".to_owned()))?;
    let Some(grammar) = grammar else {
        return Ok(first);
    };
    let mut alone = LlamaTokenDataArray::new(vec![LlamaTokenData::new(first, 1.0, 0.0)], false);
    alone.apply_sampler(grammar);
    if alone
        .data
        .first()
        .is_some_and(|data| data.logit().is_finite())
    {
        return Ok(first);
    }
    candidates.apply_sampler(grammar);
    pick(&candidates.data, params, rng).ok_or_else(|| {
        ModelError::new(
            ModelErrorKind::BadRequest,
            "the response schema allows no further token",
        )
        .with_hint(
            "check that the schema can be satisfied, and that max_tokens leaves room to finish it",
        )
    })
}

fn pick(
    data: &[LlamaTokenData],
    params: &ModelParams,
    rng: &mut fastrand::Rng,
) -> Option<LlamaToken> {
    let temperature = params.temperature.unwrap_or(0.0);
    if temperature <= 0.0 {
        return data
            .iter()
            .filter(|d| d.logit().is_finite())
            .max_by(|a, b| a.logit().total_cmp(&b.logit()))
            .map(LlamaTokenData::id);
    }
    let mut finite: Vec<(LlamaToken, f32)> = data
        .iter()
        .filter(|d| d.logit().is_finite())
        .map(|d| (d.id(), d.logit()))
        .collect();
    if finite.is_empty() {
        return None;
    }
    let k = params
        .top_k
        .map(|k| k as usize)
        .filter(|&k| k > 0)
        .unwrap_or(DEFAULT_TOP_K)
        .min(finite.len());
    if k < finite.len() {
        finite.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
        finite.truncate(k);
    }
    finite.sort_by(|a, b| b.1.total_cmp(&a.1));
    let max = finite[0].1 as f64;
    let mut weights: Vec<f64> = finite
        .iter()
        .map(|(_, logit)| ((*logit as f64 - max) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    if let Some(top_p) = params.top_p.filter(|&p| p < 1.0) {
        let mut cumulative = 0.0;
        let mut keep = weights.len();
        for (index, weight) in weights.iter().enumerate() {
            cumulative += weight / total;
            if cumulative >= top_p {
                keep = index + 1;
                break;
            }
        }
        weights.truncate(keep);
    }
    let total: f64 = weights.iter().sum();
    let mut roll = rng.f64() * total;
    for (index, weight) in weights.iter().enumerate() {
        roll -= weight;
        if roll <= 0.0 {
            return Some(finite[index].0);
        }
    }
    finite
        .get(weights.len().saturating_sub(1))
        .map(|(token, _)| *token)
}
