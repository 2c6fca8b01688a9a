//! Suites: loading a promptfoo-shaped YAML file (and the prompt and test files it points at)
//! and resolving it into a `Suite` that is ready to run. Every problem is a `SourceError` with
//! file:line:col where the YAML has one; nothing unknown is ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use plumb_core::{Message, ModelParams, Role, SourceError, did_you_mean, hash_hex};
use plumb_prompt::{
    MessageTemplate, PromptFile, PromptRef, PromptTemplate, RawParams, parse_response_format, yaml,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use crate::retrieval::Retrieval;

use crate::assertion::{self, Assertion, AssertionType};
use crate::calibrate::CalibrationConfig;
use crate::judge::{self, FactualityScores, JudgePrompt};
use crate::raw::{
    Node, RawAssertion, RawMessage, RawPromptObject, RawProviderObject, RawSuite, RawTest,
};

/// A generated test set may not exceed this many cases after var expansion: a typo in an
/// array var should not silently queue millions of model calls.
const MAX_TESTS: usize = 1_000_000;

#[derive(Debug)]
pub struct Suite {
    pub path: PathBuf,
    pub description: String,
    pub prompts: Vec<SuitePrompt>,
    pub providers: Vec<ProviderSpec>,
    pub tests: Vec<TestCase>,
    pub thresholds: Thresholds,
    pub max_concurrency: Option<usize>,
    pub repeat: Option<u32>,
    pub output_paths: Vec<PathBuf>,
    /// Hash of the suite file's text.
    pub content_hash: String,
    /// `defaultTest.options.provider`: the grader of judged assertions that name none (and
    /// whose test names none); `plumb eval --grader` overrides it.
    pub default_grader: Option<Arc<Grader>>,
    /// `calibration:`: human labels for the judges, and the κ they must reach to gate.
    pub calibration: Option<CalibrationConfig>,
}

/// The provider of a judge, with its identity computed once: its id, plus its config when it
/// has one (graders with different configs are different graders).
#[derive(Debug)]
pub struct Grader {
    pub key: String,
    pub spec: ProviderSpec,
}

impl Grader {
    /// A grader's `config` may tune sampling (temperature, top_p, top_k, max_tokens, seed);
    /// the verdict's format is plumb's, so `response_format`, `tools`, `stop` and logprobs are
    /// refused rather than dropped.
    fn new(spec: ProviderSpec) -> Result<Grader, SourceError> {
        let p = &spec.params;
        let refused = [
            ("response_format", p.response_format.is_some()),
            ("tools", !p.tools.is_empty()),
            ("tool_choice", p.tool_choice.is_some()),
            ("stop", !p.stop.is_empty()),
            ("logprobs", p.logprobs.is_some() || p.top_logprobs.is_some()),
        ];
        if let Some((name, _)) = refused.iter().find(|(_, set)| *set) {
            return Err(with_message(
                &spec.location,
                format!(
                    "grader `{}`: `{name}` cannot be set on a grader: plumb asks every verdict \
                     under its own JSON Schema",
                    spec.id
                ),
            )
            .with_hint(
                "a grader's config may set temperature, top_p, top_k, max_tokens and seed",
            ));
        }
        let params = serde_json::to_string(&spec.params).unwrap_or_default();
        let key = if spec.options.is_empty() && params == "{}" {
            spec.id.clone()
        } else {
            format!(
                "{} {params} {}",
                spec.id,
                Value::Object(spec.options.clone())
            )
        };
        Ok(Grader { key, spec })
    }
}

#[derive(Debug)]
pub struct SuitePrompt {
    pub label: String,
    pub template: PromptTemplate,
    /// A plain-text prompt (inline or .txt): if it renders to a JSON list of messages, those are
    /// the messages (promptfoo's chat-JSON prompts); otherwise it is one user message.
    pub raw: bool,
    /// Hash of the prompt's content (`PromptFile::content_hash`): the same for a working file
    /// and the registry version pushed from it.
    pub hash: String,
    /// The registry version this prompt came from, for `name@label` / `name@N` references.
    pub registry: Option<RegistryVersion>,
    /// Something the user should know about this prompt (e.g. it is deprecated).
    pub warning: Option<String>,
}

/// A registry prompt version, as resolved when the suite was loaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryVersion {
    pub name: String,
    pub version: u64,
}

/// A prompt version a `PromptSource` resolved.
#[derive(Clone, Debug)]
pub struct ResolvedPrompt {
    pub file: PromptFile,
    pub version: u64,
    /// Shown before the run, e.g. that the prompt is deprecated and what replaces it.
    pub warning: Option<String>,
}

/// Where suites get registry prompts (`triage@production`, `triage@7`) from. The CLI passes the
/// project's registry; `NoRegistry` makes every reference an error that says so.
pub trait PromptSource {
    fn resolve(&self, reference: &PromptRef) -> Result<ResolvedPrompt, String>;
}

#[derive(Debug)]
pub struct NoRegistry;

impl PromptSource for NoRegistry {
    fn resolve(&self, reference: &PromptRef) -> Result<ResolvedPrompt, String> {
        Err(format!(
            "`{reference}` is a registry prompt, and no registry is open here"
        ))
    }
}

#[derive(Clone, Debug)]
pub struct ProviderSpec {
    pub id: String,
    pub label: String,
    /// Sampling parameters from the provider's `config` (they override the prompt's).
    pub params: ModelParams,
    /// The rest of `config`: how to reach the model. The provider crate validates it.
    pub options: Map<String, Value>,
    /// Where the provider is declared, for errors found when building it.
    pub location: SourceError,
}

#[derive(Clone, Debug)]
pub struct TestCase {
    pub description: String,
    pub vars: Map<String, Value>,
    pub asserts: Vec<Assertion>,
    pub threshold: Option<f64>,
    pub metadata: Value,
    /// The test's retrieval step (its own `context`, else `defaultTest`'s): it fills `context`,
    /// `contexts` and `retrieved` before the run (`retrieval::attach`).
    pub retrieval: Option<Arc<Retrieval>>,
}

#[derive(Clone, Debug, Default)]
pub struct Thresholds {
    pub pass_rate: Option<f64>,
    pub metrics: IndexMap<String, f64>,
}

impl Thresholds {
    pub fn is_set(&self) -> bool {
        self.pass_rate.is_some() || !self.metrics.is_empty()
    }
}

const PARAM_KEYS: [&str; 9] = [
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "seed",
    "stop",
    "response_format",
    "tools",
    "tool_choice",
];

fn location_of<T>(path: &Path, spanned: &Spanned<T>) -> SourceError {
    let line = spanned.referenced.line() as usize;
    let base = SourceError::in_file(path, "");
    if line == 0 {
        base
    } else {
        base.at(line, spanned.referenced.column() as usize)
    }
}

fn with_message(base: &SourceError, message: impl Into<String>) -> SourceError {
    let mut error = base.clone();
    error.message = message.into();
    error
}

impl Suite {
    /// Loads a suite whose prompts are files or inline text (registry references fail).
    pub fn load(path: &Path) -> Result<Suite, SourceError> {
        Suite::load_with(path, &NoRegistry)
    }

    /// Loads a suite, resolving `name@label` / `name@N` prompts through `registry`.
    pub fn load_with(path: &Path, registry: &dyn PromptSource) -> Result<Suite, SourceError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            SourceError::in_file(path, format!("cannot read suite: {error}"))
                .with_hint("give the path to a suite YAML file, or run `plumb init` to create one")
        })?;
        let raw: RawSuite = yaml::from_str(&text, path)?;
        let base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
        let base_dir = if base_dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base_dir
        };

        let prompts_at = location_of(path, &raw.prompts);
        let mut prompts = Vec::new();
        for (index, entry) in raw.prompts.value.0.into_iter().enumerate() {
            let at = with_message(&prompts_at, "");
            prompts.extend(resolve_prompt(entry, index, &base_dir, &at, registry)?);
        }
        if prompts.is_empty() {
            return Err(with_message(&prompts_at, "`prompts` is empty")
                .with_hint("add at least one prompt"));
        }

        let providers_at = location_of(path, &raw.providers);
        let mut providers = Vec::new();
        for entry in raw.providers.value.0 {
            providers.push(resolve_provider(entry, path, &providers_at)?);
        }
        if providers.is_empty() {
            return Err(with_message(&providers_at, "`providers` is empty")
                .with_hint("for example `providers: [mock:echo]`"));
        }

        let default_test = raw.default_test.unwrap_or_default();
        let default_asserts =
            resolve_assertions(default_test.assert.as_deref().unwrap_or_default(), path)?;
        let default_grader = match default_test
            .options
            .as_ref()
            .and_then(|o| o.provider.clone())
        {
            Some(entry) => Some(Arc::new(Grader::new(resolve_provider(
                entry,
                path,
                &SourceError::in_file(path, "").with_hint("in `defaultTest.options.provider`"),
            )?)?)),
            None => None,
        };
        let mut tests = Vec::new();
        if let Some(entries) = raw.tests {
            let tests_at = location_of(path, &entries);
            for entry in entries.value.0 {
                match entry {
                    Node::Str(reference) => {
                        for (file, raw_tests) in load_test_files(&reference, &base_dir, &tests_at)?
                        {
                            for (raw_test, extra) in raw_tests {
                                push_test(
                                    &mut tests,
                                    raw_test,
                                    extra,
                                    &default_test,
                                    &default_asserts,
                                    &file,
                                    path,
                                )?;
                            }
                        }
                    }
                    Node::Map(raw_test) => push_test(
                        &mut tests,
                        raw_test,
                        Vec::new(),
                        &default_test,
                        &default_asserts,
                        path,
                        path,
                    )?,
                    Node::Seq(never) => match never {},
                }
            }
        } else {
            // promptfoo runs a suite without tests once, with defaultTest alone.
            push_test(
                &mut tests,
                RawTest::default(),
                Vec::new(),
                &default_test,
                &default_asserts,
                path,
                path,
            )?;
        }

        let thresholds = resolve_thresholds(raw.thresholds, path)?;
        let (max_concurrency, repeat) = match raw.evaluate_options {
            Some(options) => (options.max_concurrency, options.repeat),
            None => (None, None),
        };
        let output_paths = raw
            .output_path
            .map(|paths| paths.0.into_iter().map(|p| base_dir.join(p)).collect())
            .unwrap_or_default();
        let calibration_raw = raw.calibration;
        let mut suite = Suite {
            path: path.to_owned(),
            description: raw.description.unwrap_or_default(),
            prompts,
            providers,
            tests,
            thresholds,
            max_concurrency,
            repeat,
            output_paths,
            content_hash: hash_hex(text.as_bytes()),
            default_grader,
            calibration: None,
        };
        suite.check_renders()?;
        if suite.prompts.len() * suite.providers.len() < 2
            && let Some(assertion) = suite
                .tests
                .iter()
                .flat_map(|t| &t.asserts)
                .find(|a| a.kind == assertion::AssertionType::SelectBest)
        {
            let at = assertion
                .location
                .clone()
                .unwrap_or_else(|| SourceError::in_file(path, ""));
            return Err(with_message(
                &at,
                "`select-best` compares each test's outputs across prompts and providers, \
                 but this suite has one prompt and one provider",
            )
            .with_hint("add a prompt version or a provider to compare"));
        }
        if let Some(raw) = calibration_raw {
            let at = location_of(path, &raw);
            let raw = raw.value;
            if let Some(kappa) = raw.min_kappa
                && !(-1.0..=1.0).contains(&kappa)
            {
                return Err(with_message(
                    &at,
                    format!("`calibration.minKappa` is a Cohen's κ in [-1, 1], got {kappa}"),
                ));
            }
            if raw.repeats == Some(0) {
                return Err(with_message(
                    &at,
                    "`calibration.repeats` must be at least 1",
                ));
            }
            let labels = base_dir.join(raw.labels.trim_start_matches("file://"));
            let rows = crate::calibrate::load_labels(&labels, &suite)?;
            suite.calibration = Some(CalibrationConfig {
                labels,
                min_kappa: raw.min_kappa,
                repeats: raw.repeats,
                rows,
            });
        }
        Ok(suite)
    }

    /// The suite file's content hash and thresholds, without resolving its prompts, providers
    /// or tests: what a promotion policy needs to judge a stored run of it.
    pub fn gate_of(path: &Path) -> Result<(String, Thresholds), SourceError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| SourceError::in_file(path, format!("cannot read suite: {error}")))?;
        let raw: RawSuite = yaml::from_str(&text, path)?;
        Ok((
            hash_hex(text.as_bytes()),
            resolve_thresholds(raw.thresholds, path)?,
        ))
    }

    /// The graders the suite's judged assertions use, by key (with `include_default`, the
    /// suite's default grader too).
    pub fn graders(&self, include_default: bool) -> IndexMap<String, Arc<Grader>> {
        fn walk(assertion: &Assertion, into: &mut IndexMap<String, Arc<Grader>>) {
            if let Some(grader) = &assertion.grader {
                into.entry(grader.key.clone())
                    .or_insert_with(|| grader.clone());
            }
            for child in &assertion.children {
                walk(child, into);
            }
        }
        let mut graders = IndexMap::new();
        if include_default && let Some(grader) = &self.default_grader {
            graders.insert(grader.key.clone(), grader.clone());
        }
        for test in &self.tests {
            for assertion in &test.asserts {
                walk(assertion, &mut graders);
            }
        }
        graders
    }

    /// Every case of a run with `repeat` repeats, provider-major (a local model works through
    /// its cases without other providers' cases interleaving, and their caches stay warm).
    pub fn case_keys(&self, repeat: u32) -> impl Iterator<Item = plumb_store::CaseKey> + '_ {
        let (prompts, tests) = (self.prompts.len() as u32, self.tests.len() as u32);
        (0..self.providers.len() as u32).flat_map(move |provider_idx| {
            (0..prompts).flat_map(move |prompt_idx| {
                (0..tests).flat_map(move |test_idx| {
                    (0..repeat.max(1)).map(move |repeat_idx| plumb_store::CaseKey {
                        prompt_idx,
                        provider_idx,
                        test_idx,
                        repeat_idx,
                    })
                })
            })
        })
    }

    /// Whether any test has a `select-best` assertion (judged after the cases, per test).
    pub fn has_select_best(&self) -> bool {
        self.tests.iter().any(|t| {
            t.asserts
                .iter()
                .any(|a| a.kind == assertion::AssertionType::SelectBest)
        })
    }

    /// Whether any test has a judged assertion.
    pub fn has_judged(&self) -> bool {
        fn any(asserts: &[Assertion]) -> bool {
            asserts
                .iter()
                .any(|a| a.kind.is_judged() || any(&a.children))
        }
        self.tests.iter().any(|test| any(&test.asserts))
    }

    /// The embedder ids the suite's `similar` assertions use.
    pub fn embedders(&self) -> Vec<String> {
        fn walk(assertion: &Assertion, into: &mut Vec<String>) {
            let embeds = matches!(
                assertion.kind,
                assertion::AssertionType::Similar | assertion::AssertionType::AnswerRelevance
            );
            if embeds && !into.iter().any(|e| e == assertion.embedder()) {
                into.push(assertion.embedder().to_owned());
            }
            for child in &assertion.children {
                walk(child, into);
            }
        }
        let mut ids = Vec::new();
        for test in &self.tests {
            for assertion in &test.asserts {
                walk(assertion, &mut ids);
            }
        }
        ids
    }

    /// Renders every prompt with every test's vars once, so a template error stops the run
    /// before the first model call instead of failing cases one by one.
    /// The collections the tests' retrieval steps search, each once, in order of first use.
    pub fn collections(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for test in &self.tests {
            if let Some(step) = &test.retrieval
                && !names.contains(&step.collection)
            {
                names.push(step.collection.clone());
            }
        }
        names
    }

    fn check_renders(&self) -> Result<(), SourceError> {
        for prompt in &self.prompts {
            for (index, test) in self.tests.iter().enumerate() {
                let vars = match &test.retrieval {
                    Some(step) => {
                        if let Err(error) = step.render_query(&test.vars) {
                            let mut located = step.location.clone();
                            located.message = format!(
                                "test {} (\"{}\"): `context.query`: {error}",
                                index + 1,
                                test.description
                            );
                            return Err(located);
                        }
                        crate::retrieval::placeholder_vars(&test.vars)
                    }
                    None => test.vars.clone(),
                };
                if let Err(error) = render_messages(prompt, &vars) {
                    return Err(SourceError::in_file(
                        &self.path,
                        format!(
                            "test {} (\"{}\"): prompt `{}`: {error}",
                            index + 1,
                            test.description,
                            prompt.label
                        ),
                    )
                    .with_hint(
                        "define the variable in the test's `vars` (or in `defaultTest.vars`)",
                    ));
                }
            }
        }
        Ok(())
    }
}

fn resolve_thresholds(
    raw: Option<crate::raw::RawThresholds>,
    path: &Path,
) -> Result<Thresholds, SourceError> {
    let Some(raw) = raw else {
        return Ok(Thresholds::default());
    };
    if let Some(rate) = raw.pass_rate
        && !(0.0..=1.0).contains(&rate)
    {
        return Err(SourceError::in_file(
            path,
            format!("thresholds.pass_rate must be in [0, 1], got {rate}"),
        ));
    }
    Ok(Thresholds {
        pass_rate: raw.pass_rate,
        metrics: raw.metrics,
    })
}

/// Renders a suite prompt for one test: the messages to send.
pub fn render_messages(
    prompt: &SuitePrompt,
    vars: &Map<String, Value>,
) -> Result<Vec<Message>, String> {
    let messages = prompt
        .template
        .render(vars)
        .map_err(|error| error.to_string())?;
    if prompt.raw
        && let [only] = messages.as_slice()
        && only.content.trim_start().starts_with('[')
        && let Ok(list) = serde_json::from_str::<Vec<Message>>(only.content.trim())
        && !list.is_empty()
    {
        return Ok(list);
    }
    Ok(messages)
}

fn inline_prompt(
    label: String,
    text: String,
    raw: bool,
    at: &SourceError,
) -> Result<SuitePrompt, SourceError> {
    let file = PromptFile::from_messages(
        label.clone(),
        vec![MessageTemplate {
            role: Role::User,
            content: text,
        }],
    );
    compile(file, label, raw, at)
}

fn registry_prompt(
    reference: &str,
    label: String,
    registry: &dyn PromptSource,
    at: &SourceError,
) -> Result<SuitePrompt, SourceError> {
    let parsed = PromptRef::parse(reference).map_err(|message| with_message(at, message))?;
    let resolved = registry.resolve(&parsed).map_err(|message| {
        with_message(at, message).with_hint(
            "`plumb prompt list` shows the registry; push prompt files with `plumb prompt push`",
        )
    })?;
    let mut prompt = compile(resolved.file, label, false, at)?;
    prompt.registry = Some(RegistryVersion {
        name: parsed.name,
        version: resolved.version,
    });
    prompt.warning = resolved.warning;
    Ok(prompt)
}

fn compile(
    file: PromptFile,
    label: String,
    raw: bool,
    at: &SourceError,
) -> Result<SuitePrompt, SourceError> {
    let hash = file.content_hash();
    let template = PromptTemplate::compile(file)
        .map_err(|error| with_message(at, format!("prompt `{label}`: {error}")))?;
    Ok(SuitePrompt {
        label,
        template,
        raw,
        hash,
        registry: None,
        warning: None,
    })
}

fn default_label(text: &str) -> String {
    shorten(text, 40)
}

/// `text` on one line, cut at `limit` characters with an ellipsis.
fn shorten(text: &str, limit: usize) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > limit {
        format!("{}…", one_line.chars().take(limit).collect::<String>())
    } else {
        one_line
    }
}

fn chat_prompt(
    label: String,
    messages: Vec<RawMessage>,
    path: &Path,
    at: &SourceError,
) -> Result<SuitePrompt, SourceError> {
    let mut templates = Vec::new();
    for message in messages {
        let Some(role) = Role::parse(&message.role.value) else {
            let error = location_of(path, &message.role);
            let error = with_message(&error, format!("unknown role `{}`", message.role.value));
            return Err(match did_you_mean(&message.role.value, Role::ALL) {
                Some(best) => error.with_hint(format!("did you mean `{best}`?")),
                None => error.with_hint(format!("accepted: {}", Role::ALL.join(", "))),
            });
        };
        templates.push(MessageTemplate {
            role,
            content: message.content,
        });
    }
    if templates.is_empty() {
        return Err(with_message(at, "a chat prompt needs at least one message"));
    }
    let file = PromptFile::from_messages(label.clone(), templates);
    compile(file, label, false, at)
}

fn resolve_prompt(
    entry: Node<RawPromptObject, Vec<RawMessage>>,
    index: usize,
    base_dir: &Path,
    at: &SourceError,
    registry: &dyn PromptSource,
) -> Result<Vec<SuitePrompt>, SourceError> {
    let suite_path = at.path.clone().unwrap_or_default();
    match entry {
        Node::Str(text) => match text.strip_prefix("file://") {
            Some(reference) => prompt_files(reference, None, base_dir, at),
            None if PromptRef::looks_like(&text) => {
                registry_prompt(&text, text.clone(), registry, at).map(|p| vec![p])
            }
            None => Ok(vec![inline_prompt(default_label(&text), text, true, at)?]),
        },
        Node::Seq(messages) => {
            chat_prompt(format!("prompt {}", index + 1), messages, &suite_path, at).map(|p| vec![p])
        }
        Node::Map(object) => {
            let sources = [
                object.id.is_some(),
                object.raw.is_some(),
                object.messages.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                return Err(with_message(
                    at,
                    format!(
                        "prompts[{index}]: give exactly one of `id` (a file:// path), `raw` or `messages`"
                    ),
                ));
            }
            if let Some(id) = object.id {
                let id_at = location_of(&suite_path, &id);
                if PromptRef::looks_like(&id.value) {
                    let label = object.label.unwrap_or_else(|| id.value.clone());
                    return registry_prompt(&id.value, label, registry, &id_at).map(|p| vec![p]);
                }
                let Some(reference) = id.value.strip_prefix("file://") else {
                    return Err(with_message(
                        &id_at,
                        format!(
                        "prompt id `{}` is neither a file:// path nor a registry reference",
                        id.value
                    ),
                    )
                    .with_hint("inline templates go in `raw`; registry prompts read `name@label` or `name@3`"));
                };
                return prompt_files(reference, object.label, base_dir, &id_at);
            }
            if let Some(raw) = object.raw {
                let label = object.label.unwrap_or_else(|| default_label(&raw));
                return Ok(vec![inline_prompt(label, raw, true, at)?]);
            }
            let label = object
                .label
                .unwrap_or_else(|| format!("prompt {}", index + 1));
            chat_prompt(label, object.messages.unwrap_or_default(), &suite_path, at)
                .map(|p| vec![p])
        }
    }
}

fn expand_glob(
    reference: &str,
    base_dir: &Path,
    at: &SourceError,
) -> Result<Vec<PathBuf>, SourceError> {
    let joined = base_dir.join(reference);
    let pattern = joined.to_string_lossy();
    if !reference.contains(['*', '?', '[']) {
        if !joined.exists() {
            return Err(
                with_message(at, format!("file `{}` does not exist", joined.display()))
                    .with_hint("paths after file:// are relative to the suite file"),
            );
        }
        return Ok(vec![joined]);
    }
    let mut paths: Vec<PathBuf> = glob::glob(&pattern)
        .map_err(|error| with_message(at, format!("invalid glob `{reference}`: {error}")))?
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(with_message(
            at,
            format!("glob `{reference}` matches no file"),
        ));
    }
    Ok(paths)
}

fn prompt_files(
    reference: &str,
    label: Option<String>,
    base_dir: &Path,
    at: &SourceError,
) -> Result<Vec<SuitePrompt>, SourceError> {
    let paths = expand_glob(reference, base_dir, at)?;
    let single = paths.len() == 1;
    let mut prompts = Vec::new();
    for path in paths {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_owned();
        let file_label = |fallback: String| match (&label, single) {
            (Some(label), true) => label.clone(),
            _ => fallback,
        };
        let file_at = SourceError::in_file(&path, "");
        match extension.as_str() {
            "yaml" | "yml" => {
                let file = PromptFile::load(&path)?;
                let name = file_label(file.name.clone());
                prompts.push(compile(file, name, false, &file_at)?);
            }
            _ => {
                let text = std::fs::read_to_string(&path).map_err(|error| {
                    with_message(&file_at, format!("cannot read prompt: {error}"))
                })?;
                let name = file_label(
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
                if extension == "json" {
                    let messages: Vec<Message> = serde_json::from_str(&text).map_err(|error| {
                        with_message(&file_at, format!("invalid chat JSON: {error}"))
                            .with_hint("expected a list of {\"role\": ..., \"content\": ...}")
                    })?;
                    let templates = messages
                        .into_iter()
                        .map(|m| MessageTemplate {
                            role: m.role,
                            content: m.content,
                        })
                        .collect();
                    let file = PromptFile::from_messages(name.clone(), templates);
                    prompts.push(compile(file, name, false, &file_at)?);
                } else {
                    prompts.push(inline_prompt(name, text, true, &file_at)?);
                }
            }
        }
    }
    Ok(prompts)
}

fn resolve_provider(
    entry: Node<RawProviderObject, crate::raw::NoSeq>,
    path: &Path,
    at: &SourceError,
) -> Result<ProviderSpec, SourceError> {
    let (id, label, config, location) = match entry {
        Node::Str(id) => (id.clone(), id, Map::new(), at.clone()),
        Node::Map(object) => {
            let location = location_of(path, &object.id);
            let label = object.label.unwrap_or_else(|| object.id.value.clone());
            (
                object.id.value,
                label,
                object.config.unwrap_or_default(),
                location,
            )
        }
        Node::Seq(never) => match never {},
    };
    let mut params_map = Map::new();
    let mut options = Map::new();
    for (key, value) in config {
        if PARAM_KEYS.contains(&key.as_str()) {
            params_map.insert(key, value);
        } else {
            options.insert(key, value);
        }
    }
    let response_format = params_map.remove("response_format");
    let tools = params_map.remove("tools");
    let tool_choice = params_map.remove("tool_choice");
    let raw_params: RawParams = serde_json::from_value(Value::Object(params_map))
        .map_err(|error| with_message(&location, format!("provider `{id}` config: {error}")))?;
    let mut params = raw_params
        .resolve()
        .map_err(|message| with_message(&location, format!("provider `{id}` config: {message}")))?;
    if let Some(format) = response_format {
        params.response_format = Some(parse_response_format(format).map_err(|message| {
            with_message(
                &location,
                format!("provider `{id}` response_format: {message}"),
            )
        })?);
    }
    if let Some(tools) = tools {
        match tools {
            Value::Array(list) => params.tools = list,
            _ => {
                return Err(with_message(
                    &location,
                    format!("provider `{id}` config: `tools` must be a list"),
                ));
            }
        }
    }
    params.tool_choice = tool_choice;
    Ok(ProviderSpec {
        id,
        label,
        params,
        options,
        location,
    })
}

/// (file, tests with their extra CSV-derived assertions) for a `file://` reference.
type LoadedTests = Vec<(PathBuf, Vec<(RawTest, Vec<Assertion>)>)>;

fn load_test_files(
    reference: &str,
    base_dir: &Path,
    at: &SourceError,
) -> Result<LoadedTests, SourceError> {
    let Some(reference) = reference.strip_prefix("file://") else {
        return Err(with_message(
            at,
            format!("test entry `{reference}` is not a file:// path"),
        )
        .with_hint("inline tests are maps with `vars` and `assert`"));
    };
    let mut out = Vec::new();
    for path in expand_glob(reference, base_dir, at)? {
        let text = std::fs::read_to_string(&path)
            .map_err(|error| SourceError::in_file(&path, format!("cannot read tests: {error}")))?;
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        let tests = match extension {
            "csv" => tests_from_csv(&text, &path)?,
            "jsonl" => {
                let mut tests = Vec::new();
                for (index, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let test: RawTest = yaml::from_str(line, &path).map_err(|mut error| {
                        error.line = Some(index + 1);
                        error
                    })?;
                    tests.push((test, Vec::new()));
                }
                tests
            }
            "yaml" | "yml" | "json" => {
                let list: Vec<RawTest> = yaml::from_str(&text, &path)?;
                list.into_iter().map(|t| (t, Vec::new())).collect()
            }
            other => {
                return Err(SourceError::in_file(
                    &path,
                    format!("unsupported test file type `.{other}`"),
                )
                .with_hint("tests load from .csv, .jsonl, .yaml, .yml or .json"));
            }
        };
        out.push((path, tests));
    }
    Ok(out)
}

/// A strict CSV reader over `text` (every row as wide as the header) and its header.
pub(crate) fn csv_reader<'a>(
    text: &'a str,
    path: &Path,
) -> Result<(csv::Reader<&'a [u8]>, csv::StringRecord), SourceError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|error| SourceError::in_file(path, format!("invalid CSV header: {error}")))?
        .clone();
    Ok((reader, headers))
}

/// A malformed CSV row, at its line.
pub(crate) fn csv_row_error(path: &Path, error: &csv::Error) -> SourceError {
    let mut source = SourceError::in_file(path, format!("bad CSV row: {error}"));
    source.line = error.position().map(|p| p.line() as usize);
    source.with_hint(
        "every row needs as many fields as the header; quote fields that contain commas or line breaks",
    )
}

/// promptfoo's CSV: one test per row; columns are vars, except `__expected`, `__expected1..N`
/// (assertion shorthand), `__description`, `__metric` and `__threshold`.
fn tests_from_csv(text: &str, path: &Path) -> Result<Vec<(RawTest, Vec<Assertion>)>, SourceError> {
    let (mut reader, headers) = csv_reader(text, path)?;
    let known_special = ["__description", "__metric", "__threshold"];
    for header in headers.iter() {
        if header.starts_with("__")
            && !header.starts_with("__expected")
            && !known_special.contains(&header)
        {
            return Err(SourceError::in_file(path, format!("unknown special column `{header}`"))
                .with_hint("special columns: __expected, __expected1.., __description, __metric, __threshold"));
        }
    }
    let mut tests = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|error| csv_row_error(path, &error))?;
        let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
        let mut test = RawTest::default();
        let mut vars = IndexMap::new();
        let mut asserts = Vec::new();
        let mut metric = None;
        for (header, field) in headers.iter().zip(record.iter()) {
            if header.starts_with("__expected") {
                if field.trim().is_empty() {
                    continue;
                }
                let assertion = assertion::parse_expected_shorthand(field).map_err(|error| {
                    assertion::located(error, SourceError::in_file(path, "").at(line, 1))
                })?;
                asserts.push(assertion);
            } else if header == "__description" {
                test.description = Some(field.to_owned());
            } else if header == "__metric" {
                metric = Some(field.to_owned()).filter(|m| !m.is_empty());
            } else if header == "__threshold" {
                if !field.trim().is_empty() {
                    test.threshold = Some(field.trim().parse().map_err(|_| {
                        SourceError::in_file(path, format!("__threshold `{field}` is not a number"))
                            .at(line, 1)
                    })?);
                }
            } else {
                vars.insert(header.to_owned(), Value::String(field.to_owned()));
            }
        }
        if let Some(metric) = metric {
            for assertion in &mut asserts {
                assertion.metric = Some(metric.clone());
            }
        }
        test.vars = Some(vars);
        tests.push((test, asserts));
    }
    Ok(tests)
}

fn resolve_assertions(raw: &[RawAssertion], path: &Path) -> Result<Vec<Assertion>, SourceError> {
    raw.iter()
        .map(|assertion| resolve_assertion(assertion, path))
        .collect()
}

fn resolve_assertion(raw: &RawAssertion, path: &Path) -> Result<Assertion, SourceError> {
    let at = location_of(path, &raw.kind);
    let children = match &raw.assert {
        Some(children) => {
            if raw.kind.value != "assert-set" {
                return Err(with_message(
                    &at,
                    format!(
                        "only `assert-set` takes an `assert` list, not `{}`",
                        raw.kind.value
                    ),
                ));
            }
            let children = resolve_assertions(children, path)?;
            if let Some(child) = children
                .iter()
                .find(|c| c.kind == assertion::AssertionType::SelectBest)
            {
                return Err(with_message(
                    child.location.as_ref().unwrap_or(&at),
                    "`select-best` cannot be inside an `assert-set`: it compares whole tests",
                ));
            }
            children
        }
        None => Vec::new(),
    };
    if raw.config.is_some() {
        return Err(with_message(
            &at,
            format!("`{}` takes no `config`", raw.kind.value),
        ));
    }
    let mut resolved = Assertion::resolve(
        &raw.kind.value,
        raw.value.clone(),
        raw.threshold,
        raw.weight,
        raw.metric.clone(),
        children,
    )
    .map_err(|error| assertion::located(error, at.clone()))?;
    if let Some(provider) = &raw.provider {
        if resolved.kind == assertion::AssertionType::Similar {
            match provider {
                Node::Str(id) => resolved.provider = Some(id.clone()),
                _ => {
                    return Err(with_message(
                        &at,
                        "`similar`: `provider` is an embedder id, e.g. local:all-minilm-l6-v2",
                    ));
                }
            }
        } else if resolved.kind.is_judged() {
            resolved.grader = Some(Arc::new(Grader::new(resolve_provider(
                provider.clone(),
                path,
                &at,
            )?)?));
        } else {
            return Err(
                with_message(&at, format!("`{}` takes no `provider`", raw.kind.value))
                    .with_hint("`similar` takes an embedder, judged assertions a grader"),
            );
        }
    }
    if let Some(prompt) = &raw.rubric_prompt {
        if resolved.kind.has_builtin_prompts() {
            return Err(with_message(
                &at,
                format!(
                    "`{}` takes no `rubricPrompt`: it asks its own built-in questions",
                    raw.kind.value
                ),
            ));
        }
        if !resolved.kind.is_judged() {
            return Err(
                with_message(&at, format!("`{}` takes no `rubricPrompt`", raw.kind.value))
                    .with_hint(
                        "only judged assertions (llm-rubric, g-eval, …) have a judge prompt",
                    ),
            );
        }
        resolved.rubric_prompt =
            Some(JudgePrompt::parse(prompt).map_err(|message| with_message(&at, message))?);
    }
    resolved.location = Some(at);
    Ok(resolved)
}

/// Gives the test's judged assertions its grader, judge prompt and factuality scores where
/// they name none, and checks that every variable their judge prompt reads will be there.
fn apply_judge_options(
    asserts: &mut [Assertion],
    grader: Option<&Arc<Grader>>,
    rubric_prompt: Option<&JudgePrompt>,
    factuality: Option<&FactualityScores>,
    vars: &IndexMap<String, Value>,
    path: &Path,
) -> Result<(), SourceError> {
    for assertion in asserts {
        apply_judge_options(
            &mut assertion.children,
            grader,
            rubric_prompt,
            factuality,
            vars,
            path,
        )?;
        if !assertion.kind.is_judged() {
            continue;
        }
        if assertion.grader.is_none() {
            assertion.grader = grader.cloned();
        }
        // RAG metrics ask several built-in questions; a test's `rubricPrompt` is for the others.
        if assertion.rubric_prompt.is_none() && !assertion.kind.has_builtin_prompts() {
            assertion.rubric_prompt = rubric_prompt.cloned();
        }
        if assertion.factuality.is_none() {
            assertion.factuality = factuality.cloned();
        }
        if let Some(prompt) = &assertion.rubric_prompt {
            let at = assertion
                .location
                .clone()
                .unwrap_or_else(|| SourceError::in_file(path, ""));
            let names = prompt
                .variables()
                .map_err(|message| with_message(&at, format!("`rubricPrompt`: {message}")))?;
            let known = judge::prompt_variables(assertion.kind);
            if let Some(missing) = names
                .iter()
                .find(|name| !known.contains(&name.as_str()) && !vars.contains_key(*name))
            {
                return Err(with_message(
                    &at,
                    format!(
                        "`rubricPrompt` of `{}` reads `{missing}`, which is neither one of its \
                         variables ({}) nor a var of this test",
                        assertion.label,
                        known.join(", ")
                    ),
                )
                .with_hint("define it in the test's `vars`, or fix the name"));
            }
        }
    }
    Ok(())
}

/// `suite_path` locates what `default` says (its `context`); `path` the test itself.
fn push_test(
    tests: &mut Vec<TestCase>,
    raw: RawTest,
    extra_asserts: Vec<Assertion>,
    default: &RawTest,
    default_asserts: &[Assertion],
    path: &Path,
    suite_path: &Path,
) -> Result<(), SourceError> {
    let mut vars: IndexMap<String, Value> = default.vars.clone().unwrap_or_default();
    for (key, value) in raw.vars.unwrap_or_default() {
        vars.insert(key, value);
    }
    // The test's own grader; `defaultTest.options.provider` is the suite's default grader,
    // which `--grader` may override, so it is not copied onto the assertions.
    let own_grader = raw.options.as_ref().and_then(|o| o.provider.clone());
    let options = raw
        .options
        .or_else(|| default.options.clone())
        .unwrap_or_default();
    let mut asserts = default_asserts.to_vec();
    asserts.extend(resolve_assertions(
        raw.assert.as_deref().unwrap_or_default(),
        path,
    )?);
    asserts.extend(extra_asserts);
    let options_at = SourceError::in_file(path, "").with_hint("in the test's `options`");
    let grader = match own_grader {
        Some(entry) => Some(Arc::new(Grader::new(resolve_provider(
            entry,
            path,
            &options_at,
        )?)?)),
        None => None,
    };
    let rubric_prompt = match &options.rubric_prompt {
        Some(value) => {
            Some(JudgePrompt::parse(value).map_err(|message| with_message(&options_at, message))?)
        }
        None => None,
    };
    let factuality = match &options.factuality {
        Some(value) => Some(
            serde_json::from_value::<FactualityScores>(value.clone()).map_err(|error| {
                with_message(&options_at, format!("`options.factuality`: {error}"))
                    .with_hint("keys: subset, superset, agree, disagree, differButFactual")
            })?,
        ),
        None => None,
    };
    apply_judge_options(
        &mut asserts,
        grader.as_ref(),
        rubric_prompt.as_ref(),
        factuality.as_ref(),
        &vars,
        path,
    )?;
    let step = match (&raw.context, &default.context) {
        (Some(own), _) => Some((own, location_of(path, own))),
        (None, Some(shared)) => Some((shared, location_of(suite_path, shared))),
        (None, None) => None,
    };
    let retrieval = match step {
        Some((spanned, at)) => {
            for name in crate::retrieval::FILLED_VARS {
                if vars.contains_key(name) {
                    return Err(with_message(
                        &at,
                        format!(
                            "`context`: the test sets var `{name}`, which the retrieval step fills"
                        ),
                    )
                    .with_hint("drop the var, or the `context` step"));
                }
            }
            let plain: Map<String, Value> = vars.clone().into_iter().collect();
            Some(Arc::new(Retrieval::resolve(
                spanned.value.clone(),
                &plain,
                at,
            )?))
        }
        None => None,
    };
    if retrieval.is_none()
        && has_kind(&asserts, AssertionType::Citations)
        && !vars.contains_key("retrieved")
        && !vars.contains_key("contexts")
    {
        return Err(SourceError::in_file(
            path,
            format!(
                "test {}{}: `citations` checks citations against retrieved chunks, and the test retrieves none",
                tests.len() + 1,
                raw.description.as_deref().map(|d| format!(" (\"{d}\")")).unwrap_or_default()
            ),
        )
        .with_hint("add `context: {collection: NAME, k: 3}` to the test or to `defaultTest`"));
    }
    let threshold = raw.threshold.or(default.threshold);
    let metadata = raw
        .metadata
        .or_else(|| default.metadata.clone())
        .unwrap_or(Value::Null);
    let combos = if options.disable_var_expansion.unwrap_or(false) {
        vec![vars]
    } else {
        // A RAG metric reads `context` as the list of retrieved chunks, not as values to expand.
        let keep: &[&str] = if has_rag(&asserts) {
            &["context", "contexts"]
        } else {
            &[]
        };
        expand_vars(vars, keep)
    };
    if tests.len() + combos.len() > MAX_TESTS {
        return Err(SourceError::in_file(path, format!("the suite expands to more than {MAX_TESTS} tests"))
            .with_hint("array-valued vars expand to every combination; set `options.disableVarExpansion: true` to pass a list as one value"));
    }
    for combo in combos {
        let description = raw
            .description
            .clone()
            .unwrap_or_else(|| describe_vars(&combo));
        tests.push(TestCase {
            description,
            vars: combo.into_iter().collect(),
            asserts: asserts.clone(),
            threshold,
            metadata: metadata.clone(),
            retrieval: retrieval.clone(),
        });
    }
    Ok(())
}

fn has_kind(asserts: &[Assertion], kind: AssertionType) -> bool {
    asserts
        .iter()
        .any(|a| a.kind == kind || has_kind(&a.children, kind))
}

fn has_rag(asserts: &[Assertion]) -> bool {
    asserts
        .iter()
        .any(|a| a.kind.is_rag() || has_rag(&a.children))
}

/// promptfoo's rule: every array-valued var (except those in `keep`) multiplies the test into
/// one per element.
fn expand_vars(vars: IndexMap<String, Value>, keep: &[&str]) -> Vec<IndexMap<String, Value>> {
    let mut combos = vec![IndexMap::new()];
    for (key, value) in vars {
        match value {
            Value::Array(items) if !items.is_empty() && !keep.contains(&key.as_str()) => {
                let mut next = Vec::with_capacity(combos.len() * items.len());
                for combo in &combos {
                    for item in &items {
                        let mut extended = combo.clone();
                        extended.insert(key.clone(), item.clone());
                        next.push(extended);
                    }
                }
                combos = next;
            }
            other => {
                for combo in &mut combos {
                    combo.insert(key.clone(), other.clone());
                }
            }
        }
    }
    combos
}

fn describe_vars(vars: &IndexMap<String, Value>) -> String {
    let text = vars
        .values()
        .map(|value| match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    // Long enough to tell tests apart in reports; terminals cut it further.
    shorten(&text, 120)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        path
    }

    fn load(text: &str) -> Result<Suite, SourceError> {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "suite.yaml", text);
        Suite::load(&path)
    }

    #[test]
    fn promptfoo_shape_loads() {
        let suite = load(
            r#"
description: demo
prompts:
  - "Say {{ word }}"
  - - role: system
      content: be terse
    - role: user
      content: "{{ word }}?"
providers:
  - echo
  - id: mock:echo
    label: second
    config: {temperature: 0.2, max_tokens: 3}
defaultTest:
  vars: {word: hi}
  assert: [{type: contains, value: "{{ word }}"}]
tests:
  - vars: {word: [a, b, c]}
  - description: plain
    assert: [{type: not-equals, value: nope, weight: 2, metric: m}]
thresholds: {pass_rate: 0.5}
"#,
        )
        .unwrap();
        assert_eq!(suite.prompts.len(), 2);
        assert_eq!(suite.providers[1].params.temperature, Some(0.2));
        assert_eq!(suite.tests.len(), 4);
        assert_eq!(suite.tests[3].asserts.len(), 2);
        assert_eq!(suite.tests[3].vars["word"], "hi");
        assert_eq!(suite.thresholds.pass_rate, Some(0.5));
    }

    #[test]
    fn unknown_assertion_type_points_at_it() {
        let error = load("prompts: [hi]\nproviders: [echo]\ntests:\n  - assert:\n      - type: contians\n        value: x\n").unwrap_err();
        assert_eq!((error.line, error.column), (Some(5), Some(15)), "{error}");
        assert_eq!(error.message, "unknown assertion type `contians`");
        assert_eq!(error.hint.as_deref(), Some("did you mean `contains`?"));
    }

    #[test]
    fn unknown_keys_are_errors_with_hints() {
        let error =
            load("prompts: [hi]\nproviders: [echo]\ntests:\n  - varz: {a: 1}\n").unwrap_err();
        assert_eq!(error.line, Some(4), "{error}");
        assert!(error.hint.unwrap().starts_with("did you mean `vars`?"));
        let error = load("prompts: [hi]\nprovider: [echo]\n").unwrap_err();
        assert!(error.hint.unwrap().starts_with("did you mean `providers`?"));
    }

    #[test]
    fn undefined_variables_name_the_test_and_var() {
        let error =
            load("prompts: ['Hi {{ nme }}']\nproviders: [echo]\ntests:\n  - vars: {name: x}\n")
                .unwrap_err();
        assert!(error.message.contains("test 1"), "{error}");
        assert!(
            error.message.contains("undefined variable `nme`"),
            "{error}"
        );
    }

    #[test]
    fn csv_jsonl_and_yaml_tests() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "t.csv",
            "q,__expected,__description\nhello,contains:hel,first\n\"a, b\",icontains:A,\n",
        );
        write(
            dir.path(),
            "t.jsonl",
            "{\"vars\": {\"q\": \"x\"}, \"assert\": [{\"type\": \"equals\", \"value\": \"x\"}]}\n",
        );
        write(dir.path(), "t.yaml", "- vars: {q: y}\n");
        let path = write(
            dir.path(),
            "suite.yaml",
            "prompts: ['{{q}}']\nproviders: [echo]\ntests: [file://t.csv, file://t.jsonl, 'file://*.yaml']\n",
        );
        let error = Suite::load(&path);
        // The glob also matches suite.yaml itself, which is not a test list.
        assert!(error.is_err());
        fs::rename(dir.path().join("t.yaml"), dir.path().join("u.yml")).unwrap();
        fs::write(&path, "prompts: ['{{q}}']\nproviders: [echo]\ntests: [file://t.csv, file://t.jsonl, 'file://*.yml']\n").unwrap();
        let suite = Suite::load(&path).unwrap();
        assert_eq!(suite.tests.len(), 4);
        assert_eq!(suite.tests[0].description, "first");
        assert_eq!(suite.tests[1].vars["q"], "a, b");
    }

    #[test]
    fn bad_csv_rows_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "t.csv", "q,a\n1,2\n3\n");
        let path = write(
            dir.path(),
            "suite.yaml",
            "prompts: ['{{q}}']\nproviders: [echo]\ntests: file://t.csv\n",
        );
        let error = Suite::load(&path).unwrap_err();
        assert_eq!(error.line, Some(3), "{error}");
    }

    #[test]
    fn missing_prompt_file_is_an_error() {
        let error = load("prompts: [file://nope.yaml]\nproviders: [echo]\n").unwrap_err();
        assert!(error.message.contains("does not exist"), "{error}");
    }

    #[test]
    fn chat_json_prompts_become_messages() {
        let suite = load("prompts: ['[{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"{{q}}\"}]']\nproviders: [echo]\ntests: [{vars: {q: hi}}]\n").unwrap();
        let messages = render_messages(&suite.prompts[0], &suite.tests[0].vars).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1].content, "hi");
    }
}
