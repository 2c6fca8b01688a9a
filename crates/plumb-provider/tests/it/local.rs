//! The embedded model, for real: a tiny few-shot prompt, schema-constrained JSON, and user
//! schemas that llama.cpp cannot use, which must be errors rather than aborts. Needs
//! `plumb models pull gemma3-270m` (scripts/test.sh does it).

use std::path::Path;

use plumb_core::{
    ChatModel, ChatRequest, FinishReason, Message, ModelParams, ResponseFormat, Role,
};
use plumb_provider::{ProviderContext, ProviderOptions, build};
use serde_json::json;

fn gemma() -> std::sync::Arc<dyn ChatModel> {
    let ctx = ProviderContext::new(Path::new("."));
    match build("local:gemma3-270m", &ProviderOptions::default(), &ctx) {
        Ok(model) => model,
        Err(error) => {
            panic!("{error} — run `scripts/test.sh` or `plumb models pull gemma3-270m` first")
        }
    }
}

fn ask(text: &str, params: ModelParams) -> ChatRequest {
    ChatRequest {
        messages: vec![Message::new(Role::User, text)],
        params,
        ..ChatRequest::default()
    }
}

#[tokio::test]
async fn few_shot_sentiment_on_the_real_model() {
    let model = gemma();
    let prompt = "Review: I love it, works perfectly.\nSentiment: positive\n\n\
                  Review: Broke after two days, waste of money.\nSentiment: negative\n\n\
                  Review: Absolutely wonderful, best purchase this year!\nSentiment:";
    let params = ModelParams {
        temperature: Some(0.0),
        max_tokens: Some(3),
        stop: vec!["\n".into()],
        ..Default::default()
    };
    let response = model.chat(&ask(prompt, params)).await.unwrap();
    assert_eq!(response.content.trim(), "positive", "{response:?}");
    assert!(response.usage.prompt_tokens > 20);
    assert_eq!(response.finish_reason, Some(FinishReason::Stop));
}

#[tokio::test]
async fn json_schema_output_is_always_valid() {
    let model = gemma();
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"], "additionalProperties": false});
    let params = ModelParams {
        temperature: Some(0.0),
        max_tokens: Some(40),
        response_format: Some(ResponseFormat::json_schema(schema)),
        ..Default::default()
    };
    let response = model
        .chat(&ask(
            "Maria Lopez is 34 years old. Extract her name and age as JSON.",
            params,
        ))
        .await
        .unwrap();
    let value: serde_json::Value =
        serde_json::from_str(&response.content).unwrap_or_else(|e| panic!("{e}: {response:?}"));
    assert!(
        value["name"].is_string() && value["age"].is_i64(),
        "{value}"
    );
}

#[tokio::test]
async fn sampling_with_a_seed_is_reproducible() {
    let model = gemma();
    let params = ModelParams {
        temperature: Some(0.9),
        top_p: Some(0.9),
        seed: Some(42),
        max_tokens: Some(12),
        ..Default::default()
    };
    let first = model
        .chat(&ask("Once upon a time", params.clone()))
        .await
        .unwrap();
    let second = model.chat(&ask("Once upon a time", params)).await.unwrap();
    assert_eq!(first.content, second.content);
}

#[tokio::test]
async fn unusable_schemas_are_errors_not_aborts() {
    let model = gemma();
    for schema in [
        json!({"$ref": "https://example.com/schema.json"}),
        json!({"type": "string", "pattern": "(("}),
    ] {
        let params = ModelParams {
            max_tokens: Some(8),
            response_format: Some(ResponseFormat::json_schema(schema.clone())),
            ..Default::default()
        };
        // Whatever llama.cpp makes of the schema, the process must survive and answer.
        let _ = model.chat(&ask("hi", params)).await;
    }
    // A schema cut short by max_tokens ends with finish reason `length`, not a crash.
    let params = ModelParams {
        max_tokens: Some(2),
        response_format: Some(ResponseFormat::json_schema(
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}),
        )),
        ..Default::default()
    };
    let response = model.chat(&ask("give me json", params)).await.unwrap();
    assert_eq!(response.finish_reason, Some(FinishReason::Length));
}

#[tokio::test]
async fn minilm_embeddings_rank_meaning() {
    let ctx = ProviderContext::new(Path::new("."));
    let embedder = match plumb_provider::build_embedder(
        plumb_provider::DEFAULT_EMBEDDER,
        &ProviderOptions::default(),
        &ctx,
    ) {
        Ok(embedder) => embedder,
        Err(error) => {
            panic!("{error} — run `scripts/test.sh` or `plumb models pull all-minilm-l6-v2` first")
        }
    };
    let texts = [
        "A cat sits on the mat.",
        "A kitten rests on a rug.",
        "Quarterly revenue grew by 4%.",
    ]
    .map(String::from);
    let vectors = embedder.embed(&texts).await.unwrap();
    assert_eq!(vectors.len(), 3);
    assert_eq!(vectors[0].len(), 384);
    let norm: f32 = vectors[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    let cosine = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let related = cosine(&vectors[0], &vectors[1]);
    let unrelated = cosine(&vectors[0], &vectors[2]);
    assert!(
        related > 0.5 && unrelated < 0.2,
        "related {related}, unrelated {unrelated}"
    );
    // A batch and a single call agree (padding must not leak into the mean).
    let single = embedder.embed(&texts[..1]).await.unwrap();
    let drift: f32 = single[0]
        .iter()
        .zip(&vectors[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(drift < 1e-4, "{drift}");
}

/// The embedder's vectors equal the reference ones (candle's BERT, which matched
/// sentence-transformers to cosine 1.000000): a short sentence, one word piece, and a text
/// cut at 256 word pieces, embedded in one batch and one by one.
#[tokio::test]
async fn minilm_matches_reference_vectors() {
    let ctx = ProviderContext::new(Path::new("."));
    let embedder = plumb_provider::build_embedder(
        plumb_provider::DEFAULT_EMBEDDER,
        &ProviderOptions::default(),
        &ctx,
    )
    .unwrap_or_else(|error| {
        panic!("{error} — run `scripts/test.sh` or `plumb models pull all-minilm-l6-v2` first")
    });
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/minilm-reference.json")).unwrap();
    let texts: Vec<String> = serde_json::from_value(fixture["texts"].clone()).unwrap();
    let reference: Vec<Vec<f32>> = serde_json::from_value(fixture["vectors"].clone()).unwrap();
    let cosine = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let together = embedder.embed(&texts).await.unwrap();
    for (i, (text, want)) in texts.iter().zip(&reference).enumerate() {
        let alone = embedder.embed(std::slice::from_ref(text)).await.unwrap();
        for got in [&together[i], &alone[0]] {
            let similarity = cosine(got, want);
            assert!(similarity > 0.99999, "text {i}: cosine {similarity}");
        }
    }
}

#[tokio::test]
async fn reused_prefixes_do_not_change_answers() {
    let model = gemma();
    let params = ModelParams {
        temperature: Some(0.0),
        max_tokens: Some(6),
        ..Default::default()
    };
    let shared = "Review: I love it.\nSentiment: positive\n\nReview: Awful.\nSentiment: negative\n\nReview: ";
    let first = model
        .chat(&ask(
            &format!("{shared}Great value!\nSentiment:"),
            params.clone(),
        ))
        .await
        .unwrap();
    let other = model
        .chat(&ask(
            &format!("{shared}Never again.\nSentiment:"),
            params.clone(),
        ))
        .await
        .unwrap();
    let again = model
        .chat(&ask(
            &format!("{shared}Great value!\nSentiment:"),
            params.clone(),
        ))
        .await
        .unwrap();
    assert_eq!(first.content, again.content);
    assert_ne!(
        first.content, other.content,
        "different reviews, same answer: {first:?}"
    );
    // A shorter prompt after a longer one (the cache must be cut back, not appended to).
    let short = model
        .chat(&ask("Review: Great value!\nSentiment:", params.clone()))
        .await
        .unwrap();
    let long = model
        .chat(&ask(
            &format!("{shared}Great value!\nSentiment:"),
            params.clone(),
        ))
        .await
        .unwrap();
    let short_again = model
        .chat(&ask("Review: Great value!\nSentiment:", params))
        .await
        .unwrap();
    assert_eq!(short.content, short_again.content);
    assert_eq!(long.content, first.content);
}

#[tokio::test]
async fn long_prompts_answer_the_same_after_other_requests() {
    let model = gemma();
    let params = ModelParams {
        temperature: Some(0.0),
        max_tokens: Some(8),
        ..Default::default()
    };
    // Well past Gemma 3's 512-token sliding window, diverging early: the second prompt shares
    // only a short prefix with the first. Whatever the cache keeps, the answer to the same
    // prompt must not depend on what ran before it.
    let story = |colour: &str| -> String {
        let lines: String = (0..160)
            .map(|i| format!("Line {i}: the sky is {colour}. "))
            .collect();
        format!("A story.\n{lines}\nQuestion: what colour is the sky?\nAnswer:")
    };
    let first = model
        .chat(&ask(&story("blue"), params.clone()))
        .await
        .unwrap();
    assert!(
        first.usage.prompt_tokens > 600,
        "{}",
        first.usage.prompt_tokens
    );
    let _other = model
        .chat(&ask(&story("green"), params.clone()))
        .await
        .unwrap();
    let again = model.chat(&ask(&story("blue"), params)).await.unwrap();
    assert_eq!(first.content, again.content);
}

#[tokio::test]
async fn chat_models_get_their_own_chat_template() {
    let ctx = ProviderContext::new(Path::new("."));
    let model = match build("local:smollm2-135m", &ProviderOptions::default(), &ctx) {
        Ok(model) => model,
        Err(error) => {
            panic!("{error} — run `scripts/test.sh` or `plumb models pull smollm2-135m` first")
        }
    };
    let request = ChatRequest {
        messages: vec![
            Message::new(Role::System, "You are a helpful assistant."),
            Message::new(Role::User, "What is 2 + 2? Answer with a number."),
        ],
        params: ModelParams {
            temperature: Some(0.0),
            max_tokens: Some(12),
            ..Default::default()
        },
        ..ChatRequest::default()
    };
    let response = model.chat(&request).await.unwrap();
    // ChatML applied: the instruction model answers instead of continuing the text.
    assert!(response.content.contains('4'), "{response:?}");
    assert!(!response.content.contains("<|im_start|>"), "{response:?}");
}

#[tokio::test]
async fn local_answers_stream_token_by_token() {
    use futures_util::StreamExt as _;
    let model = gemma();
    // A stop sequence exercises the held-back text: what streams must still add up exactly.
    let request = ask(
        "One, two, three, four, five, six,",
        ModelParams {
            temperature: Some(0.0),
            max_tokens: Some(24),
            stop: vec![" ten".into()],
            ..ModelParams::default()
        },
    );
    let whole = model.chat(&request).await.unwrap();
    let deltas: Vec<_> = model.chat_stream(&request).await.unwrap().collect().await;
    assert!(
        deltas.len() > 3,
        "one delta per token or so, got {}",
        deltas.len()
    );
    let mut assembler = plumb_core::Assembler::default();
    for delta in &deltas {
        assembler.push(delta.as_ref().unwrap());
    }
    let streamed = assembler.into_response();
    assert_eq!(streamed.content, whole.content);
    assert_eq!(streamed.usage, whole.usage);
    assert!(streamed.finish_reason.is_some());
}
