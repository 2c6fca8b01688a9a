//! `select-best`: one judgement per test over the outputs of every prompt and provider, asked
//! in both orders. The pick stands only when both orders agree; otherwise the judge showed
//! position bias and the comparison is unmeasured, with both picks in the reason.

use serde_json::{Map, Value, json};

use super::{JudgeContext, JudgeInfo, add_info, object_schema, prompt, reason_schema, text_field};
use crate::assertion::Assertion;

/// How an unmeasured select-best result caused by position bias begins (reports count them).
pub const POSITION_BIAS: &str = "position bias";

const SELECT_SYSTEM: &str = "You compare several outputs written for the same task and pick \
the one that best meets a criterion. Judge by the criterion only; the order in which the \
outputs are shown means nothing. Reply with JSON only.";
const SELECT_USER: &str = "[Criterion]\n{{ criteria }}\n\n{{ outputs }}\n\nWhich output best \
meets the criterion? Reply as {\"reason\": \"...\", \"best\": N}, N between 1 and {{ count }}.";

/// The output both orders picked.
#[derive(Clone, Debug)]
pub struct Pick {
    /// Index into the outputs as given.
    pub winner: usize,
    pub reason: String,
    pub judge: JudgeInfo,
}

impl JudgeContext {
    /// Picks the best of `outputs` (label, text) for the criterion in `assertion`'s value,
    /// asking once in the given order and once reversed.
    pub async fn select_best(
        &self,
        assertion: &Assertion,
        vars: &Map<String, Value>,
        outputs: &[(String, String)],
    ) -> Result<Pick, String> {
        let (grader, model) = self.grader_of(assertion)?;
        let criterion = super::value_text(&assertion.rendered_value(vars)?);
        let n = outputs.len();
        let schema = object_schema(&[
            ("reason", reason_schema()),
            (
                "best",
                json!({"type": "integer", "minimum": 1, "maximum": n}),
            ),
        ]);
        let prompt = prompt(SELECT_SYSTEM, SELECT_USER);
        let forward: Vec<usize> = (0..n).collect();
        let reversed: Vec<usize> = (0..n).rev().collect();
        let orders = [forward, reversed];
        let all_vars: Vec<Map<String, Value>> = orders
            .iter()
            .map(|order| {
                let shown: Vec<String> = order
                    .iter()
                    .enumerate()
                    .map(|(position, index)| {
                        format!("[Output {}]\n{}", position + 1, outputs[*index].1)
                    })
                    .collect();
                let mut vars = Map::new();
                vars.insert("criteria".into(), json!(criterion));
                vars.insert("outputs".into(), json!(shown.join("\n\n")));
                vars.insert("count".into(), json!(n));
                vars
            })
            .collect();
        let answers = futures_util::future::join_all(
            all_vars
                .iter()
                .map(|vars| self.ask(&model, grader, &prompt, vars, schema.clone())),
        )
        .await;
        let mut judge = JudgeInfo::default();
        let mut picks = Vec::new();
        for (answer, order) in answers.into_iter().zip(&orders) {
            let (answer, info) = answer?;
            add_info(&mut judge, &info);
            let position = answer
                .get("best")
                .and_then(Value::as_u64)
                .filter(|p| (1..=n as u64).contains(p))
                .ok_or("the judge's answer has no `best` between 1 and the number of outputs")?;
            picks.push((order[position as usize - 1], text_field(&answer, "reason")));
        }
        let (first, reason) = picks[0].clone();
        let (second, _) = picks[1].clone();
        if first != second {
            return Err(format!(
                "{POSITION_BIAS}: the judge picked `{}` in the order given and `{}` in the \
                 reversed order, so neither pick is trusted",
                outputs[first].0, outputs[second].0
            ));
        }
        Ok(Pick {
            winner: first,
            reason,
            judge,
        })
    }
}
