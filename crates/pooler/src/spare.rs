//! Per-thread stacks of spare objects (relay states, read buffers): a task takes one for a while
//! and gives it back to whichever thread it is on then, so steady traffic allocates nothing and
//! an idle client holds none.

use std::cell::RefCell;
use std::thread::LocalKey;

pub type Spares<T> = LocalKey<RefCell<Vec<T>>>;

/// One of this thread's spares, if it has one.
pub fn take<T: 'static>(spares: &'static Spares<T>) -> Option<T> {
    spares.try_with(|s| s.borrow_mut().pop()).ok().flatten()
}

/// Keeps `item` for this thread's next `take`, unless `max` are kept already (then it is
/// dropped).
pub fn keep<T: 'static>(spares: &'static Spares<T>, item: T, max: usize) {
    let _ = spares.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < max {
            s.push(item);
        }
    });
}
