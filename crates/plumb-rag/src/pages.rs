//! Big arrays on 2 MiB pages where Linux allows it. A search jumps between vectors scattered
//! over the whole index (150 MB for 100k × 384 floats): on 4 KiB pages nearly every jump
//! also misses the TLB, on 2 MiB pages few do. Linux here backs memory with huge pages only
//! where asked (`transparent_hugepage` set to `madvise`, the common default), and only pages
//! first touched after asking, so arrays are asked for empty, before they are filled.

/// An empty vector with room for `capacity` items, its memory asked to be huge pages.
pub fn vec_with_capacity<T>(capacity: usize) -> Vec<T> {
    let vec = Vec::with_capacity(capacity);
    advise(&vec);
    vec
}

/// Makes room for `more` items in `vec`, moving it to memory asked to be huge pages when it
/// has to grow (at least doubling, as `Vec` does).
pub fn reserve<T>(vec: &mut Vec<T>, more: usize) {
    if vec.capacity() - vec.len() >= more {
        return;
    }
    let mut grown = vec_with_capacity((vec.len() + more).max(vec.capacity() * 2));
    grown.append(vec);
    *vec = grown;
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code, reason = "madvise, a hint about the vector's own memory")]
fn advise<T>(vec: &Vec<T>) {
    const HUGE: usize = 2 << 20;
    let start = vec.as_ptr() as usize;
    let end = start + vec.capacity() * size_of::<T>();
    let (first, last) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
    if last > first {
        // SAFETY: [first, last) lies inside the vector's allocation, and MADV_HUGEPAGE only
        // changes how the kernel backs those pages, never what they hold. A refusal (huge
        // pages turned off) leaves ordinary pages, so the result is not needed.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise<T>(_: &Vec<T>) {}

#[cfg(test)]
mod tests {
    #[test]
    fn reserving_keeps_the_items_and_makes_room() {
        let mut vec: Vec<u32> = (0..1000).collect();
        super::reserve(&mut vec, 3 << 20);
        assert!(vec.capacity() >= 1000 + (3 << 20));
        assert_eq!(vec, (0..1000).collect::<Vec<u32>>());
        super::reserve(&mut vec, 10);
        assert_eq!(vec.len(), 1000);
    }
}
