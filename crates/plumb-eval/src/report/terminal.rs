//! The terminal summary: the prompt × provider matrix, comparisons in plain words, and the
//! worst failures with what was expected and what came back.

use std::fmt::Write;

use crate::summary::{Comparison, Summary, short_id};

#[derive(Clone, Copy, Debug)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
    fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }
    fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }
    fn red(&self, text: &str) -> String {
        self.paint("31", text)
    }
    fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }
    fn yellow(&self, text: &str) -> String {
        self.paint("33", text)
    }
}

fn human_tokens(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

fn ms(value: f64) -> String {
    if value.is_nan() {
        "-".to_owned()
    } else if value < 10.0 {
        format!("{value:.1} ms")
    } else if value < 10_000.0 {
        format!("{value:.0} ms")
    } else {
        format!("{:.1} s", value / 1000.0)
    }
}

fn pad(text: &str, width: usize) -> String {
    let len = text.chars().count();
    if len >= width {
        text.to_owned()
    } else {
        format!("{text}{}", " ".repeat(width - len))
    }
}

fn truncate(text: &str, width: usize) -> String {
    let one_line = text.replace(['\n', '\r'], "⏎");
    if one_line.chars().count() <= width {
        one_line
    } else {
        format!(
            "{}…",
            one_line
                .chars()
                .take(width.saturating_sub(1))
                .collect::<String>()
        )
    }
}

pub fn render(summary: &Summary, run_comparisons: &[Comparison], style: Style) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} · run {} ({})",
        style.bold("plumb eval"),
        summary.suite_path,
        short_id(&summary.run_id),
        summary.status
    );
    if !summary.description.is_empty() {
        let _ = writeln!(out, "{}", style.dim(&summary.description));
    }
    out.push('\n');

    let prompt_width = summary
        .cells
        .iter()
        .map(|c| c.prompt.chars().count().min(28))
        .max()
        .unwrap_or(6)
        .max(6);
    let provider_width = summary
        .cells
        .iter()
        .map(|c| c.provider.chars().count().min(28))
        .max()
        .unwrap_or(8)
        .max(8);
    let header = format!(
        "  {} {} {:<26} {:>6} {:>8} {:>10} {:>9} {:>9}",
        pad("prompt", prompt_width),
        pad("provider", provider_width),
        "pass rate (95% CI)",
        "score",
        "tokens",
        "cost",
        "p50",
        "p95"
    );
    let _ = writeln!(out, "{}", style.bold(&header));
    for cell in &summary.cells {
        let measured = cell.passed + cell.failed;
        let rate = match cell.pass_rate {
            Some(rate) => format!(
                "{}/{} {:>5.1}% ({:.0}–{:.0}%)",
                cell.passed,
                measured,
                rate * 100.0,
                cell.pass_rate_ci.0 * 100.0,
                cell.pass_rate_ci.1 * 100.0
            ),
            None => "unmeasured".to_owned(),
        };
        let rate_colored = match cell.pass_rate {
            Some(r) if r >= 0.999 => style.green(&pad(&rate, 26)),
            Some(_) if cell.failed > 0 => style.yellow(&pad(&rate, 26)),
            _ => pad(&rate, 26),
        };
        let _ = writeln!(
            out,
            "  {} {} {} {:>6.3} {:>8} {:>10} {:>9} {:>9}",
            pad(&truncate(&cell.prompt, 28), prompt_width),
            pad(&truncate(&cell.provider, 28), provider_width),
            rate_colored,
            cell.mean_score,
            human_tokens(cell.prompt_tokens + cell.completion_tokens),
            format!("${:.4}", cell.cost),
            ms(cell.latency_p50_ms),
            ms(cell.latency_p95_ms),
        );
        let mut notes = Vec::new();
        if cell.unmeasured > 0 {
            notes.push(style.red(&format!(
                "{} unmeasured (model or judge errors, counted neither pass nor fail)",
                cell.unmeasured
            )));
        }
        if cell.cached > 0 {
            notes.push(format!("{} from cache", cell.cached));
        }
        if let Some(flake) = cell.flake_rate() {
            let (low, high) = cell.flake_rate_ci();
            notes.push(format!(
                "flake rate {:.1}% ({} of {} repeated tests disagree; 95% CI {:.0}–{:.0}%)",
                flake * 100.0,
                cell.flaky_tests,
                cell.repeated_tests,
                low * 100.0,
                high * 100.0
            ));
        }
        if cell.position_bias > 0 {
            notes.push(style.red(&format!(
                "select-best: {} picked differently when the order was reversed (position \
                 bias; unmeasured)",
                if cell.position_bias == 1 {
                    "1 comparison".to_owned()
                } else {
                    format!("{} comparisons", cell.position_bias)
                }
            )));
        }
        if cell.passed + cell.failed > 1 {
            notes.push(format!(
                "mean score 95% CI {:.3}–{:.3}",
                cell.mean_score_ci.0, cell.mean_score_ci.1
            ));
        }
        for (metric, value) in &cell.metrics {
            notes.push(format!("{metric} {value:.3}"));
        }
        if !notes.is_empty() {
            let _ = writeln!(
                out,
                "  {}",
                style.dim(&format!("  ↳ {}", notes.join(" · ")))
            );
        }
    }

    let comparisons: Vec<&Comparison> = summary.comparisons.iter().chain(run_comparisons).collect();
    if !comparisons.is_empty() {
        let _ = writeln!(out, "\n{}", style.bold("Comparison"));
        for c in comparisons {
            let _ = writeln!(out, "  {} vs {}", c.b, c.a);
            let verdict = if c.significant {
                style.bold(&c.verdict)
            } else {
                c.verdict.clone()
            };
            let _ = writeln!(out, "    {verdict}");
            for measure in c.measures.iter().skip(1) {
                let text = measure.describe(c.measures.len());
                let text = if measure.significant {
                    style.bold(&text)
                } else {
                    text
                };
                let _ = writeln!(out, "    {text}");
            }
            let _ = writeln!(
                out,
                "    {}",
                style.dim(&format!(
                    "per case: {} better, {} worse, {} tied",
                    c.b_wins, c.b_losses, c.ties,
                ))
            );
        }
    }

    if !summary.failures.is_empty() {
        let _ = writeln!(out, "\n{}", style.bold("Worst failures"));
        for failure in &summary.failures {
            let _ = writeln!(
                out,
                "  {} {} · {} · {}",
                style.red("✗"),
                failure.prompt,
                failure.provider,
                truncate(&failure.test, 60)
            );
            for reason in failure.reasons.iter().take(3) {
                let _ = writeln!(out, "      {}", truncate(reason, 110));
            }
            let _ = writeln!(
                out,
                "      {} {}",
                style.dim("got:"),
                truncate(&format!("{:?}", failure.output), 100)
            );
        }
    }
    out
}
