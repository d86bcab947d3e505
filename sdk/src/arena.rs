//! [`DecisionAllocator`]: an optional global allocator for policy modules that takes
//! memory from the end of the linear memory and never gives it back, made for the host's
//! way of running a policy: every decision runs in a fresh instance whose memory is
//! thrown away afterwards, so there is nothing to give memory back to.
//!
//! Rust's default allocator for `wasm32-unknown-unknown` (dlmalloc) spends most of a
//! decision over a long backup list on bookkeeping for copying the list in and dropping
//! it: with this one, the `default` policy's eviction over 1,000 backups went from about
//! 110 to 83 µs in the host's policy benchmark (the guest's own share about halved). The price: memory freed during a decision
//! is not reused (except the most recent allocation, and a `Vec` or `String` grown last
//! grows in place), so a policy that allocates and frees a lot inside one decision uses
//! more memory; past the host's memory cap (64 MiB) the decision fails and the host's
//! built-in rules decide it, as for any policy that runs out of memory.
//!
//! Opt in with [`crate::use_decision_allocator!`] next to [`crate::export_policy!`]. It
//! only applies to the wasm build: native tests keep the system allocator.

// Natively only the tests use the arena.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

/// The allocator's state: the next free address and the end of the memory it took.
/// The arithmetic lives here, apart from the wasm `memory.grow` it needs, so that it can
/// be tested natively.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    next: usize,
    end: usize,
}

/// Wasm pages.
pub(crate) const PAGE: usize = 64 << 10;
/// The least the arena grows by, in pages (1 MiB), so that small allocations do not each
/// grow the memory.
const MIN_GROW: usize = 16;

impl Arena {
    /// The address of `size` bytes aligned to `align`, growing the memory with `grow`
    /// (pages to add; returns the memory's previous size in pages, or `None` when it
    /// cannot grow). `None` when out of memory.
    pub(crate) fn alloc(
        &mut self,
        size: usize,
        align: usize,
        grow: &mut impl FnMut(usize) -> Option<usize>,
    ) -> Option<usize> {
        loop {
            let start = self.next.checked_add(align - 1)? & !(align - 1);
            let end = start.checked_add(size)?;
            if end <= self.end && self.end != 0 {
                self.next = end;
                return Some(start);
            }
            self.take(end.saturating_sub(self.end), grow)?;
        }
    }

    /// Gives back `[ptr, ptr + size)` when it is the most recent allocation.
    pub(crate) fn dealloc(&mut self, ptr: usize, size: usize) {
        if ptr.checked_add(size) == Some(self.next) {
            self.next = ptr;
        }
    }

    /// Grows the most recent allocation in place (or shrinks any in place); `None`
    /// when it must move.
    pub(crate) fn resize_in_place(
        &mut self,
        ptr: usize,
        old: usize,
        new: usize,
        grow: &mut impl FnMut(usize) -> Option<usize>,
    ) -> Option<usize> {
        let last = ptr.checked_add(old) == Some(self.next);
        if new <= old {
            if last {
                self.next = ptr + new;
            }
            return Some(ptr);
        }
        if !last {
            return None;
        }
        let end = ptr.checked_add(new)?;
        if end > self.end {
            self.take(end - self.end, grow)?;
            // New pages not adjoining the old end (memory grown by someone else): the
            // allocation cannot grow in place.
            if self.next != ptr + old {
                return None;
            }
        }
        self.next = end;
        Some(ptr)
    }

    /// Takes at least `bytes` more from the memory.
    fn take(&mut self, bytes: usize, grow: &mut impl FnMut(usize) -> Option<usize>) -> Option<()> {
        let pages = bytes.div_ceil(PAGE).max(MIN_GROW);
        let previous = grow(pages)?;
        let base = previous.checked_mul(PAGE)?;
        if base != self.end {
            // The first growth, or pages someone else took in between: start afresh at
            // the new pages.
            self.next = base;
        }
        self.end = base.checked_add(pages.checked_mul(PAGE)?)?;
        Some(())
    }
}

/// A global allocator for policy modules: see the [module](self) documentation.
#[derive(Debug, Default)]
pub struct DecisionAllocator {
    arena: core::cell::UnsafeCell<Arena>,
}

impl DecisionAllocator {
    /// A new allocator (for a `static`).
    pub const fn new() -> DecisionAllocator {
        DecisionAllocator {
            arena: core::cell::UnsafeCell::new(Arena { next: 0, end: 0 }),
        }
    }
}

// SAFETY: a policy module runs on one thread (wasm32-unknown-unknown has no threads), so
// the arena is never touched from two threads at once.
#[allow(unsafe_code)]
unsafe impl Sync for DecisionAllocator {}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod wasm {
    use core::alloc::{GlobalAlloc, Layout};

    use super::DecisionAllocator;

    fn grow(pages: usize) -> Option<usize> {
        let previous = core::arch::wasm32::memory_grow(0, pages);
        (previous != usize::MAX).then_some(previous)
    }

    // SAFETY: the arena hands out disjoint ranges of linear memory taken with
    // `memory.grow`, each aligned as asked; only the most recent range is ever handed
    // out again after it is freed. Single-threaded (see `Sync` above), so the `&mut` to
    // the arena is unique while each method runs.
    unsafe impl GlobalAlloc for DecisionAllocator {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let arena = unsafe { &mut *self.arena.get() };
            match arena.alloc(layout.size(), layout.align(), &mut grow) {
                Some(addr) => addr as *mut u8,
                None => core::ptr::null_mut(),
            }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            let arena = unsafe { &mut *self.arena.get() };
            arena.dealloc(ptr as usize, layout.size());
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let arena = unsafe { &mut *self.arena.get() };
            if arena
                .resize_in_place(ptr as usize, layout.size(), new_size, &mut grow)
                .is_some()
            {
                return ptr;
            }
            let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
                return core::ptr::null_mut();
            };
            let new = unsafe { self.alloc(new_layout) };
            if !new.is_null() {
                unsafe {
                    core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
            }
            new
        }
    }
}

/// Makes [`DecisionAllocator`] the module's global allocator in its wasm build (natively
/// it expands to nothing). Put it next to [`crate::export_policy!`]; a crate with its own
/// `#[global_allocator]` must not use it.
#[macro_export]
macro_rules! use_decision_allocator {
    () => {
        #[cfg(target_arch = "wasm32")]
        #[global_allocator]
        static TIERKEEP_DECISION_ALLOCATOR: $crate::DecisionAllocator =
            $crate::DecisionAllocator::new();
    };
}

#[cfg(test)]
mod tests {
    use super::{Arena, PAGE};

    /// A fake linear memory of `pages` pages that grows up to `max`.
    fn memory(pages: usize, max: usize) -> impl FnMut(usize) -> Option<usize> {
        let mut size = pages;
        move |more| {
            (size + more <= max).then(|| {
                let previous = size;
                size += more;
                previous
            })
        }
    }

    #[test]
    fn allocates_aligned_disjoint_ranges_after_the_initial_memory() {
        let mut grow = memory(17, 1024);
        let mut a = Arena::default();
        let x = a.alloc(3, 1, &mut grow).unwrap();
        assert_eq!(x, 17 * PAGE, "starts at the first grown page");
        let y = a.alloc(8, 8, &mut grow).unwrap();
        assert_eq!(y % 8, 0);
        assert!(y >= x + 3);
        let z = a.alloc(2 * 1024 * 1024, 16, &mut grow).unwrap();
        assert!(z >= y + 8);
        assert_eq!(z % 16, 0);
    }

    #[test]
    fn reuses_only_the_last_allocation_and_grows_it_in_place() {
        let mut grow = memory(1, 1024);
        let mut a = Arena::default();
        let x = a.alloc(100, 8, &mut grow).unwrap();
        let y = a.alloc(100, 8, &mut grow).unwrap();
        a.dealloc(x, 100); // not the last: kept
        a.dealloc(y, 100); // the last: given back
        assert_eq!(a.alloc(50, 8, &mut grow), Some(y));
        // The last allocation grows in place, even past the memory taken so far.
        assert_eq!(a.resize_in_place(y, 50, 3 * PAGE * 16, &mut grow), Some(y));
        // An earlier one cannot.
        assert_eq!(a.resize_in_place(x, 100, 200, &mut grow), None);
        // Shrinking always works in place.
        assert_eq!(a.resize_in_place(x, 100, 10, &mut grow), Some(x));
    }

    #[test]
    fn reports_out_of_memory_instead_of_overlapping() {
        let mut grow = memory(1, 1 + 16);
        let mut a = Arena::default();
        assert!(a.alloc(16 * PAGE, 1, &mut grow).is_some());
        assert_eq!(a.alloc(1, 1, &mut grow), None);
        assert_eq!(a.alloc(usize::MAX - 2, 8, &mut grow), None);
    }
}
