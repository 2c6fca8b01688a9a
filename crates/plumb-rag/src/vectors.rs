//! The embedded ANN index: plumb's own HNSW (`crate::hnsw`) over the inner product of
//! L2-normalized vectors (so cosine similarity), kept in one file next to the collection's
//! database. Slots map to chunk ids; removing a chunk leaves its node in the graph as a
//! tombstone searches walk through, and the graph is rebuilt from the live vectors once
//! tombstones outnumber them.

use std::collections::{HashMap, HashSet};
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use crate::hnsw::{Graph, Parts};
use crate::store::{ChunkId, Scored, StoreError};

/// HNSW's parameters (see bench/ann.py for what they reach on 100k × 384).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HnswParams {
    /// Links per node (M; 2M on layer 0).
    pub connectivity: usize,
    /// Candidate list while building (efConstruction).
    pub expansion_add: usize,
    /// Candidate list while searching (ef); raised to the number asked for when smaller.
    pub expansion_search: usize,
}

impl Default for HnswParams {
    fn default() -> HnswParams {
        HnswParams {
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
        }
    }
}

/// A filter letting fewer than one node in this many through is answered by exact search
/// over what it lets through (HNSW would walk most of the graph to fill its list).
const EXACT_BELOW: usize = 16;

/// First bytes of an index file, then a format version.
const MAGIC: &[u8; 8] = b"plumbANN";
const FORMAT: u32 = 1;

pub struct VectorIndex {
    graph: Graph,
    /// The chunk id of each slot.
    ids: Vec<ChunkId>,
    /// The slot of each live chunk.
    slots: HashMap<ChunkId, u32>,
    removed: Vec<bool>,
    expansion_search: usize,
}

fn failed(error: impl std::fmt::Display) -> StoreError {
    StoreError::Index(error.to_string())
}

impl VectorIndex {
    pub fn new(dimensions: usize, params: HnswParams) -> Result<VectorIndex, StoreError> {
        if dimensions == 0 {
            return Err(failed("an index needs vectors of at least one dimension"));
        }
        Ok(VectorIndex {
            graph: Graph::new(dimensions, params.connectivity, params.expansion_add),
            ids: Vec::new(),
            slots: HashMap::new(),
            removed: Vec::new(),
            expansion_search: params.expansion_search.max(1),
        })
    }

    /// Reads an index saved by `save` (its links per node and build expansion are the ones it
    /// was built with).
    pub fn load(
        path: &Path,
        dimensions: usize,
        params: HnswParams,
    ) -> Result<VectorIndex, StoreError> {
        let unreadable = |why: String| StoreError::Index(format!("{}: {why}", path.display()));
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut file| file.read_to_end(&mut bytes))
            .map_err(|e| unreadable(e.to_string()))?;
        let mut reader = Bytes(&bytes);
        if reader.take(MAGIC.len()) != Some(MAGIC.as_slice()) {
            return Err(unreadable("not a plumb vector index".to_owned()));
        }
        let parsed = (|| {
            let format = reader.u32()?;
            if format != FORMAT {
                return None;
            }
            let stored_dimensions = reader.u32()? as usize;
            let m = reader.u32()? as usize;
            let ef_construction = reader.u32()? as usize;
            let n = reader.u64()? as usize;
            let entry = match reader.u32()? {
                u32::MAX => None,
                slot => Some(slot),
            };
            let ids = reader.u64s(n)?;
            let levels = reader.take(n)?.to_vec();
            let removed: Vec<bool> = reader.take(n)?.iter().map(|&b| b != 0).collect();
            let vectors = reader.f32s(n.checked_mul(stored_dimensions)?)?;
            let layer0 = reader.u32s(n.checked_mul(1 + 2 * m)?)?;
            let upper_len = levels.iter().map(|&l| l as usize * (1 + m)).sum();
            let upper = reader.u32s(upper_len)?;
            reader.0.is_empty().then_some((
                Parts {
                    dimensions: stored_dimensions,
                    m,
                    ef_construction,
                    vectors,
                    levels,
                    layer0,
                    upper,
                    entry,
                },
                ids,
                removed,
            ))
        })();
        let Some((parts, ids, removed)) = parsed else {
            return Err(unreadable(
                "truncated, or written by another version of plumb".to_owned(),
            ));
        };
        if parts.dimensions != dimensions {
            return Err(unreadable(format!(
                "holds {}-dimensional vectors, the collection {dimensions}",
                parts.dimensions
            )));
        }
        let graph = Graph::from_parts(parts).map_err(unreadable)?;
        let slots = ids
            .iter()
            .zip(&removed)
            .enumerate()
            .filter(|(_, (_, gone))| !**gone)
            .map(|(slot, (id, _))| (*id, slot as u32))
            .collect();
        Ok(VectorIndex {
            graph,
            ids,
            slots,
            removed,
            expansion_search: params.expansion_search.max(1),
        })
    }

    /// Writes the index to `path` through a temporary file, so `path` is always whole.
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        let temporary = path.with_extension("partial");
        let graph = &self.graph;
        let write = || -> std::io::Result<()> {
            let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&temporary)?);
            out.write_all(MAGIC)?;
            for word in [
                FORMAT,
                graph.dimensions() as u32,
                graph.m() as u32,
                graph.ef_construction() as u32,
            ] {
                out.write_all(&word.to_le_bytes())?;
            }
            out.write_all(&(self.ids.len() as u64).to_le_bytes())?;
            out.write_all(&graph.entry_slot().unwrap_or(u32::MAX).to_le_bytes())?;
            for id in &self.ids {
                out.write_all(&id.to_le_bytes())?;
            }
            out.write_all(graph.levels())?;
            let removed: Vec<u8> = self.removed.iter().map(|&r| u8::from(r)).collect();
            out.write_all(&removed)?;
            for value in graph.vectors() {
                out.write_all(&value.to_le_bytes())?;
            }
            for link in graph.all_links() {
                out.write_all(&link.to_le_bytes())?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()
        };
        write().map_err(|e| failed(format!("writing {}: {e}", temporary.display())))?;
        std::fs::rename(&temporary, path).map_err(failed)
    }

    /// Changes the candidate list of later searches (ef).
    pub fn set_expansion_search(&mut self, expansion: usize) {
        self.expansion_search = expansion.max(1);
    }

    /// Live vectors (removed ones not counted).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds vectors (replacing any an id already has), building on all cores.
    pub fn add(&mut self, items: &[(ChunkId, Vec<f32>)]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let dimensions = self.graph.dimensions();
        if let Some((id, vector)) = items.iter().find(|(_, v)| v.len() != dimensions) {
            return Err(StoreError::Index(format!(
                "chunk {id}'s vector has {} dimensions, the index {dimensions}",
                vector.len()
            )));
        }
        let replaced: Vec<ChunkId> = items
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| self.slots.contains_key(id))
            .collect();
        self.remove(&replaced)?;
        let first = self.ids.len();
        let threads = builders(items.len());
        self.graph
            .extend(items.iter().map(|(_, v)| v.as_slice()), threads);
        for (offset, (id, _)) in items.iter().enumerate() {
            self.ids.push(*id);
            self.removed.push(false);
            self.slots.insert(*id, (first + offset) as u32);
        }
        Ok(())
    }

    /// Removes vectors (ids the index does not hold are ignored).
    pub fn remove(&mut self, ids: &[ChunkId]) -> Result<(), StoreError> {
        for id in ids {
            if let Some(slot) = self.slots.remove(id) {
                self.removed[slot as usize] = true;
            }
        }
        let dead = self.ids.len() - self.slots.len();
        if dead > 64 && dead > self.slots.len() {
            self.compact();
        }
        Ok(())
    }

    /// Rebuilds the graph from the live vectors only.
    fn compact(&mut self) {
        let mut live: Vec<(ChunkId, u32)> = self.slots.iter().map(|(&id, &s)| (id, s)).collect();
        live.sort_unstable_by_key(|&(_, slot)| slot);
        let mut graph = Graph::new(
            self.graph.dimensions(),
            self.graph.m(),
            self.graph.ef_construction(),
        );
        let threads = builders(live.len());
        graph.extend(
            live.iter().map(|&(_, slot)| self.graph.vector(slot)),
            threads,
        );
        self.graph = graph;
        self.ids = live.iter().map(|&(id, _)| id).collect();
        self.removed = vec![false; live.len()];
        self.slots = live
            .iter()
            .enumerate()
            .map(|(slot, &(id, _))| (id, slot as u32))
            .collect();
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
        if vector.len() != self.graph.dimensions() {
            return Err(StoreError::Mismatch(format!(
                "the query's vector has {} dimensions, the collection's {}",
                vector.len(),
                self.graph.dimensions()
            )));
        }
        let found = match allowed {
            Some(allowed) if allowed.len() * EXACT_BELOW < self.len() => {
                let slots: Vec<u32> = allowed
                    .iter()
                    .filter_map(|id| self.slots.get(id).copied())
                    .collect();
                self.graph.exact(vector, limit, &slots)
            }
            Some(allowed) => self
                .graph
                .search(vector, limit, self.expansion_search, &|s| {
                    !self.removed[s as usize] && allowed.contains(&self.ids[s as usize])
                }),
            None => self
                .graph
                .search(vector, limit, self.expansion_search, &|s| {
                    !self.removed[s as usize]
                }),
        };
        Ok(found
            .into_iter()
            .map(|near| Scored {
                id: self.ids[near.slot as usize],
                score: 1.0 - near.distance,
            })
            .collect())
    }
}

/// Threads to link `nodes` new nodes on: every core, but one per 256 nodes at most.
fn builders(nodes: usize) -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(nodes.div_ceil(256))
}

/// A little-endian reader over a file's bytes.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn words<const N: usize, T>(&mut self, n: usize, from: fn([u8; N]) -> T) -> Option<Vec<T>> {
        let bytes = self.take(n.checked_mul(N)?)?;
        let mut words = crate::pages::vec_with_capacity(n);
        words.extend(
            bytes
                .chunks_exact(N)
                .filter_map(|word| word.try_into().ok().map(from)),
        );
        Some(words)
    }

    fn u32s(&mut self, n: usize) -> Option<Vec<u32>> {
        self.words(n, u32::from_le_bytes)
    }

    fn u64s(&mut self, n: usize) -> Option<Vec<u64>> {
        self.words(n, u64::from_le_bytes)
    }

    fn f32s(&mut self, n: usize) -> Option<Vec<f32>> {
        self.words(n, f32::from_le_bytes)
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
        let mut index = VectorIndex::new(3, HnswParams::default())?;
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
        let path = dir.path().join("v.hnsw");
        index.remove(&[1])?;
        index.save(&path)?;
        let loaded = VectorIndex::load(&path, 3, HnswParams::default())?;
        assert_eq!(loaded.len(), 2);
        let hits = loaded.search(&query, 1, None)?;
        assert_eq!(hits[0].id, 2);
        assert!(loaded.search(&[1.0, 0.0], 1, None).is_err());
        Ok(())
    }

    fn random_unit(seed: u64, dimensions: usize) -> Vec<f32> {
        let values: Vec<f32> = (0..dimensions)
            .map(|i| ((seed * 31 + i as u64 * 17) as f32 * 0.618).sin())
            .collect();
        unit(&values)
    }

    #[test]
    fn replaced_and_removed_vectors_leave_and_tombstones_compact() -> Result<(), StoreError> {
        let mut index = VectorIndex::new(8, HnswParams::default())?;
        let items: Vec<(ChunkId, Vec<f32>)> = (0..300).map(|i| (i, random_unit(i, 8))).collect();
        index.add(&items)?;
        // Chunk 5 gets chunk 7's vector: searching for it finds both, once each.
        index.add(&[(5, random_unit(7, 8))])?;
        assert_eq!(index.len(), 300);
        let hits = index.search(&random_unit(7, 8), 2, None)?;
        let mut ids: Vec<ChunkId> = hits.iter().map(|h| h.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![5, 7]);
        // Removing most of the index rebuilds it from what is left.
        let gone: Vec<ChunkId> = (0..250).collect();
        index.remove(&gone)?;
        assert_eq!(index.len(), 50);
        assert_eq!(
            index.ids.len(),
            50,
            "the graph was rebuilt without tombstones"
        );
        let hits = index.search(&random_unit(260, 8), 50, None)?;
        assert_eq!(hits.len(), 50);
        assert!(hits.iter().all(|h| h.id >= 250));
        assert_eq!(hits[0].id, 260);
        Ok(())
    }

    #[test]
    fn a_narrow_filter_is_answered_exactly() -> Result<(), StoreError> {
        let mut index = VectorIndex::new(8, HnswParams::default())?;
        let items: Vec<(ChunkId, Vec<f32>)> = (0..500).map(|i| (i, random_unit(i, 8))).collect();
        index.add(&items)?;
        let allowed: HashSet<ChunkId> = [3, 99, 250, 499].into();
        let query = random_unit(250, 8);
        let hits = index.search(&query, 10, Some(&allowed))?;
        assert_eq!(hits.len(), 4);
        assert_eq!(hits[0].id, 250);
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        Ok(())
    }

    #[test]
    fn unreadable_files_are_errors_naming_the_file() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(failed)?;
        let mut index = VectorIndex::new(4, HnswParams::default())?;
        index.add(&[(1, random_unit(1, 4)), (2, random_unit(2, 4))])?;
        let path = dir.path().join("v.hnsw");
        index.save(&path)?;
        let bytes = std::fs::read(&path).map_err(failed)?;
        for broken in [&bytes[..bytes.len() - 3], &b"not an index"[..]] {
            std::fs::write(&path, broken).map_err(failed)?;
            let error = VectorIndex::load(&path, 4, HnswParams::default())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains("v.hnsw"), "{error}");
        }
        std::fs::write(&path, &bytes).map_err(failed)?;
        let error = VectorIndex::load(&path, 5, HnswParams::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("4-dimensional"), "{error}");
        Ok(())
    }
}
