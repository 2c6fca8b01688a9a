//! The embedded ANN index: usearch's HNSW over inner product (vectors are L2-normalized, so
//! it is cosine similarity), kept in one file next to the collection's database.

use std::collections::HashSet;
use std::path::Path;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::store::{ChunkId, Scored, StoreError};

/// How the index stores vectors (the collection's database keeps them in f32 regardless).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Quantization {
    F32,
    /// Half precision: half the memory traffic of f32 per distance, at a recall within a few
    /// thousandths of f32's on unit vectors (bench/ann.py).
    #[default]
    F16,
    /// bfloat16: fastest where the CPU has AVX-512 BF16, coarser than f16.
    Bf16,
}

impl Quantization {
    pub fn from_name(name: &str) -> Option<Quantization> {
        match name {
            "f32" => Some(Quantization::F32),
            "f16" => Some(Quantization::F16),
            "bf16" => Some(Quantization::Bf16),
            _ => None,
        }
    }

    fn scalar(self) -> ScalarKind {
        match self {
            Quantization::F32 => ScalarKind::F32,
            Quantization::F16 => ScalarKind::F16,
            Quantization::Bf16 => ScalarKind::BF16,
        }
    }
}

/// HNSW's parameters (see bench/ann.py for what they reach on 100k × 384).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HnswParams {
    /// Links per node (M).
    pub connectivity: usize,
    /// Candidate list while building (efConstruction).
    pub expansion_add: usize,
    /// Candidate list while searching (ef); raised to the number asked for when smaller.
    pub expansion_search: usize,
    /// Storage of new indexes (a saved index keeps the one it was built with).
    pub quantization: Quantization,
}

impl Default for HnswParams {
    fn default() -> HnswParams {
        HnswParams {
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
            quantization: Quantization::default(),
        }
    }
}

pub struct VectorIndex {
    index: Index,
    expansion_search: usize,
}

fn failed(error: impl std::fmt::Display) -> StoreError {
    StoreError::Index(error.to_string())
}

impl VectorIndex {
    pub fn new(dimensions: usize, params: HnswParams) -> Result<VectorIndex, StoreError> {
        let options = IndexOptions {
            dimensions,
            metric: MetricKind::IP,
            quantization: params.quantization.scalar(),
            connectivity: params.connectivity,
            expansion_add: params.expansion_add,
            expansion_search: params.expansion_search,
            multi: false,
        };
        Ok(VectorIndex {
            index: Index::new(&options).map_err(failed)?,
            expansion_search: params.expansion_search,
        })
    }

    /// Reads an index saved by `save`.
    pub fn load(
        path: &Path,
        dimensions: usize,
        params: HnswParams,
    ) -> Result<VectorIndex, StoreError> {
        let index = VectorIndex {
            index: Index::restore(&path.to_string_lossy()).map_err(failed)?,
            expansion_search: params.expansion_search,
        };
        if index.index.dimensions() != dimensions {
            return Err(StoreError::Index(format!(
                "{} holds {}-dimensional vectors, the collection {dimensions}",
                path.display(),
                index.index.dimensions()
            )));
        }
        index.index.change_expansion_search(params.expansion_search);
        Ok(index)
    }

    /// Writes the index to `path` through a temporary file, so `path` is always whole.
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        let temporary = path.with_extension("partial");
        self.index
            .save(&temporary.to_string_lossy())
            .map_err(failed)?;
        std::fs::rename(&temporary, path).map_err(failed)
    }

    /// Changes the candidate list of later searches (ef).
    pub fn set_expansion_search(&mut self, expansion: usize) {
        self.expansion_search = expansion.max(1);
    }

    pub fn len(&self) -> usize {
        self.index.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds vectors, building on all cores.
    pub fn add(&self, items: &[(ChunkId, Vec<f32>)]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(items.len().div_ceil(256));
        self.index
            .reserve_capacity_and_threads(self.len() + items.len(), threads.max(1))
            .map_err(failed)?;
        let dimensions = self.index.dimensions();
        if let Some((id, vector)) = items.iter().find(|(_, v)| v.len() != dimensions) {
            return Err(StoreError::Index(format!(
                "chunk {id}'s vector has {} dimensions, the index {dimensions}",
                vector.len()
            )));
        }
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads.max(1))
                .map(|worker| {
                    scope.spawn(move || -> Result<(), StoreError> {
                        for (id, vector) in items.iter().skip(worker).step_by(threads.max(1)) {
                            self.index.add(*id, vector).map_err(failed)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers
                .into_iter()
                .try_for_each(|worker| worker.join().unwrap_or_else(|_| Err(failed("panicked"))))
        })
    }

    pub fn remove(&self, ids: &[ChunkId]) -> Result<(), StoreError> {
        for id in ids {
            self.index.remove(*id).map_err(failed)?;
        }
        Ok(())
    }

    /// The `limit` nearest (by cosine similarity), only among `allowed` when given.
    pub fn search(
        &self,
        vector: &[f32],
        limit: usize,
        allowed: Option<&HashSet<ChunkId>>,
    ) -> Result<Vec<Scored>, StoreError> {
        if self.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        if vector.len() != self.index.dimensions() {
            return Err(StoreError::Mismatch(format!(
                "the query's vector has {} dimensions, the collection's {}",
                vector.len(),
                self.index.dimensions()
            )));
        }
        self.index
            .change_expansion_search(self.expansion_search.max(limit));
        let matches = match allowed {
            None => self.index.search(vector, limit),
            Some(allowed) => self
                .index
                .filtered_search(vector, limit, |id: ChunkId| allowed.contains(&id)),
        }
        .map_err(failed)?;
        Ok(matches
            .keys
            .iter()
            .zip(&matches.distances)
            .map(|(id, distance)| Scored {
                id: *id,
                // usearch's inner-product distance is 1 − dot.
                score: 1.0 - distance,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(values: &[f32]) -> Vec<f32> {
        let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
        values.iter().map(|v| v / norm).collect()
    }

    #[test]
    fn nearest_first_filters_and_round_trips() -> Result<(), StoreError> {
        let index = VectorIndex::new(3, HnswParams::default())?;
        index.add(&[
            (1, unit(&[1.0, 0.0, 0.0])),
            (2, unit(&[0.9, 0.1, 0.0])),
            (3, unit(&[0.0, 1.0, 0.0])),
        ])?;
        let query = unit(&[1.0, 0.05, 0.0]);
        let hits = index.search(&query, 2, None)?;
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![1, 2]);
        assert!(hits[0].score > 0.99 && hits[0].score <= 1.0001);
        let allowed: HashSet<ChunkId> = [3].into();
        let hits = index.search(&query, 2, Some(&allowed))?;
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![3]);

        let dir = tempfile::tempdir().map_err(failed)?;
        let path = dir.path().join("v.usearch");
        index.remove(&[1])?;
        index.save(&path)?;
        let loaded = VectorIndex::load(&path, 3, HnswParams::default())?;
        assert_eq!(loaded.len(), 2);
        let hits = loaded.search(&query, 1, None)?;
        assert_eq!(hits[0].id, 2);
        assert!(loaded.search(&[1.0, 0.0], 1, None).is_err());
        Ok(())
    }
}
