//! Prices of well-known API models (USD per million tokens), overridable per provider.
//!
//! Prices change; the table is a convenience, and `input_cost_per_mtok` /
//! `output_cost_per_mtok` in a provider's config always win.

use plumb_core::Pricing;

use crate::ProviderOptions;

/// Longest matching prefix wins, so `gpt-4o-mini` is not priced as `gpt-4o`.
const TABLE: &[(&str, f64, f64)] = &[
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4o", 2.50, 10.00),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1", 2.00, 8.00),
    ("gpt-5-nano", 0.05, 0.40),
    ("gpt-5-mini", 0.25, 2.00),
    ("gpt-5", 1.25, 10.00),
    ("o3-mini", 1.10, 4.40),
    ("o4-mini", 1.10, 4.40),
    ("o3", 2.00, 8.00),
    ("gpt-3.5-turbo", 0.50, 1.50),
    ("claude-3-haiku", 0.25, 1.25),
    ("claude-3-5-haiku", 0.80, 4.00),
    ("claude-haiku-4", 1.00, 5.00),
    ("claude-3-5-sonnet", 3.00, 15.00),
    ("claude-3-7-sonnet", 3.00, 15.00),
    ("claude-sonnet-4", 3.00, 15.00),
    ("claude-opus-4", 15.00, 75.00),
];

pub fn lookup(model: &str) -> Option<Pricing> {
    TABLE
        .iter()
        .filter(|(prefix, _, _)| model.starts_with(prefix))
        .max_by_key(|(prefix, _, _)| prefix.len())
        .map(|&(_, input, output)| Pricing {
            input_per_mtok: input,
            output_per_mtok: output,
        })
}

pub(crate) fn resolve(model: &str, options: &ProviderOptions) -> Option<Pricing> {
    let base = lookup(model);
    match (options.input_cost_per_mtok, options.output_cost_per_mtok) {
        (None, None) => base,
        (input, output) => {
            let base = base.unwrap_or_default();
            Some(Pricing {
                input_per_mtok: input.unwrap_or(base.input_per_mtok),
                output_per_mtok: output.unwrap_or(base.output_per_mtok),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(
            lookup("gpt-4o-mini-2024-07-18").map(|p| p.input_per_mtok),
            Some(0.15)
        );
        assert_eq!(
            lookup("gpt-4o-2024-08-06").map(|p| p.input_per_mtok),
            Some(2.50)
        );
        assert_eq!(lookup("my-local-model"), None);
    }
}
