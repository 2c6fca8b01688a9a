//! `/metrics`: the gateway's counters and latency histograms in the Prometheus (OpenMetrics)
//! text format. Counters are updated as requests finish; gauges (breaker state, trace queue)
//! are read when scraped.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 100 µs … ~105 s: the gateway's own overhead and slow model calls in one scale.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 21,
    ))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    ttft: Family<Labels, Histogram, fn() -> Histogram>,
    tokens: Family<Labels, Counter>,
    cost: Family<Labels, Counter<f64, AtomicU64>>,
    cache: Family<Labels, Counter>,
    breaker_open: Family<Labels, Gauge>,
    pub(crate) queue_depth: Gauge,
    pub(crate) traces_written: Counter,
    pub(crate) traces_dropped: Counter,
    pub(crate) trace_write_errors: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("plumb");
        let metrics = Metrics {
            requests: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            ttft: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            tokens: Family::default(),
            cost: Family::default(),
            cache: Family::default(),
            breaker_open: Family::default(),
            queue_depth: Gauge::default(),
            traces_written: Counter::default(),
            traces_dropped: Counter::default(),
            trace_write_errors: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "gateway_requests",
            "Requests answered, by model and HTTP status",
            metrics.requests.clone(),
        );
        registry.register(
            "gateway_errors",
            "Failed requests, by model and error kind",
            metrics.errors.clone(),
        );
        registry.register_with_unit(
            "gateway_request_duration",
            "Time from request to the last byte of the answer",
            prometheus_client::registry::Unit::Seconds,
            metrics.duration.clone(),
        );
        registry.register_with_unit(
            "gateway_time_to_first_token",
            "Time from request to the first streamed token",
            prometheus_client::registry::Unit::Seconds,
            metrics.ttft.clone(),
        );
        registry.register(
            "gateway_tokens",
            "Tokens, by model and direction (prompt or completion)",
            metrics.tokens.clone(),
        );
        registry.register(
            "gateway_cost_usd",
            "Spend in USD at the targets' prices",
            metrics.cost.clone(),
        );
        registry.register(
            "gateway_cache",
            "Cache lookups, by model and result",
            metrics.cache.clone(),
        );
        registry.register(
            "gateway_breaker_open",
            "1 while a target's circuit is open",
            metrics.breaker_open.clone(),
        );
        registry.register(
            "traces_queue_depth",
            "Traces waiting to be written",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "traces_written",
            "Traces committed to the store",
            metrics.traces_written.clone(),
        );
        registry.register(
            "traces_dropped",
            "Traces dropped because the queue was full",
            metrics.traces_dropped.clone(),
        );
        registry.register(
            "traces_write_errors",
            "Batches the store refused (their traces are lost)",
            metrics.trace_write_errors.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

/// What one finished request adds to the metrics.
pub(crate) struct Observation<'a> {
    pub model: &'a str,
    pub status: u16,
    pub error: Option<&'a str>,
    pub seconds: f64,
    pub ttft_seconds: Option<f64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: Option<f64>,
    pub cache: &'a str,
}

impl Metrics {
    pub(crate) fn observe(&self, o: &Observation<'_>) {
        let model = || vec![("model", o.model.to_owned())];
        self.requests
            .get_or_create(&vec![
                ("model", o.model.to_owned()),
                ("status", o.status.to_string()),
            ])
            .inc();
        if let Some(kind) = o.error {
            self.errors
                .get_or_create(&vec![
                    ("model", o.model.to_owned()),
                    ("kind", kind.to_owned()),
                ])
                .inc();
        }
        self.duration.get_or_create(&model()).observe(o.seconds);
        if let Some(ttft) = o.ttft_seconds {
            self.ttft.get_or_create(&model()).observe(ttft);
        }
        if o.prompt_tokens > 0 {
            self.tokens
                .get_or_create(&vec![
                    ("model", o.model.to_owned()),
                    ("direction", "prompt".to_owned()),
                ])
                .inc_by(o.prompt_tokens);
        }
        if o.completion_tokens > 0 {
            self.tokens
                .get_or_create(&vec![
                    ("model", o.model.to_owned()),
                    ("direction", "completion".to_owned()),
                ])
                .inc_by(o.completion_tokens);
        }
        if let Some(cost) = o.cost_usd.filter(|c| *c > 0.0) {
            self.cost.get_or_create(&model()).inc_by(cost);
        }
        if o.cache != "off" {
            self.cache
                .get_or_create(&vec![
                    ("model", o.model.to_owned()),
                    ("result", o.cache.to_owned()),
                ])
                .inc();
        }
    }

    pub(crate) fn set_breaker(&self, target: &str, open: bool) {
        self.breaker_open
            .get_or_create(&vec![("target", target.to_owned())])
            .set(i64::from(open));
    }

    /// The text a Prometheus scrape gets.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
