//! A test's retrieval step (`context: {collection, k, query}`): before the run, the query is
//! rendered with the test's vars, the collection searched, and the chunks put in the vars —
//!
//! * `context`: the chunks as one text, each headed by its citation id: `[1] source § heading`;
//! * `contexts`: the chunk texts in rank order (what the RAG metrics score);
//! * `retrieved`: one object per chunk (`id`, `source`, `title`, `headings`, `page`, `place`, `chunk`,
//!   `text`) for templates that lay them out themselves.
//!
//! The vars are stored with each case, so reports and `plumb runs show` see what was retrieved.

use std::collections::HashMap;

use plumb_core::SourceError;
use plumb_prompt::template;
use plumb_rag::{Filter, Hit, Retriever, SearchOptions};
use serde_json::{Map, Value, json};

use crate::Suite;
use crate::raw::RawRetrieval;

/// The vars a retrieval step fills.
pub const FILLED_VARS: [&str; 3] = ["context", "contexts", "retrieved"];

/// A resolved retrieval step.
#[derive(Clone, Debug)]
pub struct Retrieval {
    pub collection: String,
    /// The query template.
    pub query: String,
    pub options: SearchOptions,
    /// Where it was written, for errors.
    pub location: SourceError,
}

impl Retrieval {
    pub(crate) fn resolve(
        raw: RawRetrieval,
        vars: &Map<String, Value>,
        location: SourceError,
    ) -> Result<Retrieval, SourceError> {
        let fail = |message: String| {
            let mut error = location.clone();
            error.message = format!("`context`: {message}");
            error
        };
        if !plumb_rag::store::valid_name(&raw.collection) {
            return Err(fail(format!(
                "`{}` is not a collection name (1–64 letters, digits, `-`, `_`)",
                raw.collection
            )));
        }
        let k = raw.k.unwrap_or(3);
        if !(1..=100).contains(&k) {
            return Err(fail(format!("k must be 1..100, got {k}")));
        }
        let query = match raw.query {
            Some(query) => query,
            None => {
                let var = ["query", "question"]
                    .into_iter()
                    .find(|name| vars.contains_key(*name))
                    .ok_or_else(|| {
                        fail(
                            "no `query` given and the test has no `query` or `question` var".into(),
                        )
                        .with_hint("write e.g. `query: \"{{ question }}\"`")
                    })?;
                format!("{{{{ {var} }}}}")
            }
        };
        let filter = Filter::parse(&raw.filter.map(|f| f.0).unwrap_or_default()).map_err(&fail)?;
        let defaults = SearchOptions::default();
        let options = SearchOptions {
            k,
            candidates: raw.candidates.unwrap_or(defaults.candidates).max(k),
            text_weight: raw.text_weight.unwrap_or(defaults.text_weight),
            vector_weight: raw.vector_weight.unwrap_or(defaults.vector_weight),
            filter,
            ..defaults
        };
        if !(options.text_weight >= 0.0 && options.vector_weight >= 0.0)
            || options.text_weight + options.vector_weight == 0.0
        {
            return Err(fail(
                "textWeight and vectorWeight must be ≥ 0 and not both 0".into(),
            ));
        }
        Ok(Retrieval {
            collection: raw.collection,
            query,
            options,
            location,
        })
    }

    /// The query for a test's vars.
    pub fn render_query(&self, vars: &Map<String, Value>) -> Result<String, String> {
        template::render_str(&self.query, vars).map_err(|error| error.to_string())
    }
}

/// Stand-ins for the filled vars while checking that templates render at load.
pub(crate) fn placeholder_vars(vars: &Map<String, Value>) -> Map<String, Value> {
    let mut vars = vars.clone();
    vars.insert("context".into(), json!("[1] source\ntext"));
    vars.insert("contexts".into(), json!(["text"]));
    vars.insert(
        "retrieved".into(),
        json!([{"id": 1, "source": "source", "title": "title", "headings": "", "page": null, "chunk": 1, "text": "text"}]),
    );
    vars
}

/// `[1] docs/limits.md § Limits > Payload size · p. 3`
pub fn citation_header(id: usize, hit: &Hit) -> String {
    format!("[{id}] {}", hit.chunk.place())
}

/// Puts retrieved hits into a test's vars.
pub fn fill(vars: &mut Map<String, Value>, hits: &[Hit]) {
    let context = hits
        .iter()
        .enumerate()
        .map(|(i, hit)| format!("{}\n{}", citation_header(i + 1, hit), hit.chunk.text.trim()))
        .collect::<Vec<_>>()
        .join("\n\n");
    let contexts: Vec<Value> = hits.iter().map(|h| json!(h.chunk.text)).collect();
    let retrieved: Vec<Value> = hits
        .iter()
        .enumerate()
        .map(|(i, hit)| {
            json!({
                "id": i + 1,
                "source": hit.chunk.source,
                "title": hit.chunk.title,
                "headings": hit.chunk.headings.join(" > "),
                "page": hit.chunk.page,
                "place": hit.chunk.place(),
                "chunk": hit.chunk.id,
                "text": hit.chunk.text,
            })
        })
        .collect();
    vars.insert("context".into(), json!(context));
    vars.insert("contexts".into(), Value::Array(contexts));
    vars.insert("retrieved".into(), Value::Array(retrieved));
}

/// Runs every test's retrieval step and fills its vars. `retrievers` holds one retriever per
/// collection the suite names (`Suite::collections`).
pub async fn attach(
    suite: &mut Suite,
    retrievers: &HashMap<String, Retriever>,
) -> Result<usize, SourceError> {
    let mut done = 0;
    for (index, test) in suite.tests.iter_mut().enumerate() {
        let Some(step) = test.retrieval.clone() else {
            continue;
        };
        let fail = |message: String| {
            let mut error = step.location.clone();
            error.message = format!(
                "test {} (\"{}\"): `context`: {message}",
                index + 1,
                test.description
            );
            error
        };
        let Some(retriever) = retrievers.get(&step.collection) else {
            return Err(fail(format!(
                "collection `{}` is not open",
                step.collection
            )));
        };
        let query = step.render_query(&test.vars).map_err(&fail)?;
        let hits = retriever
            .search(&query, &step.options)
            .await
            .map_err(|error| fail(error.to_string()))?;
        fill(&mut test.vars, &hits);
        done += 1;
    }
    Ok(done)
}
