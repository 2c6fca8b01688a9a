//! Text metrics used by assertions: JSON extraction, ROUGE-N and BLEU.

use std::collections::HashMap;

use serde_json::Value;

/// Every JSON object or array embedded in `text`, in order of appearance. Each `{` or `[`
/// starts an attempt; a value that parses is taken whole and scanning resumes after it.
pub fn extract_json(text: &str) -> Vec<Value> {
    let mut found = Vec::new();
    let mut index = 0;
    let bytes = text.as_bytes();
    while index < bytes.len() {
        if bytes[index] == b'{' || bytes[index] == b'[' {
            let mut stream =
                serde_json::Deserializer::from_str(&text[index..]).into_iter::<Value>();
            if let Some(Ok(value)) = stream.next() {
                let consumed = stream.byte_offset();
                if value.is_object() || value.is_array() {
                    found.push(value);
                    index += consumed.max(1);
                    continue;
                }
            }
        }
        index += 1;
    }
    found
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    if n == 0 || tokens.len() < n {
        return counts;
    }
    for window in tokens.windows(n) {
        *counts.entry(window).or_insert(0) += 1;
    }
    counts
}

fn clipped_matches(
    candidate: &HashMap<&[String], usize>,
    reference: &HashMap<&[String], usize>,
) -> usize {
    candidate
        .iter()
        .map(|(gram, count)| (*count).min(reference.get(gram).copied().unwrap_or(0)))
        .sum()
}

/// ROUGE-N recall: the share of the reference's n-grams (with counts) found in the candidate,
/// over lower-cased word tokens. This is what promptfoo's `rouge-n` (js-rouge, n = 1) reports.
pub fn rouge_n(candidate: &str, reference: &str, n: usize) -> f64 {
    let candidate = words(candidate);
    let reference = words(reference);
    let reference_grams = ngrams(&reference, n);
    let total: usize = reference_grams.values().sum();
    if total == 0 {
        return 0.0;
    }
    clipped_matches(&ngrams(&candidate, n), &reference_grams) as f64 / total as f64
}

/// Sentence BLEU-4 (uniform weights, brevity penalty) over lower-cased word tokens. Texts shorter
/// than four words are scored on the n-gram orders they have, so short answers are not
/// automatically zero.
pub fn bleu(candidate: &str, reference: &str) -> f64 {
    let candidate = words(candidate);
    let reference = words(reference);
    if candidate.is_empty() || reference.is_empty() {
        return 0.0;
    }
    let max_n = 4.min(candidate.len()).min(reference.len());
    let mut log_sum = 0.0;
    for n in 1..=max_n {
        let candidate_grams = ngrams(&candidate, n);
        let total: usize = candidate_grams.values().sum();
        let matches = clipped_matches(&candidate_grams, &ngrams(&reference, n));
        if matches == 0 || total == 0 {
            return 0.0;
        }
        log_sum += (matches as f64 / total as f64).ln();
    }
    let precision = (log_sum / max_n as f64).exp();
    let (c, r) = (candidate.len() as f64, reference.len() as f64);
    let brevity = if c > r { 1.0 } else { (1.0 - r / c).exp() };
    brevity * precision
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extracts_embedded_json() {
        assert_eq!(
            extract_json("a {\"x\": [1]} b [2] c {bad"),
            vec![json!({"x": [1]}), json!([2])]
        );
        assert!(extract_json("nothing").is_empty());
    }

    #[test]
    fn rouge_is_recall_of_reference_ngrams() {
        assert_eq!(rouge_n("the cat", "the cat sat down", 1), 0.5);
        assert_eq!(rouge_n("The CAT sat down!", "the cat sat down", 1), 1.0);
        assert_eq!(rouge_n("x", "", 1), 0.0);
    }

    #[test]
    fn bleu_known_values() {
        assert!((bleu("the cat sat on the mat", "the cat sat on the mat") - 1.0).abs() < 1e-12);
        assert_eq!(
            bleu("completely unrelated words here", "the cat sat on the mat"),
            0.0
        );
        // Shorter candidate: brevity penalty applies.
        let short = bleu("the cat sat on", "the cat sat on the mat");
        assert!((short - (1.0f64 - 6.0 / 4.0).exp()).abs() < 1e-9, "{short}");
    }
}
