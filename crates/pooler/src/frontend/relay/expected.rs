//! The queue of answers the server owes (`RelayState::expect`): first in, first out, with the
//! few entries of a transaction held inline. The relay state lives for one attachment (it is
//! the frontend's, not the server connection's), so a heap queue would cost an allocation and a
//! free per transaction; a pipeline deeper than `INLINE` spills to the heap.

use smallvec::SmallVec;

use super::Expect;

/// Entries held without allocating: a prepared transaction (Parse, Bind, Describe, Execute,
/// Sync) and a little more.
const INLINE: usize = 8;

/// A FIFO of `Expect`s: entries before `head` are gone.
#[derive(Default, Debug)]
pub struct Expected {
    items: SmallVec<[Expect; INLINE]>,
    head: usize,
}

impl Expected {
    #[inline]
    pub fn push_back(&mut self, e: Expect) {
        if self.head > 0 && self.items.len() == self.items.capacity() {
            // Reuse the room of the answers already taken rather than growing.
            self.items.drain(..self.head);
            self.head = 0;
        }
        self.items.push(e);
    }

    #[inline]
    pub fn front(&self) -> Option<&Expect> {
        self.items.get(self.head)
    }

    #[inline]
    pub fn pop_front(&mut self) -> Option<Expect> {
        let e = self.items.get(self.head).copied()?;
        self.head += 1;
        if self.head == self.items.len() {
            self.items.clear();
            self.head = 0;
        }
        Some(e)
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head == self.items.len()
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.items.len() - self.head
    }

    /// The `i`-th entry from the front.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&Expect> {
        self.items.get(self.head + i)
    }

    /// Removes the `i`-th entry from the front (rare: a COPY's pipelined Syncs).
    pub fn remove(&mut self, i: usize) -> Option<Expect> {
        if i >= self.len() {
            return None;
        }
        let e = self.items.remove(self.head + i);
        if self.is_empty() {
            self.items.clear();
            self.head = 0;
        }
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Action;
    use super::*;
    use std::collections::VecDeque;

    fn e(n: u64) -> Expect {
        Expect {
            kind: b'Q',
            action: Action::Forward,
            stmt: n,
        }
    }

    /// Random pushes, pops and removals give what a `VecDeque` gives, inline and spilled.
    #[test]
    fn behaves_as_a_fifo() {
        let mut q = Expected::default();
        let mut model: VecDeque<Expect> = VecDeque::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = 0;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            match seed % 7 {
                0..=2 => {
                    q.push_back(e(next));
                    model.push_back(e(next));
                    next += 1;
                }
                3 | 4 => assert_eq!(q.pop_front(), model.pop_front()),
                5 => {
                    let i = (seed >> 8) as usize % (model.len() + 1);
                    assert_eq!(q.remove(i), model.remove(i));
                }
                _ => {
                    // Drain now and then, so that both the inline and the spilled paths run.
                    if seed.is_multiple_of(3) {
                        while q.pop_front().is_some() {}
                        model.clear();
                    }
                }
            }
            assert_eq!(q.len(), model.len());
            assert_eq!(q.is_empty(), model.is_empty());
            assert_eq!(q.front(), model.front());
            assert_eq!(q.get(1), model.get(1));
        }
    }

    /// A transaction's worth of entries stays inline, however many transactions pass.
    #[test]
    fn a_transaction_does_not_allocate() {
        let mut q = Expected::default();
        for round in 0..1000 {
            for i in 0..5 {
                q.push_back(e(round * 5 + i));
            }
            for i in 0..5 {
                assert_eq!(q.pop_front().map(|x| x.stmt), Some(round * 5 + i));
            }
            assert!(!q.items.spilled());
        }
    }
}
