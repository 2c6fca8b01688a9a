//! The suite file exactly as written (promptfoo's shape), before resolution. Unknown keys are
//! errors; polymorphic fields ("a string or a list", "a string or an object") keep the inner
//! type's own errors and locations instead of serde's "did not match any variant".

use std::fmt;
use std::marker::PhantomData;

use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::{self, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSuite {
    #[serde(default)]
    pub description: Option<String>,
    pub prompts: Spanned<OneOrMany<RawPrompt>>,
    #[serde(alias = "targets")]
    pub providers: Spanned<OneOrMany<RawProvider>>,
    #[serde(default)]
    pub tests: Option<Spanned<OneOrMany<RawTestEntry>>>,
    #[serde(default, rename = "defaultTest")]
    pub default_test: Option<RawTest>,
    #[serde(default)]
    pub thresholds: Option<RawThresholds>,
    #[serde(default, rename = "evaluateOptions")]
    pub evaluate_options: Option<RawEvaluateOptions>,
    #[serde(default, rename = "outputPath")]
    pub output_path: Option<OneOrMany<String>>,
    /// plumb's: human labels the suite's judges are calibrated against.
    #[serde(default)]
    pub calibration: Option<Spanned<RawCalibration>>,
    /// Free-form in promptfoo; accepted and kept out of the run.
    #[serde(default)]
    #[allow(dead_code, reason = "free-form, accepted for promptfoo compatibility")]
    pub tags: Option<Value>,
    #[serde(default)]
    #[allow(dead_code, reason = "free-form, accepted for promptfoo compatibility")]
    pub metadata: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCalibration {
    /// The labels CSV, relative to the suite (`file://` optional).
    pub labels: String,
    #[serde(default, rename = "minKappa")]
    pub min_kappa: Option<f64>,
    #[serde(default)]
    pub repeats: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEvaluateOptions {
    #[serde(default, rename = "maxConcurrency")]
    pub max_concurrency: Option<usize>,
    #[serde(default)]
    pub repeat: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawThresholds {
    /// Every prompt × provider must reach this pass rate (0..1).
    #[serde(default)]
    pub pass_rate: Option<f64>,
    /// Named metrics (`metric:` on assertions) whose mean score must reach a floor.
    #[serde(default)]
    pub metrics: IndexMap<String, f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPromptObject {
    #[serde(default)]
    pub id: Option<Spanned<String>>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub raw: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<RawMessage>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMessage {
    pub role: Spanned<String>,
    pub content: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProviderObject {
    pub id: Spanned<String>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub config: Option<serde_json::Map<String, Value>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTest {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub vars: Option<IndexMap<String, Value>>,
    #[serde(default)]
    pub assert: Option<Vec<RawAssertion>>,
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub options: Option<RawTestOptions>,
    #[serde(default)]
    pub metadata: Option<Value>,
    /// plumb's: a retrieval step whose chunks fill `context`, `contexts` and `retrieved`.
    #[serde(default)]
    pub context: Option<Spanned<RawRetrieval>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetrieval {
    pub collection: String,
    #[serde(default)]
    pub k: Option<usize>,
    /// A template over the test's vars; default `{{ query }}` or `{{ question }}`.
    #[serde(default)]
    pub query: Option<String>,
    /// `KEY=VALUE` terms (source, format, page, heading), or one of them.
    #[serde(default)]
    pub filter: Option<OneOrMany<String>>,
    #[serde(default, rename = "textWeight")]
    pub text_weight: Option<f32>,
    #[serde(default, rename = "vectorWeight")]
    pub vector_weight: Option<f32>,
    #[serde(default)]
    pub candidates: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTestOptions {
    #[serde(default, rename = "disableVarExpansion")]
    pub disable_var_expansion: Option<bool>,
    /// The grader of the test's judged assertions (promptfoo's grading provider).
    #[serde(default)]
    pub provider: Option<RawProvider>,
    /// Replaces the built-in judge prompt of the test's judged assertions.
    #[serde(default, rename = "rubricPrompt")]
    pub rubric_prompt: Option<Value>,
    /// `factuality` category scores: subset, superset, agree, disagree, differButFactual.
    #[serde(default)]
    pub factuality: Option<Value>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAssertion {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub weight: Option<f64>,
    #[serde(default)]
    pub metric: Option<String>,
    #[serde(default)]
    pub config: Option<Value>,
    /// The embedder of `similar`, or the grader of a judged assertion (promptfoo's grading
    /// `provider`): an id, or `{id, config}`.
    #[serde(default)]
    pub provider: Option<RawProvider>,
    /// Replaces the built-in judge prompt of a judged assertion.
    #[serde(default, rename = "rubricPrompt")]
    pub rubric_prompt: Option<Value>,
    /// The children of an `assert-set`.
    #[serde(default)]
    pub assert: Option<Vec<RawAssertion>>,
}

/// `x` or `[x, y]`.
#[derive(Clone, Debug)]
pub(crate) struct OneOrMany<T>(pub Vec<T>);

/// A prompt entry: a template string or `file://` path, a list of chat messages, or an object.
pub(crate) type RawPrompt = Node<RawPromptObject, Vec<RawMessage>>;
/// A provider entry: an id, or `{id, label, config}`.
pub(crate) type RawProvider = Node<RawProviderObject, NoSeq>;
/// A test entry: a `file://` path, or a test.
pub(crate) type RawTestEntry = Node<RawTest, NoSeq>;

/// A YAML node that is a string, a map (deserialized as `M`) or a list (as `S`). Maps and lists
/// are handed to the inner type's own impl, which keeps its errors and their locations.
#[derive(Clone, Debug)]
pub(crate) enum Node<M, S> {
    Str(String),
    Map(M),
    Seq(S),
}

/// For nodes that may not be lists.
#[derive(Clone, Debug)]
pub(crate) enum NoSeq {}

impl<'de> Deserialize<'de> for NoSeq {
    fn deserialize<D: Deserializer<'de>>(_deserializer: D) -> Result<Self, D::Error> {
        Err(de::Error::custom(
            "expected a string or a map, found a list",
        ))
    }
}

impl<'de, M: Deserialize<'de>, S: Deserialize<'de>> Deserialize<'de> for Node<M, S> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor<M, S>(PhantomData<(M, S)>);
        impl<'de, M: Deserialize<'de>, S: Deserialize<'de>> Visitor<'de> for NodeVisitor<M, S> {
            type Value = Node<M, S>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a map")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Node::Str(text.to_owned()))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(Node::Str(text))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                S::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Node::Seq)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                M::deserialize(de::value::MapAccessDeserializer::new(map)).map(Node::Map)
            }
        }
        deserializer.deserialize_any(NodeVisitor(PhantomData))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrManyVisitor<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("one item or a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany(items))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                T::deserialize(text.into_deserializer()).map(|item| OneOrMany(vec![item]))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                T::deserialize(text.into_deserializer()).map(|item| OneOrMany(vec![item]))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|item| OneOrMany(vec![item]))
            }
        }
        deserializer.deserialize_any(OneOrManyVisitor(PhantomData))
    }
}
