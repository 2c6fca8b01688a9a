//! `TraceStore` on SQLite: a batch is one transaction, so a trace is either fully written or
//! absent, and what a reader sees has been committed.

use rusqlite::{OptionalExtension, params, params_from_iter};

use crate::StoreError;
use crate::sqlite::SqliteStore;
use crate::traces::{Feedback, TraceFilter, TraceRecord, TraceStore};

const TRACE_COLUMNS: &str = "seq, trace_id, span_id, parent_span_id, request_id, started_at, \
     endpoint, key_id, model, prompt, prompt_version, target, status, error, cache, stream, \
     prompt_tokens, completion_tokens, cost_usd, latency_ms, ttft_ms, detail";

fn trace_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TraceRecord> {
    let detail: String = row.get(21)?;
    Ok(TraceRecord {
        seq: row.get(0)?,
        trace_id: row.get(1)?,
        span_id: row.get(2)?,
        parent_span_id: row.get(3)?,
        request_id: row.get(4)?,
        started_at: row.get(5)?,
        endpoint: row.get(6)?,
        key_id: row.get(7)?,
        model: row.get(8)?,
        prompt: row.get(9)?,
        prompt_version: row.get(10)?,
        target: row.get(11)?,
        status: row.get(12)?,
        error: row.get(13)?,
        cache: row.get(14)?,
        stream: row.get(15)?,
        prompt_tokens: row.get::<_, i64>(16)?.max(0) as u64,
        completion_tokens: row.get::<_, i64>(17)?.max(0) as u64,
        cost_usd: row.get(18)?,
        latency_ms: row.get(19)?,
        ttft_ms: row.get(20)?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
    })
}

fn feedback_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Feedback> {
    Ok(Feedback {
        id: row.get(0)?,
        trace_id: row.get(1)?,
        at: row.get(2)?,
        score: row.get(3)?,
        label: row.get(4)?,
        comment: row.get(5)?,
        key_id: row.get(6)?,
    })
}

impl TraceStore for SqliteStore {
    fn insert_traces(&self, traces: &[TraceRecord]) -> Result<(), StoreError> {
        self.write(|transaction| {
            let mut insert = transaction.prepare_cached(&format!(
                "INSERT OR IGNORE INTO traces ({TRACE_COLUMNS}) VALUES (NULL, ?1, ?2, ?3, ?4, ?5, \
                 ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)"
            ))?;
            for (i, t) in traces.iter().enumerate() {
                // Batches come from a low-priority writer thread: a yield every few rows
                // lets a woken request thread have the core without waiting for the tick.
                if i % 4 == 3 {
                    std::thread::yield_now();
                }
                insert.execute(params![
                    t.trace_id,
                    t.span_id,
                    t.parent_span_id,
                    t.request_id,
                    t.started_at,
                    t.endpoint,
                    t.key_id,
                    t.model,
                    t.prompt,
                    t.prompt_version,
                    t.target,
                    t.status,
                    t.error,
                    t.cache,
                    t.stream,
                    t.prompt_tokens.min(i64::MAX as u64) as i64,
                    t.completion_tokens.min(i64::MAX as u64) as i64,
                    t.cost_usd,
                    t.latency_ms,
                    t.ttft_ms,
                    t.detail.to_string(),
                ])?;
            }
            Ok(())
        })
    }

    fn trace(&self, id: &str) -> Result<Option<TraceRecord>, StoreError> {
        self.with_connection(|c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {TRACE_COLUMNS} FROM traces WHERE trace_id = ?1 OR request_id = ?1 \
                     ORDER BY seq DESC LIMIT 1"
                ),
                params![id],
                trace_from_row,
            )
            .optional()?)
        })
    }

    fn list_traces(&self, filter: &TraceFilter) -> Result<Vec<TraceRecord>, StoreError> {
        let mut clauses = Vec::new();
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        let mut add = |clause: &str, value: rusqlite::types::Value| {
            values.push(value);
            clauses.push(clause.replace('?', &format!("?{}", values.len())));
        };
        if let Some(after) = filter.after_seq {
            add("seq > ?", after.into());
        }
        if let Some(since) = filter.since {
            add("started_at >= ?", since.into());
        }
        if let Some(model) = &filter.model {
            add("model = ?", model.clone().into());
        }
        if let Some(prompt) = &filter.prompt {
            add("prompt = ?", prompt.clone().into());
        }
        if let Some(key) = &filter.key_id {
            add("key_id = ?", key.clone().into());
        }
        if filter.errors_only {
            clauses.push("error IS NOT NULL".into());
        }
        let condition = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        // The newest `limit`, returned oldest first.
        let limit = if filter.limit == 0 {
            -1
        } else {
            filter.limit.min(i64::MAX as usize) as i64
        };
        let sql = format!(
            "SELECT * FROM (SELECT {TRACE_COLUMNS} FROM traces {condition} ORDER BY seq DESC \
             LIMIT {limit}) ORDER BY seq"
        );
        self.with_connection(|c| {
            let mut statement = c.prepare(&sql)?;
            let rows = statement.query_map(params_from_iter(values.iter()), trace_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn add_feedback(&self, feedback: &Feedback) -> Result<i64, StoreError> {
        self.write(|transaction| {
            let known: Option<String> = transaction
                .query_row(
                    "SELECT trace_id FROM traces WHERE trace_id = ?1 OR request_id = ?1 LIMIT 1",
                    params![feedback.trace_id],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(trace_id) = known else {
                return Err(StoreError::NotFound(format!(
                    "no trace `{}`",
                    feedback.trace_id
                )));
            };
            transaction.execute(
                "INSERT INTO feedback (trace_id, at, score, label, comment, key_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    trace_id,
                    feedback.at,
                    feedback.score,
                    feedback.label,
                    feedback.comment,
                    feedback.key_id
                ],
            )?;
            Ok(transaction.last_insert_rowid())
        })
    }

    fn feedback(&self, trace_id: &str) -> Result<Vec<Feedback>, StoreError> {
        self.with_connection(|c| {
            let mut statement = c.prepare(
                "SELECT id, trace_id, at, score, label, comment, key_id FROM feedback \
                 WHERE trace_id = ?1 ORDER BY id",
            )?;
            let rows = statement.query_map(params![trace_id], feedback_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

    use super::*;

    fn trace(n: u32, model: &str, error: Option<&str>) -> TraceRecord {
        TraceRecord {
            seq: 0,
            trace_id: format!("{n:032x}"),
            span_id: format!("{n:016x}"),
            parent_span_id: None,
            request_id: format!("chatcmpl-{n}"),
            started_at: 1_000 + i64::from(n),
            endpoint: "chat".into(),
            key_id: Some("k1".into()),
            model: model.into(),
            prompt: None,
            prompt_version: None,
            target: Some("mock:a".into()),
            status: if error.is_some() { 502 } else { 200 },
            error: error.map(str::to_owned),
            cache: "miss".into(),
            stream: false,
            prompt_tokens: 3,
            completion_tokens: 4,
            cost_usd: Some(0.5),
            latency_ms: 1.5,
            ttft_ms: None,
            detail: serde_json::json!({"attempts": [{"target": "mock:a"}]}),
        }
    }

    #[test]
    fn traces_round_trip_filter_and_take_feedback() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let batch: Vec<_> = (1..=5)
            .map(|n| {
                trace(
                    n,
                    if n % 2 == 0 { "b" } else { "a" },
                    (n == 3).then_some("server"),
                )
            })
            .collect();
        store.insert_traces(&batch).unwrap();
        // Writing the same trace twice keeps one.
        store.insert_traces(&batch[..1]).unwrap();

        let all = store.list_traces(&TraceFilter::default()).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[0].detail, batch[0].detail);
        let newest_two = store
            .list_traces(&TraceFilter {
                limit: 2,
                ..TraceFilter::default()
            })
            .unwrap();
        assert_eq!(
            newest_two
                .iter()
                .map(|t| t.request_id.as_str())
                .collect::<Vec<_>>(),
            ["chatcmpl-4", "chatcmpl-5"]
        );
        let after = store
            .list_traces(&TraceFilter {
                after_seq: Some(all[3].seq),
                ..TraceFilter::default()
            })
            .unwrap();
        assert_eq!(after.len(), 1);
        let only_a_errors = store
            .list_traces(&TraceFilter {
                model: Some("a".into()),
                errors_only: true,
                ..TraceFilter::default()
            })
            .unwrap();
        assert_eq!(only_a_errors.len(), 1);
        assert_eq!(only_a_errors[0].error.as_deref(), Some("server"));

        let by_request = store.trace("chatcmpl-2").unwrap().unwrap();
        assert_eq!(by_request.trace_id, batch[1].trace_id);
        assert!(store.trace("nope").unwrap().is_none());

        let feedback = Feedback {
            id: 0,
            trace_id: "chatcmpl-2".into(),
            at: 5,
            score: Some(1.0),
            label: Some("good".into()),
            comment: None,
            key_id: None,
        };
        store.add_feedback(&feedback).unwrap();
        let attached = store.feedback(&batch[1].trace_id).unwrap();
        assert_eq!(attached.len(), 1);
        assert_eq!(attached[0].label.as_deref(), Some("good"));
        let missing = store.add_feedback(&Feedback {
            trace_id: "unknown".into(),
            ..feedback
        });
        assert!(matches!(missing, Err(StoreError::NotFound(_))));
    }
}
