//! A BERT encoder (all-MiniLM-L6-v2 and its kin) on the CPU, written for throughput:
//!
//! * no padding: a batch's texts are packed token after token, the linear layers run over all
//!   of them at once and attention runs per text over its real tokens only;
//! * one matrix multiply for query, key and value (their weights stacked at load);
//! * gemm's kernels (AVX-512 or AVX2+FMA, picked at run time) for every product, each batch
//!   on one thread and batches on all cores;
//! * GELU (the exact, erf one BERT uses), softmax and layer norm as plain loops over slices
//!   with a polynomial `exp`, compiled for the CPU's widest SIMD (pulp's dispatch) so they
//!   vectorize.
//!
//! The output is sentence-transformers': the mean of the last layer over each text's tokens,
//! L2-normalized.

use safetensors::{Dtype, SafeTensors};

/// The parts of a model's `config.json` the encoder reads.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".to_owned()
}

struct Linear {
    /// `[outputs × inputs]`, row-major, as stored.
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

struct Layer {
    /// Query, key and value stacked: `[3H × H]`.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: Norm,
    intermediate: Linear,
    output: Linear,
    output_norm: Norm,
}

pub struct Bert {
    hidden: usize,
    heads: usize,
    eps: f32,
    max_positions: usize,
    vocab: usize,
    words: Vec<f32>,
    positions: Vec<f32>,
    /// Token type 0's embedding (inputs are single segments).
    segment: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
}

/// A safetensors file's tensors, named with or without a prefix.
struct Weights<'a> {
    tensors: SafeTensors<'a>,
    prefix: &'static str,
}

impl Weights<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let full = format!("{}{name}", self.prefix);
        let view = self
            .tensors
            .tensor(&full)
            .map_err(|_| format!("the weights have no tensor `{full}`"))?;
        if view.dtype() != Dtype::F32 || view.shape() != shape {
            return Err(format!(
                "tensor `{full}` is {:?} {:?}, expected F32 {shape:?}",
                view.dtype(),
                view.shape()
            ));
        }
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn norm(&self, name: &str, hidden: usize) -> Result<Norm, String> {
        Ok(Norm {
            weight: self.get(&format!("{name}.weight"), &[hidden])?,
            bias: self.get(&format!("{name}.bias"), &[hidden])?,
        })
    }

    fn linear(&self, name: &str, inputs: usize, outputs: usize) -> Result<Linear, String> {
        Ok(Linear {
            weight: self.get(&format!("{name}.weight"), &[outputs, inputs])?,
            bias: self.get(&format!("{name}.bias"), &[outputs])?,
            inputs,
            outputs,
        })
    }
}

/// Scratch space one batch reuses through the layers.
struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    attended: Vec<f32>,
    wide: Vec<f32>,
    scores: Vec<f32>,
}

impl Bert {
    /// Reads the weights from a safetensors file's bytes (f32; names with or without the
    /// `bert.` prefix).
    pub fn load(config: &Config, weights: &[u8]) -> Result<Bert, String> {
        if config.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act `{}` is not supported (only gelu)",
                config.hidden_act
            ));
        }
        let hidden = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(format!(
                "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
            ));
        }
        let tensors = SafeTensors::deserialize(weights).map_err(|e| e.to_string())?;
        let prefix = if tensors
            .names()
            .iter()
            .any(|n| n.starts_with("bert.embeddings."))
        {
            "bert."
        } else {
            ""
        };
        let weights = Weights { tensors, prefix };
        let get = |name: &str, shape: &[usize]| weights.get(name, shape);
        let norm = |name: &str| weights.norm(name, hidden);
        let linear = |name: &str, inputs, outputs| weights.linear(name, inputs, outputs);
        let words = get(
            "embeddings.word_embeddings.weight",
            &[config.vocab_size, hidden],
        )?;
        let positions = get(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, hidden],
        )?;
        let segments = weights
            .tensors
            .tensor(&format!("{prefix}embeddings.token_type_embeddings.weight"))
            .map(|view| view.shape().first().copied().unwrap_or(0))
            .unwrap_or(0);
        let segment = get(
            "embeddings.token_type_embeddings.weight",
            &[segments.max(1), hidden],
        )?[..hidden]
            .to_vec();
        let embedding_norm = norm("embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let at = |part: &str| format!("encoder.layer.{i}.{part}");
            let query = linear(&at("attention.self.query"), hidden, hidden)?;
            let key = linear(&at("attention.self.key"), hidden, hidden)?;
            let value = linear(&at("attention.self.value"), hidden, hidden)?;
            let qkv = Linear {
                weight: [query.weight, key.weight, value.weight].concat(),
                bias: [query.bias, key.bias, value.bias].concat(),
                inputs: hidden,
                outputs: 3 * hidden,
            };
            layers.push(Layer {
                qkv,
                attention_out: linear(&at("attention.output.dense"), hidden, hidden)?,
                attention_norm: norm(&at("attention.output.LayerNorm"))?,
                intermediate: linear(&at("intermediate.dense"), hidden, config.intermediate_size)?,
                output: linear(&at("output.dense"), config.intermediate_size, hidden)?,
                output_norm: norm(&at("output.LayerNorm"))?,
            });
        }
        Ok(Bert {
            hidden,
            heads,
            eps: config.layer_norm_eps as f32,
            max_positions: config.max_position_embeddings,
            vocab: config.vocab_size,
            words,
            positions,
            segment,
            embedding_norm,
            layers,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Embeds texts given as token ids (each at most `max_positions` long), all on the
    /// calling thread: one L2-normalized vector per text.
    pub fn embed(&self, texts: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        let h = self.hidden;
        let tokens: usize = texts.iter().map(|t| t.len()).sum();
        let widest = texts.iter().map(|t| t.len()).max().unwrap_or(0);
        if texts.iter().any(|t| t.is_empty()) {
            return Err("a text has no tokens".to_owned());
        }
        if widest > self.max_positions {
            return Err(format!(
                "a text has {widest} tokens, the model at most {}",
                self.max_positions
            ));
        }
        let mut scratch = Scratch {
            x: vec![0.0; tokens * h],
            qkv: vec![0.0; tokens * 3 * h],
            context: vec![0.0; tokens * h],
            attended: vec![0.0; tokens * h],
            wide: Vec::new(),
            scores: vec![0.0; widest * widest],
        };
        // Embeddings: word + position + segment 0, then layer norm.
        let mut row = 0;
        for text in texts {
            for (position, &id) in text.iter().enumerate() {
                let id = id as usize;
                if id >= self.vocab {
                    return Err(format!("token id {id} is outside the vocabulary"));
                }
                let out = &mut scratch.x[row * h..(row + 1) * h];
                let word = &self.words[id * h..(id + 1) * h];
                let place = &self.positions[position * h..(position + 1) * h];
                for (((o, w), p), s) in out.iter_mut().zip(word).zip(place).zip(&self.segment) {
                    *o = w + p + s;
                }
                row += 1;
            }
        }
        Pass::LayerNorm(&mut scratch.x, &self.embedding_norm, self.eps).run();
        for layer in &self.layers {
            self.layer(layer, texts, &mut scratch)?;
        }
        // Mean over each text's tokens, then L2 normalization.
        let mut out = Vec::with_capacity(texts.len());
        let mut start = 0;
        for text in texts {
            let mut mean = vec![0f32; h];
            for row in scratch.x[start * h..(start + text.len()) * h].chunks_exact(h) {
                for (m, v) in mean.iter_mut().zip(row) {
                    *m += v;
                }
            }
            let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt();
            let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
            mean.iter_mut().for_each(|v| *v *= scale);
            out.push(mean);
            start += text.len();
        }
        Ok(out)
    }

    fn layer(&self, layer: &Layer, texts: &[&[u32]], s: &mut Scratch) -> Result<(), String> {
        let h = self.hidden;
        let tokens = s.x.len() / h;
        let head = h / self.heads;
        let scale = 1.0 / (head as f32).sqrt();
        linear(&layer.qkv, &s.x, tokens, &mut s.qkv)?;
        let mut start = 0;
        for text in texts {
            let n = text.len();
            for k in 0..self.heads {
                let (q, key, value) = (k * head, h + k * head, 2 * h + k * head);
                let scores = &mut s.scores[..n * n];
                // scores = Q·Kᵀ / √d over this text's tokens.
                matmul(
                    Dims { m: n, n, k: head },
                    Out {
                        data: scores,
                        offset: 0,
                        row: n,
                        accumulate: false,
                    },
                    View {
                        data: &s.qkv,
                        offset: start * 3 * h + q,
                        row: 3 * h,
                        col: 1,
                    },
                    View {
                        data: &s.qkv,
                        offset: start * 3 * h + key,
                        row: 1,
                        col: 3 * h,
                    },
                    scale,
                )?;
                Pass::Softmax(scores, n).run();
                // context[:, head k] = softmax · V.
                matmul(
                    Dims {
                        m: n,
                        n: head,
                        k: n,
                    },
                    Out {
                        data: &mut s.context,
                        offset: start * h + k * head,
                        row: h,
                        accumulate: false,
                    },
                    View {
                        data: scores,
                        offset: 0,
                        row: n,
                        col: 1,
                    },
                    View {
                        data: &s.qkv,
                        offset: start * 3 * h + value,
                        row: 3 * h,
                        col: 1,
                    },
                    1.0,
                )?;
            }
            start += n;
        }
        linear(&layer.attention_out, &s.context, tokens, &mut s.attended)?;
        for (a, x) in s.attended.iter_mut().zip(&s.x) {
            *a += x;
        }
        Pass::LayerNorm(&mut s.attended, &layer.attention_norm, self.eps).run();
        s.wide.resize(tokens * layer.intermediate.outputs, 0.0);
        linear(&layer.intermediate, &s.attended, tokens, &mut s.wide)?;
        Pass::Gelu(&mut s.wide).run();
        linear(&layer.output, &s.wide, tokens, &mut s.x)?;
        for (x, a) in s.x.iter_mut().zip(&s.attended) {
            *x += a;
        }
        Pass::LayerNorm(&mut s.x, &layer.output_norm, self.eps).run();
        Ok(())
    }
}

/// `out[rows × outputs] = input[rows × inputs] · weightᵀ + bias`.
fn linear(layer: &Linear, input: &[f32], rows: usize, out: &mut [f32]) -> Result<(), String> {
    for row in out[..rows * layer.outputs].chunks_exact_mut(layer.outputs) {
        row.copy_from_slice(&layer.bias);
    }
    matmul(
        Dims {
            m: rows,
            n: layer.outputs,
            k: layer.inputs,
        },
        Out {
            data: out,
            offset: 0,
            row: layer.outputs,
            accumulate: true,
        },
        View {
            data: input,
            offset: 0,
            row: layer.inputs,
            col: 1,
        },
        View {
            data: &layer.weight,
            offset: 0,
            row: 1,
            col: layer.inputs,
        },
        1.0,
    )
}

/// An elementwise pass over activations, run by `Pass::run` inside pulp's dispatch so its
/// loops are compiled (and vectorized) for the widest SIMD the CPU has.
enum Pass<'a> {
    LayerNorm(&'a mut [f32], &'a Norm, f32),
    /// Each row of a `rows × n` matrix, in place.
    Softmax(&'a mut [f32], usize),
    Gelu(&'a mut [f32]),
}

impl Pass<'_> {
    fn run(self) {
        pulp::Arch::new().dispatch(self);
    }
}

impl pulp::WithSimd for Pass<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        match self {
            Pass::LayerNorm(x, norm, eps) => layer_norm(x, norm, eps),
            Pass::Softmax(x, n) => softmax_rows(x, n),
            Pass::Gelu(x) => gelu(x),
        }
    }
}

/// Lanes of the partial sums below: independent accumulators let a reduction vectorize
/// without reordering any one of them. (Loops here are `for` loops: iterator adapters such as
/// `sum` and `for_each` may stay out of line, compiled without the dispatch's features.)
const LANES: usize = 16;

#[inline(always)]
fn add_lanes(lanes: &[f32; LANES]) -> f32 {
    let mut total = 0.0;
    for lane in lanes {
        total += lane;
    }
    total
}

#[inline(always)]
fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let mut tail = 0.0;
    for v in chunks.remainder() {
        tail += v;
    }
    for chunk in chunks {
        for i in 0..LANES {
            lanes[i] += chunk[i];
        }
    }
    add_lanes(&lanes) + tail
}

/// Σ (v − mean)².
#[inline(always)]
fn squared_deviations(values: &[f32], mean: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let mut tail = 0.0;
    for v in chunks.remainder() {
        tail += (v - mean) * (v - mean);
    }
    for chunk in chunks {
        for i in 0..LANES {
            lanes[i] += (chunk[i] - mean) * (chunk[i] - mean);
        }
    }
    add_lanes(&lanes) + tail
}

#[inline(always)]
fn layer_norm(x: &mut [f32], norm: &Norm, eps: f32) {
    let h = norm.weight.len();
    for row in x.chunks_exact_mut(h) {
        let mean = sum(row) / h as f32;
        let variance = squared_deviations(row, mean) / h as f32;
        let inverse = 1.0 / (variance + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&norm.weight).zip(&norm.bias) {
            *v = (*v - mean) * inverse * w + b;
        }
    }
}

#[inline(always)]
fn softmax_rows(x: &mut [f32], n: usize) {
    for row in x.chunks_exact_mut(n) {
        softmax(row);
    }
}

#[inline(always)]
fn softmax(row: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let mut max = f32::NEG_INFINITY;
    for &v in chunks.remainder() {
        max = if v > max { v } else { max };
    }
    for chunk in chunks {
        for i in 0..LANES {
            lanes[i] = if chunk[i] > lanes[i] {
                chunk[i]
            } else {
                lanes[i]
            };
        }
    }
    for lane in lanes {
        max = if lane > max { lane } else { max };
    }
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let inverse = 1.0 / sum(row);
    for v in row.iter_mut() {
        *v *= inverse;
    }
}

/// GELU as BERT defines it: x · Φ(x) = x/2 · (1 + erf(x/√2)).
#[inline(always)]
fn gelu(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error under 1.5e-7), branch-free.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// e^x for x ≤ 88 (below −87 it is 0): 2^n · e^r with |r| ≤ ln2/2 and e^r by its Taylor series
/// to r⁷ (relative error under 1e-7); plain arithmetic, so loops over it vectorize.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 · 2²³ rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[derive(Clone, Copy)]
struct Dims {
    m: usize,
    n: usize,
    k: usize,
}

/// A strided `rows × cols` matrix inside a slice: element (i, j) is `data[offset + i·row + j·col]`.
struct View<'a> {
    data: &'a [f32],
    offset: usize,
    row: usize,
    col: usize,
}

impl View<'_> {
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1)
                .checked_mul(self.row)
                .zip((cols - 1).checked_mul(self.col))
                .and_then(|(a, b)| a.checked_add(b)?.checked_add(self.offset))
                .is_some_and(|last| last < self.data.len())
    }
}

/// A row-major `m × n` destination inside a slice, with a row stride.
struct Out<'a> {
    data: &'a mut [f32],
    offset: usize,
    row: usize,
    /// Add to what is there (else overwrite).
    accumulate: bool,
}

/// `out = (accumulate ? out : 0) + scale · lhs · rhs`, for an `m × k` lhs and `k × n` rhs:
/// gemm's kernels, one thread, after checking every index the product touches.
#[allow(
    unsafe_code,
    reason = "gemm's entry point takes raw pointers and strides"
)]
fn matmul(
    dims: Dims,
    out: Out<'_>,
    lhs: View<'_>,
    rhs: View<'_>,
    scale: f32,
) -> Result<(), String> {
    let Dims { m, n, k } = dims;
    let out_view = View {
        data: out.data,
        offset: out.offset,
        row: out.row,
        col: 1,
    };
    if !(out_view.fits(m, n) && lhs.fits(m, k) && rhs.fits(k, n)) {
        return Err(format!(
            "a {m}×{k} by {k}×{n} product reaches outside its buffers"
        ));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let stride = |s: usize| s as isize;
    // SAFETY: `fits` checked that every element of the three matrices, at the strides given,
    // lies inside its slice; the destination is a `&mut` borrow, so no other reference
    // aliases it while gemm writes; gemm runs on this thread only (Parallelism::None).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.data.as_mut_ptr().add(out.offset),
            1,
            stride(out.row),
            out.accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            stride(lhs.col),
            stride(lhs.row),
            rhs.data.as_ptr().add(rhs.offset),
            stride(rhs.col),
            stride(rhs.row),
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_match_the_standard_library() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.01;
            let want = x.exp();
            assert!(((exp(x) - want) / want).abs() < 3e-7, "exp({x})");
        }
        assert_eq!(exp(-200.0), exp(-87.0));
        // erf(x) at a few points (from tables).
        for (x, want) in [
            (0.0, 0.0),
            (0.1, 0.112_462_92),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
            (-1.0, -0.842_700_8),
            (4.0, 1.0),
        ] {
            assert!((erf(x) - want).abs() < 3e-7, "erf({x}) = {}", erf(x));
        }
    }

    #[test]
    fn matmul_handles_strided_and_transposed_views() {
        // lhs 2×3, rhs given transposed as 2×3 (so 3×2 with row stride 1, col stride 3).
        let lhs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let rhs_t = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let product = |out: &mut [f32], lhs: &[f32], accumulate: bool| {
            matmul(
                Dims { m: 2, n: 2, k: 3 },
                Out {
                    data: out,
                    offset: 0,
                    row: 2,
                    accumulate,
                },
                View {
                    data: lhs,
                    offset: 0,
                    row: 3,
                    col: 1,
                },
                View {
                    data: &rhs_t,
                    offset: 0,
                    row: 1,
                    col: 3,
                },
                2.0,
            )
        };
        let mut out = [10.0; 4];
        product(&mut out, &lhs, true).unwrap();
        assert_eq!(out, [10.0 + 8.0, 10.0 + 4.0, 10.0 + 20.0, 10.0 + 10.0]);
        product(&mut out, &lhs, false).unwrap();
        assert_eq!(out, [8.0, 4.0, 20.0, 10.0]);
        // A left matrix one element short is refused, not read past its end.
        assert!(product(&mut out, &lhs[..5], false).is_err());
    }
}
