//! HNSW (Malkov & Yashunin, 2016) over the inner product of unit vectors, built the way
//! hnswlib builds it: M links per node above layer 0 and 2M on it, neighbours chosen by the
//! paper's heuristic, one lock per node while linking (so a batch is linked on every core),
//! and a search that gathers a node's unseen neighbours first and then scores them with each
//! one's vector fetched two ahead of its turn. Where hnswlib walks layer 1 greedily, the search
//! walks it with a beam of 4, so that layer 0's search starts less at the mercy of how the
//! levels fell.
//!
//! Nodes are slots `0..len`; the caller maps them to its own ids and decides which slots a
//! search may return. Links are atomics so builders can read a list another builder is
//! rewriting (they see a stale but valid list, as hnswlib's readers do); a search after the
//! build reads them with plain loads. Distances are `1 − dot`, smaller is nearer.
//!
//! The dot product runs on the widest SIMD the CPU has (AVX-512, AVX2+FMA, or portable
//! Rust), chosen once per search or per builder thread through `pulp`. On AVX-512 the graph
//! also keeps an f16 copy of every vector, and a search walks the graph over the copies (half
//! the bytes from memory per step, which is what a search over more vectors than the caches
//! hold waits on), then ranks what it found by the f32 vectors: the scores it returns are the
//! exact ones.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// The deepest layer a node can reach (2^-16 chance per node at M = 2).
const MAX_LEVEL: usize = 16;
const NO_ENTRY: u64 = u64::MAX;
/// How many vectors ahead of its scoring a search starts fetching one.
const AHEAD: usize = 2;
/// The candidate list of a search's walk on layer 1 (above it the walk is greedy).
const UPPER_BEAM: usize = 4;

/// A node and its distance from whatever is being searched for.
#[derive(Clone, Copy, Debug)]
pub struct Near {
    pub distance: f32,
    pub slot: u32,
}

impl PartialEq for Near {
    fn eq(&self, other: &Near) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Near {}

impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Near) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Near {
    fn cmp(&self, other: &Near) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.slot.cmp(&other.slot))
    }
}

pub struct Graph {
    dimensions: usize,
    m: usize,
    ef_construction: usize,
    vectors: Vec<f32>,
    /// `vectors` as f16 bits, for the search's walk; empty where the CPU has no f16
    /// conversion (no AVX-512), and then the walk reads `vectors`.
    halves: Vec<u16>,
    levels: Vec<u8>,
    /// Per node: a count, then 2M links.
    layer0: Vec<AtomicU32>,
    /// Per node of level L > 0: for each layer 1..=L, a count then M links; empty otherwise.
    upper: Vec<Box<[AtomicU32]>>,
    locks: Vec<Mutex<()>>,
    /// The entry node and its level, packed as `level << 32 | slot`.
    entry: AtomicU64,
    /// Held by a builder whose node goes above the current top layer, for its whole insert.
    grow: Mutex<()>,
}

/// The parts of a graph `Graph::from_parts` puts back together (a saved index's contents).
pub struct Parts {
    pub dimensions: usize,
    pub m: usize,
    pub ef_construction: usize,
    pub vectors: Vec<f32>,
    pub levels: Vec<u8>,
    pub layer0: Vec<u32>,
    /// The upper layers of the nodes above layer 0, in slot order, concatenated.
    pub upper: Vec<u32>,
    pub entry: Option<u32>,
}

impl Graph {
    pub fn new(dimensions: usize, m: usize, ef_construction: usize) -> Graph {
        Graph {
            dimensions,
            m: m.max(2),
            ef_construction: ef_construction.max(1),
            vectors: Vec::new(),
            halves: Vec::new(),
            levels: Vec::new(),
            layer0: Vec::new(),
            upper: Vec::new(),
            locks: Vec::new(),
            entry: AtomicU64::new(NO_ENTRY),
            grow: Mutex::new(()),
        }
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    pub fn m(&self) -> usize {
        self.m
    }

    pub fn ef_construction(&self) -> usize {
        self.ef_construction
    }

    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    pub fn vector(&self, slot: u32) -> &[f32] {
        let start = slot as usize * self.dimensions;
        &self.vectors[start..start + self.dimensions]
    }

    /// Appends `vectors` (each `dimensions` long) as new slots and links them into the graph
    /// on `threads` threads.
    pub fn extend<'a>(&mut self, vectors: impl IntoIterator<Item = &'a [f32]>, threads: usize) {
        let first = self.len();
        let stride0 = 1 + 2 * self.m;
        let stride = 1 + self.m;
        let scale = 1.0 / (self.m as f64).ln();
        let vectors: Vec<&[f32]> = vectors.into_iter().collect();
        crate::pages::reserve(&mut self.vectors, vectors.len() * self.dimensions);
        crate::pages::reserve(&mut self.layer0, vectors.len() * stride0);
        for vector in vectors {
            let slot = self.levels.len();
            self.vectors.extend_from_slice(vector);
            let level = random_level(slot as u64, scale);
            self.levels.push(level as u8);
            self.layer0.extend((0..stride0).map(|_| AtomicU32::new(0)));
            self.upper
                .push((0..level * stride).map(|_| AtomicU32::new(0)).collect());
            self.locks.push(Mutex::new(()));
        }
        self.sync_halves();
        let next = AtomicUsize::new(first);
        let graph = &*self;
        std::thread::scope(|scope| {
            for _ in 0..threads.max(1) {
                scope.spawn(|| with_cpu(Build { graph, next: &next }));
            }
        });
    }

    /// The `k` nearest slots `accept` lets through, nearest first, searching layer 0 with a
    /// candidate list of `ef` (at least `k`).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<Near> {
        if self.entry().is_none() || k == 0 {
            return Vec::new();
        }
        VISITED.with(|visited| {
            with_cpu(Search {
                graph: self,
                query,
                k,
                ef: ef.max(k),
                accept,
                visited: &mut visited.borrow_mut(),
            })
        })
    }

    /// Exact search over `slots`: the `k` nearest, nearest first.
    pub fn exact(&self, query: &[f32], k: usize, slots: &[u32]) -> Vec<Near> {
        with_cpu(Exact {
            graph: self,
            query,
            k,
            slots,
        })
    }

    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }

    pub fn levels(&self) -> &[u8] {
        &self.levels
    }

    /// Every link list as `Parts` holds them: layer 0's, then the upper layers'.
    pub fn all_links(&self) -> impl Iterator<Item = u32> + '_ {
        self.layer0
            .iter()
            .chain(self.upper.iter().flat_map(|links| links.iter()))
            .map(|a| a.load(Relaxed))
    }

    pub fn entry_slot(&self) -> Option<u32> {
        self.entry().map(|(slot, _)| slot)
    }

    /// The parts `from_parts` takes, copied.
    #[cfg(test)]
    fn parts(&self) -> Parts {
        let links: Vec<u32> = self.all_links().collect();
        let (layer0, upper) = links.split_at(self.layer0.len());
        Parts {
            dimensions: self.dimensions,
            m: self.m,
            ef_construction: self.ef_construction,
            vectors: self.vectors.clone(),
            levels: self.levels.clone(),
            layer0: layer0.to_vec(),
            upper: upper.to_vec(),
            entry: self.entry_slot(),
        }
    }

    /// Puts a graph back together, checking that the parts fit each other.
    pub fn from_parts(parts: Parts) -> Result<Graph, String> {
        let Parts {
            dimensions,
            m,
            ef_construction,
            vectors,
            levels,
            layer0,
            upper,
            entry,
        } = parts;
        let n = levels.len();
        let stride = 1 + m;
        let upper_len: usize = levels.iter().map(|&l| l as usize * stride).sum();
        if m < 2
            || dimensions == 0
            || vectors.len() != n * dimensions
            || layer0.len() != n * (1 + 2 * m)
            || upper.len() != upper_len
            || levels.iter().any(|&l| l as usize > MAX_LEVEL)
        {
            return Err("its parts do not fit together".to_owned());
        }
        let link_ok = |links: &[u32], max: usize| {
            links[0] as usize <= max
                && links[1..=links[0] as usize]
                    .iter()
                    .all(|&s| (s as usize) < n)
        };
        if !layer0
            .chunks_exact(1 + 2 * m)
            .all(|links| link_ok(links, 2 * m))
        {
            return Err("a node links outside the graph".to_owned());
        }
        let mut rest = upper.as_slice();
        let mut boxes = Vec::with_capacity(n);
        for &level in &levels {
            let (mine, tail) = rest.split_at(level as usize * stride);
            rest = tail;
            if !mine.chunks_exact(stride).all(|links| link_ok(links, m)) {
                return Err("a node links outside the graph".to_owned());
            }
            boxes.push(mine.iter().map(|&s| AtomicU32::new(s)).collect());
        }
        let entry = match entry {
            None if n == 0 => NO_ENTRY,
            Some(slot) if (slot as usize) < n => {
                let top = levels.iter().copied().max().unwrap_or(0);
                if levels[slot as usize] != top {
                    return Err("its entry node is not on the top layer".to_owned());
                }
                (u64::from(top) << 32) | u64::from(slot)
            }
            _ => return Err("its entry node is missing".to_owned()),
        };
        let mut graph = Graph {
            dimensions,
            m,
            ef_construction,
            vectors,
            halves: Vec::new(),
            levels,
            layer0: layer0.into_iter().map(AtomicU32::new).collect(),
            upper: boxes,
            locks: (0..n).map(|_| Mutex::new(())).collect(),
            entry: AtomicU64::new(entry),
            grow: Mutex::new(()),
        };
        graph.sync_halves();
        Ok(graph)
    }

    /// Gives `halves` the f16 bits of the vectors it lacks, or leaves it empty where the CPU
    /// cannot convert them.
    fn sync_halves(&mut self) {
        with_cpu(ToHalves {
            from: &self.vectors[self.halves.len()..],
            to: &mut self.halves,
        });
    }

    fn entry(&self) -> Option<(u32, usize)> {
        match self.entry.load(Relaxed) {
            NO_ENTRY => None,
            packed => Some((packed as u32, (packed >> 32) as usize)),
        }
    }

    /// A node's links on `layer` (which the node must reach): the count, then the slots.
    #[inline(always)]
    fn links(&self, slot: u32, layer: usize) -> &[AtomicU32] {
        if layer == 0 {
            let stride = 1 + 2 * self.m;
            &self.layer0[slot as usize * stride..(slot as usize + 1) * stride]
        } else {
            let stride = 1 + self.m;
            &self.upper[slot as usize][(layer - 1) * stride..layer * stride]
        }
    }

    #[inline(always)]
    fn linked(&self, slot: u32, layer: usize) -> impl Iterator<Item = u32> + '_ {
        let links = self.links(slot, layer);
        let count = (links[0].load(Relaxed) as usize).min(links.len() - 1);
        links[1..=count].iter().map(|a| a.load(Relaxed))
    }

    #[inline(always)]
    fn distance<C: Cpu>(&self, cpu: C, query: &[f32], slot: u32) -> f32 {
        1.0 - cpu.dot(query, self.vector(slot))
    }

    /// The distance a walk steps by: from the f16 copy when `HALF` (and the CPU can), from
    /// the f32 vector otherwise.
    #[inline(always)]
    fn walk_distance<C: Cpu, const HALF: bool>(&self, cpu: C, query: &[f32], slot: u32) -> f32 {
        if HALF
            && let Some(half) = self.half(slot)
            && let Some(dot) = cpu.dot_half(query, half)
        {
            return 1.0 - dot;
        }
        self.distance(cpu, query, slot)
    }

    /// Hints that the walk is about to read `slot`'s vector.
    #[inline(always)]
    fn prefetch<C: Cpu, const HALF: bool>(&self, cpu: C, slot: u32) {
        if HALF && let Some(half) = self.half(slot) {
            cpu.prefetch(half);
        } else {
            cpu.prefetch(self.vector(slot));
        }
    }

    /// `slot`'s f16 copy, where the graph keeps them.
    #[inline(always)]
    fn half(&self, slot: u32) -> Option<&[u16]> {
        let start = slot as usize * self.dimensions;
        self.halves.get(start..start + self.dimensions)
    }

    /// Walks `layer` from `from` to the nearest node it can reach by always stepping closer.
    #[inline(always)]
    fn greedy<C: Cpu, const HALF: bool>(
        &self,
        cpu: C,
        query: &[f32],
        mut from: Near,
        layer: usize,
    ) -> Near {
        loop {
            let mut moved = false;
            for slot in self.linked(from.slot, layer) {
                let distance = self.walk_distance::<C, HALF>(cpu, query, slot);
                if distance < from.distance {
                    from = Near { distance, slot };
                    moved = true;
                }
            }
            if !moved {
                return from;
            }
        }
    }

    /// hnswlib's search of one layer: up to `ef` nearest that `accept` lets through, found from
    /// `entries`; refused nodes are walked through but not returned. Nearest first.
    #[inline(always)]
    #[allow(
        clippy::too_many_arguments,
        reason = "the hot loop's inputs, kept apart so none is behind a pointer"
    )]
    fn search_layer<C: Cpu, const HALF: bool>(
        &self,
        cpu: C,
        query: &[f32],
        entries: &[Near],
        ef: usize,
        layer: usize,
        visited: &mut Visited,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<Near> {
        visited.reset(self.len());
        let mut candidates: BinaryHeap<Reverse<Near>> = BinaryHeap::with_capacity(ef * 2);
        let mut top: BinaryHeap<Near> = BinaryHeap::with_capacity(ef + 1);
        for &entry in entries {
            if visited.insert(entry.slot) {
                candidates.push(Reverse(entry));
                if accept(entry.slot) {
                    top.push(entry);
                }
            }
        }
        while top.len() > ef {
            top.pop();
        }
        let mut bound = top.peek().map_or(f32::INFINITY, |n| n.distance);
        let mut fresh: Vec<u32> = Vec::with_capacity(2 * self.m);
        while let Some(Reverse(current)) = candidates.pop() {
            if current.distance > bound && top.len() >= ef {
                break;
            }
            // The unseen neighbours first, then their distances with each vector fetched two
            // ahead of its turn (every cache line of it, not only the first).
            fresh.clear();
            for link in self.linked(current.slot, layer) {
                if visited.insert(link) {
                    fresh.push(link);
                }
            }
            for &slot in fresh.iter().take(AHEAD) {
                self.prefetch::<C, HALF>(cpu, slot);
            }
            for j in 0..fresh.len() {
                if let Some(&ahead) = fresh.get(j + AHEAD) {
                    self.prefetch::<C, HALF>(cpu, ahead);
                }
                let slot = fresh[j];
                let distance = self.walk_distance::<C, HALF>(cpu, query, slot);
                if top.len() < ef || distance < bound {
                    let near = Near { distance, slot };
                    candidates.push(Reverse(near));
                    if accept(slot) {
                        top.push(near);
                        if top.len() > ef {
                            top.pop();
                        }
                    }
                    if let Some(worst) = top.peek() {
                        bound = worst.distance;
                    }
                }
            }
            if let Some(Reverse(next)) = candidates.peek() {
                cpu.prefetch(self.links(next.slot, layer));
            }
        }
        top.into_sorted_vec()
    }

    /// The paper's neighbour heuristic (hnswlib's getNeighborsByHeuristic2): from candidates
    /// nearest first, keep one only if it is nearer to the base than to every one kept.
    #[inline(always)]
    fn select<C: Cpu>(&self, cpu: C, candidates: &[Near], max: usize) -> Vec<Near> {
        if candidates.len() <= max {
            return candidates.to_vec();
        }
        let mut kept: Vec<Near> = Vec::with_capacity(max);
        for &candidate in candidates {
            if kept.len() >= max {
                break;
            }
            // A plain loop, not a closure: closures are compiled without the search's target
            // features, and the dot product would stop being inlined.
            let vector = self.vector(candidate.slot);
            let mut diverse = true;
            for k in &kept {
                if self.distance(cpu, vector, k.slot) < candidate.distance {
                    diverse = false;
                    break;
                }
            }
            if diverse {
                kept.push(candidate);
            }
        }
        kept
    }

    fn write_links(links: &[AtomicU32], slots: impl ExactSizeIterator<Item = u32>) {
        let count = slots.len().min(links.len() - 1);
        for (link, slot) in links[1..].iter().zip(slots) {
            link.store(slot, Relaxed);
        }
        links[0].store(count as u32, Relaxed);
    }

    /// Links `slot` (whose vector and level are in place) into the graph.
    #[inline(always)]
    fn insert<C: Cpu>(&self, cpu: C, slot: u32, visited: &mut Visited) {
        let level = self.levels[slot as usize] as usize;
        let mut grow = None;
        let mut entry = self.entry();
        if entry.is_none_or(|(_, top)| level > top) {
            grow = Some(self.grow.lock().unwrap_or_else(|e| e.into_inner()));
            entry = self.entry();
            if entry.is_none() {
                self.entry
                    .store((level as u64) << 32 | u64::from(slot), Relaxed);
                return;
            }
            if entry.is_some_and(|(_, top)| level <= top) {
                grow = None;
            }
        }
        let Some((entry_slot, top)) = entry else {
            return;
        };
        let query = self.vector(slot);
        let mut nearest = Near {
            distance: self.distance(cpu, query, entry_slot),
            slot: entry_slot,
        };
        for layer in (level + 1..=top).rev() {
            nearest = self.greedy::<C, false>(cpu, query, nearest, layer);
        }
        let mut entries = vec![nearest];
        for layer in (0..=level.min(top)).rev() {
            let found = self.search_layer::<C, false>(
                cpu,
                query,
                &entries,
                self.ef_construction,
                layer,
                visited,
                &|_| true,
            );
            let chosen = self.select(cpu, &found, self.m);
            let max = if layer == 0 { 2 * self.m } else { self.m };
            {
                let _lock = self.locks[slot as usize]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                // A builder that reached this node through a layer it is already linked on
                // may have linked itself in here too: keep those links (overwriting them
                // would leave their nodes pointing here with no way back), pruned with the
                // chosen ones by the heuristic when they do not all fit.
                let mut own = chosen.clone();
                for linked in self.linked(slot, layer) {
                    if !own.iter().any(|n| n.slot == linked) {
                        own.push(Near {
                            distance: self.distance(cpu, query, linked),
                            slot: linked,
                        });
                    }
                }
                if own.len() > chosen.len() {
                    own.sort_unstable();
                    own = self.select(cpu, &own, max);
                }
                Graph::write_links(self.links(slot, layer), own.iter().map(|n| n.slot));
            }
            for neighbour in &chosen {
                let _lock = self.locks[neighbour.slot as usize]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let links = self.links(neighbour.slot, layer);
                let count = links[0].load(Relaxed) as usize;
                if count < max {
                    links[1 + count].store(slot, Relaxed);
                    links[0].store(count as u32 + 1, Relaxed);
                    continue;
                }
                let base = self.vector(neighbour.slot);
                let mut candidates: Vec<Near> = Vec::with_capacity(max + 1);
                for s in self
                    .linked(neighbour.slot, layer)
                    .chain(std::iter::once(slot))
                {
                    candidates.push(Near {
                        distance: self.distance(cpu, base, s),
                        slot: s,
                    });
                }
                candidates.sort_unstable();
                let kept = self.select(cpu, &candidates, max);
                Graph::write_links(links, kept.iter().map(|n| n.slot));
            }
            entries = found;
        }
        if grow.is_some() && level > top {
            self.entry
                .store((level as u64) << 32 | u64::from(slot), Relaxed);
        }
    }
}

/// A node's level: floor(−ln U · 1/ln M), from a hash of its slot (so builds repeat).
fn random_level(slot: u64, scale: f64) -> usize {
    let mut z = slot.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // 53 random bits in (0, 1].
    let uniform = ((z >> 11) + 1) as f64 / (1u64 << 53) as f64;
    ((-uniform.ln() * scale) as usize).min(MAX_LEVEL)
}

/// Which slots a search has seen: a stamp per slot, so starting a search is one increment.
struct Visited {
    stamps: Vec<u16>,
    current: u16,
}

impl Visited {
    fn new() -> Visited {
        Visited {
            stamps: Vec::new(),
            current: 0,
        }
    }

    fn reset(&mut self, len: usize) {
        if self.stamps.len() < len {
            self.stamps.resize(len, 0);
        }
        self.current = self.current.wrapping_add(1);
        if self.current == 0 {
            self.stamps.fill(0);
            self.current = 1;
        }
    }

    /// Marks `slot`; whether it was unseen.
    #[inline(always)]
    fn insert(&mut self, slot: u32) -> bool {
        let stamp = &mut self.stamps[slot as usize];
        let unseen = *stamp != self.current;
        *stamp = self.current;
        unseen
    }
}

/// What the index needs of the CPU.
trait Cpu: Copy {
    fn dot(self, a: &[f32], b: &[f32]) -> f32;
    /// The dot product of `a` with f16 values (as bits), where the CPU converts f16.
    fn dot_half(self, _a: &[f32], _b: &[u16]) -> Option<f32> {
        None
    }
    /// Appends `from` to `to` as f16 bits (rounded to nearest, `to` on huge pages); false,
    /// and `to` untouched, where the CPU cannot.
    fn to_halves(self, _from: &[f32], _to: &mut Vec<u16>) -> bool {
        false
    }
    /// Hints that `values` are about to be read.
    fn prefetch<T>(self, values: &[T]);
}

/// Work that runs with the best `Cpu` there is.
trait CpuOp {
    type Output;
    fn run<C: Cpu>(self, cpu: C) -> Self::Output;
}

fn with_cpu<Op: CpuOp>(op: Op) -> Op::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(v4) = pulp::x86::V4::try_new() {
            return v4.vectorize(OnCpu { op, cpu: v4 });
        }
        if let Some(v3) = pulp::x86::V3::try_new() {
            return v3.vectorize(OnCpu { op, cpu: v3 });
        }
    }
    op.run(Portable)
}

/// Runs `op` inside pulp's `vectorize`, where the target features of `cpu` are enabled, so
/// everything inlined into it (the whole search) is compiled for them.
#[cfg(target_arch = "x86_64")]
struct OnCpu<Op, C> {
    op: Op,
    cpu: C,
}

#[cfg(target_arch = "x86_64")]
impl<Op: CpuOp, C: Cpu> pulp::NullaryFnOnce for OnCpu<Op, C> {
    type Output = Op::Output;

    #[inline(always)]
    fn call(self) -> Op::Output {
        self.op.run(self.cpu)
    }
}

#[derive(Clone, Copy)]
struct Portable;

impl Cpu for Portable {
    #[inline(always)]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        let mut lanes = [0f32; 8];
        let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = a8
            .remainder()
            .iter()
            .zip(b8.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in a8.zip(b8) {
            for i in 0..8 {
                lanes[i] += x[i] * y[i];
            }
        }
        lanes.iter().sum::<f32>() + tail
    }

    fn prefetch<T>(self, _: &[T]) {}
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn simd_dot<S: pulp::Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let (a_head, a_tail) = S::as_simd_f32s(a);
    let (b_head, b_tail) = S::as_simd_f32s(b);
    let zero = simd.splat_f32s(0.0);
    let mut sums = [zero; 4];
    let (a4, b4) = (a_head.chunks_exact(4), b_head.chunks_exact(4));
    for (x, y) in a4.remainder().iter().zip(b4.remainder()) {
        sums[0] = simd.mul_add_e_f32s(*x, *y, sums[0]);
    }
    for (x, y) in a4.zip(b4) {
        for i in 0..4 {
            sums[i] = simd.mul_add_e_f32s(x[i], y[i], sums[i]);
        }
    }
    let sum = simd.add_f32s(
        simd.add_f32s(sums[0], sums[1]),
        simd.add_f32s(sums[2], sums[3]),
    );
    simd.reduce_sum_f32s(sum) + a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum::<f32>()
}

/// One hint per 64-byte line of `values`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_lines<T>(sse: pulp::core_arch::x86::Sse, values: &[T]) {
    use std::arch::x86_64::_MM_HINT_T0;
    let step = (64 / size_of::<T>().max(1)).max(1);
    let mut at = 0;
    while at < values.len() {
        sse._mm_prefetch::<_MM_HINT_T0>(values[at..].as_ptr().cast());
        at += step;
    }
}

/// AVX2+FMA: pulp's generic vectors for the dot product, SSE's prefetch; no f16 (pulp's V3
/// does not promise F16C).
#[cfg(target_arch = "x86_64")]
impl Cpu for pulp::x86::V3 {
    #[inline(always)]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        simd_dot(self, a, b)
    }

    #[inline(always)]
    fn prefetch<T>(self, values: &[T]) {
        prefetch_lines(self.sse, values);
    }
}

/// AVX-512: as V3, and f16 converted 16 at a time.
#[cfg(target_arch = "x86_64")]
impl Cpu for pulp::x86::V4 {
    #[inline(always)]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        simd_dot(self, a, b)
    }

    #[inline(always)]
    fn dot_half(self, a: &[f32], b: &[u16]) -> Option<f32> {
        use std::arch::x86_64::{__m256i, __m512};
        let f = self.avx512f;
        let (a16, a_tail) = a.as_chunks::<16>();
        let (b16, b_tail) = b.as_chunks::<16>();
        let mut sums = [f._mm512_setzero_ps(); 2];
        let (a32, b32) = (a16.chunks_exact(2), b16.chunks_exact(2));
        if let (Some(x), Some(y)) = (a32.remainder().first(), b32.remainder().first()) {
            let y = f._mm512_cvtph_ps(pulp::cast::<[u16; 16], __m256i>(*y));
            sums[0] = f._mm512_fmadd_ps(pulp::cast::<[f32; 16], __m512>(*x), y, sums[0]);
        }
        for (x, y) in a32.zip(b32) {
            for i in 0..2 {
                let yi = f._mm512_cvtph_ps(pulp::cast::<[u16; 16], __m256i>(y[i]));
                sums[i] = f._mm512_fmadd_ps(pulp::cast::<[f32; 16], __m512>(x[i]), yi, sums[i]);
            }
        }
        if !a_tail.is_empty() {
            let (mut x, mut y) = ([0f32; 16], [0u16; 16]);
            let n = a_tail.len().min(b_tail.len());
            x[..n].copy_from_slice(&a_tail[..n]);
            y[..n].copy_from_slice(&b_tail[..n]);
            let y = f._mm512_cvtph_ps(pulp::cast::<[u16; 16], __m256i>(y));
            sums[1] = f._mm512_fmadd_ps(pulp::cast::<[f32; 16], __m512>(x), y, sums[1]);
        }
        Some(f._mm512_reduce_add_ps(f._mm512_add_ps(sums[0], sums[1])))
    }

    #[inline(always)]
    fn to_halves(self, from: &[f32], to: &mut Vec<u16>) -> bool {
        use std::arch::x86_64::{__m512, _MM_FROUND_NO_EXC, _MM_FROUND_TO_NEAREST_INT};
        const ROUND: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let f = self.avx512f;
        crate::pages::reserve(to, from.len());
        let (chunks, tail) = from.as_chunks::<16>();
        for chunk in chunks {
            let halves = f._mm512_cvtps_ph::<ROUND>(pulp::cast::<[f32; 16], __m512>(*chunk));
            to.extend_from_slice(&pulp::cast::<_, [u16; 16]>(halves));
        }
        if !tail.is_empty() {
            let mut wide = [0f32; 16];
            wide[..tail.len()].copy_from_slice(tail);
            let halves = f._mm512_cvtps_ph::<ROUND>(pulp::cast::<[f32; 16], __m512>(wide));
            to.extend_from_slice(&pulp::cast::<_, [u16; 16]>(halves)[..tail.len()]);
        }
        true
    }

    #[inline(always)]
    fn prefetch<T>(self, values: &[T]) {
        prefetch_lines(self.sse, values);
    }
}

struct ToHalves<'a> {
    from: &'a [f32],
    to: &'a mut Vec<u16>,
}

impl CpuOp for ToHalves<'_> {
    type Output = bool;

    #[inline(always)]
    fn run<C: Cpu>(self, cpu: C) -> bool {
        cpu.to_halves(self.from, self.to)
    }
}

/// One builder thread: links slots taken from a shared counter until none are left.
struct Build<'a> {
    graph: &'a Graph,
    next: &'a AtomicUsize,
}

impl CpuOp for Build<'_> {
    type Output = ();

    #[inline(always)]
    fn run<C: Cpu>(self, cpu: C) {
        let mut visited = Visited::new();
        loop {
            let slot = self.next.fetch_add(1, Relaxed);
            if slot >= self.graph.len() {
                return;
            }
            self.graph.insert(cpu, slot as u32, &mut visited);
        }
    }
}

struct Search<'a> {
    graph: &'a Graph,
    query: &'a [f32],
    k: usize,
    ef: usize,
    accept: &'a dyn Fn(u32) -> bool,
    visited: &'a mut Visited,
}

thread_local! {
    static VISITED: std::cell::RefCell<Visited> = std::cell::RefCell::new(Visited::new());
}

impl CpuOp for Search<'_> {
    type Output = Vec<Near>;

    #[inline(always)]
    fn run<C: Cpu>(self, cpu: C) -> Vec<Near> {
        let graph = self.graph;
        let Some((entry, top)) = graph.entry() else {
            return Vec::new();
        };
        let mut nearest = Near {
            distance: graph.walk_distance::<C, true>(cpu, self.query, entry),
            slot: entry,
        };
        for layer in (2..=top).rev() {
            nearest = graph.greedy::<C, true>(cpu, self.query, nearest, layer);
        }
        // Layer 1 by a small beam rather than greedily: where layer 0's search starts decides
        // much of what a small ef finds, and a greedy walk's landing depends on how the levels
        // happened to fall (recall@10 at ef 16 varied 0.951-0.957 between level draws of one
        // data set; with the beam 0.960-0.964, for about 6% more distances).
        let entries = if top >= 1 {
            graph.search_layer::<C, true>(
                cpu,
                self.query,
                &[nearest],
                UPPER_BEAM,
                1,
                self.visited,
                &|_| true,
            )
        } else {
            vec![nearest]
        };
        let mut found = graph.search_layer::<C, true>(
            cpu,
            self.query,
            &entries,
            self.ef,
            0,
            self.visited,
            self.accept,
        );
        // Ranked by the f32 vectors: the walk's f16 distances can swap near ties.
        for near in &mut found {
            near.distance = graph.distance(cpu, self.query, near.slot);
        }
        found.sort_unstable();
        found.truncate(self.k);
        found
    }
}

struct Exact<'a> {
    graph: &'a Graph,
    query: &'a [f32],
    k: usize,
    slots: &'a [u32],
}

impl CpuOp for Exact<'_> {
    type Output = Vec<Near>;

    #[inline(always)]
    fn run<C: Cpu>(self, cpu: C) -> Vec<Near> {
        let mut top: BinaryHeap<Near> = BinaryHeap::with_capacity(self.k + 1);
        for &slot in self.slots {
            top.push(Near {
                distance: self.graph.distance(cpu, self.query, slot),
                slot,
            });
            if top.len() > self.k {
                top.pop();
            }
        }
        top.into_sorted_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` unit vectors in 50 Gaussian clusters, from a fixed seed.
    fn clustered(n: usize, dimensions: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed;
        let mut uniform = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 + 0.5) / (1u64 << 24) as f32
        };
        let mut gaussian = move || {
            let (u, v) = (uniform(), uniform());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        };
        let centers: Vec<Vec<f32>> = (0..50)
            .map(|_| (0..dimensions).map(|_| gaussian()).collect())
            .collect();
        (0..n)
            .map(|i| {
                let center = &centers[(i * 7919) % centers.len()];
                let mut v: Vec<f32> = center.iter().map(|c| c + 0.5 * gaussian()).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= norm);
                v
            })
            .collect()
    }

    fn exact_top(data: &[Vec<f32>], query: &[f32], k: usize) -> Vec<u32> {
        let mut scored: Vec<(f32, u32)> = data
            .iter()
            .enumerate()
            .map(|(i, v)| {
                (
                    -v.iter().zip(query).map(|(a, b)| a * b).sum::<f32>(),
                    i as u32,
                )
            })
            .collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        scored.into_iter().take(k).map(|(_, i)| i).collect()
    }

    fn recall(graph: &Graph, data: &[Vec<f32>], queries: &[Vec<f32>], ef: usize) -> f64 {
        let mut hits = 0;
        for query in queries {
            let truth = exact_top(data, query, 10);
            let found = graph.search(query, 10, ef, &|_| true);
            hits += found.iter().filter(|n| truth.contains(&n.slot)).count();
        }
        hits as f64 / (queries.len() * 10) as f64
    }

    #[test]
    fn finds_the_exact_neighbours_of_clustered_vectors() {
        // Queries from the same clusters as the data, as a question is near its passages.
        let mut data = clustered(3100, 32, 1);
        let queries = data.split_off(3000);
        let mut graph = Graph::new(32, 12, 100);
        graph.extend(data[..1000].iter().map(Vec::as_slice), 1);
        graph.extend(data[1000..].iter().map(Vec::as_slice), 2);
        assert_eq!(graph.len(), 3000);
        let at_64 = recall(&graph, &data, &queries, 64);
        assert!(at_64 >= 0.99, "recall@10 at ef 64: {at_64}");
        let at_10 = recall(&graph, &data, &queries, 10);
        assert!(at_10 < at_64, "a smaller ef finds less: {at_10} vs {at_64}");
    }

    #[test]
    fn portable_and_simd_dot_products_agree() {
        let a: Vec<f32> = (0..389).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..389).map(|i| (i as f32 * 0.11).cos()).collect();
        let portable = Portable.dot(&a, &b);
        struct Dot<'a>(&'a [f32], &'a [f32]);
        impl CpuOp for Dot<'_> {
            type Output = f32;
            fn run<C: Cpu>(self, cpu: C) -> f32 {
                cpu.dot(self.0, self.1)
            }
        }
        let best = with_cpu(Dot(&a, &b));
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((portable - plain).abs() < 1e-3 && (best - plain).abs() < 1e-3);
    }

    #[test]
    fn the_f16_walk_keeps_its_copies_in_step_and_returns_f32_scores() {
        struct Halves<'a>(&'a [f32], &'a [f32]);
        impl CpuOp for Halves<'_> {
            type Output = Option<(f32, usize)>;
            fn run<C: Cpu>(self, cpu: C) -> Option<(f32, usize)> {
                let mut bits = Vec::new();
                cpu.to_halves(self.1, &mut bits)
                    .then(|| Some((cpu.dot_half(self.0, &bits)?, bits.len())))?
            }
        }
        // 389 = 24 × 16 + 5: whole vectors and a tail.
        let a: Vec<f32> = (0..389).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..389).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let halves = with_cpu(Halves(&a, &b));
        if let Some((dot, len)) = halves {
            assert_eq!(len, 389);
            // f16 keeps 11 significant bits: each product is off by at most ~2^-11 of itself.
            assert!((dot - plain).abs() < 0.05, "{dot} vs {plain}");
        }

        let mut data = clustered(1100, 24, 6);
        let queries = data.split_off(1000);
        let mut graph = Graph::new(24, 8, 64);
        graph.extend(data[..400].iter().map(Vec::as_slice), 1);
        graph.extend(data[400..].iter().map(Vec::as_slice), 2);
        let expected = if halves.is_some() { 1000 * 24 } else { 0 };
        assert_eq!(graph.halves.len(), expected);
        let back = Graph::from_parts(graph.parts()).unwrap();
        assert_eq!(back.halves.len(), expected);
        let all: Vec<u32> = (0..1000).collect();
        let mut nearest_found = 0;
        for query in &queries {
            let found = back.search(query, 5, 48, &|_| true);
            let slots: Vec<u32> = found.iter().map(|n| n.slot).collect();
            // Scored and ranked by the f32 vectors, to the bit.
            let exact = back.exact(query, 5, &slots);
            assert_eq!(
                found
                    .iter()
                    .map(|n| n.distance.to_bits())
                    .collect::<Vec<_>>(),
                exact
                    .iter()
                    .map(|n| n.distance.to_bits())
                    .collect::<Vec<_>>()
            );
            if found[0].slot == back.exact(query, 1, &all)[0].slot {
                nearest_found += 1;
            }
        }
        assert!(
            nearest_found >= 98,
            "the nearest found for {nearest_found} of 100"
        );
    }

    #[test]
    fn refused_slots_are_walked_through_but_not_returned() {
        let data = clustered(1000, 16, 3);
        let mut graph = Graph::new(16, 8, 64);
        graph.extend(data.iter().map(Vec::as_slice), 2);
        let found = graph.search(&data[0], 10, 64, &|slot| slot % 2 == 1);
        assert_eq!(found.len(), 10);
        assert!(found.iter().all(|n| n.slot % 2 == 1));
        let truth: Vec<u32> = exact_top(&data, &data[0], 1000)
            .into_iter()
            .filter(|s| s % 2 == 1)
            .take(10)
            .collect();
        let hits = found.iter().filter(|n| truth.contains(&n.slot)).count();
        assert!(hits >= 9, "{hits} of the 10 nearest odd slots");
    }

    #[test]
    fn parts_round_trip_and_bad_parts_are_refused() {
        let data = clustered(500, 8, 4);
        let mut graph = Graph::new(8, 6, 40);
        graph.extend(data.iter().map(Vec::as_slice), 2);
        let before = graph.search(&data[3], 5, 32, &|_| true);
        let back = Graph::from_parts(graph.parts()).unwrap();
        let after = back.search(&data[3], 5, 32, &|_| true);
        assert_eq!(
            before.iter().map(|n| n.slot).collect::<Vec<_>>(),
            after.iter().map(|n| n.slot).collect::<Vec<_>>()
        );
        assert_eq!(after[0].slot, 3);
        let mut parts = back.parts();
        parts.layer0[1] = 9999;
        parts.layer0[0] = parts.layer0[0].max(1);
        assert!(Graph::from_parts(parts).is_err());
    }

    #[test]
    fn levels_thin_out_by_a_factor_of_m() {
        let scale = 1.0 / 16f64.ln();
        let levels: Vec<usize> = (0..100_000).map(|s| random_level(s, scale)).collect();
        let above = levels.iter().filter(|&&l| l >= 1).count();
        assert!(
            (5000..7500).contains(&above),
            "{above} of 100000 above layer 0"
        );
    }
}
