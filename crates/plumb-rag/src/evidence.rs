//! Was the right passage retrieved, and did the answer use it? Text checks shared by
//! `plumb rag query --gold`, retrieval evals and the citation assertion.

use crate::store::query_terms;

/// Lowercase words (letters and digits) of `text`.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Whether a chunk holds the gold passage: the passage's words appear in the chunk in order
/// (whitespace, case and punctuation aside), or — for a passage cut across chunks — at least
/// `min_share` of the passage's content words are in the chunk.
pub fn holds_passage(chunk: &str, gold: &str, min_share: f64) -> bool {
    let gold_words = words(gold);
    if gold_words.is_empty() {
        return false;
    }
    let chunk_words = words(chunk);
    if chunk_words
        .windows(gold_words.len())
        .any(|window| window == gold_words.as_slice())
    {
        return true;
    }
    word_share(&query_terms(gold), &chunk_words) >= min_share
}

/// Share of `terms` found among `words`.
fn word_share(terms: &[String], words: &[String]) -> f64 {
    if terms.is_empty() {
        return 0.0;
    }
    let present: std::collections::HashSet<&str> = words.iter().map(String::as_str).collect();
    terms
        .iter()
        .filter(|t| present.contains(t.as_str()))
        .count() as f64
        / terms.len() as f64
}

/// Share of the answer's content words (stop words aside) that occur in `passage`: how much
/// of the answer this passage can account for.
pub fn answer_support(answer: &str, passage: &str) -> f64 {
    word_share(&query_terms(answer), &words(passage))
}

/// The citation numbers in an answer: `[1]`, `[2, 3]`, `[1][4]`, in order of first use.
pub fn citations(answer: &str) -> Vec<usize> {
    let mut found = Vec::new();
    let mut rest = answer;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else {
            break;
        };
        let inside = &rest[..close];
        let numbers: Option<Vec<usize>> = inside
            .split(',')
            .map(|part| part.trim().parse::<usize>().ok())
            .collect();
        if let Some(numbers) = numbers {
            for number in numbers {
                if !found.contains(&number) {
                    found.push(number);
                }
            }
            rest = &rest[close + 1..];
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passages_are_found_whatever_the_spacing() {
        let chunk = "## Limits\n\nEach account may send **600 requests** per\nminute.";
        assert!(holds_passage(chunk, "600 requests per minute", 0.8));
        assert!(holds_passage(
            chunk,
            "each account may send 600 requests",
            0.8
        ));
        assert!(!holds_passage(chunk, "700 requests per hour", 0.8));
        assert!(!holds_passage(chunk, "", 0.8));
    }

    #[test]
    fn citations_in_order_of_use() {
        assert_eq!(
            citations("A [2]. B [1, 3][2]. See [x] and [4"),
            vec![2, 1, 3]
        );
        assert!(citations("no citations").is_empty());
    }

    #[test]
    fn support_counts_content_words() {
        let passage = "Requests above the limit get status 429 and a Retry-After header.";
        assert!((answer_support("You get a 429 status.", passage) - 1.0).abs() < 1e-9);
        assert!(answer_support("Upgrade the plan.", passage) < 0.01);
    }
}
